"""The one seam between PyAV and the dataset code.

Every media file is opened, its stream picked and its packets decoded through these helpers,
so any failure of the demuxer or decoder -- a damaged file, a codec this FFmpeg build has no
decoder for (PyAV then gives the stream no codec context), a stream that cannot be opened --
becomes one :class:`BadClipError` naming the file, which the user's ``on_bad_clip`` choice then
skips or stops on like every other unusable clip.

It also measures what a file really holds (by reading its packets, without decoding them) so
lengths are never taken from a header alone, and reports where each stream starts on the
container's timeline so sound and picture can be aligned.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import av

from selva_core.data.errors import BadClipError

log = logging.getLogger(__name__)

# Everything PyAV / FFmpeg raise for bad input (InvalidDataError etc. derive from FFmpegError;
# some PyAV checks raise ValueError; file-system problems are OSError).
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    av.error.FFmpegError, OSError, EOFError, ValueError,
)
# A file holding less than its header promises by more than this is reported as truncated
# (codec priming/padding and container rounding stay well below it).
TRUNCATION_TOLERANCE_S = 0.2
TRUNCATION_TOLERANCE_FRACTION = 0.02


def reason(error: BaseException) -> str:
    """FFmpeg's short reason without the repeated file name."""
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


@contextmanager
def media_errors(path: Path, what: str, fix: str) -> Iterator[None]:
    """Turn any demuxer/decoder failure inside the block into BadClipError for ``path``."""
    try:
        yield
    except BadClipError:
        raise
    except DECODE_ERRORS as e:
        raise BadClipError(path, f"cannot read the {what} ({reason(e)})", fix) from None


def open_media(path: Path, what: str, fix: str):
    """``av.open`` for reading; an unreadable file raises BadClipError naming it."""
    with media_errors(path, what, fix):
        return av.open(str(path), mode="r")


def decodable(path: Path, stream, what: str, fix: str):
    """The stream's codec context; BadClipError when FFmpeg has no decoder for its codec."""
    context = stream.codec_context
    if context is None:
        tag = getattr(stream, "codec_tag", None)
        named = f" (codec tag {tag!r})" if tag else ""
        raise BadClipError(
            path, f"its {what} stream uses a codec this FFmpeg build cannot decode{named}", fix
        )
    return context


def stream_start(stream) -> float | None:
    """Where ``stream`` starts on the container's timeline, in seconds (None if unknown)."""
    if stream.start_time is None or stream.time_base is None:
        return None
    return float(stream.start_time * stream.time_base)


def header_duration(stream, container) -> float | None:
    """The length the file's header gives for ``stream`` (the container's when the stream has
    none), in seconds from the stream's start."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return max(0.0, container.duration / av.time_base - (stream_start(stream) or 0.0))
    return None


@dataclass(frozen=True)
class HeldLength:
    """What the packets of one stream really cover: first and last time, in seconds."""

    start: float
    end: float

    @property
    def length(self) -> float:
        return max(0.0, self.end - self.start)


def measure_streams(container, streams) -> dict[int, HeldLength]:
    """Read every packet (no decoding) and return the time span each of ``streams`` covers.

    A stream without timestamped packets is absent from the result. The caller wraps this in
    :func:`media_errors`; a read error after some packets ends the measurement there (what
    came before is what the file holds).
    """
    wanted = {s.index: s for s in streams}
    spans: dict[int, list[float]] = {}
    frame_step = {
        i: (1.0 / float(s.average_rate)) if s.type == "video" and s.average_rate else 0.0
        for i, s in wanted.items()
    }
    packets = container.demux(*wanted.values())
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            break
        except DECODE_ERRORS as e:
            if not spans:
                raise
            log.debug("reading packets stopped early (%s)", reason(e))
            break
        index = packet.stream.index
        ts = packet.pts if packet.pts is not None else packet.dts
        if index not in wanted or ts is None or packet.time_base is None:
            continue
        begin = float(ts * packet.time_base)
        step = float(packet.duration * packet.time_base) if packet.duration else frame_step[index]
        span = spans.setdefault(index, [begin, begin + step])
        span[0] = min(span[0], begin)
        span[1] = max(span[1], begin + step)
    return {i: HeldLength(a, b) for i, (a, b) in spans.items()}


def is_truncated(promised: float | None, held: float | None) -> bool:
    """True when a file holds clearly less than its header promises."""
    if promised is None or held is None:
        return False
    slack = max(TRUNCATION_TOLERANCE_S, TRUNCATION_TOLERANCE_FRACTION * promised)
    return held + slack < promised


def decode_stream(path: Path, container, stream, what: str, fix: str) -> Iterator:
    """Decoded frames of ``stream``, packet by packet.

    A decoder error before the first frame raises BadClipError; one after it (a damaged or cut
    tail) ends the stream there with a warning naming the file and the time reached, so the
    caller keeps what could be decoded and compares it with what the header promised.
    """
    decoded = 0
    last_end = None
    with media_errors(path, what, fix):
        packets = container.demux(stream)  # ends with an empty packet that flushes the decoder
    while True:
        try:
            packet = next(packets, None)
            if packet is None:
                return
            frames = packet.decode()
        except DECODE_ERRORS as e:
            if decoded == 0:
                raise BadClipError(path, f"cannot read the {what} ({reason(e)})", fix) from None
            where = f"{last_end:.2f} s" if last_end is not None else f"{decoded} frame(s)"
            log.warning("%s: decoding the %s stopped after %s (%s); using what was decoded",
                        path, what, where, reason(e))
            return
        for frame in frames:
            decoded += 1
            if frame.time is not None:
                last_end = float(frame.time)
                if getattr(frame, "sample_rate", None):
                    last_end += frame.samples / frame.sample_rate
            yield frame
