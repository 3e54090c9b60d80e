"""SelvaGenerator: equal to the reference on golden data, reference key layout, seq lengths."""

from __future__ import annotations

import gc
import json
import math

import pytest
import torch
from torch import nn

from selva_core.model.generator import (
    PreprocessedConditions,
    SelvaGenerator,
    TimestepEmbedder,
    sync_token_times,
    sync_upsample_index,
    upsample_sync,
)
from selva_core.model.rope import apply_rope, rope_tables
from selva_core.variants import OFFICIAL_VARIANTS, get_variant
from tests.conftest import GOLDEN_DIR, REFERENCE_DIR
from tests.generator_inputs import random_generator_inputs
from tests.golden import load_case, manifest_shapes, seeded_state_dict


# -- helpers --------------------------------------------------------------------------------
def _golden_model(case, check_fingerprint: bool = True) -> SelvaGenerator:
    """Meta-built generator for a case, seeded weights assigned (no second copy in memory)."""
    c = case.config
    variant = get_variant(c["variant"])
    seq = variant.sequence_lengths(c["sequence_config"]["duration"])
    assert (seq.latent, seq.clip, seq.sync) == (
        c["latent_seq_len"], c["clip_seq_len"], c["sync_seq_len"]
    )
    with torch.device("meta"):
        model = SelvaGenerator(variant.generator, seq)
    sd = seeded_state_dict(case, check_fingerprint=check_fingerprint)
    model.load_state_dict(sd, strict=True, assign=True)
    return model.eval()


def _capture_intermediates(model: SelvaGenerator) -> tuple[dict, list]:
    """Forward hooks that record the reference's ``inter.*`` activations."""
    got: dict[str, torch.Tensor] = {}
    hooks = []

    def keep(name, pick=lambda out: out):
        def hook(_module, _inputs, out):
            got[name] = pick(out)

        return hook

    hooks.append(model.audio_input_proj.register_forward_hook(keep("inter.audio_input_proj")))
    hooks.append(model.t_embed.register_forward_hook(keep("inter.t_embed")))
    hooks.append(model.global_cond_mlp.register_forward_hook(keep("inter.global_cond_mlp")))
    for i, block in enumerate(model.joint_blocks):
        for j, stream in enumerate(("latent", "clip", "text")):
            pick = lambda out, j=j: out[j]  # noqa: E731
            name = f"inter.joint_blocks.{i}.{stream}"
            hooks.append(block.register_forward_hook(keep(name, pick)))
    for i, block in enumerate(model.fused_blocks):
        hooks.append(block.register_forward_hook(keep(f"inter.fused_blocks.{i}")))
    return got, hooks


def _check_forward_case(name: str, with_intermediates: bool, fingerprint: bool = True) -> int:
    case = load_case(GOLDEN_DIR / f"{name}.json")
    model = _golden_model(case, check_fingerprint=fingerprint)
    x = case.inputs()
    got, hooks = _capture_intermediates(model) if with_intermediates else ({}, [])
    with torch.inference_mode():
        cond = model.preprocess_conditions(x["clip_f"], x["sync_f"], x["text_f"])
        got["output.flow"] = model.predict_flow(x["latent"], x["t"], cond)
    for h in hooks:
        h.remove()
    for field in ("clip_f", "sync_f", "text_f", "clip_f_c", "text_f_c"):
        got[f"output.cond.{field}"] = getattr(cond, field)
    checked = 0
    for key, atol in case.spec["tolerance_atol"].items():
        if key.startswith("inter.") and not with_intermediates:
            continue
        err = (got[key] - case.tensors[key]).abs().max().item()
        assert err <= atol, f"{name} {key}: max error {err:.3g} > atol {atol}"
        checked += 1
    del model, got, cond
    gc.collect()
    return checked


def _manifest(variant: str) -> dict:
    return json.loads((REFERENCE_DIR / f"generator_{variant}.json").read_text())


# -- golden cases ---------------------------------------------------------------------------
@pytest.mark.slow
def test_small_16k_forward_matches_reference_outputs_conditions_and_intermediates():
    checked = _check_forward_case("gen_small_16k_forward", with_intermediates=True)
    assert checked == 15  # flow + 5 cond + 9 intermediates


