"""Which clips an evaluation renders, where their reference sound is, and their features.

Clips are found by the package's one discovery (:func:`selva_core.data.clips.scan_dataset`,
read as evaluation reads a folder): unlike training, evaluation keeps a clip whose video has no
sound: it is rendered like every other clip and only its reference column (and the metrics
that need a reference) stay empty. Every file of a clip is named after its **stem**, never
after its position in a list, so a clip without audio cannot shift the names of the clips
after it (the closest tool's bug).

``data_dir`` may be a folder of clips, or a training run's output folder: its ``config.json``
names the clips folder and its ``summary.json`` the held-out (validation) clips, which are
then the default selection; the run's feature cache is reused when a cached window matches.
Features live in the package's one feature cache (:mod:`selva_core.feature_cache`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from selva_core.audio.sync import motion_energy
from selva_core.data.clips import ClipSource, scan_dataset
from selva_core.data.errors import BadClipError, EmptyDatasetError, SkipReport
from selva_core.data.windows import Window
from selva_core.evaluation.spec import EvalSpec
from selva_core.feature_cache import (
    MOTION_KEY,
    FeatureCacheSettings,
    cache_key,
    clip_conditions,
    file_hashes,
    is_reusable,
    window_path,
)
from selva_core.features import ConditionFeatures
from selva_core.run_folder import RunInfo
from selva_core.variants import SYNC_FPS
from selva_core.window_features import condition_frame_count, encoder_frames

log = logging.getLogger(__name__)


def discover_clips(folder: str | Path, *, role: str = "eval"
                   ) -> tuple[list[ClipSource], list[dict[str, str]]]:
    """Every clip of ``folder`` (sorted by name) and the files that are not one (with why)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"clip folder {folder} does not exist")
    report = SkipReport()
    try:
        clips = scan_dataset(folder, report=report, need_audio=False, strict_prompts=False,
                             role=role)
    except EmptyDatasetError:
        clips = []
    skipped = [{"clip": s.path.stem if s.path is not None else "", "role": role,
                "reason": s.reason} for s in report]
    return clips, skipped


def clip_key(clip: ClipSource) -> str:
    """The key of a clip in an evaluation (a drift clip may share an eval clip's name)."""
    return f"{clip.role}/{clip.name}"


# --- selection ---------------------------------------------------------------------------------
def selection_note(spec: EvalSpec, run: RunInfo | None) -> str:
    """How the evaluated clips were chosen, in words (the summary's ``clip_selection``)."""
    if spec.clips:
        return "the spec's 'clips'"
    if run is not None and run.held_out:
        return f"the held-out (validation) clips of the training run {run.run_dir}"
    if run is not None:
        return ("every clip of the training run's data folder (the run lists no held-out "
                "clips: these are training clips)")
    return "every clip of data_dir"


def select_clips(spec: EvalSpec, run: RunInfo | None, clips_dir: Path
                 ) -> tuple[list[ClipSource], list[dict[str, str]]]:
    """The clips to render: the spec's ``clips``, else the run's held-out clips, else every
    clip of ``clips_dir``; then the ``drift_dir`` clips. The skipped ones with why;
    FileNotFoundError when nothing is left to evaluate."""
    found, skipped = discover_clips(clips_dir)
    by_name = {c.name: c for c in found}
    wanted = spec.clips or (list(run.held_out) if run is not None and run.held_out else None)
    if wanted is None:
        clips = found
    else:
        clips = []
        for name in wanted:
            if name in by_name:
                clips.append(by_name[name])
            elif not any(s["clip"] == name for s in skipped):
                skipped.append({"clip": name, "role": "eval",
                                "reason": f"no clip named {name!r} in {clips_dir}"})
        skipped = [s for s in skipped if s["clip"] in wanted]
    if spec.drift_dir:
        drift, drift_skipped = discover_clips(spec.drift_dir, role="drift")
        clips += drift
        skipped += drift_skipped
    if not clips:
        reasons = "; ".join(f"{s['clip']}: {s['reason']}" for s in skipped[:5])
        raise FileNotFoundError(f"no clip to evaluate in {clips_dir}"
                                + (f" ({reasons})" if reasons else "")
                                + "; check 'data_dir' and 'clips' in the spec")
    return clips, skipped


