"""Audio metrics that need no download: spectral shape, distances to a reference, drift.

Three families, all on mono float waveforms at the model's sample rate:

* **The closest tool's five spectral metrics** (ComfyUI-SelVA's evaluator), on the long-term
  average power spectrum of a Hann STFT (n_fft 2048, hop 512): ``hf_energy_ratio`` (share of
  power at or above the high-frequency cut), ``spectral_centroid_hz`` (power-weighted mean
  frequency), ``spectral_rolloff_hz`` (frequency below which 85 % of the power lies),
  ``spectral_flatness`` (geometric / arithmetic mean of the average spectrum) and
  ``temporal_variance`` (coefficient of variation of the per-frame RMS). All are independent of
  the level. That tool fixed the cut at 4 kHz even for 16 kHz models, where it sits at half
  the band; here the cut is the same *fraction of the band*: 4 kHz of 22.05 kHz, i.e.
  ``hf_cut_hz(sr) = 4000 * sr / 44100`` (1451 Hz at 16 kHz, 4 kHz at 44.1 kHz), so the
  metric means the same thing for every variant.
* **Distances to the reference recording** (lower = closer): ``lsd_db`` is the log-spectral
  distance (per frame the RMS over frequency of the dB difference of the power spectra, then
  the mean over frames) and ``mcd_db`` the mel-cepstral distance (13 cepstral coefficients
  c1..c13 of the log mel amplitude spectrum, ``10 / ln 10 * sqrt(2 * sum (c - c')^2)`` per
  frame, mean over frames). Both floor the spectra at 80 dB below the reference's loudest
  bin (or band), so bins silent in both do not dominate. The render is first scaled to the
  reference's RMS so that a louder or quieter render is not penalised for its level alone
  (the spectral metrics are level-free too); both signals are cut to the shorter length.
* **Drift** (``drift_lsd_db``): the log-spectral distance between a render with an adapter and
  the baseline render without it, same clip and seed. On clips unlike the adapter's training
  set it measures how much the adapter changes what it should leave alone.
* **Sync figures that need no weights** (:mod:`selva_core.audio.sync`, where they are defined):
  against the reference recording, the correlation of the two 1-6 kHz loudness envelopes
  (20 ms frames) at lag 0 (``env_corr_lag0``), the lag within ±0.5 s where it peaks
  (``env_best_lag_ms``; positive: the render is late) and the correlation there
  (``env_corr_best``); against the clip's picture (any clip with a video, reference or not),
  the same three for the render's onsets against the picture's motion energy (``motion_*``).
  ``nan`` where an envelope is flat (silence): no timing to compare.

Every metric sees both sides in the same representation: the evaluator measures renders,
baselines and references as their 16-bit WAVs hold them (:func:`pcm16`), so rounding is never
counted as a difference and a render equal to its baseline drifts by exactly 0.

Every function is pure (numpy / torch on the CPU, float64 inside) and deterministic.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from selva_core.audio import sync as S

#: The closest tool's fixed cut and the band it was chosen for (44.1 kHz models).
REFERENCE_HF_CUT_HZ = 4000.0
REFERENCE_SAMPLE_RATE = 44100
N_FFT = 2048
HOP = 512
ROLLOFF_FRACTION = 0.85
MCD_MELS = 40
MCD_COEFFS = 13
DB_RANGE = 80.0  # dB below the reference's loudest bin where the distances stop counting
_EPS = 1e-10


@dataclass(frozen=True)
class MetricInfo:
    """How to read a metric: its label, unit and whether lower or higher is better."""

    key: str
    label: str
    unit: str
    better: str  # "lower", "higher", "closer to 0" or "closer to the reference"
    needs: str = ""  # "", "reference", "baseline" or "video"
    about: str = ""  # one plain sentence: what the figure tells a listener (reports show it)


METRICS: tuple[MetricInfo, ...] = (
    MetricInfo("hf_energy_ratio", "HF energy ratio", "", "closer to the reference",
               about="share of the sound's power in the upper part of the band (brightness)"),
    MetricInfo("spectral_centroid_hz", "spectral centroid", "Hz", "closer to the reference",
               about="the power-weighted mean frequency: where the sound's weight sits"),
    MetricInfo("spectral_rolloff_hz", "spectral rolloff (85 %)", "Hz", "closer to the reference",
               about="the frequency below which 85 % of the power lies"),
    MetricInfo("spectral_flatness", "spectral flatness", "", "closer to the reference",
               about="near 1 for noise-like sound, near 0 for tones"),
    MetricInfo("temporal_variance", "temporal variance (RMS CV)", "", "closer to the reference",
               about="how much the loudness moves over time (0 = steady)"),
    MetricInfo("lsd_db", "log-spectral distance", "dB", "lower", "reference",
               about="how far the render's spectrum is from the reference recording's, frame "
                     "by frame"),
    MetricInfo("mcd_db", "mel-cepstral distance", "dB", "lower", "reference",
               about="how far the render's timbre (spectral envelope) is from the reference's"),
    MetricInfo("drift_lsd_db", "drift from baseline (LSD)", "dB", "lower", "baseline",
               about="how much the adapter changes the sound of the model without it; on "
                     "drift clips it should stay small"),
    MetricInfo(f"{S.ENVELOPE_PREFIX}corr_lag0", "envelope corr. with reference, lag 0", "",
               "higher", "reference",
               about="does the render get loud (1-6 kHz) when the reference recording does: "
                     "1 = same moments, 0 = unrelated"),
    MetricInfo(f"{S.ENVELOPE_PREFIX}best_lag_ms", "envelope best lag (+ = late)", "ms",
               "closer to 0", "reference",
               about="the shift within 0.5 s that lines the render's loudness up best with the "
                     "reference's; positive = the render is late"),
    MetricInfo(f"{S.ENVELOPE_PREFIX}corr_best", "envelope corr. at best lag", "", "higher",
               "reference",
               about="the envelope correlation at that best shift: high here but low at lag 0 "
                     "means a constant offset"),
    MetricInfo(f"{S.MOTION_PREFIX}corr_lag0", "onsets vs motion corr., lag 0", "", "higher",
               "video",
               about="do sounds start when the picture changes (no reference audio needed); "
                     "blind to direction changes at constant speed"),
    MetricInfo(f"{S.MOTION_PREFIX}best_lag_ms", "onsets vs motion best lag (+ = late)", "ms",
               "closer to 0", "video",
               about="the shift within 0.5 s that lines sound onsets up best with motion; "
                     "positive = sound after picture"),
    MetricInfo(f"{S.MOTION_PREFIX}corr_best", "onsets vs motion corr. at best lag", "",
               "higher", "video",
               about="the onsets-vs-motion correlation at that best shift"),
)
SPECTRAL_KEYS = tuple(m.key for m in METRICS[:5])
ENVELOPE_KEYS = tuple(m.key for m in METRICS if m.key.startswith(S.ENVELOPE_PREFIX))
MOTION_KEYS = tuple(m.key for m in METRICS if m.key.startswith(S.MOTION_PREFIX))
METRIC_KEYS = tuple(m.key for m in METRICS)
#: Metrics the evaluator adds beside the per-render registry (each needs a model of its own).
EXTRA_METRICS: tuple[MetricInfo, ...] = (
    MetricInfo("desync_s", "DeSync (|offset|)", "s", "lower",
               about="how far the sound is shifted in time against the picture, estimated by "
                     "Synchformer"),
    MetricInfo("clap_score", "CLAP text-audio score", "", "higher",
               about="how well the sound matches the clip's prompt, by the CLAP model"),
)
#: Metrics a verdict can rank by (``rank_by``): a per-render figure with a direction.
RANKABLE_KEYS = tuple(m.key for m in (*METRICS, *EXTRA_METRICS)
                      if m.better in ("lower", "higher"))


def metric_info(key: str) -> MetricInfo | None:
    """The registry's description of ``key`` (the evaluator's extras included), or None."""
    return next((m for m in (*METRICS, *EXTRA_METRICS) if m.key == key), None)


def hf_cut_hz(sample_rate: int) -> float:
    """The high-frequency cut as the same fraction of the band as 4 kHz of 22.05 kHz."""
    return REFERENCE_HF_CUT_HZ * float(sample_rate) / REFERENCE_SAMPLE_RATE


def _mono(wave: Any) -> np.ndarray:
    arr = wave.detach().cpu().numpy() if isinstance(wave, torch.Tensor) else np.asarray(wave)
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim == 2:  # (channels, samples) or (1, samples)
        arr = arr.mean(axis=0)
    if arr.ndim != 1:
        raise ValueError(f"expected a mono waveform (samples,) or (channels, samples), got "
                         f"shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("the waveform contains NaN or infinite samples")
    return arr


def _frames(wave: np.ndarray, n_fft: int = N_FFT, hop: int = HOP) -> np.ndarray:
    """Frames that lie wholly inside the signal (no edge padding, so a steady signal gives
    identical frames); a signal shorter than one frame is zero-padded to one: (T, n_fft)."""
    padded = wave
    if padded.shape[0] < n_fft:
        padded = np.pad(padded, (0, n_fft - padded.shape[0]))
    count = 1 + (padded.shape[0] - n_fft) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(count)[:, None]
    return padded[idx]


def power_spectrogram(wave: Any, n_fft: int = N_FFT, hop: int = HOP) -> np.ndarray:
    """|STFT|^2 with a periodic Hann window: (T, n_fft // 2 + 1)."""
    frames = _frames(_mono(wave), n_fft, hop)
    window = np.hanning(n_fft + 1)[:-1]
    return np.abs(np.fft.rfft(frames * window, axis=1)) ** 2


def spectral_metrics(wave: Any, sample_rate: int) -> dict[str, float]:
    """The five spectral metrics of the closest tool (module docstring); band-scaled HF cut."""
    x = _mono(wave)
    spec = power_spectrogram(x)
    freqs = np.fft.rfftfreq(N_FFT, 1.0 / sample_rate)
    avg = spec.mean(axis=0)
    total = float(avg.sum())
    rms = np.sqrt((_frames(x) ** 2).mean(axis=1))
    if total <= _EPS:  # digital silence: no spectrum to describe
        nan = float("nan")
        return {k: nan for k in SPECTRAL_KEYS}
    cumulative = np.cumsum(avg) / total
    rolloff_bin = int(np.searchsorted(cumulative, ROLLOFF_FRACTION))
    positive = np.maximum(avg, _EPS)
    mean_rms = float(rms.mean())
    return {
        "hf_energy_ratio": float(avg[freqs >= hf_cut_hz(sample_rate)].sum() / total),
        "spectral_centroid_hz": float((freqs * avg).sum() / total),
        "spectral_rolloff_hz": float(freqs[min(rolloff_bin, freqs.shape[0] - 1)]),
        "spectral_flatness": float(np.exp(np.log(positive).mean()) / positive.mean()),
        "temporal_variance": float(rms.std() / mean_rms) if mean_rms > 0 else float("nan"),
    }


def _aligned(test: Any, reference: Any) -> tuple[np.ndarray, np.ndarray]:
    """Cut both to the shorter length and scale ``test`` to the reference's RMS."""
    a, b = _mono(test), _mono(reference)
    n = min(a.shape[0], b.shape[0])
    if n == 0:
        raise ValueError("cannot compare an empty waveform")
    a, b = a[:n], b[:n]
    ra, rb = math.sqrt(float((a**2).mean())), math.sqrt(float((b**2).mean()))
    if ra > _EPS and rb > _EPS:
        a = a * (rb / ra)
    return a, b


def _db_floored(test_power: np.ndarray, ref_power: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both in dB, floored at :data:`DB_RANGE` below the reference's loudest bin, so bins that
    are silent in both (clean synthetic tones, band-limited audio) do not dominate."""
    floor = 10.0 * math.log10(max(float(ref_power.max()), _EPS)) - DB_RANGE
    to_db = lambda p: np.maximum(10.0 * np.log10(p + _EPS), floor)  # noqa: E731
    return to_db(test_power), to_db(ref_power)


def log_spectral_distance(test: Any, reference: Any) -> float:
    """Mean over frames of the RMS over frequency of the dB difference of the power spectra
    (each floored at 80 dB below the reference's loudest bin)."""
    a, b = _aligned(test, reference)
    la, lb = _db_floored(power_spectrogram(a), power_spectrogram(b))
    return float(np.sqrt(((la - lb) ** 2).mean(axis=1)).mean())


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0,
                   f_max: float | None = None) -> np.ndarray:
    """Triangular HTK-mel filters without normalisation, (n_fft // 2 + 1, n_mels).

    The same construction as ``torchaudio.transforms.MelSpectrogram``'s default
    (``mel_scale="htk"``, ``norm=None``) and ``librosa.filters.mel(htk=True, norm=None)``.
    """
    f_max = sample_rate / 2.0 if f_max is None else f_max
    all_freqs = np.linspace(0.0, sample_rate // 2, n_fft // 2 + 1)

    def hz_to_mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    def mel_to_hz(m):
        return 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)

    m_pts = np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2)
    f_pts = mel_to_hz(m_pts)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts[None, :] - all_freqs[:, None]
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return np.maximum(0.0, np.minimum(down, up))


def _dct_ortho(x: np.ndarray) -> np.ndarray:
    """Orthonormal DCT-II along the last axis."""
    n = x.shape[-1]
    k = np.arange(n)[:, None]
    basis = np.cos(np.pi * k * (2 * np.arange(n)[None, :] + 1) / (2 * n))
    scale = np.full((n, 1), math.sqrt(2.0 / n))
    scale[0] = math.sqrt(1.0 / n)
    return x @ (basis * scale).T


def mel_power(wave: Any, sample_rate: int, n_mels: int = MCD_MELS) -> np.ndarray:
    """Mel-band power (T, n_mels) of the STFT power spectrogram."""
    return power_spectrogram(wave) @ mel_filterbank(sample_rate, N_FFT, n_mels)


def mel_cepstrum(mel: np.ndarray, floor: float = _EPS, n_coeffs: int = MCD_COEFFS
                 ) -> np.ndarray:
    """Cepstral coefficients c1..c_n of the natural-log mel amplitude spectrum: (T, n)."""
    log_amp = 0.5 * np.log(np.maximum(mel, floor) + _EPS)
    return _dct_ortho(log_amp)[:, 1 : n_coeffs + 1]


def mel_cepstral_distance(test: Any, reference: Any, sample_rate: int) -> float:
    """Mean over frames of ``10 / ln 10 * sqrt(2 * sum_d (c_d - c'_d)^2)`` (c1..c13); mel
    powers floored at 80 dB below the reference's loudest band."""
    a, b = _aligned(test, reference)
    ma, mb = mel_power(a, sample_rate), mel_power(b, sample_rate)
    floor = max(float(mb.max()), _EPS) * 10.0 ** (-DB_RANGE / 10.0)
    diff = mel_cepstrum(ma, floor) - mel_cepstrum(mb, floor)
    return float((10.0 / math.log(10.0) * np.sqrt(2.0 * (diff**2).sum(axis=1))).mean())


def pcm16(wave: Any) -> np.ndarray:
    """The mono waveform as a 16-bit PCM WAV of it reads back (float32, clipped to [-1, 1]).

    Exactly what ``soundfile`` returns for a file written with ``subtype="PCM_16"``, computed
    through the same encoder in memory, so a measured array equals its file bit for bit.
    """
    import soundfile as sf

    audio = np.clip(_mono(wave).astype(np.float32), -1.0, 1.0)
    buf = io.BytesIO()
    sf.write(buf, audio, 8000, subtype="PCM_16", format="WAV")  # the rate does not matter
    buf.seek(0)
    return sf.read(buf, dtype="float32")[0]


def render_metrics(wave: Any, sample_rate: int, reference: Any | None = None,
                   baseline: Any | None = None,
                   motion: tuple[np.ndarray, float] | None = None) -> dict[str, float]:
    """Every no-download metric of one render; reference / baseline ones only when given;
    ``motion`` = (the clip's motion energy, its frames per second) adds the onset figures.

    Callers pass every waveform in the same representation (the evaluator: :func:`pcm16`).
    """
    out = spectral_metrics(wave, sample_rate)
    if reference is not None:
        out["lsd_db"] = log_spectral_distance(wave, reference)
        out["mcd_db"] = mel_cepstral_distance(wave, reference, sample_rate)
        out.update(S.envelope_sync(wave, reference, sample_rate).as_dict(S.ENVELOPE_PREFIX))
    if baseline is not None:
        out["drift_lsd_db"] = log_spectral_distance(wave, baseline)
    if motion is not None:
        out.update(motion_metrics(wave, sample_rate, motion))
    return out


def motion_metrics(wave: Any, sample_rate: int, motion: tuple[np.ndarray, float]
                   ) -> dict[str, float]:
    """The onset-vs-motion figures of one waveform under :data:`MOTION_KEYS`."""
    energy, fps = motion
    return S.motion_energy_sync(wave, sample_rate, energy, fps).as_dict(S.MOTION_PREFIX)


def mean_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Per-key mean of the finite values (keys with none are left out)."""
    out: dict[str, float] = {}
    keys = [k for k in METRIC_KEYS if any(k in r for r in rows)]
    keys += sorted({k for r in rows for k in r} - set(keys))
    for key in keys:
        values = [float(r[key]) for r in rows if isinstance(r.get(key), (int, float))
                  and math.isfinite(float(r[key]))]
        if values:
            out[key] = float(np.mean(values))
    return out


__all__ = [
    "METRICS", "METRIC_KEYS", "SPECTRAL_KEYS", "ENVELOPE_KEYS", "MOTION_KEYS", "MetricInfo",
    "pcm16", "motion_metrics", "hf_cut_hz", "power_spectrogram",
    "spectral_metrics", "log_spectral_distance", "mel_cepstral_distance", "mel_cepstrum",
    "mel_power",
    "mel_filterbank", "render_metrics", "mean_metrics",
]
