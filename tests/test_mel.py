"""MelConverter: golden log-mels, filterbank, frame counts and input handling."""

from __future__ import annotations

import pytest
import torch

from selva_core.audio.mel import MelConverter
from selva_core.variants import MEL_16K, MEL_44K
from tests.conftest import GOLDEN_DIR
from tests.golden import load_case, max_error

CASES = {"mel_16k": MEL_16K, "mel_44k": MEL_44K}


@pytest.mark.parametrize("name", sorted(CASES))
def test_log_mel_matches_golden(name):
    case = load_case(GOLDEN_DIR / f"{name}.json")
    mel = MelConverter(CASES[name])
    out = mel(case.tensors["input.waveform"])
    err = max_error(out, case.tensors["output.log_mel"])
    assert err <= case.tolerance("output.log_mel"), err


@pytest.mark.parametrize("name", sorted(CASES))
def test_mel_basis_matches_golden_filterbank(name):
    case = load_case(GOLDEN_DIR / f"{name}.json")
    mel = MelConverter(CASES[name])
    err = max_error(mel.mel_basis, case.tensors["aux.mel_basis"])
    assert err <= case.tolerance("aux.mel_basis"), err


@pytest.mark.parametrize("cfg", [MEL_16K, MEL_44K], ids=["16k", "44k"])
def test_frame_count_is_samples_over_hop(cfg):
    mel = MelConverter(cfg)
    for frames in (2, 7, 20):
        wave = 0.1 * torch.randn(2, frames * cfg.hop_size)
        out = mel(wave)
        assert out.shape == (2, cfg.n_mels, frames)
        assert mel.num_frames(wave.shape[-1]) == frames


def test_unbatched_waveform_gives_batch_of_one():
    mel = MelConverter(MEL_16K)
    wave = 0.1 * torch.randn(4096)
    out = mel(wave)
    assert out.shape == (1, 80, 16)
    torch.testing.assert_close(out, mel(wave.unsqueeze(0)), rtol=0, atol=0)


def test_waveform_is_clamped_before_the_stft():
    mel = MelConverter(MEL_16K)
    wave = 3.0 * torch.randn(1, 4096)
    torch.testing.assert_close(mel(wave), mel(wave.clamp(-1, 1)), rtol=0, atol=0)


def test_silence_hits_the_log_floor():
    out16 = MelConverter(MEL_16K)(torch.zeros(1, 2048))
    out44 = MelConverter(MEL_44K)(torch.zeros(1, 2048))
    assert torch.allclose(out16, torch.full_like(out16, -5.0))  # log10(1e-5)
    assert torch.allclose(out44, torch.full_like(out44, torch.log(torch.tensor(1e-5)).item()))


def test_buffers_are_not_persistent():
    mel = MelConverter(MEL_44K)
    assert mel.state_dict() == {}
    assert mel.mel_basis.shape == (128, 1025)


@pytest.mark.parametrize(
    "wave", [torch.zeros(1, 2, 4096), torch.zeros(1, 100)], ids=["3d", "too_short"]
)
def test_bad_waveform_raises_value_error(wave):
    with pytest.raises(ValueError, match="waveform"):
        MelConverter(MEL_16K)(wave)


@pytest.mark.parametrize("sr,n_fft,n_mels,fmin,fmax", [
    (16000, 1024, 80, 0.0, 8000.0), (44100, 2048, 128, 0.0, None), (22050, 512, 40, 300.0, 7000.0),
])
def test_slaney_filterbank_is_bit_exact_librosa(sr, n_fft, n_mels, fmin, fmax):
    librosa = pytest.importorskip("librosa")
    from dataclasses import replace

    import numpy as np

    from selva_core.audio.mel import slaney_mel_basis

    cfg = replace(MEL_16K, sample_rate=sr, n_fft=n_fft, win_size=n_fft, n_mels=n_mels,
                  fmin=fmin, fmax=fmax)
    theirs = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    assert np.array_equal(slaney_mel_basis(cfg).numpy(), theirs)


def test_mel_front_end_imports_without_librosa():
    import subprocess
    import sys

    code = ("import sys; sys.modules['librosa'] = None; import selva_core.pipeline; "
            "from selva_core.audio.mel import MelConverter; from selva_core.variants import "
            "MEL_44K; MelConverter(MEL_44K)")
    subprocess.run([sys.executable, "-c", code], check=True)
