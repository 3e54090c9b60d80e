"""Sync figures that need no downloaded weights: does the sound follow the picture?

Two families, both on mono float waveforms, deterministic, numpy/scipy on the CPU:

* **Against the reference clip's audio** (:func:`envelope_sync`). Both signals are band-passed
  to ``SYNC_BAND_HZ`` (1-6 kHz, 4th-order Butterworth run forwards and backwards, so zero phase;
  the upper edge is kept below the Nyquist frequency), then reduced to an RMS envelope of
  ``SYNC_FRAME_S`` (20 ms) frames. ``corr_lag0`` is the Pearson correlation of the two
  envelopes; ``best_lag_ms`` is the shift within ``±SYNC_MAX_LAG_S`` (0.5 s) that maximises it
  and ``corr_best`` the correlation there. Positive lag: the render's events come *later* than
  the reference's. A high ``corr_best`` with a large lag is a constant offset; a low one at
  every lag is missing timing. Limits: the band ignores low-frequency events (thuds under
  1 kHz); steady sounds (a hum, wind) have flat envelopes and give low or undefined figures
  whatever the timing; the envelope resolves 20 ms.
* **Without reference audio** (:func:`motion_sync`), for renders of new videos: the render's
  onset envelope (half-wave rectified frame-to-frame rise of the band envelope) against the
  picture's motion energy (mean absolute difference of consecutive grey frames, brought to the
  envelope's frame rate by linear interpolation), same lag search. Limits: motion energy sees
  things that appear, vanish or move, not a change of direction at constant speed (a ball
  bouncing off a wall); camera motion and cuts dominate it; sounds of things off screen are
  invisible to it. Read it as "does the sound start when the picture changes", not as an
  offset in the DeSync sense.

A correlation is ``nan`` where either envelope is constant (silence, a pure tone): there is
no timing to compare. DeSync (``selva_core.evaluation.desync``) answers "how far off" with
the Synchformer's offset classifier when its weights are there; these figures answer "does the
sound follow the picture at all" without them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy.signal import butter, sosfiltfilt

SYNC_BAND_HZ = (1000.0, 6000.0)
SYNC_FRAME_S = 0.02
SYNC_MAX_LAG_S = 0.5
_FILTER_ORDER = 4
#: Key prefixes of the two families in metric tables (``env_corr_lag0``, ``motion_best_lag_ms``).
ENVELOPE_PREFIX = "env_"
MOTION_PREFIX = "motion_"


@dataclass(frozen=True)
class SyncFigures:
    """Correlation at lag 0, the best lag within the search window and the correlation there."""

    corr_lag0: float
    best_lag_ms: float
    corr_best: float

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}{k}": v for k, v in asdict(self).items()}


def _mono(wave: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(wave, torch.Tensor):
        wave = wave.detach().to("cpu", torch.float64).numpy()
    x = np.asarray(wave, dtype=np.float64)
    if x.ndim == 2:  # (channels, samples)
        x = x.mean(axis=0)
    if x.ndim != 1:
        raise ValueError(f"expected a (samples,) or (channels, samples) waveform, got {x.shape}")
    return x


def band_envelope(
    wave: np.ndarray | torch.Tensor,
    sample_rate: int,
    *,
    band_hz: tuple[float, float] = SYNC_BAND_HZ,
    frame_s: float = SYNC_FRAME_S,
) -> np.ndarray:
    """RMS per ``frame_s`` frame of the waveform band-passed to ``band_hz`` (zero phase)."""
    x = _mono(wave)
    hop = max(1, round(frame_s * sample_rate))
    n_frames = len(x) // hop
    if n_frames == 0:
        return np.zeros(0)
    nyquist = sample_rate / 2.0
    low, high = band_hz[0], min(band_hz[1], 0.95 * nyquist)
    if not 0 < low < high:
        raise ValueError(f"sync band {band_hz} Hz does not fit a {sample_rate} Hz signal")
    sos = butter(_FILTER_ORDER, [low, high], btype="bandpass", fs=sample_rate, output="sos")
    # sosfiltfilt pads by reflection; very short signals need a shorter pad.
    pad = min(3 * (2 * len(sos) + 1), len(x) - 1)
    y = sosfiltfilt(sos, x, padlen=max(pad, 0)) if len(x) > 1 else x
    frames = y[: n_frames * hop].reshape(n_frames, hop)
    return np.sqrt(np.mean(frames * frames, axis=1))


def onset_envelope(envelope: np.ndarray) -> np.ndarray:
    """Half-wave rectified rise of an envelope, frame to frame (first frame 0)."""
    env = np.asarray(envelope, dtype=np.float64)
    if len(env) == 0:
        return env
    return np.maximum(np.diff(env, prepend=env[:1]), 0.0)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2:
        return math.nan
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float(np.dot(a, a)) * float(np.dot(b, b)))
    # A constant sequence has no timing; relative floor so float noise on silence counts as flat.
    if den <= 1e-24:
        return math.nan
    return float(np.dot(a, b) / den)


def lagged_correlation(
    moving: np.ndarray, fixed: np.ndarray, *, frame_s: float = SYNC_FRAME_S,
    max_lag_s: float = SYNC_MAX_LAG_S,
) -> SyncFigures:
    """Pearson correlation of two frame sequences at lag 0 and at the best lag within the window.

    ``best_lag_ms > 0`` means ``moving``'s events come later than ``fixed``'s. Both are cut to
    the shorter length first; each lag compares only the overlapping frames. Ties go to the
    smallest absolute lag.
    """
    n = min(len(moving), len(fixed))
    m, f = np.asarray(moving[:n], np.float64), np.asarray(fixed[:n], np.float64)
    lag0 = _pearson(m, f)
    max_lag = min(int(round(max_lag_s / frame_s)), max(n - 2, 0))
    best, best_lag = -math.inf, 0
    for k in sorted(range(-max_lag, max_lag + 1), key=abs):
        c = _pearson(m[k:], f[: n - k]) if k >= 0 else _pearson(m[: n + k], f[-k:])
        if not math.isnan(c) and c > best + 1e-12:
            best, best_lag = c, k
    if best == -math.inf:
        return SyncFigures(lag0, math.nan, math.nan)
    return SyncFigures(lag0, best_lag * frame_s * 1000.0, best)


def envelope_sync(
    render: np.ndarray | torch.Tensor, reference: np.ndarray | torch.Tensor, sample_rate: int,
) -> SyncFigures:
    """How well the render's loudness envelope follows the reference audio's (1-6 kHz, 20 ms)."""
    return lagged_correlation(
        band_envelope(render, sample_rate), band_envelope(reference, sample_rate)
    )


def motion_energy(frames: np.ndarray | torch.Tensor) -> np.ndarray:
    """Mean absolute difference of consecutive grey frames, one value per frame (first 0).

    ``frames``: ``(T, H, W, C)`` or ``(T, C, H, W)`` with C in {1, 3}, any numeric range (the
    figures are correlations, so the scale does not matter).
    """
    x = frames.detach().to("cpu", torch.float64).numpy() if isinstance(frames, torch.Tensor) \
        else np.asarray(frames, dtype=np.float64)
    if x.ndim != 4:
        raise ValueError(f"expected frames of shape (T, H, W, C) or (T, C, H, W), got {x.shape}")
    grey = x.mean(axis=1) if x.shape[1] in (1, 3) and x.shape[-1] not in (1, 3) else x.mean(axis=-1)
    if len(grey) < 2:
        return np.zeros(len(grey))
    diff = np.abs(np.diff(grey, axis=0)).mean(axis=(1, 2))
    return np.concatenate([[0.0], diff])


def motion_sync(
    render: np.ndarray | torch.Tensor, sample_rate: int,
    frames: np.ndarray | torch.Tensor, fps: float,
) -> SyncFigures:
    """How well the render's sound onsets follow the picture's motion energy (no reference)."""
    return motion_energy_sync(render, sample_rate, motion_energy(frames), fps)


def motion_energy_sync(
    render: np.ndarray | torch.Tensor, sample_rate: int, motion: np.ndarray, fps: float,
) -> SyncFigures:
    """:func:`motion_sync` from a motion energy already computed (one value per frame at
    ``fps``), so a clip decoded once serves every render of it."""
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    onsets = onset_envelope(band_envelope(render, sample_rate))
    motion = np.asarray(motion, dtype=np.float64)
    if len(motion) == 0:
        return lagged_correlation(onsets, np.zeros(len(onsets)))
    frame_times = np.arange(len(motion)) / float(fps)
    env_times = (np.arange(len(onsets)) + 0.5) * SYNC_FRAME_S
    return lagged_correlation(onsets, np.interp(env_times, frame_times, motion))
