"""CLIP (open_clip) and FLAN-T5 (transformers) text encoders: tiny builders, loaders, errors."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from selva_core.model.text_encoders import (
    ClipTextEncoder,
    T5TextEncoder,
    TextEncoderUnavailableError,
    TinyT5Tokenizer,
    load_text_encoders,
)
from selva_core.model.video_encoder import TextSynch
from selva_core.variants import CLIP_TEXT_HUB_ID, T5_HUB_ID, get_variant

PROMPTS = ["a dog barking in the rain", "waves crashing on rocks", ""]


@pytest.fixture(scope="module")
def tiny_clip():
    return ClipTextEncoder.tiny(seed=0)


@pytest.fixture(scope="module")
def tiny_t5():
    return T5TextEncoder.tiny(seed=0)


@pytest.fixture
def offline(monkeypatch):
    """HF_HUB_OFFLINE=1 as the process would see it (env and huggingface_hub's constant)."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


# --- CLIP ----------------------------------------------------------------------------------------
def test_tiny_clip_gives_unit_norm_features_for_all_77_tokens(tiny_clip):
    feats = tiny_clip.encode(PROMPTS)
    assert feats.shape == (3, 77, 64) and feats.dtype == torch.float32
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(3, 77), atol=1e-5, rtol=0)
    assert not feats.requires_grad


def test_tiny_clip_is_deterministic_per_seed_and_prompts_differ(tiny_clip):
    again = ClipTextEncoder.tiny(seed=0).encode(PROMPTS)
    feats = tiny_clip.encode(PROMPTS)
    assert torch.equal(feats, again)
    assert (feats[0] - feats[1]).abs().max() > 1e-2
    other_seed = ClipTextEncoder.tiny(seed=1).encode(PROMPTS)
    assert (other_seed - feats).abs().max() > 1e-2


def test_clip_tokens_follow_the_clip_bpe_layout(tiny_clip):
    tokens = tiny_clip.tokenize(["a dog", ""])
    assert tokens.shape == (2, 77)
    assert tokens[0, 0] == 49406 and tokens[0, 3] == 49407 and tokens[0, 4:].eq(0).all()
    assert tokens[1, :2].tolist() == [49406, 49407]


def test_clip_eot_token_matches_open_clip_pooled_embedding(tiny_clip):
    """normalize(token_at_EOT @ text_projection) is open_clip's own encode_text result."""
    tokens = tiny_clip.tokenize(PROMPTS)
    with torch.no_grad():
        feats = tiny_clip(tokens)
        pooled = F.normalize(tiny_clip.tower(tokens), dim=-1)
    eot = tokens.argmax(dim=-1)
    ours = F.normalize(feats[torch.arange(3), eot] @ tiny_clip.tower.text_projection, dim=-1)
    torch.testing.assert_close(ours, pooled, atol=1e-5, rtol=0)


def _tiny_open_clip_folder(tmp_path, weights_name: str):
    """A complete (vision + text) open_clip CLIP saved the way hub repositories hold it."""
    import open_clip

    model_cfg = {
        "embed_dim": 32,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2,
                     "layers": 2},
    }
    torch.manual_seed(5)
    model = open_clip.CLIP(**model_cfg).eval()
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    if weights_name.endswith(".safetensors"):
        save_file(sd, str(tmp_path / weights_name))
    else:
        torch.save(sd, tmp_path / weights_name)
    return model


def _open_clip_token_states(model, tokens):
    x = model.token_embedding(tokens) + model.positional_embedding
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))
    return F.normalize(x, dim=-1)


@pytest.mark.parametrize("weights_name", ["open_clip_model.safetensors",
                                          "open_clip_pytorch_model.bin"])
def test_clip_loads_only_the_text_tower_from_a_local_open_clip_folder(tmp_path, weights_name):
    reference = _tiny_open_clip_folder(tmp_path, weights_name)
    enc = ClipTextEncoder.from_pretrained(tmp_path)
    assert not any("visual" in k for k in enc.state_dict())
    tokens = enc.tokenize(PROMPTS)
    with torch.no_grad():
        want = _open_clip_token_states(reference, tokens)
    torch.testing.assert_close(enc.encode(PROMPTS), want, atol=1e-6, rtol=0)
    with torch.no_grad():  # projection loaded too: pooled embedding equals open_clip's
        torch.testing.assert_close(
            F.normalize(enc.tower(tokens), dim=-1), reference.encode_text(tokens, normalize=True),
            atol=1e-6, rtol=0,
        )


def test_clip_loads_a_weight_file_with_its_config_beside_it(tmp_path):
    reference = _tiny_open_clip_folder(tmp_path, "open_clip_model.safetensors")
    enc = ClipTextEncoder.from_pretrained(str(tmp_path / "open_clip_model.safetensors"))
    with torch.no_grad():
        want = _open_clip_token_states(reference, enc.tokenize(PROMPTS))
    torch.testing.assert_close(enc.encode(PROMPTS), want, atol=1e-6, rtol=0)


def test_clip_casts_to_the_requested_dtype(tmp_path):
    _tiny_open_clip_folder(tmp_path, "open_clip_model.safetensors")
    enc = ClipTextEncoder.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert enc.dtype == torch.bfloat16
    feats = enc.encode(PROMPTS[:1])
    assert feats.dtype == torch.bfloat16
    torch.testing.assert_close(feats.float().norm(dim=-1), torch.ones(1, 77), atol=2e-2, rtol=0)


