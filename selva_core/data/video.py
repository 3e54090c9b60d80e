"""Video probing and frame decoding with PyAV.

Frames are taken by *sample-and-hold* at a target rate (REFERENCE_ARCHITECTURE.md §3.1): the
k-th output frame of a window starting at ``start`` is the first decoded frame whose timestamp
is at or after ``start + k / fps``; a slower source therefore repeats frames, a faster one skips
them. Timestamps are the stream's own (absolute) presentation times, so audio and video stay
aligned exactly as the container says. When the stream ends at most ``pad_tail`` frames short of
the request, the last frame is repeated (what the reference training data did for rounding
shortfalls, e.g. an 8 s clip at 24 fps); a larger shortfall returns fewer frames and the caller
flags the missing sync positions.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch

from selva_core.data.errors import BadClipError
from selva_core.variants import SYNC_FPS

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".mov", ".mkv", ".webm", ".avi")
REENCODE_HINT = "re-encode it, e.g. `ffmpeg -i IN -c:v libx264 -c:a aac OUT.mp4`, or remove it"
_TIME_EPS = 1e-6  # seconds; absorbs float rounding between frame times and target times


@dataclass(frozen=True)
class VideoInfo:
    """What a cheap open of the container tells: size, rate, length, audio track format."""

    path: Path
    duration: float
    fps: float | None
    width: int
    height: int
    has_audio: bool
    audio_sample_rate: int | None = None
    audio_channels: int | None = None
    audio_duration: float | None = None


def _stream_duration(stream, container) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return float(container.duration / av.time_base)
    return None


def _reason(error: Exception) -> str:
    """FFmpeg's short reason without the repeated file name."""
    return getattr(error, "strerror", None) or str(error)


def _open(path: Path):
    try:
        return av.open(str(path), mode="r")
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise BadClipError(path, f"cannot read the video ({_reason(e)})", REENCODE_HINT) from None


def probe_video(path: str | Path) -> VideoInfo:
    """Open ``path`` and read its stream parameters; unreadable files raise BadClipError."""
    path = Path(path)
    with _open(path) as container:
        if not container.streams.video:
            raise BadClipError(path, "the file holds no video stream", REENCODE_HINT)
        vs = container.streams.video[0]
        duration = _stream_duration(vs, container)
        fps = float(vs.average_rate) if vs.average_rate else None
        if duration is None and vs.frames and fps:
            duration = vs.frames / fps
        width, height = vs.codec_context.width, vs.codec_context.height
        audio = container.streams.audio[0] if container.streams.audio else None
        a_sr = a_ch = a_dur = None
        if audio is not None:
            a_sr = audio.codec_context.sample_rate or audio.rate
            a_ch = audio.codec_context.channels
            a_dur = _stream_duration(audio, container)
    if duration is None:
        duration = float(len(decode_frames(path, fps=SYNC_FPS, start=0.0))) / SYNC_FPS
    if not width or not height:
        raise BadClipError(path, "the video stream has no frame size", REENCODE_HINT)
    return VideoInfo(path, duration, fps, int(width), int(height), audio is not None,
                     a_sr, a_ch, a_dur)


def decode_frames(
    path: str | Path,
    *,
    fps: float = SYNC_FPS,
    start: float = 0.0,
    num_frames: int | None = None,
    pad_tail: int = 3,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    chunk: int = 32,
) -> torch.Tensor:
    """Decode frames at ``fps`` by sample-and-hold from ``start`` seconds.

    Returns uint8 ``(T, 3, H, W)`` RGB with ``T <= num_frames`` (all remaining frames when
    ``num_frames`` is None). ``transform`` (e.g. the encoder's resize) is applied to every
    ``chunk`` frames as they are decoded, so full-resolution frames of a long window are never
    all in memory at once; the result is then the concatenation of its outputs. Raises
    BadClipError when the file cannot be decoded.
    """
    path = Path(path)
    if num_frames is not None and num_frames <= 0:
        return torch.zeros(0, 3, 1, 1, dtype=torch.uint8)
    frames: list[np.ndarray] = []
    done: list[torch.Tensor] = []

    def flush() -> None:
        if frames:
            block = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous()
            done.append(transform(block) if transform is not None else block)
            frames.clear()

    try:
        with _open(path) as container:
            if not container.streams.video:
                raise BadClipError(path, "the file holds no video stream", REENCODE_HINT)
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            if start > 0 and stream.time_base is not None:
                container.seek(math.floor(start / stream.time_base), stream=stream,
                               backward=True, any_frame=False)
            fallback_dt = 1.0 / float(stream.average_rate) if stream.average_rate else 1 / fps
            k = 0
            n_decoded = 0
            for frame in container.decode(stream):
                t = frame.time if frame.time is not None else n_decoded * fallback_dt
                n_decoded += 1
                if t + _TIME_EPS < start:
                    continue
                image = None
                while t + _TIME_EPS >= start + k / fps:
                    if image is None:
                        image = frame.to_ndarray(format="rgb24")
                    frames.append(image)
                    k += 1
                    if len(frames) >= chunk:
                        flush()
                    if num_frames is not None and k >= num_frames:
                        break
                if num_frames is not None and k >= num_frames:
                    break
    except av.error.FFmpegError as e:
        raise BadClipError(path, f"decoding failed ({_reason(e)})", REENCODE_HINT) from None
    flush()
    if not done:
        return torch.zeros(0, 3, 1, 1, dtype=torch.uint8)
    out = torch.cat(done)
    missing = 0 if num_frames is None else num_frames - out.shape[0]
    if 0 < missing <= pad_tail:
        out = torch.cat([out, out[-1:].expand(missing, *out.shape[1:])])
    return out