@pytest.mark.slow
def test_small_44k_forward_matches_reference_with_sync_upsampling_ties():
    assert _check_forward_case("gen_small_44k_forward", with_intermediates=False) == 6


@pytest.mark.slow
def test_large_44k_forward_at_4s_matches_reference_with_non_default_rope_tables():
    # The fingerprint (~5 s on 4 GB) is checked for the small cases; any recipe drift would
    # show there first.
    checked = _check_forward_case("gen_large_44k_forward", with_intermediates=True,
                                  fingerprint=False)
    assert checked == 15


def test_sync_upsample_index_equals_reference_for_all_pairs():
    case = load_case(GOLDEN_DIR / "sync_upsample_index.json")
    pairs = case.config["pairs"]
    assert len(pairs) == 20
    for n_in, n_out in pairs:
        want = case.tensors[f"output.index_{n_in}_to_{n_out}"]
        assert torch.equal(sync_upsample_index(n_in, n_out).float(), want), (n_in, n_out)
        # the tensor path the model uses, in bf16 too (ties must not move with the dtype)
        for dtype in (torch.float32, torch.bfloat16):
            src = torch.arange(n_in, dtype=torch.float32).view(1, n_in, 1).to(dtype)
            out = upsample_sync(src, n_out).view(n_out).float()
            assert torch.equal(out, want), (n_in, n_out, dtype)


