"""Which clips an evaluation renders, where their reference sound is, and their features.

Unlike training, evaluation keeps a clip whose video has no sound: it is rendered like every
other clip and only its reference column (and the metrics that need a reference) stay empty.
Every file of a clip is named after its **stem**, never after its position in a list, so a
clip without audio cannot shift the names of the clips after it (the closest tool's bug).

``data_dir`` may be a folder of clips, or a training run's output folder: its ``config.json``
names the clips folder and its ``summary.json`` the held-out (validation) clips, which are
then the default selection; the run's feature cache is reused when a cached window matches.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from selva_core.audio.sync import motion_energy
from selva_core.checksums import file_sha256
from selva_core.data.audio import AUDIO_EXTENSIONS
from selva_core.data.errors import BadClipError
from selva_core.data.npz_import import NPZ_EXTENSION, read_feature_npz
from selva_core.data.prompts import PROMPTS_FILENAME, folder_prompt, parse_prompts
from selva_core.data.video import VIDEO_EXTENSIONS, decode_frames, probe_video
from selva_core.features import ConditionFeatures
from selva_core.run_folder import RunInfo
from selva_core.variants import SYNC_FPS

log = logging.getLogger(__name__)

FEATURES_VERSION = "selva-eval-features-2"  # 2: frames by the fps filter, AAC trimmed
_MOTION_KEY = "motion_energy"  # in a clip's features' extra: its motion energy (JSON list)


@dataclass(frozen=True)
class EvalClip:
    """One clip to render. ``name`` (the file stem) keys every output of the clip.

    ``audio_path``: a same-stem audio file (the reference, copied with its own extension);
    ``has_audio`` also covers the video's own sound track. ``seconds``: the picture's length
    (or the ``.npz`` features' length). ``role``: ``eval`` (compared with its reference) or
    ``drift`` (a clip unlike the training set; only compared with the baseline render).
    """

    name: str
    prompt: str
    video_path: Path | None
    audio_path: Path | None
    npz_path: Path | None
    has_audio: bool
    seconds: float | None
    role: str = "eval"

    @property
    def main_path(self) -> Path:
        path = self.video_path or self.npz_path
        assert path is not None
        return path

    def files(self) -> list[tuple[str, Path]]:
        return [(r, p) for r, p in (("video", self.video_path), ("npz", self.npz_path),
                                    ("audio", self.audio_path)) if p is not None]


def _group(folder: Path) -> dict[str, dict[str, list[Path]]]:
    groups: dict[str, dict[str, list[Path]]] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        suffix = path.suffix.lower()
        kind = ("video" if suffix in VIDEO_EXTENSIONS else "audio" if suffix in AUDIO_EXTENSIONS
                else "npz" if suffix == NPZ_EXTENSION else None)
        if kind is None:
            continue
        groups.setdefault(path.stem, {"video": [], "audio": [], "npz": []})[kind].append(path)
    return groups


def discover_clips(folder: str | Path, *, role: str = "eval"
                   ) -> tuple[list[EvalClip], list[dict[str, str]]]:
    """Every clip of ``folder`` (sorted by name) and the files that are not one (with why)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"clip folder {folder} does not exist")
    prompts: dict[str, Any] = {}
    if (folder / PROMPTS_FILENAME).is_file():
        known = VIDEO_EXTENSIONS + AUDIO_EXTENSIONS + (NPZ_EXTENSION,)
        prompts, errors = parse_prompts(folder / PROMPTS_FILENAME, known)
        for error in errors:
            log.warning("%s", error)
    fallback = folder_prompt(folder)
    clips: list[EvalClip] = []
    skipped: list[dict[str, str]] = []
    for stem, files in _group(folder).items():
        try:
            clip = _probe(stem, files, prompts, fallback, role)
        except BadClipError as exc:
            skipped.append({"clip": stem, "role": role, "reason": str(exc)})
            log.warning("skipping clip %s: %s", stem, exc)
            continue
        if clip is not None:
            clips.append(clip)
    return clips, skipped


def _probe(stem: str, files: dict[str, list[Path]], prompts: dict[str, Any], fallback: str,
           role: str) -> EvalClip | None:
    for kind in ("video", "audio", "npz"):
        if len(files[kind]) > 1:
            raise BadClipError(files[kind][0], f"several {kind} files share the name {stem!r}",
                               "rename or remove all but one")
    audio = files["audio"][0] if files["audio"] else None
    prompt = prompts[stem].prompt if stem in prompts else None
    if files["video"]:
        video = files["video"][0]
        info = probe_video(video)
        return EvalClip(stem, prompt or fallback, video, audio, None,
                        audio is not None or info.has_audio, info.duration, role)
    if files["npz"]:
        npz = read_feature_npz(files["npz"][0])
        return EvalClip(stem, prompt or npz.prompt or fallback, None, audio, files["npz"][0],
                        audio is not None, npz.visual_length, role)
    raise BadClipError(audio, "an audio file without a same-stem video or .npz",
                       "add the video, or remove the audio file")


# --- features ----------------------------------------------------------------------------------
def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80] or "clip"