# --- features ----------------------------------------------------------------------------------
def condition_settings(variant: str, duration: float, model_tag: str) -> FeatureCacheSettings:
    """The feature-cache settings of a clip's condition features for ``duration`` s."""
    return FeatureCacheSettings(variant=variant, duration=duration, window_policy="first",
                                model_tag=model_tag, latents=False)


def _from_run_cache(pipeline, clip: ClipSource, duration: float, run: RunInfo, model_tag: str
                    ) -> ConditionFeatures | None:
    """The run's cached first window of ``clip`` when it was made by the same encoders for the
    same files and prompt and covers ``duration`` with real (not padded) sync tokens."""
    variant = pipeline.variant.name
    if run.cache_dir is None or run.variant != variant or duration > run.duration + 1e-6:
        return None
    try:
        settings = FeatureCacheSettings(variant=variant, duration=run.duration,
                                        window_policy=run.window, model_tag=model_tag)
    except ValueError:
        return None
    key = cache_key(file_hashes(clip), settings, clip.prompt,
                    Window(0, 0.0, run.duration, run.duration))
    path = window_path(run.cache_dir, clip.name, 0, key)
    if not is_reusable(path, key):
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        sync, valid, text = (f.get_tensor(k) for k in ("sync_f", "sync_valid", "text_clip_f"))
    need = pipeline.variant.sequence_lengths(duration).sync
    if sync.shape[0] < need or not bool(valid[:need].all()):
        return None
    log.info("%s: features reused from the training run's cache %s", clip.name, path.name)
    return ConditionFeatures(text_clip_f=text[None], sync_f=sync[None, :need], duration=duration,
                             prompts=[clip.prompt], variant=variant,
                             extra={"source": str(clip.main_path), "from": "run cache"})


def extract_clip_features(pipeline, clip: ClipSource, duration: float, feature_dir: Path,
                          model_tag: str, run: RunInfo | None = None) -> ConditionFeatures:
    """Features of ``clip`` for ``duration`` s: from ``feature_dir`` when saved by an earlier
    run, else from the training run's cache, else extracted (and saved). BadClipError when the
    clip cannot give them (too short, undecodable)."""
    settings = condition_settings(pipeline.variant.name, duration, model_tag)
    fallback = ((lambda: _from_run_cache(pipeline, clip, duration, run, model_tag))
                if run is not None else None)
    return clip_conditions(pipeline, clip, settings, feature_dir, fallback)


def clip_motion(pipeline, clip: ClipSource, duration: float, feats: ConditionFeatures | None
                ) -> tuple[np.ndarray, float] | None:
    """(motion energy, frames per second) of ``clip``'s first ``duration`` s: from its features
    when they carry it, else from the video decoded as for the features (None without a
    video, or when it cannot be decoded: the onset figures are then left out). Extraction keeps
    the motion energy of the frames the encoder saw in the features' ``extra``, so a clip whose
    features are reused needs no second decode."""
    extra = feats.extra if feats is not None else {}
    if MOTION_KEY in extra:
        try:
            return np.asarray(json.loads(extra[MOTION_KEY]), np.float64), float(
                extra.get("motion_fps", SYNC_FPS))
        except (ValueError, TypeError):
            pass
    if clip.video_path is None:
        return None
    try:
        frames = encoder_frames(pipeline, clip.video_path, condition_frame_count(duration))
    except BadClipError as exc:
        log.warning("%s: no motion energy (%s); onset-vs-motion figures left out", clip.name,
                    exc)
        return None
    return motion_energy(frames), float(SYNC_FPS)


def cat_features(items: list[ConditionFeatures]) -> ConditionFeatures:
    """One batch from single-clip features of the same duration and variant."""
    if len(items) == 1:
        return items[0]
    return ConditionFeatures(
        text_clip_f=torch.cat([f.text_clip_f for f in items]),
        sync_f=torch.cat([f.sync_f for f in items]),
        clip_f=None, duration=items[0].duration,
        prompts=[p for f in items for p in f.prompts], variant=items[0].variant)


__all__ = ["RunInfo", "discover_clips", "extract_clip_features",
           "cat_features", "clip_motion", "condition_settings", "clip_key", "select_clips",
           "selection_note"]
