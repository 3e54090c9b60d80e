"""The weight-free sync figures: envelope correlation, best lag, motion against onsets."""

import math

import numpy as np
import pytest

from selva_core.audio.sync import (
    SYNC_FRAME_S,
    band_envelope,
    envelope_sync,
    motion_energy,
    motion_sync,
)

SR = 16000


def clicks(times_s, duration=2.0, sr=SR, seed=0):
    """Short 3 kHz tone bursts at the given times over faint noise."""
    rng = np.random.default_rng(seed)
    x = 1e-3 * rng.standard_normal(int(duration * sr))
    t = np.arange(int(0.03 * sr)) / sr
    burst = np.sin(2 * np.pi * 3000 * t) * np.hanning(len(t))
    for s in times_s:
        i = int(s * sr)
        x[i:i + len(burst)] += burst[: len(x) - i]
    return x


def test_identical_audio_correlates_fully_at_lag_zero():
    a = clicks([0.2, 0.9, 1.5])
    fig = envelope_sync(a, a, SR)
    assert fig.corr_lag0 == pytest.approx(1.0)
    assert fig.best_lag_ms == 0.0


def test_a_constant_offset_is_found_as_the_best_lag_with_its_sign():
    ref = clicks([0.2, 0.9, 1.5])
    late = clicks([0.3, 1.0, 1.6], seed=1)  # 100 ms later
    fig = envelope_sync(late, ref, SR)
    assert fig.corr_lag0 < 0.3
    assert fig.best_lag_ms == pytest.approx(100.0, abs=SYNC_FRAME_S * 1000)
    assert fig.corr_best > 0.8


def test_events_at_other_moments_correlate_poorly_at_every_lag():
    ref = clicks([0.2, 0.9, 1.5])
    other = clicks([0.45, 1.2, 1.85], seed=2)
    fig = envelope_sync(other, ref, SR)
    assert fig.corr_lag0 < 0.2


def test_sound_below_the_band_is_not_counted():
    t = np.arange(2 * SR) / SR
    thud = np.sin(2 * np.pi * 200 * t) * (t > 1.0)
    env = band_envelope(thud, SR)
    assert env.max() < 0.01 * np.abs(thud).max()


def test_silence_gives_an_undefined_correlation_not_a_number_that_looks_real():
    fig = envelope_sync(np.zeros(2 * SR), clicks([0.5]), SR)
    assert math.isnan(fig.corr_lag0) and math.isnan(fig.corr_best)


def test_motion_energy_peaks_where_the_picture_changes():
    frames = np.zeros((50, 16, 16, 3))
    frames[20:30, 4:12, 4:12] = 255  # a square appears at frame 20, vanishes at 30
    energy = motion_energy(frames)
    assert set(np.flatnonzero(energy)) == {20, 30}
    assert np.allclose(motion_energy(frames.transpose(0, 3, 1, 2)), energy)


def test_onsets_at_picture_changes_follow_the_motion_and_others_do_not():
    fps = 25
    frames = np.zeros((50, 16, 16, 3))
    for k, on in enumerate((5, 20, 35)):  # a new square appears and stays: one change each
        frames[on:, 4 * k:4 * k + 4, 4:12] = 255
    onsets_at_flashes = clicks([5 / fps, 20 / fps, 35 / fps])
    elsewhere = clicks([0.5, 1.1, 1.7], seed=3)
    good = motion_sync(onsets_at_flashes, SR, frames, fps)
    bad = motion_sync(elsewhere, SR, frames, fps)
    assert good.corr_lag0 > 0.4
    assert abs(good.best_lag_ms) <= 40
    assert good.corr_lag0 > bad.corr_lag0 + 0.3
