"""BigVGAN vocoders: golden waveforms (both weight-norm key styles), manifests, folding,
anti-aliasing filters and the tiny configuration."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import scipy.signal
import torch
import torch.nn.functional as F

from selva_core.model.bigvgan import (
    ALIAS_KERNEL,
    BigVGAN,
    DownSample1d,
    UpSample1d,
    convert_legacy_weight_norm_keys,
    kaiser_sinc_filter,
)
from selva_core.variants import BIGVGAN_V1_16K, BIGVGAN_V2_44K, get_variant
from tests.conftest import GOLDEN_DIR, REFERENCE_DIR
from tests.golden import load_case, manifest_shapes, max_error, seeded_state_dict

CASES = {"bigvgan_v1_16k": BIGVGAN_V1_16K, "bigvgan_v2_44k": BIGVGAN_V2_44K}
TINY = get_variant("tiny_16k").vocoder


def _to_legacy_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        k = k.replace(".parametrizations.weight.original0", ".weight_g")
        k = k.replace(".parametrizations.weight.original1", ".weight_v")
        out[k] = v
    return out


@pytest.fixture(scope="module",
                params=[pytest.param(n, marks=pytest.mark.slow) for n in sorted(CASES)])
def golden(request):
    """(case, seeded parametrised-style state dict) for each vocoder case."""
    case = load_case(GOLDEN_DIR / f"{request.param}.json")
    # fingerprint skipped for speed (`python -m tests.golden` checks it)
    return case, seeded_state_dict(case, check_fingerprint=False)


def _meta_model(cfg) -> BigVGAN:
    with torch.device("meta"):
        return BigVGAN(cfg)


def test_golden_waveform_with_parametrized_keys(golden):
    case, sd = golden
    model = _meta_model(CASES[case.name])
    model.load_state_dict(sd, strict=True, assign=True)
    with torch.no_grad():
        wave = model.eval()(case.tensors["input.mel"])
    err = max_error(wave, case.tensors["output.waveform"])
    assert err <= case.tolerance("output.waveform"), err


def test_golden_waveform_with_legacy_keys_after_folding(golden):
    case, sd = golden
    model = _meta_model(CASES[case.name]).eval()
    # torch's weight-norm compat pre-hook maps weight_g / weight_v on a strict load
    model.load_state_dict(_to_legacy_keys(sd), strict=True, assign=True)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], sd[k]) for k in sd)
    model.remove_weight_norm()
    assert model.weight_norm_folded
    assert not any(".parametrizations." in k for k in model.state_dict())
    with torch.no_grad():
        wave = model(case.tensors["input.mel"])
    err = max_error(wave, case.tensors["output.waveform"])
    assert err <= case.tolerance("output.waveform"), err


def test_convert_legacy_keys_restores_manifest_keys(golden):
    case, sd = golden
    legacy = _to_legacy_keys(sd)
    assert any(k.endswith(".weight_g") for k in legacy)
    converted = convert_legacy_weight_norm_keys(legacy)
    assert set(converted) == set(sd)
    assert all(converted[k] is sd[k] for k in sd)


def test_convert_legacy_keys_rejects_mixed_styles():
    sd = {"a.weight_g": torch.ones(1), "a.parametrizations.weight.original0": torch.ones(1)}
    with pytest.raises(ValueError, match="both legacy and parametrised"):
        convert_legacy_weight_norm_keys(sd)


@pytest.mark.parametrize("name", sorted(CASES))
def test_meta_built_state_dict_equals_manifest(name):
    path = REFERENCE_DIR / f"{name}.json"
    manifest, expected = json.loads(path.read_text()), manifest_shapes(path)
    model = _meta_model(CASES[name])
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert got == expected  # incl. conv_post.bias only for v1 (use_bias_at_final)
    assert sum(p.numel() for p in model.parameters()) == manifest["param_count"]
    filters = [k for k in got if k.endswith(".filter")]
    assert sorted(filters) == sorted(manifest["_meta"]["persistent_buffers"])


def test_default_filter_is_kaiser_windowed_sinc():
    # Independent design: scipy's firwin with the Kaiser beta of BigVGAN's attenuation rule
    # (2.285 * (half - 1) * pi * 4 * half_width + 7.95, half = 6, half_width = 0.3).
    attenuation = 2.285 * (ALIAS_KERNEL // 2 - 1) * math.pi * (4 * 0.3) + 7.95
    beta = scipy.signal.kaiser_beta(attenuation)
    expected = scipy.signal.firwin(ALIAS_KERNEL, 0.5, window=("kaiser", beta), scale=True)
    taps = kaiser_sinc_filter(0.25, 0.3, ALIAS_KERNEL)
    assert taps.shape == (1, 1, ALIAS_KERNEL)
    torch.testing.assert_close(taps.view(-1).double(), torch.from_numpy(expected), atol=1e-7,
                               rtol=0)
    torch.testing.assert_close(UpSample1d().filter, taps, rtol=0, atol=0)
    torch.testing.assert_close(DownSample1d().lowpass.filter, taps, rtol=0, atol=0)


def test_upsample_equals_transposed_conv_with_loaded_filter():
    up = UpSample1d()
    with torch.no_grad():
        up.filter.copy_(torch.rand(1, 1, ALIAS_KERNEL))
    x = torch.randn(2, 3, 17)
    pad = ALIAS_KERNEL // 2 - 1
    crop = pad * 2 + (ALIAS_KERNEL - 2) // 2
    xp = F.pad(x, (pad, pad), mode="replicate")
    ref = 2 * F.conv_transpose1d(xp, up.filter.expand(3, -1, -1), stride=2, groups=3)
    ref = ref[..., crop:-crop]
    out = up(x)
    assert out.shape == (2, 3, 34)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_downsample_is_strided_lowpass_with_loaded_filter():
    down = DownSample1d()
    with torch.no_grad():
        down.lowpass.filter.copy_(torch.rand(1, 1, ALIAS_KERNEL))
    x = torch.randn(2, 3, 34)
    xp = F.pad(x, (ALIAS_KERNEL // 2 - 1, ALIAS_KERNEL // 2), mode="replicate")
    ref = F.conv1d(xp, down.lowpass.filter.expand(3, -1, -1), stride=2, groups=3)
    out = down(x)
    assert out.shape == (2, 3, 17)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("frames", [1, 5])
def test_tiny_vocoder_output_length_is_frames_times_upsample(frames):
    model = BigVGAN(TINY).eval()
    with torch.no_grad():
        wave = model(torch.randn(2, TINY.num_mels, frames))
    assert wave.shape == (2, 1, frames * TINY.total_upsample)
    assert wave.abs().max() < 1.0  # tanh


def test_tiny_v2_style_output_is_clamped_without_bias():
    cfg = replace(TINY, use_tanh_at_final=False, use_bias_at_final=False)
    model = BigVGAN(cfg).eval()
    assert model.conv_post.bias is None
    with torch.no_grad():
        model.conv_post.parametrizations.weight.original0.fill_(1e3)  # force saturation
        wave = model(torch.randn(1, TINY.num_mels, 3))
    assert wave.abs().max() == 1.0


def test_remove_weight_norm_keeps_output_and_is_idempotent():
    model = BigVGAN(TINY).eval()
    mel = torch.randn(1, TINY.num_mels, 4)
    with torch.no_grad():
        before = model(mel)
        model.remove_weight_norm().remove_weight_norm()
        after = model(mel)
    assert model.weight_norm_folded
    torch.testing.assert_close(after, before, atol=1e-6, rtol=0)


def test_unbatched_mel_is_accepted_and_wrong_bands_rejected():
    model = BigVGAN(TINY).eval()
    with torch.no_grad():
        assert model(torch.randn(TINY.num_mels, 2)).shape == (1, 1, 2 * TINY.total_upsample)
        with pytest.raises(ValueError, match=r"\(B, 80, frames\)"):
            model(torch.randn(1, 128, 2))