def test_sync_upsample_index_differs_from_exact_rational_rule_at_known_ties():
    # 192 -> 345 (44k, 8 s): float32 rounding picks another token at i = 57 and 172.
    idx = sync_upsample_index(192, 345)
    exact = [min((2 * i + 1) * 192 // (2 * 345), 191) for i in range(345)]
    differs = [i for i in range(345) if idx[i].item() != exact[i]]
    assert differs == [57, 172]


@pytest.mark.parametrize("duration", [2.0, 8.0])
def test_sync_tokens_are_read_later_per_window_and_blind_times_stay_in_their_window(duration):
    tokens = get_variant("tiny_16k").sequence_lengths(duration).sync
    seen, read, blind = (t.double().view(-1, 8) for t in sync_token_times(duration, tokens))
    windows = seen.shape[0]
    # frames: 0.32 s per window, 0.08 s per token; reading: duration / tokens per token
    step = seen[1:, 0] - seen[:-1, 0]
    assert torch.allclose(step, torch.full_like(step, 0.32), atol=1e-6)
    assert torch.allclose(seen[:, 1] - seen[:, 0], torch.full_like(seen[:, 0], 0.08), atol=1e-6)
    drift = 8 * duration / tokens - 0.32
    assert drift > 0
    assert torch.allclose((read - seen)[:, 0], drift * torch.arange(windows).double(), atol=1e-5)
    # a blind token reports a moment inside its own window's 0.64 s of frames
    assert (blind >= seen[:, :1] - 1e-6).all() and (blind < seen[:, :1] + 0.64).all()
    # the middle window(s) are read within half a drift; the ends are off by the drift they add
    error = blind - read
    assert error.abs().min() <= drift / 2 + 1e-5
    assert torch.allclose(error.max() - error.min(), torch.tensor(drift * (windows - 1)).double(),
                          atol=1e-5)


# -- structure ------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", OFFICIAL_VARIANTS)
def test_meta_built_generator_has_exactly_the_manifest_keys_and_shapes(variant):
    manifest = _manifest(variant)
    with torch.device("meta"):
        model = SelvaGenerator.from_variant(variant)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    want = manifest_shapes(REFERENCE_DIR / f"generator_{variant}.json")
    assert set(ours) == set(want), (set(ours) ^ set(want))
    assert {k: v for k, v in ours.items() if want[k] != v} == {}
    assert sum(p.numel() for p in model.parameters()) == manifest["param_count"]
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == set(manifest["_meta"]["frozen_parameters"])
    assert not set(SelvaGenerator.OBSOLETE_KEYS) & set(ours)
    # RoPE / time tables are real CPU tensors even on meta
    assert model.latent_rope_cos.device.type == "cpu"
    assert model.t_embed.freqs.device.type == "cpu"


def test_v2_generator_uses_silu_projections_and_a_hidden_width_time_embedding():
    with torch.device("meta"):
        v1 = SelvaGenerator.from_variant("large_44k")
        v2 = SelvaGenerator.from_variant("large_44k_v2")
    assert isinstance(v1.audio_input_proj[1], nn.SELU)
    assert isinstance(v1.sync_input_proj[1], nn.SELU)
    for proj in (v2.audio_input_proj, v2.sync_input_proj, v2.clip_input_proj, v2.text_input_proj):
        assert isinstance(proj[1], nn.SiLU)
    d = v2.cfg.hidden_dim
    want_v2 = 10000.0 / 10000.0 ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    torch.testing.assert_close(v2.t_embed.freqs.double(), want_v2, rtol=1e-6, atol=0)
    want_v1 = 1.0 / 10000.0 ** (torch.arange(0, 256, 2, dtype=torch.float64) / 256)
    torch.testing.assert_close(v1.t_embed.freqs.double(), want_v1, rtol=1e-6, atol=0)


def test_attention_modules_are_named_attn_with_a_fused_qkv_linear():
    model = SelvaGenerator.from_variant("tiny_16k", duration=1.0)
    names = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    d = model.cfg.hidden_dim
    assert "joint_blocks.0.latent_block.attn.qkv" in names
    assert "fused_blocks.0.attn.qkv" in names
    qkv = model.get_submodule("fused_blocks.0.attn.qkv")
    assert (qkv.in_features, qkv.out_features) == (d, 3 * d)


# -- sequence lengths and RoPE --------------------------------------------------------------
@pytest.mark.parametrize(
    ("variant", "duration", "latent", "clip", "sync"),
    [
        ("small_16k", 8.0, 250, 64, 192),
        ("small_44k", 8.0, 345, 64, 192),
        ("large_44k_v2", 4.0, 173, 32, 88),
        ("small_16k", 3.0, 94, 24, 64),
        ("small_16k", 1.0, 32, 8, 16),
        ("medium_44k", 10.0, 431, 80, 240),
    ],
)
def test_sequence_lengths_follow_the_duration_rule(variant, duration, latent, clip, sync):
    seq = get_variant(variant).sequence_lengths(duration)
    assert (seq.latent, seq.clip, seq.sync, seq.text) == (latent, clip, sync, 77)


def test_update_seq_lengths_rebuilds_rope_tables_with_scaled_clip_positions():
    variant = get_variant("tiny_16k")
    model = SelvaGenerator(variant.generator, variant.sequence_lengths(8.0))
    assert model.latent_rope_cos.shape == (250, model.cfg.head_dim // 2)
    model.update_seq_lengths(variant.sequence_lengths(3.0))
    assert model.seq.latent == 94 and model.latent_rope_cos.shape[0] == 94
    assert model.clip_rope_cos.shape[0] == 24
    # clip token p sits at latent time p * N / clip_N
    cos, _ = rope_tables(94, model.cfg.head_dim)
    p = 5
    angle0 = p * 94 / 24  # first pair has frequency 1
    assert math.isclose(model.clip_rope_cos[p, 0].item(), math.cos(angle0), abs_tol=1e-5)
    torch.testing.assert_close(model.latent_rope_cos, cos)


def test_rope_rotates_interleaved_pairs():
    x = torch.tensor([[1.0, 0.0, 0.0, 1.0]])  # pairs (1, 0) and (0, 1) at position 0
    cos, sin = torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]])  # 90 deg, 0 deg
    out = apply_rope(x, cos, sin)
    torch.testing.assert_close(out, torch.tensor([[0.0, 1.0, 0.0, 1.0]]))


