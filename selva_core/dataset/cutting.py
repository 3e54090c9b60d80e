"""Where to cut a long source into training clips: shot boundaries and active sound.

* **Shot cuts** (:func:`shot_cuts`): every source frame is decoded as a 32 x 32 grey image
  (:func:`small_frames`, scaled by FFmpeg while decoding, at its own time); the motion energy
  of :func:`selva_core.audio.sync.motion_energy` (mean absolute difference of consecutive
  frames) jumps at a hard cut. A frame starts a new shot when its difference is at least
  ``CUT_MIN_LEVEL`` (on the 0-255 scale) and ``CUT_RATIO`` times the median difference of the
  second around it, so steady camera or object motion does not read as a cut. Fades and
  dissolves are not detected (their differences are spread over many frames).
* **Active sound** (:func:`active_starts`): a window is kept when at least
  ``ACTIVE_SHARE`` of its 400 ms blocks (:func:`selva_core.dataset.loudness.block_levels`)
  are at or above ``min_loudness``; silence, pauses and quiet stretches are skipped.
* **Plan** (:func:`plan_clips`): windows of ``duration`` seconds every ``hop`` seconds inside
  each shot (never across a cut, ``CUT_MARGIN_S`` away from it), active ones only, up to
  ``max_clips``. Starts lie on the 25 fps grid the frame decoder snaps to.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from av.video.reformatter import Interpolation, VideoReformatter

from selva_core.audio.sync import motion_energy
from selva_core.data.container import decode_stream
from selva_core.data.video import REENCODE_HINT, open_picture
from selva_core.dataset.loudness import BLOCK_S, BLOCK_STEP_S
from selva_core.variants import SYNC_FPS

CUT_FPS = SYNC_FPS  # cut times are resolved to one 25 fps frame
CUT_SIZE = 32  # frames are compared at 32 x 32 grey
CUT_MIN_LEVEL = 20.0  # mean absolute difference (0-255) a cut must reach
CUT_RATIO = 4.0  # ... and this many times the median difference around it
CUT_CONTEXT_S = 1.0  # the median is taken over +- this many seconds
CUT_MARGIN_S = 2.0 / CUT_FPS  # a clip starts / ends this far from a cut
ACTIVE_SHARE = 0.9  # share of a window's blocks that must be loud enough
DEFAULT_MIN_LOUDNESS = -45.0  # dB (BS.1770 scale, no K-weighting) a block needs to be active


def small_grey(block: torch.Tensor) -> torch.Tensor:
    """``decode_frames`` transform: uint8 (T, 3, H, W) -> float (T, 1, 32, 32) grey."""
    grey = block.float().mean(dim=1, keepdim=True)
    return F.interpolate(grey, size=(CUT_SIZE, CUT_SIZE), mode="area")


def small_frames(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every frame of ``path``'s picture as 32 x 32 grey: (times in s from the picture's start,
    uint8 (T, 1, 32, 32))."""
    times: list[float] = []
    images: list[np.ndarray] = []
    scaler = VideoReformatter()  # one scaling context for every frame
    with open_picture(path) as (container, stream, origin):
        tb = stream.time_base
        rate = float(stream.average_rate or CUT_FPS)
        for frame in decode_stream(path, container, stream, "video", REENCODE_HINT):
            t = float(Fraction(frame.pts) * tb - origin) if frame.pts is not None and tb \
                else len(times) / rate
            times.append(t)
            images.append(scaler.reformat(frame, width=CUT_SIZE, height=CUT_SIZE, format="gray",
                                          interpolation=Interpolation.AREA).to_ndarray())
    if not images:
        return np.zeros(0), np.zeros((0, 1, CUT_SIZE, CUT_SIZE), np.uint8)
    order = np.argsort(times, kind="stable")
    return np.asarray(times)[order], np.stack(images)[order][:, None]


def shot_cuts(frames: np.ndarray | torch.Tensor, fps: float = CUT_FPS,
              times: np.ndarray | None = None) -> list[float]:
    """Times (s) of the first frame of every new shot in ``frames`` (T, 1, H, W): at
    ``times`` when given, else every 1 / ``fps`` s."""
    diff = motion_energy(frames)
    if diff.shape[0] < 2:
        return []
    if times is not None:
        steps = np.diff(times)
        fps = 1.0 / float(np.median(steps[steps > 0])) if np.any(steps > 0) else fps
    half = max(1, round(CUT_CONTEXT_S * fps))
    cuts = []
    for i in range(1, diff.shape[0]):
        if diff[i] < CUT_MIN_LEVEL:
            continue
        around = np.concatenate([diff[max(1, i - half):i], diff[i + 1:i + half + 1]])
        median = float(np.median(around)) if around.size else 0.0
        if diff[i] >= CUT_RATIO * max(median, 1.0):
            cuts.append(float(times[i]) if times is not None else i / fps)
    return cuts


def active_starts(levels: np.ndarray, starts: np.ndarray, duration: float,
                  min_loudness: float) -> np.ndarray:
    """Which window starts (s) have at least ``ACTIVE_SHARE`` of their blocks loud enough."""
    if levels.size == 0:
        return np.zeros(starts.shape, bool)
    loud = np.concatenate([[0], np.cumsum(levels >= min_loudness)])
    per_window = max(1, int(round((duration - BLOCK_S) / BLOCK_STEP_S)) + 1)
    first = np.round(starts / BLOCK_STEP_S).astype(int)
    last = np.minimum(first + per_window, levels.shape[0])
    ok = first < levels.shape[0]
    share = np.where(ok, (loud[np.minimum(last, levels.shape[0])] - loud[np.minimum(
        first, levels.shape[0])]) / per_window, 0.0)
    return share >= ACTIVE_SHARE


@dataclass(frozen=True)
class PlannedClip:
    """One window of a source: start and end on the picture's timeline (s), its shot index."""

    start: float
    end: float
    shot: int


@dataclass(frozen=True)
class Plan:
    """Kept windows, plus counts of what was left out and why."""

    clips: list[PlannedClip]
    cuts: list[float]
    quiet: int
    short_shots: int


def plan_clips(length: float, cuts: list[float], levels: np.ndarray, *, duration: float,
               hop: float, min_loudness: float, max_clips: int | None = None) -> Plan:
    """Windows of ``duration`` s every ``hop`` s within each shot of a ``length`` s source."""
    bounds = [0.0, *[c for c in cuts if 0.0 < c < length], length]
    clips: list[PlannedClip] = []
    quiet = short = 0
    eps = 0.5 / CUT_FPS
    for shot, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        first = a + (CUT_MARGIN_S if shot > 0 else 0.0)
        last_end = b - (CUT_MARGIN_S if shot < len(bounds) - 2 else 0.0)
        first = np.ceil(first * CUT_FPS - 1e-6) / CUT_FPS
        if first + duration > last_end + eps:
            short += 1
            continue
        count = int(np.floor((last_end + eps - first - duration) / hop)) + 1
        starts = np.round((first + hop * np.arange(count)) * CUT_FPS) / CUT_FPS
        starts = starts[starts + duration <= last_end + eps]
        active = active_starts(levels, starts, duration, min_loudness)
        quiet += int((~active).sum())
        clips += [PlannedClip(float(s), float(s + duration), shot) for s in starts[active]]
    if max_clips is not None and len(clips) > max_clips:
        keep = np.linspace(0, len(clips) - 1, max_clips).round().astype(int)
        clips = [clips[i] for i in sorted(set(keep.tolist()))]
    return Plan(clips, [c for c in cuts if 0.0 < c < length], quiet, short)
