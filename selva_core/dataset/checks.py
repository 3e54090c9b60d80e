"""Per-clip checks of a training folder, each with its figure, threshold and verdict.

Every check returns a :class:`Check` (``name``, ``value``, ``threshold``, ``flagged``, ``unit``,
``rule``), so the report shows what was measured even when nothing is wrong. Thresholds
(module constants, listed in ``THRESHOLDS``):

* ``clipping``: share of samples at full scale (``|x| >= CLIP_LEVEL``) above ``CLIP_SHARE``.
* ``silence``: BS.1770 integrated loudness below ``SILENT_LUFS``.
* ``dc_offset``: largest per-channel mean above ``DC_LIMIT``.
* ``low_snr``: sound events over a noise floor that is close to them: the spread between
  loud (90th percentile) and quiet (10th percentile) 400 ms blocks between ``SNR_STEADY_DB``
  and ``SNR_MIN_DB`` while the quiet stretches are noise-like (spectral flatness at least
  ``NOISE_FLATNESS``). A steady sound (spread below ``SNR_STEADY_DB``: a machine, rain, a
  hum) has no floor to tell apart and is not flagged.
* ``band_limited``: the source rate is below the model's, or the spectrum is broadband up to
  an edge (at least ``BAND_FILL`` of the bins below it within ``BAND_FILL_DB`` of the peak)
  and nothing within ``BAND_RANGE_DB`` of the peak lies above it, with the edge below
  ``BAND_FRACTION`` of the band the model hears (a codec low-pass, an upsampled source).
* ``stereo``: the correlation of the first two channels: at most ``PHASE_CORR`` (phase
  inverted: the mono mix cancels) or at least ``DUPLICATE_CORR`` with equal levels
  (duplicated channels: a mono source in stereo; flagged as information).
* ``too_short``: shorter than the training window.
* ``variable_frame_rate``: the coefficient of variation of the picture's frame intervals
  above ``VFR_CV``.
* ``rotation``: a display matrix that turns the picture (the library shows frames upright;
  a prepared copy holds upright frames).
* ``av_offset``: :func:`selva_core.audio.sync.motion_sync` (sound onsets against the
  picture's motion energy): flagged when its best lag is at least ``OFFSET_MS`` away from 0,
  its correlation there at least ``OFFSET_CORR`` and ``OFFSET_GAIN`` above the one at lag 0.
  Clips without motion or onsets give no estimate (``nan``, not flagged).
* ``near_duplicate`` (across clips): log-mel fingerprints correlated at least
  ``DUPLICATE_FP_CORR``; see :func:`fingerprint`.
* ``round_trip``: the log-spectral distance of the clip's audio after the variant's VAE and
  vocoder (:mod:`selva_core.dataset.roundtrip`) above ``ROUND_TRIP_LSD_DB``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from selva_core.audio.metrics import mel_power, power_spectrogram
from selva_core.audio.sync import motion_sync
from selva_core.data.video import open_picture
from selva_core.dataset.defaults import ROUND_TRIP_LSD_DB
from selva_core.dataset.loudness import block_levels, integrated_lufs

CLIP_LEVEL = 0.999
CLIP_SHARE = 0.001
SILENT_LUFS = -60.0
DC_LIMIT = 0.01
SNR_MIN_DB = 15.0
SNR_STEADY_DB = 3.0
NOISE_FLATNESS = 0.3
BAND_RANGE_DB = 60.0
BAND_FILL_DB = 40.0
BAND_FILL = 0.5
BAND_FRACTION = 0.8
PHASE_CORR = -0.9
DUPLICATE_CORR = 0.999
VFR_CV = 0.05
OFFSET_MS = 100.0
OFFSET_CORR = 0.3
OFFSET_GAIN = 0.1
DUPLICATE_FP_CORR = 0.95
FP_FRAMES = 64
FP_MELS = 32

THRESHOLDS: dict[str, float] = {
    "clipping": CLIP_SHARE, "silence": SILENT_LUFS, "dc_offset": DC_LIMIT,
    "low_snr": SNR_MIN_DB, "band_limited": BAND_FRACTION, "stereo_phase": PHASE_CORR,
    "stereo_duplicate": DUPLICATE_CORR, "variable_frame_rate": VFR_CV,
    "av_offset": OFFSET_MS, "near_duplicate": DUPLICATE_FP_CORR,
    "round_trip": ROUND_TRIP_LSD_DB,
}


@dataclass(frozen=True)
class Check:
    """One figure of one clip and whether it is a problem."""

    name: str
    value: float | None
    threshold: float | None
    flagged: bool
    unit: str
    rule: str

    def as_dict(self) -> dict:
        d = asdict(self)
        if isinstance(d["value"], float) and not math.isfinite(d["value"]):
            d["value"] = None if math.isnan(d["value"]) else (
                "inf" if d["value"] > 0 else "-inf")
        return d


def _db(x: float) -> float:
    return 20.0 * math.log10(x) if x > 0 else -math.inf


def clipping(channels: np.ndarray) -> Check:
    share = float((np.abs(channels) >= CLIP_LEVEL).mean()) if channels.size else 0.0
    return Check("clipping", share, CLIP_SHARE, share > CLIP_SHARE, "share of samples",
                 f"share of samples with |x| >= {CLIP_LEVEL} above the threshold")


def silence(mono: np.ndarray, sample_rate: int) -> Check:
    lufs = integrated_lufs(mono, sample_rate)
    return Check("silence", lufs, SILENT_LUFS, lufs < SILENT_LUFS, "LUFS",
                 "integrated loudness (ITU-R BS.1770) below the threshold")


def dc_offset(channels: np.ndarray) -> Check:
    dc = float(np.abs(channels.mean(axis=-1)).max()) if channels.size else 0.0
    return Check("dc_offset", dc, DC_LIMIT, dc > DC_LIMIT, "full scale",
                 "largest per-channel mean above the threshold")


def _flatness(power: np.ndarray) -> float:
    p = np.maximum(power, 1e-20)
    return float(np.exp(np.log(p).mean()) / p.mean())


def low_snr(mono: np.ndarray, sample_rate: int) -> Check:
    levels = block_levels(mono, sample_rate)
    levels = levels[np.isfinite(levels)]
    if levels.size < 3:
        return Check("low_snr", math.nan, SNR_MIN_DB, False, "dB", "too short to estimate")
    snr = float(np.percentile(levels, 90) - np.percentile(levels, 10))
    spec = power_spectrogram(mono)
    energy = spec.sum(axis=1)
    quiet = spec[energy <= np.percentile(energy, 20)].mean(axis=0)
    noisy = _flatness(quiet[1:]) >= NOISE_FLATNESS
    flagged = SNR_STEADY_DB <= snr < SNR_MIN_DB and noisy
    return Check("low_snr", snr, SNR_MIN_DB, bool(flagged), "dB",
                 "loud (90th pct) minus quiet (10th pct) block level below the threshold, "
                 f"with noise-like quiet stretches (flatness >= {NOISE_FLATNESS}); steady "
                 f"sound (below {SNR_STEADY_DB:g} dB) is not flagged")


def bandwidth_hz(mono: np.ndarray, sample_rate: int) -> tuple[float, float]:
    """(edge in Hz above which nothing lies within BAND_RANGE_DB of the peak, share of the
    bins below the edge within BAND_FILL_DB of the peak)."""
    spec = power_spectrogram(mono).mean(axis=0)
    freqs = np.fft.rfftfreq((spec.shape[0] - 1) * 2, 1.0 / sample_rate)
    kernel = np.ones(5) / 5.0
    level = 10.0 * np.log10(np.maximum(np.convolve(spec, kernel, mode="same"), 1e-20))
    peak = level.max()
    above = np.nonzero(level >= peak - BAND_RANGE_DB)[0]
    edge = int(above[-1]) if above.size else 0
    below = level[1:edge + 1]
    fill = float((below >= peak - BAND_FILL_DB).mean()) if below.size else 0.0
    return float(freqs[edge]), fill


def band_limited(mono: np.ndarray, sample_rate: int, source_rate: int, model_rate: int
                 ) -> Check:
    heard = min(sample_rate, model_rate) / 2.0
    edge, fill = bandwidth_hz(mono, sample_rate)
    low_rate = source_rate < model_rate
    cliff = edge < BAND_FRACTION * heard and fill >= BAND_FILL
    rule = (f"source rate {source_rate} Hz below the model's {model_rate} Hz" if low_rate else
            f"broadband up to {edge:.0f} Hz and empty above: below {BAND_FRACTION} of the "
            f"{heard:.0f} Hz the model hears")
    return Check("band_limited", edge / heard, BAND_FRACTION, bool(low_rate or cliff),
                 "share of the band", rule)


def stereo(channels: np.ndarray) -> Check:
    if channels.ndim != 2 or channels.shape[0] < 2:
        return Check("stereo", None, None, False, "correlation", "mono source")
    left, right = channels[0].astype(np.float64), channels[1].astype(np.float64)
    if not left.std() or not right.std():
        return Check("stereo", None, None, False, "correlation", "a silent channel")
    corr = float(np.corrcoef(left, right)[0, 1])
    ratio = float(np.sqrt((right**2).mean() / (left**2).mean()))
    if corr <= PHASE_CORR:
        return Check("stereo", corr, PHASE_CORR, True, "correlation",
                     "channels phase-inverted: their mono mix cancels")
    if corr >= DUPLICATE_CORR and abs(ratio - 1.0) < 0.01:
        return Check("stereo", corr, DUPLICATE_CORR, True, "correlation",
                     "duplicated channels: a mono recording stored as stereo")
    return Check("stereo", corr, PHASE_CORR, False, "correlation",
                 f"phase-inverted at <= {PHASE_CORR}, duplicated at >= {DUPLICATE_CORR}")


def too_short(length: float, duration: float) -> Check:
    return Check("too_short", length, duration, length + 1e-3 < duration, "s",
                 "shorter than the training window")


@dataclass(frozen=True)
class PictureTiming:
    """Frame intervals' coefficient of variation and the display rotation (degrees)."""

    interval_cv: float
    rotation: float


