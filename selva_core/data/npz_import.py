"""Import of the closest existing tool's ``.npz`` feature files (read without unpickling).

Expected keys (ComfyUI-SelVA format): ``sync_features`` float32 ``[1, T_sync, 768]``
(TextSynch tokens: 25 fps, 16-frame windows, stride 8, 8 tokens each), ``clip_features``
float32 ``[1, N_clip, 1024]`` (not used: SelVA feeds the model's empty CLIP-visual token),
``duration`` 0-d float, ``prompt`` 0-d str, ``variant`` 0-d str (optional). Such a clip needs a
same-stem audio file; its sync features come from the file and its CLIP-text features are
computed from the prompt at extraction time.
"""

from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from selva_core.data.errors import BadClipError
from selva_core.variants import (
    SYNC_FPS,
    SYNC_SEGMENT_FRAMES,
    SYNC_STEP_FRAMES,
    SYNC_TOKENS_PER_SEGMENT,
)

log = logging.getLogger(__name__)

NPZ_EXTENSION = ".npz"
_FIX = "re-export the features with the ComfyUI-SelVA feature extractor, or remove the file"


@dataclass(frozen=True)
class NpzFeatures:
    """Validated contents of one feature file; ``sync_features`` is ``(T_sync, D)``."""

    path: Path
    sync_features: np.ndarray
    duration: float | None
    prompt: str | None
    variant: str | None

    @property
    def num_segments(self) -> int:
        return self.sync_features.shape[0] // SYNC_TOKENS_PER_SEGMENT

    @property
    def visual_length(self) -> float:
        """Seconds of video the sync tokens cover (16 + 8 (S - 1) frames at 25 fps)."""
        frames = SYNC_SEGMENT_FRAMES + SYNC_STEP_FRAMES * (self.num_segments - 1)
        return frames / SYNC_FPS


def _scalar(data, key: str, path: Path, kind: type):
    if key not in data:
        return None
    value = data[key]
    if value.ndim != 0 and value.size != 1:
        raise BadClipError(path, f"npz key {key!r} should be a single value, got shape "
                                 f"{tuple(value.shape)}", _FIX)
    item = value.reshape(()).item()
    if kind is str:
        if not isinstance(item, str):
            raise BadClipError(path, f"npz key {key!r} should be a string", _FIX)
        return item.strip() or None
    try:
        return float(item)
    except (TypeError, ValueError):
        raise BadClipError(path, f"npz key {key!r} should be a number, got {item!r}",
                           _FIX) from None


def read_feature_npz(path: str | Path) -> NpzFeatures:
    """Load and validate a feature ``.npz``; any problem raises one BadClipError."""
    path = Path(path)
    try:
        with np.load(str(path), allow_pickle=False) as data:
            if "sync_features" not in data:
                raise BadClipError(
                    path, f"the npz has no 'sync_features' (keys: {sorted(data.files)})", _FIX
                )
            sync = np.asarray(data["sync_features"])
            duration = _scalar(data, "duration", path, float)
            prompt = _scalar(data, "prompt", path, str)
            variant = _scalar(data, "variant", path, str)
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise BadClipError(
                path, "the npz stores pickled Python objects; refusing to unpickle arbitrary "
                      "code", _FIX) from None
        raise BadClipError(path, f"cannot read the npz ({e})", _FIX) from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise BadClipError(path, f"cannot read the npz ({e})", _FIX) from None
    if sync.ndim == 3 and sync.shape[0] == 1:
        sync = sync[0]
    if sync.ndim != 2 or not np.issubdtype(sync.dtype, np.floating):
        raise BadClipError(
            path, f"'sync_features' should be float [1, T_sync, D], got {sync.dtype} "
                  f"{list(sync.shape)}", _FIX)
    tokens = sync.shape[0]
    if tokens == 0 or tokens % SYNC_TOKENS_PER_SEGMENT:
        raise BadClipError(
            path, f"'sync_features' has {tokens} tokens; expected a positive multiple of "
                  f"{SYNC_TOKENS_PER_SEGMENT} (one group per 16-frame sync window)", _FIX)
    if not np.isfinite(sync).all():
        raise BadClipError(path, "'sync_features' contains NaN or infinite values", _FIX)
    features = NpzFeatures(path, sync.astype(np.float32), duration, prompt, variant)
    tolerance = SYNC_STEP_FRAMES / SYNC_FPS
    if duration is not None and abs(duration - features.visual_length) > tolerance:
        log.warning(
            "%s: stored duration %.2f s does not match its %d sync tokens (%.2f s); using the "
            "tokens", path, duration, tokens, features.visual_length)
    return features
