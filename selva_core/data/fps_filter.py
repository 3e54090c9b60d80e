"""The one frame-picking rule: FFmpeg's ``fps`` filter, as the reference model saw its frames.

SelVA's training features and its paper's evaluation took frames with FFmpeg's ``fps`` filter
(torio's ``frame_rate=``; av-benchmark decodes the same way), so every front end here picks
frames the same way: the trainer's feature cache, the evaluator, DeSync, ``generate`` and the
nodes' VIDEO and IMAGE+fps inputs.

The filter's rule (defaults ``round=near``, ``eof_action=round``): a source frame at time ``t``
goes to output slot ``round(t * f)`` (half away from zero, computed exactly on the stream's
rational timestamps); each slot shows the *last* frame mapped to it and a slot no frame maps to
repeats the previous one. Slots are numbered from the stream's first picture (output frame 0 is
the slot of its start). The output ends at slot ``round(end * f)`` (exclusive), where ``end`` is
the last frame's time plus its duration.

SelVA's ``demo.py`` differs: it shows, for slot k, the first frame at or after ``k / f``
(sample-and-hold), which on a 24 fps source at 25 fps picks another frame for about half the
slots. The model learned from the filter's frames.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Generic, TypeVar

Item = TypeVar("Item")

# rates and times given as floats (29.97...) are read as the nearest simple fraction (30000/1001)
_MAX_DENOMINATOR = 1_000_000


def exact(value: float | int | Fraction) -> Fraction:
    """``value`` as an exact fraction; a float is read as the nearest one with a small
    denominator (a float NTSC rate becomes 30000/1001)."""
    if isinstance(value, Fraction):
        return value
    if isinstance(value, int):
        return Fraction(value)
    return Fraction(value).limit_denominator(_MAX_DENOMINATOR)


def nearest_slot(time: Fraction, rate: Fraction) -> int:
    """``round(time * rate)`` with halves away from zero (FFmpeg's AV_ROUND_NEAR_INF)."""
    x = time * rate
    return math.floor(x + Fraction(1, 2)) if x >= 0 else -math.floor(-x + Fraction(1, 2))


class FpsFilter(Generic[Item]):
    """FFmpeg's ``fps`` filter over a stream of ``(time, item)`` in presentation order.

    ``origin`` is the time of the stream's first picture (its slot is output frame 0);
    ``first`` / ``count`` select output frames ``first .. first + count - 1`` (all to the end
    when ``count`` is None). :meth:`push` returns the items of the output frames it decides
    (in order); :meth:`finish` the rest up to the stream's end. Frames before ``first`` may be
    pushed (a window's first slot can show an earlier frame); a slot before the first pushed
    frame shows that frame.
    """

    def __init__(self, rate: float | Fraction, *, origin: float | Fraction = 0,
                 first: int = 0, count: int | None = None):
        self.rate = exact(rate)
        if self.rate <= 0:
            raise ValueError(f"the frame rate must be positive, got {rate!r}")
        self._base = nearest_slot(exact(origin), self.rate)
        self._next = first  # next output frame to decide
        self._stop = None if count is None else first + count
        self._held: Item | None = None
        self._has_held = False

    @property
    def done(self) -> bool:
        """True once every requested output frame has been given."""
        return self._stop is not None and self._next >= self._stop

    def slot(self, time: float | Fraction) -> int:
        """Output frame a source frame at ``time`` maps to."""
        return nearest_slot(exact(time), self.rate) - self._base

    def _emit_until(self, end_slot: int, fallback: Item | None) -> list[Item]:
        out: list[Item] = []
        if self._stop is not None:
            end_slot = min(end_slot, self._stop)
        while self._next < end_slot:
            out.append(self._held if self._has_held else fallback)
            self._next += 1
        return out

    def push(self, time: float | Fraction, item: Item) -> list[Item]:
        """Feed the next source frame; returns the output frames now decided."""
        out = self._emit_until(self.slot(time), item) if not self.done else []
        self._held, self._has_held = item, True
        return out

    def finish(self, end: float | Fraction) -> list[Item]:
        """End of stream at ``end`` (last frame's time + its duration): the remaining frames."""
        if not self._has_held or self.done:
            return []
        return self._emit_until(self.slot(end), self._held)


def filter_indices(num_frames: int, source_fps: float | Fraction, rate: float | Fraction,
                   count: int) -> list[int]:
    """Source frame index of each of the first ``count`` output frames of a constant-rate
    sequence of ``num_frames`` frames at ``source_fps`` (frame i at ``i / source_fps``); past the
    sequence's end the last frame is held."""
    source_fps = exact(source_fps)
    filt: FpsFilter[int] = FpsFilter(rate, count=count)
    out: list[int] = []
    for i in range(num_frames):
        out += filt.push(Fraction(i) / source_fps, i)
        if filt.done:
            break
    if not filt.done:
        out += filt.finish(Fraction(num_frames) / source_fps)
    out += [num_frames - 1] * (count - len(out))
    return out


__all__ = ["FpsFilter", "exact", "filter_indices", "nearest_slot"]
