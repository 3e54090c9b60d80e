"""The VAE round trip: what the model can represent of a clip's sound.

The clip's audio (mono, at the variant's rate) goes through the VAE encoder (posterior mean),
the VAE decoder and the vocoder (:meth:`SelvaPipeline.encode_audio`, :meth:`SelvaPipeline.decode`),
and the log-spectral distance of the result to the original
(:func:`selva_core.audio.metrics.log_spectral_distance`) is the ceiling of what any adapter
can reach on that clip: the generator only ever produces latents, so sound the VAE and vocoder
cannot reproduce is out of reach. Long clips go through in one piece (the VAE is
convolutional); the result is cut to the input's length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from selva_core.audio.metrics import log_spectral_distance
from selva_core.data.audio import resample


@dataclass(frozen=True)
class RoundTrip:
    """The reconstructed audio (mono float32 at ``sample_rate``) and its LSD in dB."""

    audio: np.ndarray
    sample_rate: int
    lsd_db: float


@torch.no_grad()
def round_trip(pipeline, audio: np.ndarray | torch.Tensor, sample_rate: int) -> RoundTrip:
    """``audio`` ((samples,) or (channels, samples), any rate) through ``pipeline``'s VAE and
    vocoder; the distance is measured at the model's rate against the resampled input."""
    wave = audio.detach().float().cpu().numpy() if isinstance(audio, torch.Tensor) else \
        np.asarray(audio, dtype=np.float32)
    mono = wave if wave.ndim == 1 else wave.mean(axis=0)
    rate = pipeline.sample_rate
    ref = resample(mono, int(sample_rate), rate)
    moments = pipeline.encode_audio(ref, rate)
    out = pipeline.decode(moments.mean)[0, : ref.shape[0]].float().cpu().numpy()
    lsd = log_spectral_distance(out, ref) if out.shape[0] else float("nan")
    return RoundTrip(out.astype(np.float32), rate, lsd)
