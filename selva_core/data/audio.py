"""Audio loading, format checks, surround downmix, alignment, resampling and content checks.

Sources: a stand-alone audio file (read with soundfile; PyAV for what libsndfile cannot read)
or the first audio track of a video (PyAV). Every PyAV call goes through
:mod:`selva_core.data.container`, so any file or codec the decoders cannot read is one
BadClipError naming the file.

* **Downmix to mono** (:func:`to_mono`): mono is kept, stereo is the mean of its two channels,
  and surround is mixed the way its standard (ITU-R BS.775) stereo downmix would be and then
  averaged: ``Lo = L + 0.707 C + 0.707 Ls``, ``Ro = R + 0.707 C + 0.707 Rs``, the LFE channel
  left out, ``mono = (Lo + Ro) / 2``. A 5.1 film therefore comes out at the level of its stereo
  version, dialogue (centre) at -3 dB, instead of a plain mean over six channels that would
  put it ~15 dB lower. Channels are identified by the stream's layout; a file that names none
  is read in the usual WAV/SMPTE order for its channel count (5.1 = L R C LFE Ls Rs).
* **Alignment**: a video's own track is placed on the container's timeline relative to the
  picture: when the audio stream starts later than the video stream, silence is put in
  front; when it starts earlier, the audio before the first picture is dropped. Each applied
  offset is logged.
* **End padding**: an encoder pads its last frame (AAC: always 1024 samples); the samples past
  the last packet's duration (MP4's edit list) are dropped as FFmpeg's own decode drops them,
  so a track is as long as ``ffmpeg -i`` decodes it (the priming at the start FFmpeg already
  skips).
* **What the model hears**: resampling uses soxr (high quality) via librosa. The silence check
  runs on the resampled audio, so a clip whose sound lies entirely above the model's band is
  rejected as silent with that reason, and one that loses most of its energy in resampling
  (e.g. an 8.2 kHz alarm for a 16 kHz model) gets a warning naming it.
* Content checks reject empty, non-finite (NaN/inf), silent and too-short audio with one line
  naming the file and what to do.
"""

from __future__ import annotations

import logging
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import librosa
import numpy as np
import soundfile as sf

from selva_core.data.container import (
    DECODE_ERRORS,
    decodable,
    decode_stream,
    header_duration,
    measure_streams,
    media_errors,
    open_media,
    stream_start,
)
from selva_core.data.errors import BadClipError
from selva_core.variants import min_duration

log = logging.getLogger(__name__)

# Every stand-alone audio extension the decoders (libsndfile, then PyAV/FFmpeg) read; each is
# exercised by a round-trip test. Video extensions are not listed: those files are clips.
AUDIO_EXTENSIONS: tuple[str, ...] = (
    ".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".aiff", ".aif",
    ".aifc", ".caf", ".w64", ".au", ".mka", ".wma", ".ac3", ".mp2", ".wv", ".tta",
)
NO_AUDIO_FIX = "add one of those next to it, or remove the video"
MIN_SAMPLE_RATE = 8000  # Hz; below this the content cannot feed even the 16 kHz model usefully
MAX_SAMPLE_RATE = 192000  # Hz
MAX_CHANNELS = 8  # mono ... 7.1
SILENCE_PEAK = 1e-4  # peak |x| below this (-80 dBFS) counts as silent
SILENCE_RMS = 1e-5  # ... and so does an RMS level below -100 dBFS (below 16-bit dither)
RESAMPLE_TYPE = "soxr_hq"
ABOVE_BAND_WARN_DB = 10.0  # warn when resampling removes more than this (90% of the energy)
UNREADABLE_FIX = "convert it to WAV or FLAC, or remove it"