def test_clip_from_a_folder_without_weights_says_what_to_put_there(tmp_path):
    (tmp_path / "open_clip_config.json").write_text("{}")
    with pytest.raises(TextEncoderUnavailableError, match="open_clip_pytorch_model.bin"):
        ClipTextEncoder.from_pretrained(tmp_path)
    with pytest.raises(TextEncoderUnavailableError, match="does not exist"):
        ClipTextEncoder.from_pretrained(tmp_path / "missing")


def test_clip_hub_source_offline_without_cache_raises_one_clear_error(tmp_path, offline):
    with pytest.raises(TextEncoderUnavailableError) as err:
        ClipTextEncoder.from_pretrained(CLIP_TEXT_HUB_ID, cache_dir=tmp_path)
    msg = str(err.value)
    assert "HF_HUB_OFFLINE" in msg
    assert "https://huggingface.co/apple/DFN5B-CLIP-ViT-H-14-384" in msg
    assert "open_clip_config.json" in msg


# --- T5 ------------------------------------------------------------------------------------------
def test_tiny_t5_pads_to_the_longest_prompt_and_masks_real_tokens(tiny_t5):
    states, mask = tiny_t5.encode(PROMPTS)
    lengths = [len(tiny_t5.tokenizer.encode(p)) for p in PROMPTS]
    assert lengths[2] == 1  # "" -> EOS only
    assert states.shape == (3, max(lengths), 32) and mask.dtype == torch.bool
    assert mask.sum(dim=1).tolist() == lengths
    ids, _ = tiny_t5.tokenize(PROMPTS)
    for row, n in enumerate(lengths):
        assert ids[row, n - 1] == 1 and ids[row, n:].eq(0).all()  # EOS then padding


def test_tiny_t5_real_token_states_do_not_depend_on_batch_padding(tiny_t5):
    alone, mask_alone = tiny_t5.encode(["rain"])
    batch, mask_batch = tiny_t5.encode(["rain", "a long prompt about thunder over the sea"])
    n = int(mask_alone.sum())
    assert batch.shape[1] > n and mask_batch[0].sum() == n
    torch.testing.assert_close(batch[0, :n], alone[0, :n], atol=1e-5, rtol=0)
    assert (batch[0, 0] - batch[1, 0]).abs().max() > 1e-3


def test_tiny_t5_is_deterministic_per_seed(tiny_t5):
    a, _ = tiny_t5.encode(PROMPTS)
    b, _ = T5TextEncoder.tiny(seed=0).encode(PROMPTS)
    c, _ = T5TextEncoder.tiny(seed=1).encode(PROMPTS)
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3


def test_tiny_t5_tokenizer_truncates_keeping_eos():
    tok = TinyT5Tokenizer(vocab_size=100)
    text = " ".join(["word"] * 50)
    enc = tok([text, "hi"], padding=True, truncation=True, max_length=8, return_tensors="pt")
    assert enc["input_ids"].shape == (2, 8)
    assert enc["input_ids"][0, -1] == 1 and enc["attention_mask"][0].all()
    assert enc["input_ids"].max() < 100 and enc["input_ids"][:, 0].min() >= 3


def test_t5_loads_from_a_local_transformers_folder(tmp_path):
    import transformers
    from transformers import T5Tokenizer

    if int(transformers.__version__.split(".")[0]) < 5:
        pytest.skip("building a T5 tokenizer from a vocab list needs transformers >= 5")

    source = T5TextEncoder.tiny(seed=2)
    words = ["▁a", "▁dog", "▁cat", "▁rain", "▁bark", "ing", "▁", "a", "d", "o", "g", "c", "t"]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [
        (w, -float(i)) for i, w in enumerate(words)
    ]
    T5Tokenizer(vocab=vocab, extra_ids=0).save_pretrained(tmp_path)
    source.model.save_pretrained(tmp_path)
    enc = T5TextEncoder.from_pretrained(tmp_path)
    states, mask = enc.encode(["a dog barking", "a cat"])
    assert mask.sum(dim=1).tolist() == [5, 3]  # ▁a ▁dog ▁bark ing </s> / ▁a ▁cat </s>
    ids, _ = enc.tokenize(["a dog barking", "a cat"])
    with torch.no_grad():
        want = source.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    torch.testing.assert_close(states, want, atol=1e-6, rtol=0)


def test_t5_hub_source_offline_without_cache_raises_one_clear_error(tmp_path, offline):
    with pytest.raises(TextEncoderUnavailableError) as err:
        T5TextEncoder.from_pretrained(T5_HUB_ID, cache_dir=tmp_path)
    msg = str(err.value)
    assert "HF_HUB_OFFLINE" in msg and "https://huggingface.co/google/flan-t5-base" in msg
    with pytest.raises(TextEncoderUnavailableError, match="config.json"):
        T5TextEncoder.from_pretrained(tmp_path)


# --- registry ------------------------------------------------------------------------------------
def test_tiny_variant_text_encoders_fit_the_tiny_generator_and_video_encoder():
    variant = get_variant("tiny_16k")
    clip, t5 = load_text_encoders(variant.text_encoders)
    text_f = clip.encode(["a bell"])
    assert text_f.shape == (1, 77, variant.generator.text_dim)
    states, mask = t5.encode(["a bell"])
    video_enc = TextSynch(variant.video_encoder).eval()
    frames = torch.zeros(1, 16, 3, variant.video_encoder.frame_size,
                         variant.video_encoder.frame_size)
    with torch.no_grad():
        sync_f = video_enc(frames, states, mask)
    assert sync_f.shape == (1, 8, variant.generator.sync_dim)


def test_real_variant_loader_offline_names_the_missing_encoder(tmp_path, offline):
    with pytest.raises(TextEncoderUnavailableError, match="DFN5B"):
        load_text_encoders(get_variant("small_16k").text_encoders, cache_dir=tmp_path)
