"""THE WAV writer: 16-bit PCM, mono or stereo, clipped to [-1, 1], written atomically.

Every WAV the package writes (renders, training samples, the demo's listening files, the
synthetic dataset, references) goes through :func:`write_wav`; it sits in ``audio`` so the data
layer can use it too (``media``, which muxes onto video, reads clips through ``data``).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from selva_core.atomic import atomic_path

MAX_CHANNELS = 2


def channels_first(wave: torch.Tensor | np.ndarray) -> np.ndarray:
    """(samples,), (1, samples) or (channels, samples) float -> float32 (channels, samples)."""
    if isinstance(wave, torch.Tensor):
        wave = wave.detach().float().cpu().numpy()
    audio = np.asarray(wave, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None]
    if audio.ndim != 2 or not 1 <= audio.shape[0] <= MAX_CHANNELS or audio.shape[1] == 0:
        raise ValueError(
            f"a waveform must be (samples,) or (channels, samples) with 1 or 2 channels, got "
            f"shape {tuple(audio.shape)}"
        )
    if not np.isfinite(audio).all():
        raise ValueError("the waveform holds NaN or infinite samples")
    return np.clip(audio, -1.0, 1.0)


def write_wav(path: str | os.PathLike, wave: torch.Tensor | np.ndarray, sample_rate: int
              ) -> Path:
    """16-bit PCM WAV of ``wave`` ((samples,) or (channels, samples), clipped to [-1, 1])."""
    audio = channels_first(wave)
    path = Path(path)
    # Encoded in memory, then written as bytes: libsndfile reports a full disk without its
    # errno, a plain write raises the OSError that names the space problem.
    buffer = io.BytesIO()
    sf.write(buffer, audio.T, int(sample_rate), subtype="PCM_16", format="WAV")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(buffer.getvalue())
    return path


__all__ = ["MAX_CHANNELS", "channels_first", "write_wav"]