def test_rope_and_time_tables_stay_float32_after_casting_the_model_to_bfloat16():
    model = SelvaGenerator.from_variant("tiny_16k", duration=1.0)
    ref_cos = model.latent_rope_cos.clone()
    model.to(torch.bfloat16)
    assert model.latent_rope_cos.dtype == torch.float32
    assert model.t_embed.freqs.dtype == torch.float32
    assert torch.equal(model.latent_rope_cos, ref_cos)
    assert model.fused_blocks[0].attn.qkv.weight.dtype == torch.bfloat16


def test_to_empty_on_a_meta_built_model_leaves_real_rope_and_time_tables():
    real = SelvaGenerator.from_variant("tiny_16k", duration=1.0)
    with torch.device("meta"):
        model = SelvaGenerator.from_variant("tiny_16k", duration=1.0)
    model.to_empty(device="cpu")
    assert model.fused_blocks[0].attn.qkv.weight.device.type == "cpu"
    assert torch.equal(model.latent_rope_cos, real.latent_rope_cos)
    assert torch.equal(model.clip_rope_sin, real.clip_rope_sin)
    assert torch.equal(model.t_embed.freqs, real.t_embed.freqs)


def test_wrong_condition_length_raises_and_names_update_seq_lengths():
    model = SelvaGenerator.from_variant("tiny_16k", duration=2.0)
    cfg = model.cfg
    seq = model.seq
    with pytest.raises(ValueError, match="update_seq_lengths"):
        model.preprocess_conditions(
            torch.randn(1, seq.clip + 1, cfg.clip_dim),
            torch.randn(1, seq.sync, cfg.sync_dim),
            torch.randn(1, 77, cfg.text_dim),
        )
    with pytest.raises(ValueError, match="too short"):
        get_variant("tiny_16k").sequence_lengths(0.5)


def _tiny_inputs(model: SelvaGenerator, batch: int, seed: int = 0):
    return random_generator_inputs(model, batch, seed)


def test_any_duration_with_one_sync_window_runs_after_update_seq_lengths():
    model = SelvaGenerator.from_variant("tiny_16k", duration=8.0).eval()
    variant = get_variant("tiny_16k")
    for duration in (0.64, 2.5):
        model.update_seq_lengths(variant.sequence_lengths(duration))
        latent, clip_f, sync_f, text_f, t = _tiny_inputs(model, 2)
        with torch.inference_mode():
            flow = model(latent, clip_f, sync_f, text_f, t)
        assert flow.shape == latent.shape and torch.isfinite(flow).all()


def test_forward_runs_under_bfloat16_autocast_close_to_float32():
    model = SelvaGenerator.from_variant("tiny_16k", duration=2.0).eval()
    latent, clip_f, sync_f, text_f, t = _tiny_inputs(model, 2)
    with torch.inference_mode():
        ref = model(latent, clip_f, sync_f, text_f, t)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(latent, clip_f, sync_f, text_f, t)
    assert low.dtype == torch.bfloat16
    rel = (low.float() - ref).norm() / ref.norm()
    assert rel < 0.05, rel


def test_forward_equals_preprocess_then_predict_and_conditions_broadcast_from_batch_one():
    model = SelvaGenerator.from_variant("tiny_16k", duration=2.0).eval()
    latent, clip_f, sync_f, text_f, t = _tiny_inputs(model, 2)
    with torch.inference_mode():
        full = model(latent, clip_f[:1].expand(2, -1, -1), sync_f[:1].expand(2, -1, -1),
                     text_f[:1].expand(2, -1, -1), t)
        cond1 = model.preprocess_conditions(clip_f[:1], sync_f[:1], text_f[:1])
        split = model.predict_flow(latent, t, cond1)
    torch.testing.assert_close(full, split, atol=1e-5, rtol=1e-5)


def test_gradients_reach_parameters_but_not_frozen_statistics():
    model = SelvaGenerator.from_variant("tiny_16k", duration=1.0)
    latent, clip_f, sync_f, text_f, t = _tiny_inputs(model, 1)
    model(latent, clip_f, sync_f, text_f, t).square().mean().backward()
    assert model.fused_blocks[0].attn.qkv.weight.grad is not None
    assert model.sync_pos_emb.grad is not None
    assert model.latent_std.grad is None and model.empty_string_feat.grad is None


