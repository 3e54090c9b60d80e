"""The on-disk feature cache: every clip window's features extracted once, reused on reruns.

Training and evaluation share it (one key, one extraction of a window, one file format, one
reuse rule). For each clip window (see :mod:`selva_core.data.windows`) the frozen encoders
produce:

* ``latent_mean`` / ``latent_std`` ``(N, C)`` (training windows only): the RAW VAE posterior
  moments of the window's audio (mono, resampled to the variant rate, padded with silence to
  the window), in token layout and NOT normalised by the generator's latent statistics -- the
  trainer samples ``x1 = (mean + std * eps - gen.latent_mean) / gen.latent_std`` at every
  step; ``audio_valid_samples`` (0-d int64): real (not padded) audio samples in the window;
* ``sync_f`` ``(S_sync, sync_dim)``: TextSynch features of the window's 25 fps frames
  (conditioned on the prompt), or the slice of an imported ``.npz``; ``sync_valid``
  ``(S_sync,)`` bool is False where the clip ended before the window did (the trainer puts the
  generator's learned ``empty_sync_feat`` there, never zeros -- the stored values at those
  positions are placeholders);
* ``text_clip_f`` ``(77, text_dim)``: CLIP-text features of the prompt.

Within a training window, sync tokens are valid only where both picture and sound exist (the
clip's usable length); the audio is the real recording up to its own end and silence after it
(when a separate audio file outlasts the video, that audio is kept, with the sync flagged
invalid). A conditions-only window (``FeatureCacheSettings(latents=False)``, what evaluation
renders from) never reads the sound: the picture must cover the whole window (the pipeline
repeats at most a few missing last frames), and the motion energy of its frames is kept in the
metadata.

plus metadata strings (name, prompt, source file, window index/start, duration, variant,
cache key, format version). One ``.safetensors`` file per window, written atomically.

The cache key (:func:`cache_key`) is the sha256 of the WHOLE content of every input file
(video, separate audio, ``.npz``) together with the extraction settings, the prompt and the
window, so a rerun reuses every file and any change of input bytes or setting extracts again.
For training, reuse is decided before anything is decoded: a small JSON record per clip
(``<clip>.<clip key>.clip.json``: its windows, their files and keys, the seconds of audio they
use) is keyed by the same hashes without the window, so a warm rerun hashes the files, reads
the records and the safetensors headers, and opens no video or audio. Stale files are left in
the folder (delete it to reclaim space).

The pipeline is used through the :class:`FeatureExtractor` protocol
(``selva_core.pipeline.SelvaPipeline`` implements it); see :func:`build_feature_cache` and
:func:`clip_conditions`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from tqdm.auto import tqdm

from selva_core.atomic import save_safetensors_atomic, write_json_atomic
from selva_core.checksums import file_sha256
from selva_core.data.clips import ClipSource
from selva_core.data.errors import (
    BadClipError,
    EmptyDatasetError,
    SkipReport,
    check_on_bad_clip,
    handle_bad_clip,
)
from selva_core.data.windows import Window, plan_windows
from selva_core.features import ConditionFeatures
from selva_core.variants import SYNC_FPS, get_variant, min_duration
from selva_core.window_features import (
    CONDITION_KEYS,
    EPS_S,
    EXTRACTOR_VERSION,
    MOTION_KEY,
    TENSOR_KEYS,
    FeatureCacheSettings,
    FeatureExtractor,
    extract_window,
    load_clip,
    pipeline_variant,
)

log = logging.getLogger(__name__)

FORMAT_NAME = "selva.feature_cache"
FORMAT_VERSION = 1
CLIP_RECORD_FORMAT = "selva.feature_cache.clip"
TINY_PIPELINE_SEED = 0  # the tiny random model every tiny run (and its feature cache) uses
_extract_window = extract_window  # the seam tests wrap to interrupt an extraction


class ExtractionStopped(Exception):
    """``should_stop`` asked :func:`build_feature_cache` to stop (the cache keeps what it has)."""


@dataclass(frozen=True)
class CachedExample:
    """One cached training window. ``load()`` reads its tensors from ``path`` on demand."""

    path: Path
    name: str
    prompt: str
    source: str = ""
    window_index: int = 0
    window_start: float = 0.0
    cache_key: str = ""
    reused: bool = False

    def load(self, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """The tensors (:data:`TENSOR_KEYS`), read from disk on each call."""
        try:
            with safe_open(str(self.path), framework="pt", device=str(device)) as f:
                return {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError) as e:
            raise ValueError(
                f"cached features {self.path} cannot be read ({e}); delete the file and run "
                "again to re-extract"
            ) from None

    def metadata(self) -> dict[str, str]:
        """The metadata strings stored with the tensors."""
        with safe_open(str(self.path), framework="pt") as f:
            return dict(f.metadata() or {})


@dataclass
class CacheStats:
    """What one :func:`build_feature_cache` call did (also logged)."""

    clips: int = 0
    windows: int = 0
    reused: int = 0
    extracted: int = 0
    skipped_clips: int = 0
    seconds_used: float = 0.0
    seconds_left_out: float = 0.0


# --- keys and file names -----------------------------------------------------------------------
def file_hashes(clip: ClipSource) -> list[tuple[str, str]]:
    """(role, sha256) of every file the clip's features depend on."""
    return [(role, file_sha256(path)) for role, path in clip.files()]


