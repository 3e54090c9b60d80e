"""TextSynch video encoder: reference golden output, checkpoint layout, masking, lengths."""

import json

import pytest
import torch

from selva_core.model.video_encoder import TextSynch
from selva_core.variants import TextSynchConfig, get_variant
from tests.conftest import GOLDEN_DIR, REFERENCE_DIR
from tests.golden import load_case, manifest_shapes, seeded_state_dict, seeded_weights_module

TINY = get_variant("tiny_16k").video_encoder


def _manifest() -> dict:
    return manifest_shapes(REFERENCE_DIR / "video_enc.json")


def _seeded_tiny(tmp_path, seed: int = 3, cfg: TextSynchConfig = TINY) -> TextSynch:
    """Tiny TextSynch with the golden seeded-weight recipe (O(1) activations, no zeros)."""
    model = TextSynch(cfg).eval()
    manifest = tmp_path / "tiny_video_enc.json"
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    manifest.write_text(json.dumps(shapes))
    sw = seeded_weights_module(load_case(GOLDEN_DIR / "video_enc_2seg.json"))
    model.load_state_dict(sw.seeded_state_dict(str(manifest), seed), strict=True)
    return model


def _inputs(cfg: TextSynchConfig, frames: int, batch: int = 1, text_len: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, frames, 3, cfg.frame_size, cfg.frame_size, generator=g) * 2 - 1
    text = torch.randn(batch, text_len, cfg.text_dim, generator=g)
    mask = torch.ones(batch, text_len, dtype=torch.bool)
    return x, text, mask


@pytest.mark.slow
def test_full_size_encoder_reproduces_reference_golden_case():
    case = load_case(GOLDEN_DIR / "video_enc_2seg.json")
    model = TextSynch(TextSynch.config_from_reference(case.config)).eval()
    model.load_checkpoint_state_dict(seeded_state_dict(case))
    x = case.inputs()
    with torch.no_grad():
        text, mask = model.prepend_sup(x["text_f"], x["text_mask"])
        sync_f = model.encode_video(x["frames"], text, mask)
    ref = case.tensors
    assert sync_f.shape == ref["output.sync_f"].shape == (1, 16, 768)
    err = (sync_f - ref["output.sync_f"]).abs().max().item()
    assert err <= case.tolerance("output.sync_f"), err
    err_text = (text - ref["output.text_f_with_sup"]).abs().max().item()
    assert err_text <= case.tolerance("output.text_f_with_sup"), err_text
    assert torch.equal(mask, ref["output.text_mask_with_sup"])


def test_meta_built_encoder_has_exactly_the_checkpoint_keys_and_shapes():
    with torch.device("meta"):
        model = TextSynch(TextSynchConfig())
    sd = model.state_dict()
    manifest = _manifest()
    assert list(sd) == list(manifest)  # same keys, same order
    assert {k: list(v.shape) for k, v in sd.items()} == manifest
    meta = json.loads((REFERENCE_DIR / "video_enc.json").read_text())
    assert sum(p.numel() for p in model.parameters()) == meta["param_count"]
    frozen = sorted(n for n, p in model.named_parameters() if not p.requires_grad)
    assert frozen == sorted(meta["_meta"]["frozen_parameters"])


def test_motionformer_alone_matches_the_plain_synchformer_video_manifest():
    # MMAudio's plain Synchformer video branch is TextSynch's vfeat_extractor, unchanged.
    with torch.device("meta"):
        model = TextSynch(TextSynchConfig())
    sd = {f"vfeat_extractor.{k}": v for k, v in model.vfeat_extractor.state_dict().items()}
    data = json.loads((REFERENCE_DIR / "synchformer_video.json").read_text())
    assert {k: list(v.shape) for k, v in sd.items()} == manifest_shapes(
        REFERENCE_DIR / "synchformer_video.json")
    params = dict(model.vfeat_extractor.named_parameters())
    assert sum(p.numel() for p in params.values()) == data["param_count"]
    frozen = sorted(f"vfeat_extractor.{n}" for n, p in params.items() if not p.requires_grad)
    assert frozen == sorted(data["_meta"]["frozen_parameters"])


def test_tiny_variant_builds_from_the_same_class_with_config_sized_embeddings():
    model = TextSynch(TINY)
    sd = model.state_dict()
    one_block = {
        k for k in _manifest()
        if not k.startswith("vfeat_extractor.blocks.") or k.startswith("vfeat_extractor.blocks.0.")
    }
    assert set(sd) == one_block  # depth 1: the same names with one space-time block
    assert sd["vfeat_extractor.pos_embed"].shape == (1, TINY.patches_per_frame + 1, 64)
    assert sd["vfeat_extractor.temp_embed"].shape == (1, TINY.tokens_per_segment, 64)
    assert sd["sup_text_feat"].shape == (TINY.num_sup_tokens, TINY.text_dim)
    assert sd["text_proj.0.weight"].shape == (64, TINY.text_dim)