# --- surround downmix -------------------------------------------------------------------------
_FRONT = 0.5  # L or R: full level into its side, halved by the final mean of the two sides
_CENTRE = 1.0 / math.sqrt(2.0)  # C: 0.707 into both sides -> 0.707 in mono
_SURROUND = 0.5 / math.sqrt(2.0)  # Ls or Rs: 0.707 into its side
_SURROUND_CENTRE = 0.5  # a centred back/top channel: 0.5 into both sides
MONO_WEIGHTS: dict[str, float] = {
    "FL": _FRONT, "FR": _FRONT, "FLC": _FRONT, "FRC": _FRONT,
    "FC": _CENTRE,
    "LFE": 0.0, "LFE2": 0.0, "LFE3": 0.0,
    "BL": _SURROUND, "BR": _SURROUND, "SL": _SURROUND, "SR": _SURROUND,
    "WL": _SURROUND, "WR": _SURROUND, "SDL": _SURROUND, "SDR": _SURROUND,
    "TFL": _SURROUND, "TFR": _SURROUND, "TBL": _SURROUND, "TBR": _SURROUND,
    "TSL": _SURROUND, "TSR": _SURROUND,
    "BC": _SURROUND_CENTRE, "TC": _SURROUND_CENTRE, "TFC": _SURROUND_CENTRE,
    "TBC": _SURROUND_CENTRE,
}
# Channel order of a file that names no layout (WAVE_FORMAT_EXTENSIBLE / SMPTE defaults).
DEFAULT_CHANNELS: dict[int, tuple[str, ...]] = {
    1: ("FC",),
    2: ("FL", "FR"),
    3: ("FL", "FR", "FC"),
    4: ("FL", "FR", "BL", "BR"),
    5: ("FL", "FR", "FC", "BL", "BR"),
    6: ("FL", "FR", "FC", "LFE", "BL", "BR"),
    7: ("FL", "FR", "FC", "LFE", "BC", "SL", "SR"),
    8: ("FL", "FR", "FC", "LFE", "BL", "BR", "SL", "SR"),
}


@dataclass(frozen=True)
class AudioInfo:
    """Format of an audio source: rate, channels, the length its packets really hold and the
    length its header promises (both in seconds, None when unknown)."""

    sample_rate: int
    channels: int
    duration: float | None
    header_duration: float | None = None


@dataclass(frozen=True)
class DecodedAudio:
    """Decoded samples ``(channels, n)`` float32 with their channel names and, for a video's
    own track, where the audio starts relative to the picture (seconds; 0 for a file)."""

    samples: np.ndarray
    sample_rate: int
    channels: tuple[str, ...]
    offset: float = 0.0


def channel_names(names: Sequence[str] | None, count: int) -> tuple[str, ...]:
    """The stream's own channel names when it names every channel, else the default order."""
    if names is not None and len(names) == count and all(n in MONO_WEIGHTS for n in names):
        return tuple(names)
    return DEFAULT_CHANNELS.get(count, tuple(f"C{i}" for i in range(count)))


def mono_weights(channels: Sequence[str]) -> np.ndarray:
    """Per-channel weights of the mono downmix (see the module doc); mono passes unchanged."""
    if len(channels) == 1:
        return np.ones(1, np.float64)
    return np.array([MONO_WEIGHTS.get(name, _SURROUND) for name in channels], np.float64)


def to_mono(audio: np.ndarray, channels: Sequence[str] | None = None) -> np.ndarray:
    """Mix ``(channels, samples)`` to mono: stereo by the mean, surround ITU-style without
    the LFE (``channels`` names the layout; None means the default order for the count)."""
    if audio.ndim == 1:
        return audio.astype(np.float32, copy=False)
    names = channel_names(channels, audio.shape[0])
    weights = mono_weights(names)
    return (weights @ audio.astype(np.float64, copy=False)).astype(np.float32)


def looked_for(stem: str) -> str:
    """The same-stem audio names searched for, for messages: ``a.wav, a.flac, ...``."""
    return ", ".join(f"{stem}{ext}" for ext in AUDIO_EXTENSIONS)