def cache_key(file_hashes: list[tuple[str, str]], settings: FeatureCacheSettings, prompt: str,
              window: Window | None = None) -> str:
    """sha256 over the input files' hashes, the settings, the prompt and the window; without
    a window, the key of the clip's record (every window of it)."""
    material = {
        "format": FORMAT_NAME if window is not None else CLIP_RECORD_FORMAT,
        "format_version": FORMAT_VERSION,
        "files": file_hashes,
        "settings": settings.to_dict(),
        "prompt": prompt,
    }
    if window is not None:
        material["window"] = [window.index, round(window.start, 6)]
    blob = json.dumps(material, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


def _safe_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80] or "clip"


def window_path(cache_dir: Path, name: str, index: int, key: str) -> Path:
    """Where the window ``index`` of clip ``name`` with cache key ``key`` is stored."""
    return Path(cache_dir) / f"{_safe_stem(name)}.w{index}.{key[:16]}.safetensors"


def default_model_tag(variant: str) -> str:
    """Names the encoder weights in the cache key when they are not a variant's official
    ones: the shipped tiny weights by their files' sha256 (retrained weights get a fresh
    cache), a tiny model without shipped weights by its random seed."""
    if not get_variant(variant).is_tiny:
        return ""
    from selva_core.weights.bundled import bundled_files

    files = bundled_files(variant)
    if not files:
        return f"tiny seed {TINY_PIPELINE_SEED}"
    from selva_core.variants import TINY_TRAINED_TEXT_SEED

    material = "".join(sorted(f.sha256 for f in files.values())) + str(TINY_TRAINED_TEXT_SEED)
    digest = hashlib.sha256(material.encode())
    return f"tiny trained {digest.hexdigest()[:16]}"


def is_reusable(path: Path, key: str, keys: tuple[str, ...] = TENSOR_KEYS) -> bool:
    """The one reuse rule: True when ``path`` is a complete cache file for ``key`` holding
    ``keys``; a damaged or foreign one is extracted again (with a warning)."""
    if not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            found = set(f.keys())
    except (SafetensorError, OSError) as e:
        log.warning("cache file %s is unreadable (%s); extracting again", path, e)
        return False
    ok = (meta.get("format") == FORMAT_NAME and meta.get("cache_key") == key
          and set(keys) <= found)
    if not ok:
        log.warning("cache file %s does not match its key; extracting again", path)
    return ok


def _example(path: Path, clip: ClipSource, index: int, start: float, key: str,
             reused: bool) -> CachedExample:
    return CachedExample(path=path, name=f"{clip.name}#w{index}", prompt=clip.prompt,
                         source=str(clip.main_path), window_index=index, window_start=start,
                         cache_key=key, reused=reused)


def _save_window(path: Path, clip: ClipSource, window: Window, settings: FeatureCacheSettings,
                 key: str, tensors: dict[str, torch.Tensor], extra: dict[str, str]) -> None:
    """Write one window file (atomically): its tensors and the metadata that describes it."""
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "name": f"{clip.name}#w{window.index}",
        "prompt": clip.prompt,
        "prompt_source": clip.prompt_source,
        "source": str(clip.main_path),
        "audio_source": str(clip.audio_path or clip.video_path),
        "window_index": str(window.index),
        "window_start": repr(window.start),
        "window_content": repr(min(window.content, settings.duration)),
        "duration": repr(settings.duration),
        "variant": settings.variant,
        "cache_key": key,
        "settings": json.dumps(settings.to_dict(), sort_keys=True),
    }
    if extra:
        metadata["extra"] = json.dumps(extra, sort_keys=True)
    save_safetensors_atomic(path, tensors, metadata)


def _record_path(cache_dir: Path, clip: ClipSource, key: str) -> Path:
    return cache_dir / f"{_safe_stem(clip.name)}.{key[:16]}.clip.json"