def picture_timing(path: Path) -> PictureTiming:
    """Read the video stream's packet times (no decoding) and its first frame's rotation."""
    with open_picture(path) as (container, stream, _):
        tb = stream.time_base
        times = sorted(Fraction(p.pts) * tb for p in container.demux(stream)
                       if p.pts is not None and tb is not None)
        container.seek(0)
        rotation = 0.0
        for frame in container.decode(stream):
            rotation = float(getattr(frame, "rotation", 0) or 0)
            break
    steps = np.diff(np.array([float(t) for t in times]))
    steps = steps[steps > 0]
    cv = float(steps.std() / steps.mean()) if steps.size > 1 else 0.0
    return PictureTiming(cv, rotation)


def variable_frame_rate(timing: PictureTiming) -> Check:
    return Check("variable_frame_rate", timing.interval_cv, VFR_CV, timing.interval_cv > VFR_CV,
                 "interval CV", "frame intervals vary (std / mean) by more than the threshold")


def rotation(timing: PictureTiming) -> Check:
    turned = abs(timing.rotation) % 360 > 0.5
    return Check("rotation", timing.rotation, 0.0, turned, "degrees",
                 "the picture is stored turned (a phone's display matrix); frames are read "
                 "upright, other tools may not")


def av_offset(mono: np.ndarray, sample_rate: int, frames, fps: float) -> Check:
    figures = motion_sync(mono, sample_rate, frames, fps)
    lag, best, zero = figures.best_lag_ms, figures.corr_best, figures.corr_lag0
    sure = math.isfinite(best) and best >= OFFSET_CORR and \
        (not math.isfinite(zero) or best - zero >= OFFSET_GAIN)
    return Check("av_offset", lag if math.isfinite(best) else math.nan, OFFSET_MS,
                 bool(sure and abs(lag) >= OFFSET_MS), "ms",
                 f"sound onsets follow the picture's motion best at this lag (correlation "
                 f"{best:.2f}, {zero:.2f} at 0); positive: the sound comes late")