def no_audio_error(video: Path) -> BadClipError:
    """A video without an audio track and without a same-stem audio file."""
    return BadClipError(
        video, "the video has no audio track and there is no same-stem audio file "
        f"(looked for {looked_for(video.stem)})", NO_AUDIO_FIX)


# --- format checks ----------------------------------------------------------------------------
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


def _stream_channels(context) -> tuple[int, list[str] | None]:
    layout = getattr(context, "layout", None)
    names = [c.name for c in layout.channels] if layout is not None else None
    count = int(getattr(context, "channels", 0) or (len(names) if names else 0))
    return count, names


def _riff_promise(path: Path) -> float | None:
    """Seconds a WAV's ``data`` chunk header promises (libsndfile and FFmpeg both report only
    what the file holds, so a cut WAV is recognised from its own header)."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            rate = align = None
            while True:
                chunk = f.read(8)
                if len(chunk) < 8:
                    return None
                cid, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
                if cid == b"fmt ":
                    fmt = f.read(size + (size & 1))
                    if len(fmt) < 14:
                        return None
                    rate = struct.unpack("<I", fmt[4:8])[0]
                    align = struct.unpack("<H", fmt[12:14])[0]
                elif cid == b"data":
                    if not rate or not align or size in (0, 0xFFFFFFFF):
                        return None
                    return size / align / rate
                else:
                    f.seek(size + (size & 1), 1)
    except OSError:
        return None


def probe_audio_file(path: str | Path) -> AudioInfo:
    """Format and lengths of a stand-alone audio file (soundfile first, PyAV as the fallback;
    the held length comes from reading the file's packets, not from its header)."""
    path = Path(path)
    sf_info = None
    try:
        sf_info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as sf_error:
        log.debug("soundfile cannot read %s (%s); trying PyAV", path, sf_error)
    promised: list[float] = []
    held = None
    try:
        with open_media(path, "audio", UNREADABLE_FIX) as container, \
                media_errors(path, "audio", UNREADABLE_FIX):
            if not container.streams.audio:
                raise BadClipError(path, "the file holds no audio stream", UNREADABLE_FIX)
            stream = container.streams.audio[0]
            context = decodable(path, stream, "audio", UNREADABLE_FIX)
            rate = int(context.sample_rate or 0)
            channels, _ = _stream_channels(context)
            span = measure_streams(container, [stream]).get(stream.index)
            held = span.length if span is not None else None
            header = header_duration(stream, container)
            if header is not None:
                promised.append(header)
    except BadClipError:
        if sf_info is None:
            raise
        rate = channels = 0  # libsndfile reads it; PyAV does not (rare formats)
    if sf_info is not None:
        rate, channels = int(sf_info.samplerate), int(sf_info.channels)
        promised.append(float(sf_info.duration))
        held = float(sf_info.duration) if held is None else held
    riff = _riff_promise(path)
    if riff is not None:
        promised.append(riff)
    return AudioInfo(rate, channels, held, max(promised) if promised else None)


# --- decoding ---------------------------------------------------------------------------------
def end_padding(frame) -> int:
    """Samples of a decoded audio frame past its packet's duration: the encoder's end padding
    (an AAC track's last frame is always a full 1024 samples; MP4's edit list says how many
    are real). FFmpeg's own decode drops them; durations are only trusted beyond one tick of
    the stream's time base (Matroska rounds them to milliseconds)."""
    rate = getattr(frame, "sample_rate", None)
    if not frame.duration or frame.time_base is None or not rate:
        return 0
    tick = Fraction(frame.time_base) * rate
    pad = frame.samples - Fraction(frame.duration) * tick
    return int(round(pad)) if pad > max(tick, Fraction(1)) else 0


def _decode_with_pyav(path: Path, from_video: bool) -> DecodedAudio:
    """First audio stream of any container PyAV opens, as float32 ``(channels, samples)``."""
    with open_media(path, "video" if from_video else "audio", UNREADABLE_FIX) as container, \
            media_errors(path, "audio", UNREADABLE_FIX):
        if not container.streams.audio:
            if from_video:
                raise no_audio_error(path)
            raise BadClipError(path, "the file holds no audio stream", UNREADABLE_FIX)
        stream = container.streams.audio[0]
        context = decodable(path, stream, "audio", UNREADABLE_FIX)
        sample_rate = int(context.sample_rate or 0)
        count, names = _stream_channels(context)
        check_audio_format(path, sample_rate, count)
        picture = None
        if from_video and container.streams.video:
            picture = stream_start(container.streams.video[0]) or 0.0  # decode_frames' origin
        # Planar float output, same layout and rate: one (channels, n) block per frame.
        resampler = av.AudioResampler(format="fltp")
        chunks: list[np.ndarray] = []
        first_time = None
        padding = 0
        for frame in decode_stream(path, container, stream, "audio", UNREADABLE_FIX):
            if first_time is None and frame.time is not None:
                first_time = float(frame.time)
            padding = end_padding(frame)
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray())
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray())
    if padding and chunks:
        kept = sum(c.shape[1] for c in chunks) - padding
        samples = np.concatenate(chunks, axis=1)[:, :max(kept, 0)]
        chunks = [samples]
    if first_time is None:
        first_time = stream_start(stream)
    offset = 0.0
    if picture is not None and first_time is not None:
        offset = first_time - picture
    if not chunks:
        samples = np.zeros((max(count, 1), 0), np.float32)
    else:
        samples = np.concatenate(chunks, axis=1).astype(np.float32, copy=False)
    return DecodedAudio(samples, sample_rate, channel_names(names, samples.shape[0]), offset)


