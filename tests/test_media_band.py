"""Checks on what the model hears: silence after resampling is a bad clip, sound mostly above
the model's band is warned about."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import soundfile as sf

from selva_core.data import BadClipError
from selva_core.data.audio import load_mono

SOURCE_SR = 48000
MODEL_SR = 16000


def tones(*parts: tuple[float, float], sr: int = SOURCE_SR) -> np.ndarray:
    """Sines faded in and out over 20 ms, as recorded sound would (an abrupt full-scale start
    is a click, which is in band)."""
    t = np.arange(2 * sr) / sr
    x = sum(a * np.sin(2 * np.pi * f * t) for f, a in parts)
    fade = np.hanning(2 * round(0.02 * sr))
    half = fade.shape[0] // 2
    x[:half] *= fade[:half]
    x[-half:] *= fade[half:]
    return x.astype(np.float32)


def band_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "beyond what the" in r.getMessage()]


@pytest.mark.parametrize("fade", ["hann", "linear"])
def test_sound_entirely_above_the_band_is_silent_to_the_model(tmp_path, fade):
    x = tones((12000.0, 0.5))
    if fade == "linear":  # its corners leak a trace (about -107 dB) into the band
        t = np.arange(x.shape[0]) / SOURCE_SR
        x = (0.5 * np.sin(2 * np.pi * 12000.0 * t)
             * np.minimum(1, np.minimum(t, t[::-1]) / 0.02)).astype(np.float32)
    sf.write(tmp_path / "whistle.wav", x, SOURCE_SR, subtype="FLOAT")
    with pytest.raises(BadClipError, match="whistle.wav: the audio is silent after resampling "
                                           "to 16000 Hz: its sound lies above 8000 Hz"):
        load_mono(tmp_path / "whistle.wav", MODEL_SR)


def test_sound_mostly_above_the_band_is_warned_about_with_its_loss(tmp_path, caplog):
    # an 8.2 kHz alarm with a faint in-band hum: about -30 dB after resampling
    sf.write(tmp_path / "alarm.wav", tones((8200.0, 0.5), (1000.0, 0.016)), SOURCE_SR,
             subtype="FLOAT")
    with caplog.at_level(logging.WARNING):
        wave = load_mono(tmp_path / "alarm.wav", MODEL_SR)
    (message,) = band_warnings(caplog)
    assert "alarm.wav: most of its sound lies above 8000 Hz" in message
    assert "30 dB quieter" in message
    assert np.abs(wave).max() == pytest.approx(0.016, rel=0.1)


@pytest.mark.parametrize("sr, parts", [(SOURCE_SR, ((440.0, 0.3), (9000.0, 0.2))),
                                       (MODEL_SR, ((7000.0, 0.3),))])
def test_in_band_sound_gives_no_warning(tmp_path, caplog, sr, parts):
    sf.write(tmp_path / "ok.wav", tones(*parts, sr=sr), sr, subtype="FLOAT")
    with caplog.at_level(logging.WARNING):
        load_mono(tmp_path / "ok.wav", MODEL_SR)
    assert band_warnings(caplog) == []
