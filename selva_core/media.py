"""Writing generated sound: WAV files and MP4s with the sound muxed onto the source video.

Both writers are atomic (:func:`selva_core.atomic.atomic_path`): a file either appears
complete or not at all, and an existing file is replaced only by a finished one.

:func:`mux_audio` keeps the source picture as it is when it can: the video packets are copied
into the MP4 without decoding (no quality loss, fast). When the picture must be cut to the
sound's length, or its codec cannot be copied into MP4, the frames are decoded and encoded
again (H.264 when this FFmpeg has it, else MPEG-4 Part 2). The sound is encoded as AAC and
starts with the picture's first frame.
"""

from __future__ import annotations

import io
import logging
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile as sf
import torch

from .atomic import atomic_path

logger = logging.getLogger(__name__)

#: The picture is re-encoded (to cut it) only when it outlasts the sound by more than this.
TRIM_TOLERANCE_S = 0.05
_VIDEO_ENCODERS = ("libx264", "h264", "mpeg4")
_LAYOUTS = {1: "mono", 2: "stereo"}


def _channels_first(wave: torch.Tensor | np.ndarray) -> np.ndarray:
    """(samples,), (1, samples) or (channels, samples) float -> float32 (channels, samples)."""
    if isinstance(wave, torch.Tensor):
        wave = wave.detach().float().cpu().numpy()
    audio = np.asarray(wave, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None]
    if audio.ndim != 2 or audio.shape[0] not in _LAYOUTS or audio.shape[1] == 0:
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
    audio = _channels_first(wave)
    path = Path(path)
    # Encoded in memory, then written as bytes: libsndfile reports a full disk without its
    # errno, a plain write raises the OSError that names the space problem.
    buffer = io.BytesIO()
    sf.write(buffer, audio.T, int(sample_rate), subtype="PCM_16", format="WAV")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(buffer.getvalue())
    return path


def _video_encoder() -> str:
    available = av.codecs_available
    return next(c for c in _VIDEO_ENCODERS if c in available)


def _copy_video(source, stream, output, out) -> None:
    """Copy ``stream``'s packets into ``out`` unchanged, shifted to start at time 0."""
    first = None
    for packet in source.demux(stream):
        if packet.dts is None and packet.pts is None:
            continue  # the flushing packet
        if first is None:
            first = packet.dts if packet.dts is not None else packet.pts
        if packet.pts is not None:
            packet.pts -= first
        if packet.dts is not None:
            packet.dts -= first
        packet.stream = out
        output.mux(packet)


def _video_stream_for_encoding(stream, output):
    rate = stream.average_rate or Fraction(25)
    out = output.add_stream(_video_encoder(), rate=rate)
    out.width = stream.codec_context.width
    out.height = stream.codec_context.height
    out.pix_fmt = "yuv420p"
    out.codec_context.time_base = 1 / Fraction(rate)
    if out.codec_context.name == "mpeg4":
        out.bit_rate = 8_000_000
    return out


def _encode_video(source, stream, output, out, until: float | None) -> None:
    """Decode ``stream`` and encode its frames (up to ``until`` seconds) into ``out``."""
    rate = float(stream.average_rate or 25)
    origin = None
    index = 0
    for frame in source.decode(stream):
        t = frame.time if frame.time is not None else index / rate
        origin = t if origin is None else origin
        if until is not None and t - origin >= until - 1e-6:
            break
        image = frame.reformat(width=out.width, height=out.height, format="yuv420p")
        image.pts = index
        image.time_base = out.codec_context.time_base
        index += 1
        for packet in out.encode(image):
            output.mux(packet)
    for packet in out.encode(None):
        output.mux(packet)


def _audio_stream(output, channels: int, sample_rate: int):
    return output.add_stream("aac", rate=int(sample_rate), layout=_LAYOUTS[channels])


def _encode_audio(output, stream, audio: np.ndarray, sample_rate: int) -> None:
    fmt = stream.codec_context.format.name
    data = np.ascontiguousarray(audio)
    if not fmt.endswith("p"):  # packed formats take one (1, samples * channels) row
        data = np.ascontiguousarray(data.T).reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(data, format=fmt, layout=_LAYOUTS[audio.shape[0]])
    frame.sample_rate = int(sample_rate)
    frame.pts = 0
    for packet in stream.encode(frame):
        output.mux(packet)
    for packet in stream.encode(None):
        output.mux(packet)


def mux_audio(
    video_path: str | os.PathLike,
    wave: torch.Tensor | np.ndarray,
    sample_rate: int,
    out_path: str | os.PathLike,
    *,
    trim: bool = True,
) -> Path:
    """Write ``out_path`` (MP4): the picture of ``video_path`` with ``wave`` as its sound.

    ``wave``: (samples,) or (channels, samples) float in [-1, 1] at ``sample_rate``. Any sound
    the source video had is replaced. With ``trim`` (default) a picture longer than the sound
    is cut to it (re-encoded); otherwise, and when the lengths agree, the video packets are
    copied unchanged. An unreadable source raises ``BadClipError`` naming it.
    """
    from .data.errors import BadClipError
    from .data.video import REENCODE_HINT, probe_video

    video_path, out_path = Path(video_path), Path(out_path)
    audio = _channels_first(wave)
    sound_s = audio.shape[1] / float(sample_rate)
    info = probe_video(video_path)  # an unreadable source: BadClipError naming it
    cut = trim and info.duration > sound_s + TRIM_TOLERANCE_S
    attempts = ("encode",) if cut else ("copy", "encode")
    for attempt in attempts:
        try:
            with atomic_path(out_path) as tmp, av.open(str(video_path)) as source, \
                    av.open(str(tmp), mode="w", format="mp4") as output:
                stream = source.streams.video[0]
                # every stream is added before the first packet is written (the MP4 header)
                if attempt == "copy":
                    video_out = output.add_stream_from_template(stream)
                else:
                    video_out = _video_stream_for_encoding(stream, output)
                audio_out = _audio_stream(output, audio.shape[0], sample_rate)
                if attempt == "copy":
                    _copy_video(source, stream, output, video_out)
                else:
                    _encode_video(source, stream, output, video_out, sound_s if cut else None)
                _encode_audio(output, audio_out, audio, sample_rate)
            return out_path
        except (av.FFmpegError, OSError, ValueError) as exc:
            if attempt == attempts[-1]:
                raise BadClipError(
                    video_path, f"cannot write {out_path} with its picture ({exc})",
                    REENCODE_HINT,
                ) from None
            logger.info("%s: the picture cannot be copied into MP4 (%s); re-encoding it",
                        video_path, exc)
    raise AssertionError("unreachable")


__all__ = ["TRIM_TOLERANCE_S", "mux_audio", "write_wav"]