def fingerprint(mono: np.ndarray, sample_rate: int) -> np.ndarray:
    """A fixed-size log-mel fingerprint (FP_FRAMES x FP_MELS, standardised): near-identical
    sound gives near-identical fingerprints whatever its level."""
    mel = mel_power(mono, sample_rate, FP_MELS)
    edges = np.linspace(0, mel.shape[0], FP_FRAMES + 1).round().astype(int)
    last = max(mel.shape[0] - 1, 0)
    pooled = np.stack([mel[min(a, last):max(b, min(a, last) + 1)].mean(axis=0)
                       for a, b in zip(edges[:-1], edges[1:])])
    logmel = np.log10(pooled + 1e-10)
    logmel -= logmel.mean()
    norm = np.linalg.norm(logmel)
    return (logmel / norm if norm > 0 else logmel).ravel()


def duplicate_groups(names: list[str], prints: list[np.ndarray]) -> list[list[str]]:
    """Groups (two or more clips) whose fingerprints correlate at >= DUPLICATE_FP_CORR,
    joined transitively."""
    parent = list(range(len(names)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if prints:
        mat = np.stack(prints)
        sim = mat @ mat.T
        for i, j in zip(*np.nonzero(np.triu(sim >= DUPLICATE_FP_CORR, k=1))):
            parent[root(int(i))] = root(int(j))
    groups: dict[int, list[str]] = {}
    for i, name in enumerate(names):
        groups.setdefault(root(i), []).append(name)
    return [sorted(g) for g in groups.values() if len(g) > 1]