def _file_channel_names(path: Path, count: int) -> tuple[str, ...]:
    """Layout of a file libsndfile read (it does not report one): asked of PyAV for surround."""
    if count <= 2:
        return channel_names(None, count)
    try:
        with av.open(str(path), mode="r") as container:
            context = container.streams.audio[0].codec_context
            return channel_names(_stream_channels(context)[1], count)
    except (*DECODE_ERRORS, IndexError, AttributeError):
        return channel_names(None, count)


def decode_audio(path: str | Path, *, from_video: bool = False) -> DecodedAudio:
    """Decode a stand-alone audio file, or (``from_video``) a video's own audio track."""
    path = Path(path)
    if from_video:
        return _decode_with_pyav(path, from_video=True)
    try:
        data, sample_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as sf_error:
        log.debug("soundfile cannot read %s (%s); using PyAV", path, sf_error)
        return _decode_with_pyav(path, from_video=False)
    check_audio_format(path, int(sample_rate), data.shape[1])
    return DecodedAudio(np.ascontiguousarray(data.T), int(sample_rate),
                        _file_channel_names(path, data.shape[1]))


def read_audio_file(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a stand-alone audio file as float32 ``(channels, samples)`` and its sample rate."""
    decoded = decode_audio(path)
    return decoded.samples, decoded.sample_rate


def read_video_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """The first audio track of a video file as float32 ``(channels, samples)``, as stored
    (not yet aligned to the picture; :func:`load_mono` does that)."""
    decoded = decode_audio(path, from_video=True)
    return decoded.samples, decoded.sample_rate


# --- alignment, resampling, checks ------------------------------------------------------------
def align_to_picture(path: Path, audio: np.ndarray, sample_rate: int, offset: float
                     ) -> np.ndarray:
    """Place mono audio that starts ``offset`` s after the picture (before it when negative)
    on the picture's timeline: silence in front, or the early part dropped; logged."""
    shift = round(offset * sample_rate)
    if shift == 0:
        return audio
    if shift > 0:
        log.info("%s: the audio track starts %.3f s after the picture; aligned by putting "
                 "%.3f s of silence in front", path, offset, shift / sample_rate)
        return np.concatenate([np.zeros(shift, audio.dtype), audio])
    log.info("%s: the audio track starts %.3f s before the picture; aligned by dropping its "
             "first %.3f s", path, -offset, -shift / sample_rate)
    return audio[-shift:]


def resample(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample mono float audio with soxr (via librosa); a no-op at equal rates."""
    if orig_sr == target_sr:
        return audio.astype(np.float32, copy=False)
    out = librosa.resample(audio, orig_sr=orig_sr, target_sr=target_sr, res_type=RESAMPLE_TYPE)
    return out.astype(np.float32, copy=False)


def _peak(audio: np.ndarray) -> float:
    return float(np.abs(audio).max()) if audio.size else 0.0


def _rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0


def _check_not_silent(path: Path, audio: np.ndarray, how: str = "") -> None:
    """BadClipError when ``audio`` is silent: peak below -80 dBFS or RMS below -100 dBFS."""
    peak, rms = _peak(audio), _rms(audio)
    if peak < SILENCE_PEAK or rms < SILENCE_RMS:
        level = f"{20 * math.log10(rms):.0f} dBFS" if rms > 0 else "-inf dBFS"
        raise BadClipError(
            path, f"the audio is silent{how} (peak {peak:.2g}, RMS {level}; silent means a peak "
            f"below {SILENCE_PEAK:g} or an RMS below {SILENCE_RMS:g})",
            "check the audio track/file, or remove the clip",
        )


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
    _check_not_silent(path, audio)


def band_loss_db(before: np.ndarray, after: np.ndarray) -> float:
    """How much quieter (dB of mean power) ``after`` is than ``before``; 0 for silence."""
    p_before = float(np.mean(np.square(before, dtype=np.float64))) if before.size else 0.0
    p_after = float(np.mean(np.square(after, dtype=np.float64))) if after.size else 0.0
    if p_before <= 0.0:
        return 0.0
    if p_after <= 0.0:
        return math.inf
    return max(0.0, 10.0 * math.log10(p_before / p_after))


def check_heard(path: Path, mono: np.ndarray, heard: np.ndarray, orig_sr: int,
                target_sr: int) -> None:
    """Checks on what the model will hear (``heard`` = ``mono`` resampled to ``target_sr``):
    silent -> BadClipError; most of the energy above the band -> a warning naming the file."""
    if target_sr >= orig_sr:
        return
    _check_not_silent(path, heard, f" after resampling to {target_sr} Hz: its sound lies "
                      f"above {target_sr // 2} Hz, beyond what the model hears")
    loss = band_loss_db(mono, heard)
    if loss > ABOVE_BAND_WARN_DB:
        log.warning("%s: most of its sound lies above %d Hz, beyond what the %d Hz model "
                    "hears: it is %.0f dB quieter after resampling; check it is the audio "
                    "you meant", path, target_sr // 2, target_sr, loss)


def load_mono(path: str | Path, sample_rate: int, *, from_video: bool = False) -> np.ndarray:
    """Read, validate, mix to mono, align to the picture, resample and check what the model
    hears; the one entry point used by the feature cache.

    ``from_video`` reads the video's own audio track (aligned to its picture on the
    container's timeline) instead of a stand-alone file. Problems raise BadClipError naming
    ``path``; a clip that loses most of its sound in resampling is logged as a warning.
    """
    path = Path(path)
    decoded = decode_audio(path, from_video=from_video)
    raw, sr = decoded.samples, decoded.sample_rate
    if raw.size and not np.isfinite(raw).all():
        validate_waveform(path, raw, sr)  # raises the NaN message before mixing hides it
    if raw.size:
        _check_not_silent(path, raw)
    mono = to_mono(raw, decoded.channels)
    if mono.size and raw.shape[0] > 1:
        _check_not_silent(path, mono, f" after mixing its {raw.shape[0]} channels to mono "
                      "(they cancel out, or only the LFE channel carries sound)")
    if from_video:
        mono = align_to_picture(path, mono, sr, decoded.offset)
    validate_waveform(path, mono, sr)
    heard = resample(mono, sr, sample_rate)
    check_heard(path, mono, heard, sr, sample_rate)
    return heard