# -- conditions and latent statistics -------------------------------------------------------
def test_empty_conditions_broadcast_learned_null_tokens_or_the_negative_text():
    model = SelvaGenerator.from_variant("tiny_16k", duration=2.0)
    seq = model.seq
    clip0, sync0, text0 = model.empty_conditions(3)
    assert clip0.shape == (3, seq.clip, model.cfg.clip_dim)
    assert sync0.shape == (3, seq.sync, model.cfg.sync_dim)
    assert torch.equal(clip0[2, 5], model.empty_clip_feat[0])
    assert torch.equal(sync0[1, -1], model.empty_sync_feat[0])
    assert torch.equal(text0[0], model.empty_string_feat)
    neg = torch.randn(1, 77, model.cfg.text_dim)
    assert torch.equal(model.empty_conditions(3, neg)[2][2], neg[0])
    with pytest.raises(ValueError, match="negative_text_f"):
        model.empty_conditions(3, torch.randn(2, 77, model.cfg.text_dim))


def test_normalize_and_unnormalize_are_inverse_and_not_in_place():
    model = SelvaGenerator.from_variant("tiny_16k", duration=1.0)
    with torch.no_grad():
        model.latent_mean.normal_()
        model.latent_std.uniform_(0.5, 1.5)
    x = torch.randn(2, model.seq.latent, model.cfg.latent_dim)
    x_copy = x.clone()
    z = model.normalize(x)
    assert torch.equal(x, x_copy)
    torch.testing.assert_close(z, (x - model.latent_mean) / model.latent_std)
    torch.testing.assert_close(model.unnormalize(z), x, atol=1e-5, rtol=1e-5)


def test_preprocessed_conditions_concat_expand_and_repeat_along_batch():
    model = SelvaGenerator.from_variant("tiny_16k", duration=1.0).eval()
    _, clip_f, sync_f, text_f, _ = _tiny_inputs(model, 2)
    with torch.inference_mode():
        a = model.preprocess_conditions(clip_f, sync_f, text_f)
        b = model.preprocess_conditions(*model.empty_conditions(1))
    both = a.cat(b.expand(2))
    assert both.batch_size == 4
    assert torch.equal(both.sync_f[2], b.sync_f[0]) and torch.equal(both.text_f_c[1], a.text_f_c[1])
    tiled = a.repeat(2)
    assert tiled.batch_size == 4 and torch.equal(tiled.clip_f[3], a.clip_f[1])
    assert PreprocessedConditions.concat([a]).batch_size == 2
    with pytest.raises(ValueError, match="expand"):
        a.expand(3)


def test_time_embedding_uses_t_in_unit_range_cosine_first():
    emb = TimestepEmbedder(dim=8, freq_dim=4, max_period=10000.0)
    torch.testing.assert_close(emb.freqs, torch.tensor([1.0, 0.01]))
    seen = []  # the sinusoid entering the MLP
    emb.mlp[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    emb(torch.tensor([0.5]))
    out = seen[0]
    want = torch.tensor([[math.cos(0.5), math.cos(0.005), math.sin(0.5), math.sin(0.005)]])
    torch.testing.assert_close(out, want)


def test_time_embedding_table_follows_a_device_context_and_stays_real_under_meta():
    from selva_core.model.generator import TimestepEmbedder

    with torch.device("meta"):
        emb = TimestepEmbedder(8, freq_dim=16, max_period=10000.0)
    assert emb.freqs.device.type == "cpu" and emb.mlp[0].weight.device.type == "meta"
    from unittest import mock

    # A CUDA context: the table is created where the context points (moved there from the CPU).
    with mock.patch.object(TimestepEmbedder, "_make_freqs", wraps=emb._make_freqs) as make:
        with torch.device("cpu"):
            TimestepEmbedder(8, freq_dim=16, max_period=10000.0)
    assert make.call_args.args[0] == torch.device("cpu")
    plain = TimestepEmbedder(8, freq_dim=16, max_period=10000.0)
    assert torch.equal(plain.freqs, emb._make_freqs("cpu"))
