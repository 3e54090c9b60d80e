"""Video probing and frame decoding with PyAV.

Frames are taken as FFmpeg's ``fps`` filter takes them (REFERENCE_ARCHITECTURE.md §3.1, the
rule in :mod:`selva_core.data.fps_filter`): a source frame at time t goes to output slot
round(t * fps) and each slot shows the last frame mapped to it, so a slower source repeats
frames and a faster one skips them. Frames are turned upright as players show them (the
display matrix of phone videos). Times count from the video stream's start on the container's
timeline (the audio loader aligns a video's own track to the same origin, see
``audio.load_mono``). Lengths come from the file's packets, not from its header alone, so a
truncated file is measured as what it holds.
When the stream ends at most ``pad_tail`` frames short of the request, the last frame is
repeated (what the reference training data did for rounding shortfalls, e.g. an 8 s clip at
24 fps); a larger shortfall returns fewer frames and the caller flags the missing sync
positions.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from selva_core.data.container import (
    decodable,
    decode_stream,
    header_duration,
    measure_streams,
    media_errors,
    open_media,
    stream_start,
)
from selva_core.data.errors import BadClipError
from selva_core.data.fps_filter import FpsFilter, exact, nearest_slot
from selva_core.variants import SYNC_FPS

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".mov", ".mkv", ".webm", ".avi")
REENCODE_HINT = "re-encode it, e.g. `ffmpeg -i IN -c:v libx264 -c:a aac OUT.mp4`, or remove it"


@dataclass(frozen=True)
class VideoInfo:
    """What the container tells and its packets confirm: size, rate, lengths, audio format.

    ``duration`` / ``audio_duration`` are what the file's packets really hold (seconds from
    each stream's start); ``header_duration`` / ``audio_header_duration`` what its header
    promises (larger for a truncated file). ``audio_offset`` is where the audio stream starts
    relative to the picture on the container's timeline (positive = later).
    ``audio_problem`` says why the audio track cannot be decoded (None when it can); it only
    matters when the clip's sound comes from that track.
    """

    path: Path
    duration: float
    fps: float | None
    width: int
    height: int
    has_audio: bool
    audio_sample_rate: int | None = None
    audio_channels: int | None = None
    audio_duration: float | None = None
    header_duration: float | None = None
    audio_header_duration: float | None = None
    audio_offset: float = 0.0
    audio_problem: str | None = None


def probe_video(path: str | Path) -> VideoInfo:
    """Open ``path``, read its stream parameters and measure what its packets hold (no
    decoding); an unreadable file or a codec FFmpeg cannot decode raises BadClipError."""
    path = Path(path)
    with open_media(path, "video", REENCODE_HINT) as container, \
            media_errors(path, "video", REENCODE_HINT):
        if not container.streams.video:
            raise BadClipError(path, "the file holds no video stream", REENCODE_HINT)
        vs = container.streams.video[0]
        context = decodable(path, vs, "video", REENCODE_HINT)
        header = header_duration(vs, container)
        fps = float(vs.average_rate) if vs.average_rate else None
        if header is None and vs.frames and fps:
            header = vs.frames / fps
        width, height = context.width, context.height
        audio = container.streams.audio[0] if container.streams.audio else None
        a_sr = a_ch = a_header = None
        offset = 0.0
        audio_problem = None
        if audio is not None:
            try:
                a_context = decodable(path, audio, "audio", REENCODE_HINT)
                a_sr = a_context.sample_rate or audio.rate
                a_ch = a_context.channels
            except BadClipError as e:  # matters only when the clip's sound is this track
                audio_problem = e.problem
            a_header = header_duration(audio, container)
            v_start, a_start = stream_start(vs), stream_start(audio)
            if v_start is not None and a_start is not None:
                offset = a_start - v_start
        spans = measure_streams(container, [vs] + ([audio] if audio is not None else []))
        held = spans.get(vs.index)
        a_held = spans.get(audio.index) if audio is not None else None
    duration = held.length if held is not None else header
    a_dur = a_held.length if a_held is not None else a_header
    if duration is None:
        duration = float(len(decode_frames(path, fps=SYNC_FPS, start=0.0))) / SYNC_FPS
    if not width or not height:
        raise BadClipError(path, "the video stream has no frame size", REENCODE_HINT)
    return VideoInfo(path, duration, fps, int(width), int(height), audio is not None,
                     a_sr, a_ch, a_dur, header, a_header, offset, audio_problem)


def upright(image: np.ndarray, frame) -> np.ndarray:
    """``image`` (H, W, 3) turned as players show ``frame``: the display matrix of phone videos
    (rotation in quarter turns, mirrors) is applied the way FFmpeg's own autorotation does."""
    matrix = None
    for data in frame.side_data:
        if getattr(data, "type", None) is not None and data.type.name == "DISPLAYMATRIX":
            matrix = np.frombuffer(bytes(data), dtype="<i4")
            break
    if matrix is None or matrix.size != 9:
        return image
    theta = -float(frame.rotation)  # clockwise degrees, as FFmpeg's get_rotation
    theta -= 360 * math.floor(theta / 360 + 0.9 / 360)
    if abs(theta - 90) < 1:
        image = image.transpose(1, 0, 2) if matrix[3] > 0 else np.rot90(image, -1)
    elif abs(theta - 180) < 1:
        image = image[:, ::-1] if matrix[0] < 0 else image
        image = image[::-1] if matrix[4] < 0 else image
    elif abs(theta - 270) < 1:
        image = np.rot90(image, -1)[::-1] if matrix[3] < 0 else np.rot90(image, 1)
    elif abs(theta) < 1:
        image = image[::-1] if matrix[4] < 0 else image
    else:  # not a quarter turn: FFmpeg rotates by resampling; the nearest quarter turn here
        image = np.rot90(image, -round(theta / 90))
    return np.ascontiguousarray(image)


