"""MelVAE: golden posteriors/decodes, manifests, the load-time renormalisation contract,
encoder dropping and the tiny configuration."""

from __future__ import annotations

import json
import math

import pytest
import torch

from selva_core.model.vae import DiagonalGaussian, MelVAE, MPConv1d
from selva_core.variants import VAE_16K, VAE_44K, get_variant
from tests.conftest import GOLDEN_DIR, REFERENCE_DIR
from tests.golden import load_case, manifest_shapes, max_error, seeded_state_dict

CASES = {"vae_16k": VAE_16K, "vae_44k": VAE_44K}
TINY = get_variant("tiny_16k").vae


def _meta_model(cfg) -> MelVAE:
    with torch.device("meta"):
        return MelVAE(cfg)


@pytest.fixture(scope="module",
                params=[pytest.param(n, marks=pytest.mark.slow) for n in sorted(CASES)])
def golden_model(request):
    """Full-size VAE with the raw seeded weights loaded strictly and renormalised once."""
    case = load_case(GOLDEN_DIR / f"{request.param}.json")
    # fingerprint skipped for speed (`python -m tests.golden` checks it)
    raw = seeded_state_dict(case, check_fingerprint=False)
    model = _meta_model(CASES[case.name])
    model.load_state_dict(raw, strict=True, assign=True)
    model.normalize_weights_()
    return case, model.eval()


def test_golden_posterior_matches(golden_model):
    case, model = golden_model
    with torch.no_grad():
        post = model.encode(case.tensors["input.mel"])
    for name, value in (("mean", post.mean), ("logvar", post.logvar), ("std", post.std)):
        key = f"output.posterior_{name}"
        err = max_error(value, case.tensors[key])
        assert err <= case.tolerance(key), (key, err)


def test_golden_decoded_mel_matches(golden_model):
    case, model = golden_model
    with torch.no_grad():
        mel = model.decode(case.tensors["input.z"])
    err = max_error(mel, case.tensors["output.decoded_mel"])
    assert err <= case.tolerance("output.decoded_mel"), err


@pytest.mark.parametrize("name", sorted(CASES))
def test_meta_built_state_dict_equals_manifest(name):
    path = REFERENCE_DIR / f"{name}.json"
    manifest, expected = json.loads(path.read_text()), manifest_shapes(path)
    model = _meta_model(CASES[name])
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert got == expected
    assert sum(p.numel() for p in model.parameters()) == manifest["param_count"]


def test_renormalisation_follows_the_load_time_formula():
    model = MelVAE(TINY)
    raw = {k: torch.randn_like(v) if k.endswith(".weight") else v
           for k, v in model.state_dict().items()}
    model.load_state_dict(raw, strict=True)
    assert not model.weights_normalized
    model.normalize_weights_()
    w_raw = raw["decoder.conv_in.weight"]
    fan_in = w_raw.shape[1] * w_raw.shape[2]
    norm = torch.linalg.vector_norm(w_raw, dim=(1, 2), keepdim=True)
    expected = w_raw / (1e-4 * math.sqrt(fan_in) + norm)
    torch.testing.assert_close(model.decoder.conv_in.weight, expected, rtol=1e-6, atol=0)


def test_loaded_raw_weights_must_be_normalised_before_use():
    model = MelVAE(TINY)
    model.load_state_dict(model.state_dict(), strict=True)
    with pytest.raises(RuntimeError, match="normalize_weights_"):
        model.decode(torch.zeros(1, TINY.embed_dim, 4))


def test_second_normalisation_is_a_no_op():
    model = MelVAE(TINY).normalize_weights_()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.normalize_weights_()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_fresh_model_normalises_itself_on_first_use():
    model = MelVAE(TINY).eval()
    assert not model.weights_normalized
    with torch.no_grad():
        model.decode(torch.zeros(1, TINY.embed_dim, 2))
    assert model.weights_normalized
    for module in model.modules():
        if isinstance(module, MPConv1d):
            norms = torch.linalg.vector_norm(module.weight, dim=(1, 2))
            assert torch.all((norms > 0.99) & (norms <= 1.0))


def test_tiny_vae_halves_time_and_restores_it():
    model = MelVAE(TINY).eval()
    mel = torch.randn(2, TINY.data_dim, 12) - 3
    with torch.no_grad():
        post = model.encode(mel)
        assert isinstance(post, DiagonalGaussian)
        assert post.mean.shape == post.logvar.shape == (2, TINY.embed_dim, 6)
        rec = model.decode(post.mean)
    assert rec.shape == mel.shape
    torch.testing.assert_close(post.std, torch.exp(0.5 * post.logvar))


def test_logvar_is_clamped_to_config_range():
    model = MelVAE(TINY).eval()
    with torch.no_grad():
        model.encoder.learnable_gain.fill_(1e4)  # blow the moments up
        post = model.encode(torch.randn(1, TINY.data_dim, 8))
    lo, hi = TINY.logvar_clamp
    assert post.logvar.min() >= lo and post.logvar.max() <= hi
    assert post.logvar.min() == lo or post.logvar.max() == hi  # the clamp was exercised


def test_posterior_sample_is_reproducible_with_a_generator():
    mean, logvar = torch.zeros(1, 4, 3), torch.full((1, 4, 3), math.log(4.0))
    post = DiagonalGaussian(mean, logvar)
    a = post.sample(torch.Generator().manual_seed(3))
    b = post.sample(torch.Generator().manual_seed(3))
    noise = torch.randn(1, 4, 3, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, 2.0 * noise)
    assert post.mode() is mean


def test_data_statistics_are_persistent_and_applied():
    model = MelVAE(TINY).eval()
    assert {"data_mean", "data_std"} <= set(model.state_dict())
    z = torch.randn(1, TINY.embed_dim, 3)
    with torch.no_grad():
        base = model.decode(z)
        model.data_std.fill_(2.0)
        model.data_mean.fill_(-1.0)
        shifted = model.decode(z)
    torch.testing.assert_close(shifted, 2.0 * base - 1.0, atol=1e-5, rtol=1e-5)


def test_drop_encoder_keeps_decoding_and_removes_encoder_keys():
    model = MelVAE(TINY).eval().drop_encoder()
    assert not any(k.startswith("encoder.") for k in model.state_dict())
    with torch.no_grad():
        assert model.decode(torch.randn(1, TINY.embed_dim, 5)).shape == (1, TINY.data_dim, 10)
    with pytest.raises(RuntimeError, match="encoder was dropped"):
        model.encode(torch.randn(1, TINY.data_dim, 10))


@pytest.mark.parametrize(
    ("call", "shape", "match"),
    [
        ("encode", (1, TINY.data_dim, 7), "divisible by 2"),
        ("encode", (1, 5, 8), "n_mels=80"),
        ("decode", (1, 4, TINY.embed_dim), "must be transposed"),
    ],
)
def test_bad_shapes_raise_value_error(call, shape, match):
    model = MelVAE(TINY).eval()
    with pytest.raises(ValueError, match=match):
        getattr(model, call)(torch.randn(*shape))
