"""Video frames from any source, made ready for feature extraction (25 fps, masked, keyed).

Front ends hand over frames in their own layout at their own rate (ComfyUI: an IMAGE batch
(N, H, W, 3) float in [0, 1] plus an fps). SelVA's video encoder reads 25 fps, so
:func:`prepare_frames` resamples by timestamps (frame i at i / fps) with the one rule every
front end uses, FFmpeg's ``fps`` filter as the reference model saw its frames
(:mod:`selva_core.data.fps_filter`; the trainer's :func:`selva_core.data.video.decode_frames`
applies it to a file's own timestamps): source frame i goes to output slot round(i * 25 / fps)
and each slot shows the last frame mapped to it. The same video therefore gives the same 25 fps
frames in a node and in the training feature cache; the clip's length and sync are kept at any
source rate (frames are duplicated or dropped, never interpolated).

An optional mask (one (H, W) mask or one per source frame, 1 = keep) fades the rest of each
frame to neutral grey 0.5 by ``mask_strength`` (0 = no effect, 1 = fully grey), the closest
tool's way to point the model at one sound source. :func:`prepare_video_file` does the same
for a video file, decoding to uint8 (long clips never sit in memory as float).
:func:`content_key` hashes the resampled frames and settings, so a cache of features can be
keyed by content (a re-loaded identical video hits, any changed pixel misses);
:class:`ContentCache` is that small in-memory cache.

Errors are :class:`FrameInputError` (a ``ValueError``) naming the input (``images``, ``fps``,
``mask``, ``duration``) and what to do.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch

from .data.fps_filter import filter_indices
from .variants import SYNC_FPS, min_duration

#: Frames the pipeline may add at the end (repeating the last one) to reach a duration.
PAD_TOLERANCE_FRAMES = 3
_CHUNK = 64  # frames converted at a time (bounds the float copy of long HD clips)


class FrameInputError(ValueError):
    """A bad frame-side input; ``input_name`` says which one."""

    def __init__(self, input_name: str, message: str):
        super().__init__(message)
        self.input_name = input_name


@dataclass
class PreparedFrames:
    """25 fps frames (T, 3, H, W) uint8 and how they were made."""

    frames: torch.Tensor
    source_frames: int
    source_fps: float
    duration: float  # seconds the features will cover

    @property
    def summary(self) -> str:
        """One line: how many frames became how many seconds."""
        source_s = self.source_frames / self.source_fps
        return (f"{self.source_frames} frames at {self.source_fps:g} fps ({source_s:.2f} s) -> "
                f"{self.frames.shape[0]} frames at {SYNC_FPS} fps; features for "
                f"{self.duration:.2f} s")


def check_fps(fps: float) -> float:
    fps = float(fps)
    if not math.isfinite(fps) or fps <= 0:
        raise FrameInputError(
            "fps", f"the frame rate must be a positive number, got {fps!r}; set fps to the "
            "video's frame rate (e.g. the 'fps' output of Get Video Components)")
    return fps


def resample_indices(num_frames: int, fps: float, count: int | None = None,
                     target_fps: int = SYNC_FPS) -> torch.Tensor:
    """Source frame index of each output frame at ``target_fps`` (long tensor).

    ``count`` output frames (default: as many as fit in the clip, ``floor(N / fps * 25)``);
    past the last source frame the last frame is held. Output k shows the last source frame
    whose slot round(i * target_fps / fps) is at most k (see the module doc).
    """
    fps = check_fps(fps)
    if num_frames <= 0:
        raise FrameInputError("images", "the video has no frames; connect a video or an IMAGE "
                              "batch with at least one frame")
    if count is None:
        count = max(1, math.floor(num_frames / fps * target_fps + 1e-6))
    return torch.tensor(filter_indices(num_frames, fps, target_fps, count), dtype=torch.long)


def _check_images(images: torch.Tensor) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise FrameInputError("images", f"expected an IMAGE tensor, got {type(images).__name__}")
    if images.ndim == 3 and images.shape[-1] in (1, 3, 4):
        images = images.unsqueeze(0)
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise FrameInputError(
            "images", f"expected frames as (N, H, W, 3), got shape {tuple(images.shape)}; connect "
            "an IMAGE batch (e.g. Get Video Components' images)")
    if images.shape[0] == 0:
        raise FrameInputError("images", "the video has no frames; connect a video or an IMAGE "
                              "batch with at least one frame")
    return images


def _check_mask(mask: torch.Tensor, num_frames: int, height: int, width: int) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor):
        raise FrameInputError("mask", f"expected a MASK tensor, got {type(mask).__name__}")
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if mask.ndim != 3:
        raise FrameInputError("mask", f"expected a (frames, H, W) or (H, W) mask, got shape "
                              f"{tuple(mask.shape)}")
    if tuple(mask.shape[-2:]) != (height, width):
        raise FrameInputError(
            "mask", f"the mask is {mask.shape[-1]}x{mask.shape[-2]} but the video is "
            f"{width}x{height}; make the mask from the same frames or resize it to {width}x"
            f"{height}")
    if mask.shape[0] not in (1, num_frames):
        raise FrameInputError(
            "mask", f"the mask has {mask.shape[0]} frames but the video has {num_frames}; give "
            "one mask for the whole clip or one per frame")
    if not torch.isfinite(mask).all():
        raise FrameInputError("mask", "the mask contains NaN or infinite values")
    return mask.clamp(0.0, 1.0)


def _plan(n: int, fps: float, duration: float) -> tuple[float, int]:
    """(seconds the features cover, 25 fps frames to take) for ``n`` frames at ``fps``."""
    available = max(1, math.floor(n / fps * SYNC_FPS + 1e-6))
    clip_s = available / SYNC_FPS
    duration = float(duration)
    if not math.isfinite(duration) or duration < 0:
        raise FrameInputError("duration", f"the duration must be 0 (the whole video) or a "
                              f"positive number of seconds, got {duration!r}")
    if duration == 0:
        duration = clip_s
    elif duration * SYNC_FPS > available + PAD_TOLERANCE_FRAMES:
        raise FrameInputError(
            "duration", f"{duration:g} s is longer than the video ({clip_s:.2f} s: {n} frames at "
            f"{fps:g} fps); set duration to 0 (the whole video) or at most {clip_s:.2f}")
    if duration < min_duration():
        raise FrameInputError(
            "duration" if duration < clip_s else "images",
            f"{duration:.2f} s of video is too short: SelVA needs at least "
            f"{min_duration():.2f} s (16 frames at {SYNC_FPS} fps); use a longer clip")
    return duration, min(available, math.ceil(duration * SYNC_FPS - 1e-6))


def _check_strength(mask: torch.Tensor | None, mask_strength: float) -> float:
    strength = float(mask_strength)
    if mask is not None and (not math.isfinite(strength) or not 0.0 <= strength <= 1.0):
        raise FrameInputError("mask_strength", f"must be between 0 and 1, got {strength!r}")
    return strength


def _masked(chunk: torch.Tensor, mask: torch.Tensor | None, sel: torch.Tensor,
            strength: float) -> torch.Tensor:
    """Float frames (n, H, W, 3) in [0, 1] with the area outside the mask faded to grey."""
    if mask is None or strength <= 0:
        return chunk
    m = mask[0:1] if mask.shape[0] == 1 else mask.index_select(0, sel.to(mask.device))
    keep = 1.0 - strength * (1.0 - m.float().cpu().unsqueeze(-1))
    return chunk * keep + 0.5 * (1.0 - keep)


def _to_uint8(chunk: torch.Tensor) -> torch.Tensor:
    """(n, H, W, 3) float in [0, 1] -> (n, 3, H, W) uint8."""
    return (chunk.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).permute(0, 3, 1, 2)


def prepare_frames(
    images: torch.Tensor,
    fps: float,
    *,
    duration: float = 0.0,
    mask: torch.Tensor | None = None,
    mask_strength: float = 1.0,
) -> PreparedFrames:
    """IMAGE frames (N, H, W, C) float in [0, 1] at ``fps`` -> 25 fps (T, 3, H, W) uint8.

    ``duration`` 0 keeps the whole clip; a longer duration than the clip (beyond the
    :data:`PAD_TOLERANCE_FRAMES` the pipeline may pad) is refused, as is a clip shorter than
    one sync window. ``mask``: see the module docstring. Grey channels are repeated, alpha
    dropped.
    """
    images = _check_images(images)
    fps = check_fps(fps)
    n, height, width = int(images.shape[0]), int(images.shape[1]), int(images.shape[2])
    duration, count = _plan(n, fps, duration)
    strength = _check_strength(mask, mask_strength)
    idx = resample_indices(n, fps, count)
    mask_t = _check_mask(mask, n, height, width) if mask is not None else None

    out = torch.empty((count, 3, height, width), dtype=torch.uint8)
    for start in range(0, count, _CHUNK):
        sel = idx[start:start + _CHUNK]
        chunk = images.index_select(0, sel.to(images.device)).float().cpu()[..., :3]
        if chunk.shape[-1] == 1:
            chunk = chunk.expand(-1, -1, -1, 3)
        out[start:start + _CHUNK] = _to_uint8(_masked(chunk, mask_t, sel, strength))
    return PreparedFrames(frames=out, source_frames=n, source_fps=fps, duration=duration)


def prepare_video_file(
    path: str | os.PathLike,
    *,
    duration: float = 0.0,
    mask: torch.Tensor | None = None,
    mask_strength: float = 1.0,
) -> PreparedFrames:
    """:func:`prepare_frames` for a video file, without holding its frames as float.

    The 25 fps frames are decoded as uint8 by :func:`selva_core.data.video.decode_frames` (the
    same rule on the file's own timestamps, turned upright), so a file and its frames as an
    IMAGE batch give the same 25 fps frames. A per-frame mask is matched to the source
    pictures by the same rule.
    """
    from .data.video import decode_frames, probe_video

    info = probe_video(path)
    fps = float(info.fps) if info.fps else float(SYNC_FPS)
    n = max(1, round(info.duration * fps))
    duration, count = _plan(n, fps, duration)
    strength = _check_strength(mask, mask_strength)
    frames = decode_frames(path, fps=SYNC_FPS, num_frames=count, pad_tail=count)
    if frames.shape[0] == 0:
        raise FrameInputError("video", f"no frame of {path} could be decoded; re-encode it, "
                              "e.g. `ffmpeg -i IN -c:v libx264 OUT.mp4`")
    mask_t = (_check_mask(mask, n, frames.shape[2], frames.shape[3]) if mask is not None
              else None)
    if mask_t is not None and strength > 0:
        idx = resample_indices(n, fps, count)
        for start in range(0, frames.shape[0], _CHUNK):
            block = frames[start:start + _CHUNK].permute(0, 2, 3, 1).float() / 255.0
            sel = idx[start:start + _CHUNK]
            frames[start:start + _CHUNK] = _to_uint8(_masked(block, mask_t, sel, strength))
    return PreparedFrames(frames=frames, source_frames=n, source_fps=fps, duration=duration)


def content_key(*parts: Any) -> str:
    """Hash of tensors (by dtype, shape and bytes) and plain values, for content caches."""
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        if isinstance(part, torch.Tensor):
            t = part.detach().cpu().contiguous()
            h.update(f"tensor{tuple(t.shape)}{t.dtype}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(repr(part).encode())
        h.update(b"\x00")
    return h.hexdigest()


class ContentCache:
    """A small least-recently-used cache keyed by :func:`content_key`."""

    def __init__(self, max_entries: int = 8):
        self.max_entries = max_entries
        self._items: OrderedDict[str, Any] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> Any | None:
        if key in self._items:
            self._items.move_to_end(key)
            self.hits += 1
            return self._items[key]
        self.misses += 1
        return None

    def put(self, key: str, value: Any) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


__all__ = ["ContentCache", "FrameInputError", "PreparedFrames", "check_fps", "content_key",
           "prepare_frames", "prepare_video_file", "resample_indices"]
