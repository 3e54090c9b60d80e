"""Window planning: how a clip of any length becomes training examples of a fixed duration.

Policy (documented for users in the trainer's help):

* A clip's usable length is the overlap of its picture and its sound,
  ``min(video length, audio length)`` (for ``.npz`` features: the span of their sync tokens).
* ``window_policy='first'``: one example from the start of the clip.
  ``window_policy='all'``: back-to-back, non-overlapping windows of the training duration D
  starting at 0, D, 2D, ... Window starts are snapped down to the 0.32 s sync stride grid
  (8 frames at 25 fps) so a window's sync tokens coincide with those of the whole clip; for D a
  multiple of 0.32 s (the default 8 s is) windows are exactly back to back.
* A window that reaches past the end of the clip is *partial*. With ``pad_policy='pad'`` the
  first window is always kept (a clip shorter than D becomes one padded example) and a later
  partial window is kept when it holds at least half a window (and at least one 0.64 s sync
  window); its audio is padded with silence and its missing sync positions are flagged invalid
  (the trainer substitutes the model's learned empty sync feature, never zeros).
  With ``pad_policy='drop'`` only full windows are used.
* Nothing is silently truncated: with ``'first'`` a longer clip's remainder is reported in the
  log; with ``'all'`` only a tail shorter than half a window is left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from selva_core.variants import SYNC_FPS, SYNC_STEP_FRAMES, min_duration

WindowPolicy = Literal["first", "all"]
PadPolicy = Literal["pad", "drop"]
WINDOW_POLICIES: tuple[str, ...] = ("first", "all")
PAD_POLICIES: tuple[str, ...] = ("pad", "drop")
MIN_LAST_WINDOW_FRACTION = 0.5  # a later partial window is kept when >= this share of D
FULL_TOLERANCE_S = 1.0 / SYNC_FPS  # a window short by less than one frame still counts as full


@dataclass(frozen=True)
class Window:
    """One training example cut from a clip: its index, start and real content (seconds)."""

    index: int
    start: float
    content: float  # seconds of real clip inside the window (<= duration)
    duration: float

    @property
    def full(self) -> bool:
        return self.content >= self.duration - FULL_TOLERANCE_S

    @property
    def start_frame(self) -> int:
        """First 25 fps frame of the window (a multiple of the 8-frame sync stride)."""
        return round(self.start * SYNC_FPS)


def window_hop(duration: float) -> float:
    """Distance between window starts: D snapped down to the 0.32 s sync stride grid."""
    frames = math.floor(duration * SYNC_FPS + 1e-6)
    hop_frames = max(frames // SYNC_STEP_FRAMES, 1) * SYNC_STEP_FRAMES
    return hop_frames / SYNC_FPS


def plan_windows(
    length: float,
    duration: float,
    window_policy: str = "all",
    pad_policy: str = "pad",
    min_last_fraction: float = MIN_LAST_WINDOW_FRACTION,
) -> list[Window]:
    """Windows of ``duration`` seconds for a clip of ``length`` seconds (see module doc).

    Returns an empty list when the clip yields no example under the policy (shorter than one
    sync window, or shorter than D with ``pad_policy='drop'``).
    """
    if window_policy not in WINDOW_POLICIES:
        raise ValueError(f"window_policy must be one of {WINDOW_POLICIES}, got {window_policy!r}")
    if pad_policy not in PAD_POLICIES:
        raise ValueError(f"pad_policy must be one of {PAD_POLICIES}, got {pad_policy!r}")
    if not math.isfinite(duration) or duration < min_duration():
        raise ValueError(
            f"training duration {duration!r} s is shorter than one sync window "
            f"({min_duration():.2f} s)"
        )
    if not math.isfinite(length) or length + 1e-9 < min_duration():
        return []
    hop = window_hop(duration)
    min_partial = max(min_last_fraction * duration, min_duration())
    windows: list[Window] = []
    index = 0
    while True:
        start = round(index * hop * SYNC_FPS) / SYNC_FPS
        content = min(duration, length - start)
        if content <= 0:
            break
        window = Window(index, start, content, duration)
        if window.full:
            windows.append(window)
        elif pad_policy == "pad" and (index == 0 or content + 1e-9 >= min_partial):
            windows.append(window)
        if window_policy == "first" or not window.full:
            break
        index += 1
    return windows
