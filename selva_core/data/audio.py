"""Audio loading, format checks, mono mix-down, resampling and content validation.

Sources: a stand-alone audio file (read with soundfile; PyAV for what libsndfile cannot read)
or the first audio track of a video (PyAV). Every channel layout from mono to 7.1 is accepted
and mixed to mono by the mean of the channels; resampling uses ``librosa.resample`` with
soxr (high quality). Content checks reject empty, non-finite (NaN/inf), silent and too-short
audio with one line naming the file and what to do.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import av
import librosa
import numpy as np
import soundfile as sf

from selva_core.data.errors import BadClipError
from selva_core.variants import min_duration

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS: tuple[str, ...] = (".wav", ".flac", ".mp3", ".ogg", ".aiff", ".aif")
MIN_SAMPLE_RATE = 8000  # Hz; below this the content cannot feed even the 16 kHz model usefully
MAX_SAMPLE_RATE = 192000  # Hz
MAX_CHANNELS = 8  # mono ... 7.1
SILENCE_PEAK = 1e-4  # peak |x| below this (-80 dBFS) counts as silent
RESAMPLE_TYPE = "soxr_hq"


@dataclass(frozen=True)
class AudioInfo:
    """Format of an audio source as read from its header."""

    sample_rate: int
    channels: int
    duration: float | None


def check_audio_format(path: Path, sample_rate: int | None, channels: int | None) -> None:
    """Raise BadClipError for a sample rate or channel count this loader does not accept."""
    if not sample_rate or not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise BadClipError(
            path,
            f"unsupported audio sample rate {sample_rate} Hz (accepted: "
            f"{MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz)",
            "resample it, e.g. `ffmpeg -i IN -ar 48000 OUT.wav`",
        )
    if not channels or not 1 <= channels <= MAX_CHANNELS:
        raise BadClipError(
            path,
            f"unsupported audio channel layout with {channels} channel(s) (accepted: mono, "
            f"stereo ... 7.1, i.e. 1-{MAX_CHANNELS} channels)",
            "mix it down, e.g. `ffmpeg -i IN -ac 2 OUT.wav`",
        )


def _unreadable(path: Path, error: Exception) -> BadClipError:
    reason = getattr(error, "strerror", None) or str(error)
    return BadClipError(
        path, f"cannot read the audio ({reason})", "convert it to WAV or FLAC, or remove it"
    )


def probe_audio_file(path: str | Path) -> AudioInfo:
    """Header of a stand-alone audio file (soundfile first, PyAV as the fallback)."""
    path = Path(path)
    try:
        info = sf.info(str(path))
        return AudioInfo(int(info.samplerate), int(info.channels), float(info.duration))
    except (sf.LibsndfileError, RuntimeError, TypeError) as sf_error:
        log.debug("soundfile cannot read %s (%s); trying PyAV", path, sf_error)
    try:
        with av.open(str(path), mode="r") as container:
            if not container.streams.audio:
                raise BadClipError(path, "the file holds no audio stream",
                                   "convert it to WAV or FLAC, or remove it")
            stream = container.streams.audio[0]
            duration = None
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = float(container.duration / av.time_base)
            return AudioInfo(int(stream.codec_context.sample_rate or 0),
                             int(stream.codec_context.channels or 0), duration)
    except (av.error.FFmpegError, OSError) as e:
        raise _unreadable(path, e) from None


def _read_with_pyav(path: Path, from_video: bool) -> tuple[np.ndarray, int]:
    """First audio stream of any container PyAV opens, as float32 ``(channels, samples)``."""
    try:
        with av.open(str(path), mode="r") as container:
            if not container.streams.audio:
                if from_video:
                    raise BadClipError(
                        path, "the video has no audio track and there is no same-stem audio "
                        "file", "add an audio file with the same name (e.g. .wav) or remove it")
                raise BadClipError(path, "the file holds no audio stream",
                                   "convert it to WAV or FLAC, or remove it")
            stream = container.streams.audio[0]
            sample_rate = int(stream.codec_context.sample_rate or 0)
            channels = int(stream.codec_context.channels or 0)
            check_audio_format(path, sample_rate, channels)
            # Planar float output, same layout and rate: one (channels, n) block per frame.
            resampler = av.AudioResampler(format="fltp")
            chunks: list[np.ndarray] = []
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray())
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray())
    except av.error.FFmpegError as e:
        raise _unreadable(path, e) from None
    if not chunks:
        return np.zeros((max(channels, 1), 0), np.float32), sample_rate
    return np.concatenate(chunks, axis=1).astype(np.float32, copy=False), sample_rate


def read_audio_file(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a stand-alone audio file as float32 ``(channels, samples)`` and its sample rate."""
    path = Path(path)
    try:
        data, sample_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as sf_error:
        log.debug("soundfile cannot read %s (%s); using PyAV", path, sf_error)
        return _read_with_pyav(path, from_video=False)
    check_audio_format(path, int(sample_rate), data.shape[1])
    return np.ascontiguousarray(data.T), int(sample_rate)


def read_video_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """The first audio track of a video file as float32 ``(channels, samples)``."""
    return _read_with_pyav(Path(path), from_video=True)


def to_mono(audio: np.ndarray) -> np.ndarray:
    """Mix ``(channels, samples)`` to mono by the mean over channels (any layout)."""
    if audio.ndim == 1:
        return audio.astype(np.float32, copy=False)
    return audio.mean(axis=0, dtype=np.float64).astype(np.float32)


def resample(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample mono float audio with soxr (via librosa); a no-op at equal rates."""
    if orig_sr == target_sr:
        return audio.astype(np.float32, copy=False)
    out = librosa.resample(audio, orig_sr=orig_sr, target_sr=target_sr, res_type=RESAMPLE_TYPE)
    return out.astype(np.float32, copy=False)


def validate_waveform(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    """Reject empty, non-finite, silent or shorter-than-one-sync-window audio."""
    if audio.size == 0:
        raise BadClipError(path, "the audio is empty (0 samples)",
                           "check the file plays, or remove the clip")
    if not np.isfinite(audio).all():
        raise BadClipError(path, "the audio contains NaN or infinite samples",
                           "re-export the audio, or remove the clip")
    length = audio.shape[-1] / sample_rate
    if length < min_duration():
        raise BadClipError(
            path,
            f"the audio is only {length:.2f} s long; SelVA needs at least "
            f"{min_duration():.2f} s (one 16-frame sync window)",
            "use a longer clip or remove it",
        )
    peak = float(np.abs(audio).max())
    if peak < SILENCE_PEAK:
        raise BadClipError(
            path, f"the audio is silent (peak {peak:.2g}, below {SILENCE_PEAK:g})",
            "check the audio track/file, or remove the clip",
        )


def load_mono(path: str | Path, sample_rate: int, *, from_video: bool = False) -> np.ndarray:
    """Read, validate, mix to mono and resample; the one entry point used by the cache.

    ``from_video`` reads the video's own audio track instead of a stand-alone file. Problems
    raise BadClipError naming ``path``.
    """
    path = Path(path)
    audio, sr = read_video_audio(path) if from_video else read_audio_file(path)
    if audio.size and not np.isfinite(audio).all():
        validate_waveform(path, audio, sr)  # raises the NaN message before mixing hides it
    mono = to_mono(audio)
    validate_waveform(path, mono, sr)
    return resample(mono, sr, sample_rate)