def _reuse_from_record(clip: ClipSource, record_path: Path, key: str, cache_dir: Path,
                       stats: CacheStats) -> list[CachedExample] | None:
    """The clip's examples from its record when every window file is complete; None (extract
    again) otherwise. Reads JSON and safetensors headers only."""
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        if record.get("format") != CLIP_RECORD_FORMAT or record.get("clip_key") != key:
            return None
        windows = [(cache_dir / w["file"], int(w["index"]), float(w["start"]), str(w["key"]))
                   for w in record["windows"]]
        used, left = float(record["seconds_used"]), float(record["seconds_left_out"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not windows or not all(is_reusable(path, wkey) for path, _, _, wkey in windows):
        return None
    stats.seconds_used += used
    stats.seconds_left_out += left
    stats.reused += len(windows)
    return [_example(path, clip, index, start, wkey, True)
            for path, index, start, wkey in windows]


def _cache_clip(
    clip: ClipSource,
    pipeline: FeatureExtractor,
    cache_dir: Path,
    settings: FeatureCacheSettings,
    stats: CacheStats,
) -> list[CachedExample]:
    hashes = file_hashes(clip)
    ckey = cache_key(hashes, settings, clip.prompt)
    record_path = _record_path(cache_dir, clip, ckey)
    if record_path.is_file():
        found = _reuse_from_record(clip, record_path, ckey, cache_dir, stats)
        if found is not None:
            return found
    data = load_clip(clip, settings)
    windows = plan_windows(data.length, settings.duration, settings.window_policy,
                           settings.pad_policy)
    if not windows:
        if data.length + EPS_S < min_duration():
            problem = (f"audio and picture overlap for only {data.length:.2f} s; one sync "
                       f"window needs {min_duration():.2f} s")
            fix = "use a longer clip or remove it"
        else:
            problem = (f"the clip is {data.length:.2f} s, shorter than the training duration "
                       f"{settings.duration:g} s, and pad_policy is 'drop'")
            fix = "use pad_policy='pad' or a shorter duration"
        raise BadClipError(clip.main_path, problem, fix)
    used = sum(min(w.content, settings.duration) for w in windows)
    left = max(0.0, data.length - (windows[-1].start + windows[-1].content))
    stats.seconds_used += used
    stats.seconds_left_out += left
    if left > 1.0 / SYNC_FPS:
        log.info("%s: %d window(s) of %g s cover %.2f s of %.2f s (window_policy=%r)",
                 clip.name, len(windows), settings.duration, used, data.length,
                 settings.window_policy)

    examples = []
    for window in windows:
        key = cache_key(hashes, settings, clip.prompt, window)
        path = window_path(cache_dir, clip.name, window.index, key)
        reused = is_reusable(path, key)
        if not reused:
            with torch.inference_mode():
                tensors, extra = _extract_window(data, window, pipeline, settings)
            _save_window(path, clip, window, settings, key, tensors, extra)
            stats.extracted += 1
        else:
            stats.reused += 1
        examples.append(_example(path, clip, window.index, window.start, key, reused))
    write_json_atomic(record_path, {
        "format": CLIP_RECORD_FORMAT, "clip_key": ckey, "name": clip.name,
        "seconds_used": used, "seconds_left_out": left,
        "windows": [{"file": e.path.name, "index": e.window_index, "start": e.window_start,
                     "key": e.cache_key} for e in examples],
    })
    return examples


def build_feature_cache(
    clips: list[ClipSource],
    pipeline: FeatureExtractor,
    cache_dir: str | Path,
    settings: FeatureCacheSettings,
    on_bad_clip: str = "skip",
    progress: bool = True,
    report: SkipReport | None = None,
    stats: CacheStats | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[CachedExample]:
    """Extract (or reuse) the features of every window of every clip; one tqdm bar over clips.

    ``pipeline``: a :class:`FeatureExtractor` of ``settings.variant``; it is only called for
    windows that are not in the cache yet (a warm rerun decodes nothing). Unusable clips are
    skipped (logged and added to ``report``) or raise BadClipError, per ``on_bad_clip``; when
    no example remains at all, EmptyDatasetError is raised. ``should_stop`` (polled before
    each clip) returning True raises :class:`ExtractionStopped`; what was extracted stays.
    ``stats`` (optional) receives the counts.
    """
    check_on_bad_clip(on_bad_clip)
    if pipeline_variant(pipeline) != settings.variant:
        raise ValueError(
            f"the pipeline is variant {pipeline_variant(pipeline)!r} but the cache settings say "
            f"{settings.variant!r}; build both for the same variant"
        )
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    stats = stats if stats is not None else CacheStats()
    examples: list[CachedExample] = []
    for clip in tqdm(clips, desc="features", unit="clip", disable=not progress):
        if should_stop is not None and should_stop():
            raise ExtractionStopped(f"feature extraction stopped after {stats.clips} of "
                                    f"{len(clips)} clip(s); the features so far are cached")
        stats.clips += 1
        try:
            found = _cache_clip(clip, pipeline, cache_dir, settings, stats)
        except BadClipError as error:
            stats.skipped_clips += 1
            handle_bad_clip(error, on_bad_clip, report)
            continue
        stats.windows += len(found)
        examples.extend(found)
    log.info(
        "feature cache %s: %d clip(s) -> %d window(s); %d reused, %d extracted, %d clip(s) "
        "skipped", cache_dir, stats.clips, stats.windows, stats.reused, stats.extracted,
        stats.skipped_clips,
    )
    if not examples:
        raise EmptyDatasetError(
            cache_dir, f"no training examples: all {len(clips)} clip(s) were skipped",
            "see the reasons logged above",
        )
    return examples


def read_feature_cache(cache_dir: str | Path, names: set[str] | None = None
                       ) -> list[CachedExample]:
    """The complete cached examples of a cache folder (e.g. a training run's, for evaluation)
    without any pipeline: every clip record whose window files are all present and intact.
    ``names``: keep only these clip names. Sorted by clip name and window."""
    cache_dir = Path(cache_dir)
    examples: list[CachedExample] = []
    for record_path in sorted(cache_dir.glob("*.clip.json")):
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
            if record.get("format") != CLIP_RECORD_FORMAT:
                continue
            name = str(record["name"])
            windows = record["windows"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if names is not None and name not in names:
            continue
        found = []
        for w in windows:
            path = cache_dir / str(w.get("file", ""))
            if not is_reusable(path, str(w.get("key", ""))):
                break
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            found.append(CachedExample(
                path=path, name=f"{name}#w{w['index']}", prompt=meta.get("prompt", ""),
                source=meta.get("source", ""), window_index=int(w["index"]),
                window_start=float(w["start"]), cache_key=str(w["key"]), reused=True))
        else:
            examples.extend(found)
    return sorted(examples, key=lambda e: (e.name.rsplit("#w", 1)[0], e.window_index))


# --- conditions of one clip (evaluation) ------------------------------------------------------
def clip_conditions(pipeline: FeatureExtractor, clip: ClipSource, settings: FeatureCacheSettings,
                    cache_dir: str | Path,
                    fallback: Callable[[], ConditionFeatures | None] | None = None
                    ) -> ConditionFeatures:
    """The condition features of ``clip``'s first ``settings.duration`` s (``settings`` with
    ``latents=False``): from ``cache_dir`` when an earlier run stored them, else from
    ``fallback()`` when it gives them (e.g. a training run's cache), else extracted; stored in
    ``cache_dir`` either way. BadClipError when the clip cannot give them (too short,
    undecodable)."""
    if settings.latents:
        raise ValueError("clip_conditions takes conditions-only settings (latents=False)")
    window = Window(0, 0.0, settings.duration, settings.duration)
    key = cache_key(file_hashes(clip), settings, clip.prompt, window)
    path = window_path(Path(cache_dir), clip.name, 0, key)
    if is_reusable(path, key, CONDITION_KEYS):
        return read_conditions(path)
    feats = fallback() if fallback is not None else None
    if feats is None:
        with torch.inference_mode():
            tensors, extra = _extract_window(load_clip(clip, settings), window, pipeline,
                                             settings)
        extra = {"source": str(clip.main_path), **extra}
    else:
        sync = feats.sync_f[0].to("cpu", torch.float32)
        tensors = {"sync_f": sync, "sync_valid": torch.ones(sync.shape[0], dtype=torch.bool),
                   "text_clip_f": feats.text_clip_f[0].to("cpu", torch.float32)}
        extra = dict(feats.extra)
    _save_window(path, clip, window, settings, key, tensors, extra)
    return read_conditions(path)


def read_conditions(path: Path) -> ConditionFeatures:
    """A window file's condition features as a batch of one (``extra``: what its metadata
    keeps beside them, e.g. the motion energy of its frames)."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        sync, text = f.get_tensor("sync_f"), f.get_tensor("text_clip_f")
    extra = json.loads(meta.get("extra", "{}"))
    return ConditionFeatures(text_clip_f=text[None], sync_f=sync[None],
                             duration=float(meta["duration"]), prompts=[meta.get("prompt", "")],
                             variant=meta["variant"], extra=extra)


__all__ = ["CONDITION_KEYS", "EXTRACTOR_VERSION", "MOTION_KEY", "TENSOR_KEYS", "CacheStats",
           "CachedExample", "ExtractionStopped", "FeatureCacheSettings", "FeatureExtractor",
           "build_feature_cache", "cache_key", "clip_conditions", "default_model_tag",
           "file_hashes", "is_reusable", "read_conditions", "read_feature_cache",
           "window_path"]
