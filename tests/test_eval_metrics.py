"""No-download evaluation metrics against values worked out by hand on synthetic signals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from selva_core.audio import metrics as M

SR = 16000


def sine(freq: float, seconds: float = 2.0, sr: int = SR, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return amp * np.sin(2 * np.pi * freq * t)


def noise(seconds: float = 4.0, seed: int = 0, sr: int = SR) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(int(seconds * sr)) * 0.1


def test_centroid_of_a_1khz_sine_is_1khz():
    # 1 kHz is bin 128 exactly (16000 / 2048 = 7.8125 Hz per bin); Hann leakage is symmetric.
    assert M.spectral_metrics(sine(1000.0), SR)["spectral_centroid_hz"] == pytest.approx(
        1000.0, abs=0.5)


def test_rolloff_of_a_bin_centred_sine_is_the_bin_above():
    # Hann main lobe: power 1 at bin 128 and 1/4 at bins 127 and 129, so the cumulative share
    # is 1/6 after 127, 5/6 = 0.833 after 128 (< 0.85) and 1 after 129.
    assert M.spectral_metrics(sine(1000.0), SR)["spectral_rolloff_hz"] == pytest.approx(
        129 * SR / 2048)


def test_flatness_of_white_noise_is_near_one_and_of_a_sine_near_zero():
    assert M.spectral_metrics(noise(), SR)["spectral_flatness"] > 0.98
    assert M.spectral_metrics(sine(1000.0), SR)["spectral_flatness"] < 1e-3


def test_hf_cut_is_the_same_fraction_of_the_band_for_every_rate():
    assert M.hf_cut_hz(44100) == pytest.approx(4000.0)
    assert M.hf_cut_hz(16000) == pytest.approx(4000.0 * 16000 / 44100)  # 1451 Hz
    # 1 kHz lies below the 16 kHz cut, 3 kHz above it (the fixed 4 kHz cut would call both low)
    assert M.spectral_metrics(sine(1000.0), SR)["hf_energy_ratio"] < 1e-6
    assert M.spectral_metrics(sine(3000.0), SR)["hf_energy_ratio"] > 1 - 1e-6


def test_hf_ratio_of_white_noise_is_the_share_of_bins_above_the_cut():
    freqs = np.fft.rfftfreq(2048, 1 / SR)
    expected = (freqs >= M.hf_cut_hz(SR)).mean()  # a flat spectrum: share of bins
    assert M.spectral_metrics(noise(8.0), SR)["hf_energy_ratio"] == pytest.approx(
        expected, abs=0.01)


def test_temporal_variance_of_a_steady_sine_is_zero_and_of_a_step_one_third():
    assert M.spectral_metrics(sine(1000.0), SR)["temporal_variance"] < 1e-3
    # RMS a for half the frames and 2a for the other half: mean 1.5a, std 0.5a -> CV 1/3
    x = np.ones(8 * SR)
    x[4 * SR:] = 2.0
    assert M.spectral_metrics(x, SR)["temporal_variance"] == pytest.approx(1 / 3, abs=0.01)


def test_spectral_metrics_ignore_the_level():
    a, b = M.spectral_metrics(noise(), SR), M.spectral_metrics(10 * noise(), SR)
    for key in M.SPECTRAL_KEYS:
        assert a[key] == pytest.approx(b[key], rel=1e-9)


def test_silence_gives_nan_spectral_metrics_not_an_error():
    out = M.spectral_metrics(np.zeros(SR), SR)
    assert all(math.isnan(out[k]) for k in M.SPECTRAL_KEYS)


def test_lsd_and_mcd_of_a_signal_with_itself_are_zero():
    x = noise() + sine(440.0, 4.0)
    assert M.log_spectral_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    assert M.mel_cepstral_distance(x, x, SR) == pytest.approx(0.0, abs=1e-9)


def test_lsd_and_mcd_ignore_a_gain_but_not_a_different_sound():
    x = noise()
    assert M.log_spectral_distance(3 * x, x) == pytest.approx(0.0, abs=1e-6)
    assert M.mel_cepstral_distance(3 * x, x, SR) == pytest.approx(0.0, abs=1e-6)
    y = sine(440.0, 4.0)
    assert M.log_spectral_distance(y, x) > 10.0
    assert M.mel_cepstral_distance(y, x, SR) > 1.0


def test_lsd_of_a_uniform_6db_tilt_is_6db():
    # Spectral shaping by a known gain in half the band: power differs by 20*log10(2) dB there
    x = noise(4.0)
    spec = np.fft.rfft(x)
    freqs = np.fft.rfftfreq(x.shape[0], 1 / SR)
    shaped = np.fft.irfft(spec * np.where(freqs >= 4000, 2.0, 1.0), n=x.shape[0])
    a, b = shaped, x  # render, reference
    # after RMS alignment the low half is scaled by g = sqrt(2/5) and the high by 2g
    g2 = 10 * math.log10(2 / 5.0)
    expected = math.sqrt(0.5 * g2**2 + 0.5 * (g2 + 20 * math.log10(2)) ** 2)
    assert M.log_spectral_distance(a, b) == pytest.approx(expected, abs=0.3)


def test_mel_filterbank_equals_librosa_htk_without_norm():
    librosa = pytest.importorskip("librosa")
    ours = M.mel_filterbank(16000, 1024, 128)
    theirs = librosa.filters.mel(sr=16000, n_fft=1024, n_mels=128, htk=True, norm=None).T
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_mel_cepstrum_uses_the_orthonormal_dct():
    scipy_fft = pytest.importorskip("scipy.fft")
    x = np.random.default_rng(1).standard_normal((5, 40))
    np.testing.assert_allclose(M._dct_ortho(x), scipy_fft.dct(x, norm="ortho", axis=-1),
                               atol=1e-10)


def test_render_metrics_adds_reference_and_drift_only_when_given():
    x = noise()
    assert set(M.render_metrics(x, SR)) == set(M.SPECTRAL_KEYS)
    full = M.render_metrics(x, SR, reference=x, baseline=2 * x)
    assert full["lsd_db"] == pytest.approx(0.0, abs=1e-9)
    assert full["drift_lsd_db"] == pytest.approx(0.0, abs=1e-6)


def test_mean_metrics_skips_missing_and_nan_values():
    rows = [{"lsd_db": 1.0, "x": float("nan")}, {"lsd_db": 3.0}, {}]
    assert M.mean_metrics(rows) == {"lsd_db": 2.0}


def test_a_nan_waveform_is_one_clear_error():
    with pytest.raises(ValueError, match="NaN"):
        M.spectral_metrics(np.array([0.0, np.nan] * 2000), SR)