def features_key(clip: EvalClip, duration: float, variant: str, model_tag: str) -> str:
    """sha256 over the clip's files, prompt, duration, variant and encoder weights."""
    material = {"files": [(r, file_sha256(p)) for r, p in clip.files()], "prompt": clip.prompt,
                "duration": round(float(duration), 6), "variant": variant,
                "model_tag": model_tag, "version": FEATURES_VERSION}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def _resizer(pipeline):
    prepare = getattr(pipeline, "prepare_sync_frames", None)
    if prepare is None:
        return None
    return lambda chunk: ((prepare(chunk).float().cpu() + 1.0) * 0.5).clamp_(0.0, 1.0)


def _from_run_cache(pipeline, clip: EvalClip, duration: float, run: RunInfo, model_tag: str
                    ) -> ConditionFeatures | None:
    """The run's cached first window of ``clip`` when it was made by the same encoders for the
    same files and prompt and covers ``duration`` with real (not padded) sync tokens."""
    from selva_core.data.windows import Window
    from selva_core.training.feature_cache import (
        FeatureCacheSettings,
        _reusable,
        _safe_stem,
        cache_key,
    )

    variant = pipeline.variant.name
    if run.cache_dir is None or run.variant != variant or duration > run.duration + 1e-6:
        return None
    try:
        settings = FeatureCacheSettings(variant=variant, duration=run.duration,
                                        window_policy=run.window, model_tag=model_tag)
    except ValueError:
        return None
    key = cache_key([(r, file_sha256(p)) for r, p in clip.files()], settings, clip.prompt,
                    Window(0, 0.0, run.duration, run.duration))
    path = run.cache_dir / f"{_safe_stem(clip.name)}.w0.{key[:16]}.safetensors"
    if not _reusable(path, key):
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


def extract_clip_features(pipeline, clip: EvalClip, duration: float, feature_dir: Path,
                          model_tag: str, run: RunInfo | None = None) -> ConditionFeatures:
    """Features of ``clip`` for ``duration`` s: from ``feature_dir`` when saved by an earlier
    run, else from the training run's cache, else extracted (and saved). BadClipError when the
    clip cannot give them (too short, undecodable)."""
    variant = pipeline.variant.name
    key = features_key(clip, duration, variant, model_tag)
    path = Path(feature_dir) / f"{_safe(clip.name)}.{key[:16]}.safetensors"
    if path.is_file():
        try:
            return ConditionFeatures.load(path)
        except ValueError as exc:
            log.warning("%s (%s); extracting again", path, exc)
    feats = _from_run_cache(pipeline, clip, duration, run, model_tag) if run else None
    if feats is None:
        feats = _extract(pipeline, clip, duration)
    feats.save(path)
    return feats


def _sync_frames(pipeline, clip: EvalClip, duration: float) -> torch.Tensor:
    """The clip's frames at the sync rate, resized as the video encoder takes them."""
    return decode_frames(clip.video_path, fps=SYNC_FPS,
                         num_frames=int(math.ceil(duration * SYNC_FPS)) + 1,
                         transform=_resizer(pipeline))


def _extract(pipeline, clip: EvalClip, duration: float) -> ConditionFeatures:
    seq = pipeline.variant.sequence_lengths(duration)
    if clip.npz_path is not None:
        npz = read_feature_npz(clip.npz_path)
        if npz.sync_features.shape[0] < seq.sync:
            raise BadClipError(clip.npz_path, f"its features cover {npz.visual_length:.2f} s, "
                               f"less than the {duration:g} s to render",
                               "set a shorter 'duration' in the spec")
        text = pipeline.encode_prompt([clip.prompt])[0]
        sync = torch.from_numpy(np.ascontiguousarray(npz.sync_features[: seq.sync]))[None]
        return ConditionFeatures(text_clip_f=text.float().cpu(), sync_f=sync.float(),
                                 duration=duration, prompts=[clip.prompt],
                                 variant=pipeline.variant.name,
                                 extra={"source": str(clip.npz_path)})
    assert clip.video_path is not None
    frames = _sync_frames(pipeline, clip, duration)
    try:
        feats = pipeline.extract_features(frames, clip.prompt, duration=duration)
    except ValueError as exc:
        raise BadClipError(clip.video_path, str(exc),
                           "set a shorter 'duration' in the spec or remove the clip") from None
    feats = feats.to("cpu", torch.float32)
    feats.extra = {"source": str(clip.video_path), _MOTION_KEY: json.dumps(
        motion_energy(frames).tolist()), "motion_fps": str(SYNC_FPS)}
    return feats


def clip_motion(pipeline, clip: EvalClip, duration: float, feats: ConditionFeatures | None
                ) -> tuple[np.ndarray, float] | None:
    """(motion energy, frames per second) of ``clip``'s first ``duration`` s: from its features
    when they carry it, else from the video decoded as for the features (None without a
    video, or when it cannot be decoded: the onset figures are then left out). Extraction keeps
    the motion energy of the frames the encoder saw in the features' ``extra``, so a clip whose
    features are reused needs no second decode."""
    extra = feats.extra if feats is not None else {}
    if _MOTION_KEY in extra:
        try:
            return np.asarray(json.loads(extra[_MOTION_KEY]), np.float64), float(
                extra.get("motion_fps", SYNC_FPS))
        except (ValueError, TypeError):
            pass
    if clip.video_path is None:
        return None
    try:
        frames = _sync_frames(pipeline, clip, duration)
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


__all__ = ["EvalClip", "discover_clips", "extract_clip_features",
           "cat_features", "features_key", "clip_motion"]
