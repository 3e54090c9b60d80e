"""Loudness (ITU-R BS.1770 via pyloudnorm), block levels, and a gentle compressor/limiter.

Only the prepared copies are processed; nothing here touches a user's file.

* :func:`integrated_lufs`: BS.1770-4 gated integrated loudness (K-weighting, 400 ms blocks,
  -70 LUFS absolute and -10 LU relative gates), ``-inf`` for silence or audio shorter than
  one block.
* :func:`block_levels`: the ungated level of 400 ms blocks every 100 ms (mean square in dB,
  with BS.1770's -0.691 dB offset, no K-weighting) from one cumulative sum, so a long source
  is measured once; :mod:`selva_core.dataset.cutting` finds active windows on it.
* :func:`compress`: a feed-forward RMS compressor (10 ms frames, threshold, ratio, attack and
  release smoothing of the gain) and :func:`limit`: a peak limiter (the gain each 5 ms block
  needs to stay under the ceiling, spread over the block before it and released slowly), both
  vectorised over frames, then a hard clip at the ceiling as a last guard.
* :func:`normalize`: gain to the target loudness; a gain that would push peaks over the
  ceiling is reduced to what fits (logged) unless the limiter is on.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pyloudnorm

log = logging.getLogger(__name__)

BLOCK_S = 0.4  # BS.1770 gating block
BLOCK_STEP_S = 0.1  # 75 % overlap
LEVEL_OFFSET_DB = -0.691  # BS.1770's constant
PEAK_CEILING_DBFS = -1.0  # prepared copies never peak above this
COMP_THRESHOLD_DB = -24.0  # RMS level above which the compressor acts
COMP_RATIO = 2.0  # gentle
COMP_ATTACK_S = 0.01
COMP_RELEASE_S = 0.2
COMP_FRAME_S = 0.01
LIMIT_BLOCK_S = 0.005
LIMIT_RELEASE_S = 0.05


def integrated_lufs(audio: np.ndarray, sample_rate: int) -> float:
    """BS.1770 integrated loudness of mono ``(n,)`` or ``(channels, n)`` audio in LUFS."""
    x = np.asarray(audio, dtype=np.float64)
    x = x.T if x.ndim == 2 else x
    if x.shape[0] < int(BLOCK_S * sample_rate) or not np.any(x):
        return -math.inf
    return float(pyloudnorm.Meter(sample_rate).integrated_loudness(x))


def block_levels(mono: np.ndarray, sample_rate: int) -> np.ndarray:
    """Level (dB, ``-inf`` for digital silence) of each 400 ms block, one every 100 ms."""
    block, step = round(BLOCK_S * sample_rate), round(BLOCK_STEP_S * sample_rate)
    if mono.shape[0] < block:
        return np.zeros(0)
    csum = np.concatenate([[0.0], np.cumsum(np.square(mono, dtype=np.float64))])
    starts = np.arange(0, mono.shape[0] - block + 1, step)
    power = (csum[starts + block] - csum[starts]) / block
    with np.errstate(divide="ignore"):
        return LEVEL_OFFSET_DB + 10.0 * np.log10(power)


def _smooth_gain(gain_db: np.ndarray, frame_s: float, attack_s: float, release_s: float
                 ) -> np.ndarray:
    """One-pole smoothing of a per-frame gain: fast when the gain drops, slow when it rises."""
    a_att = math.exp(-frame_s / attack_s)
    a_rel = math.exp(-frame_s / release_s)
    out = np.empty_like(gain_db)
    g = 0.0
    for i, target in enumerate(gain_db):  # frames, not samples: ~100 per second
        coef = a_att if target < g else a_rel
        g = coef * g + (1.0 - coef) * target
        out[i] = g
    return out


def _per_sample(gain_db: np.ndarray, frame: int, n: int) -> np.ndarray:
    centres = (np.arange(gain_db.shape[0]) + 0.5) * frame
    return 10.0 ** (np.interp(np.arange(n), centres, gain_db) / 20.0)


def compress(mono: np.ndarray, sample_rate: int, *, threshold_db: float = COMP_THRESHOLD_DB,
             ratio: float = COMP_RATIO) -> np.ndarray:
    """Feed-forward RMS compressor: above ``threshold_db`` the level rises 1/``ratio`` as fast."""
    frame = max(1, round(COMP_FRAME_S * sample_rate))
    n = mono.shape[0]
    count = math.ceil(n / frame)
    padded = np.pad(mono.astype(np.float64), (0, count * frame - n))
    rms = np.sqrt(np.mean(padded.reshape(count, frame) ** 2, axis=1))
    with np.errstate(divide="ignore"):
        level = 20.0 * np.log10(np.maximum(rms, 1e-12))
    over = np.maximum(level - threshold_db, 0.0)
    gain_db = _smooth_gain(-over * (1.0 - 1.0 / ratio), COMP_FRAME_S, COMP_ATTACK_S,
                           COMP_RELEASE_S)
    return (mono * _per_sample(gain_db, frame, n)).astype(np.float32)


def limit(mono: np.ndarray, sample_rate: int, ceiling_dbfs: float = PEAK_CEILING_DBFS
          ) -> np.ndarray:
    """Peak limiter: no sample above ``ceiling_dbfs``; the gain falls ahead of each peak."""
    ceiling = 10.0 ** (ceiling_dbfs / 20.0)
    frame = max(1, round(LIMIT_BLOCK_S * sample_rate))
    n = mono.shape[0]
    count = math.ceil(n / frame)
    padded = np.pad(np.abs(mono.astype(np.float64)), (0, count * frame - n))
    peak = padded.reshape(count, frame).max(axis=1)
    need = np.minimum(0.0, 20.0 * np.log10(ceiling / np.maximum(peak, 1e-12)))
    need = np.minimum(need, np.concatenate([need[1:], [0.0]]))  # look one block ahead
    gain_db = _smooth_gain(need, LIMIT_BLOCK_S, 1e-6, LIMIT_RELEASE_S)  # instant attack
    gain_db = np.minimum(gain_db, need)
    out = mono * _per_sample(gain_db, frame, n)
    return np.clip(out, -ceiling, ceiling).astype(np.float32)


def normalize(mono: np.ndarray, sample_rate: int, target_lufs: float, *,
              compressor: bool = False, name: str = "") -> tuple[np.ndarray, float]:
    """``mono`` at ``target_lufs`` (through the compressor and limiter when ``compressor``);
    returns the audio and the loudness it ends at. Silence is returned unchanged."""
    x = compress(mono, sample_rate) if compressor else mono.astype(np.float32)
    measured = integrated_lufs(x, sample_rate)
    if not math.isfinite(measured):
        return x, measured
    gain = 10.0 ** ((target_lufs - measured) / 20.0)
    y = x * gain
    ceiling = 10.0 ** (PEAK_CEILING_DBFS / 20.0)
    peak = float(np.abs(y).max())
    if peak > ceiling:
        if compressor:
            y = limit(y, sample_rate)
        else:
            y = y * (ceiling / peak)
            log.info("%s: loudness held %.1f dB below %.1f LUFS to keep peaks under %.0f dBFS "
                     "(--compress limits them instead)", name or "clip",
                     20 * math.log10(peak / ceiling), target_lufs, PEAK_CEILING_DBFS)
    y = y.astype(np.float32)
    return y, integrated_lufs(y, sample_rate)
