"""The one WAV writer: 16-bit PCM, mono or stereo, clipped, nothing half-written."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from selva_core.audio.wav import write_wav


def test_a_stereo_tensor_is_written_clipped_as_16_bit_pcm(tmp_path):
    wave = torch.stack([torch.full((800,), 2.0), torch.full((800,), -0.5)])
    path = write_wav(tmp_path / "s.wav", wave, 16000)
    audio, rate = sf.read(path, always_2d=True)
    assert rate == 16000 and audio.shape == (800, 2)
    assert sf.info(path).subtype == "PCM_16"
    assert np.allclose(audio[:, 0], 32767 / 32768) and np.allclose(audio[:, 1], -0.5)


@pytest.mark.parametrize("wave, words", [
    (np.zeros((3, 100), np.float32), "1 or 2 channels"),
    (np.array([0.0, np.nan], np.float32), "NaN or infinite"),
])
def test_an_unwritable_waveform_is_refused_and_an_existing_file_kept(tmp_path, wave, words):
    path = tmp_path / "keep.wav"
    path.write_bytes(b"earlier")
    with pytest.raises(ValueError, match=words):
        write_wav(path, wave, 16000)
    assert path.read_bytes() == b"earlier"