@contextmanager
def open_picture(path: Path) -> Iterator[tuple[Any, Any, Fraction]]:
    """``(container, video stream, origin)`` of ``path``, opened for decoding inside the
    library's error seam (what goes wrong in the ``with`` body is one BadClipError too);
    ``origin`` is where the picture starts on the container's timeline, from which frame
    slots count."""
    with open_media(path, "video", REENCODE_HINT) as container, \
            media_errors(path, "video", REENCODE_HINT):
        if not container.streams.video:
            raise BadClipError(path, "the file holds no video stream", REENCODE_HINT)
        stream = container.streams.video[0]
        decodable(path, stream, "video", REENCODE_HINT)
        stream.thread_type = "AUTO"
        tb = stream.time_base
        origin = Fraction(stream.start_time) * tb if stream.start_time is not None and tb \
            else Fraction(0)
        yield container, stream, origin


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
    """Decode the frames FFmpeg's ``fps`` filter gives at ``fps``, from ``start`` seconds.

    Frames are picked by :class:`selva_core.data.fps_filter.FpsFilter` (the reference's rule)
    on the stream's exact timestamps and turned upright (:func:`upright`). Returns uint8
    ``(T, 3, H, W)`` RGB with ``T <= num_frames`` (all remaining frames when ``num_frames`` is
    None). ``start`` is snapped to the nearest output frame (``round(start * fps)``); times
    count from the video stream's own start (``start=0`` is its first picture). ``transform``
    (e.g. the encoder's resize) is applied to every ``chunk`` frames as they are decoded, so
    full-resolution frames of a long window are never all in memory at once; the result is
    then the concatenation of its outputs. Raises BadClipError when the file cannot be
    decoded; a file whose tail cannot be decoded returns the frames before it (with a warning).
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

    with open_picture(path) as (container, stream, origin):
        tb = stream.time_base
        filt: FpsFilter[object] = FpsFilter(fps, origin=origin,
                                            first=nearest_slot(exact(start), exact(fps)),
                                            count=num_frames)
        # a window's first slot may show a frame up to half a slot before it
        seek_to = origin + exact(start) - 1 / exact(fps)
        if start > 0 and tb is not None and seek_to > origin:
            container.seek(math.floor(seek_to / tb), stream=stream, backward=True,
                           any_frame=False)
        rate = exact(float(stream.average_rate)) if stream.average_rate else exact(fps)
        last: tuple[object, np.ndarray] | None = None  # (frame, its image): held frames repeat

        def take(picked: list) -> None:
            nonlocal last
            for frame in picked:
                if last is None or last[0] is not frame:
                    with media_errors(path, "video", REENCODE_HINT):
                        last = (frame, upright(frame.to_ndarray(format="rgb24"), frame))
                frames.append(last[1])
                if len(frames) >= chunk:
                    flush()

        n_decoded = 0
        end = origin
        for frame in decode_stream(path, container, stream, "video", REENCODE_HINT):
            if frame.pts is not None and frame.time_base is not None:
                t = Fraction(frame.pts) * frame.time_base
                step = Fraction(frame.duration) * frame.time_base if frame.duration else 1 / rate
            else:
                t, step = origin + n_decoded / rate, 1 / rate
            n_decoded += 1
            end = max(end, t + step)
            take(filt.push(t, frame))
            if filt.done:
                break
        if not filt.done:
            take(filt.finish(end))
    flush()
    if not done:
        return torch.zeros(0, 3, 1, 1, dtype=torch.uint8)
    out = torch.cat(done)
    missing = 0 if num_frames is None else num_frames - out.shape[0]
    if 0 < missing <= pad_tail:
        out = torch.cat([out, out[-1:].expand(missing, *out.shape[1:])])
    return out