def test_config_from_reference_maps_reference_field_names():
    cfg = TextSynch.config_from_reference(
        {"text_dim": 32, "num_sup_text_tokens": 3, "segment_size": 16, "step_size": 4,
         "frame_size": 224, "max_text_seq_len": 512}
    )
    assert (cfg.text_dim, cfg.num_sup_tokens, cfg.segment_step) == (32, 3, 4)


def test_prepend_sup_puts_sup_tokens_first_and_marks_them_real():
    model = TextSynch(TINY)
    states = torch.randn(2, 4, TINY.text_dim)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    out, out_mask = model.prepend_sup(states, mask)
    n = TINY.num_sup_tokens
    assert out.shape == (2, n + 4, TINY.text_dim)
    assert torch.equal(out[:, :n], model.sup_text_feat.detach().expand(2, -1, -1))
    assert torch.equal(out[:, n:], states)
    assert out_mask[:, :n].all() and torch.equal(out_mask[:, n:], mask)


@pytest.mark.parametrize("frames,tokens", [(16, 8), (24, 16), (200, 192)])
def test_output_has_eight_tokens_per_sixteen_frame_window(frames, tokens):
    model = TextSynch(TINY).eval()
    x, text, mask = _inputs(TINY, frames)
    with torch.no_grad():
        out = model(x, text, mask)
    assert out.shape == (1, tokens, TINY.embed_dim)
    assert torch.isfinite(out).all()


def test_padded_text_positions_do_not_change_the_output_but_real_ones_do(tmp_path):
    model = _seeded_tiny(tmp_path)
    x, text, _ = _inputs(TINY, 24, text_len=7)
    mask = torch.tensor([[True] * 5 + [False] * 2])
    garbage = text.clone()
    garbage[:, 5:] = 100.0 * torch.randn(1, 2, TINY.text_dim)
    changed_real = text.clone()
    changed_real[:, 0] += 1.0
    with torch.no_grad():
        ref = model(x, text, mask)
        padded = model(x, garbage, mask)
        real = model(x, changed_real, mask)
        unmasked = model(x, garbage, torch.ones_like(mask))
    torch.testing.assert_close(padded, ref, atol=1e-6, rtol=0)
    assert (real - ref).abs().max() > 1e-3
    assert (unmasked - ref).abs().max() > 1e-3


def test_segment_chunking_gives_the_same_features(tmp_path):
    model = _seeded_tiny(tmp_path)
    x, text, mask = _inputs(TINY, 56, batch=2)  # 6 windows per clip
    mask[1, 4:] = False
    with torch.no_grad():
        whole = model(x, text, mask)
        for chunk in (1, 4):
            torch.testing.assert_close(
                model(x, text, mask, segment_batch=chunk), whole, atol=1e-6, rtol=0
            )


def test_clips_in_a_batch_are_encoded_independently(tmp_path):
    model = _seeded_tiny(tmp_path)
    x, text, mask = _inputs(TINY, 24, batch=2)
    mask[0, 3:] = False
    with torch.no_grad():
        both = model(x, text, mask)
        first = model(x[:1], text[:1], mask[:1])
        second = model(x[1:], text[1:], mask[1:])
    torch.testing.assert_close(both, torch.cat([first, second]), atol=1e-6, rtol=0)


def test_windows_are_local_in_time(tmp_path):
    """Changing the last frames only changes the windows that contain them."""
    model = _seeded_tiny(tmp_path)
    x, text, mask = _inputs(TINY, 40)  # windows start at 0, 8, 16, 24
    y = x.clone()
    y[:, 36:] = -y[:, 36:]
    with torch.no_grad():
        a, b = model(x, text, mask), model(y, text, mask)
    diff = (a - b).abs().amax(dim=-1).view(4, 8).amax(dim=-1)
    assert torch.all(diff[:3] == 0) and diff[3] > 1e-3


def test_bad_inputs_raise_clear_errors():
    model = TextSynch(TINY)
    _, text, mask = _inputs(TINY, 16)
    with pytest.raises(ValueError, match="at least 16 frames"):
        model(torch.zeros(1, 15, 3, 32, 32), text, mask)
    with pytest.raises(ValueError, match=r"needs \(32, 32\)"):
        model(torch.zeros(1, 16, 3, 64, 64), text, mask)
    with pytest.raises(ValueError, match="t5_states must be"):
        model(torch.zeros(1, 16, 3, 32, 32), torch.zeros(1, 4, 7), None)
    with pytest.raises(ValueError, match="segment_batch"):
        model(torch.zeros(1, 16, 3, 32, 32), text, mask, segment_batch=0)


def test_checkpoint_loading_ignores_foreign_keys_and_requires_every_encoder_key():
    source = TextSynch(TINY)
    sd = dict(source.state_dict())
    sd["audio_branch.weight"] = torch.zeros(3)
    target = TextSynch(TINY)
    target.load_checkpoint_state_dict(sd)
    assert torch.equal(target.sup_text_feat, source.sup_text_feat)
    del sd["sup_text_feat"]
    with pytest.raises(RuntimeError, match="sup_text_feat"):
        target.load_checkpoint_state_dict(sd)
