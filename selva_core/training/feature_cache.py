"""On-disk feature cache for LoRA training: extract every clip window once, reuse on reruns.

For each clip window (see :mod:`selva_core.data.windows`) the frozen encoders produce:

* ``latent_mean`` / ``latent_std`` ``(N, C)``: the RAW VAE posterior moments of the window's
  audio (mono, resampled to the variant rate, padded with silence to the window), in token
  layout and NOT normalised by the generator's latent statistics -- the trainer samples
  ``x1 = (mean + std * eps - gen.latent_mean) / gen.latent_std`` at every step;
* ``sync_f`` ``(S_sync, sync_dim)``: TextSynch features of the window's 25 fps frames
  (conditioned on the prompt), or the slice of an imported ``.npz``; ``sync_valid``
  ``(S_sync,)`` bool is False where the clip ended before the window did (the trainer puts the
  generator's learned ``empty_sync_feat`` there, never zeros -- the stored values at those
  positions are placeholders);
* ``text_clip_f`` ``(77, text_dim)``: CLIP-text features of the prompt;
* ``audio_valid_samples`` (0-d int64): real (not padded) audio samples in the window;

Within a window, sync tokens are valid only where both picture and sound exist (the clip's
usable length); the audio is the real recording up to its own end and silence after it (when
a separate audio file outlasts the video, that audio is kept, with the sync flagged invalid).

plus metadata strings (name, prompt, source file, window index/start, duration, variant,
cache key, format version). One ``.safetensors`` file per window, written atomically.

The cache key is the sha256 of the WHOLE content of every input file (video, separate audio,
``.npz``) together with the extraction settings, the prompt and the window, so a rerun reuses
every file and any change of input bytes or setting extracts again. Reuse is decided before
anything is decoded: a small JSON record per clip (``<clip>.<clip key>.clip.json``: its
windows, their files and keys, the seconds of audio they use) is keyed by the same hashes
without the window, so a warm rerun hashes the files, reads the records and the safetensors
headers, and opens no video or audio. Stale files are left in the folder (delete it to
reclaim space).

The pipeline is used through the :class:`FeatureExtractor` protocol
(``selva_core.pipeline.SelvaPipeline`` implements it); see :func:`build_feature_cache`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from tqdm.auto import tqdm

from selva_core.atomic import save_safetensors_atomic, write_json_atomic
from selva_core.checksums import file_sha256
from selva_core.data.audio import load_mono
from selva_core.data.clips import ClipSource
from selva_core.data.errors import (
    BadClipError,
    EmptyDatasetError,
    SkipReport,
    check_on_bad_clip,
    handle_bad_clip,
)
from selva_core.data.npz_import import NpzFeatures, read_feature_npz
from selva_core.data.video import decode_frames, probe_video
from selva_core.data.windows import (
    PAD_POLICIES,
    WINDOW_POLICIES,
    Window,
    plan_windows,
)
from selva_core.variants import (
    SYNC_FPS,
    SYNC_SEGMENT_FRAMES,
    SYNC_STEP_FRAMES,
    SYNC_TOKENS_PER_SEGMENT,
    TRAIN_DURATION_S,
    ModelVariant,
    get_variant,
    min_duration,
    num_sync_segments,
)

log = logging.getLogger(__name__)

FORMAT_NAME = "selva.training_features"
FORMAT_VERSION = 1
EXTRACTOR_VERSION = "selva-lora-features-2"  # bump when extraction code changes its output
# 2: frames by the fps filter (data/fps_filter.py), turned upright; AAC priming and padding trimmed
TENSOR_KEYS: tuple[str, ...] = (
    "latent_mean", "latent_std", "sync_f", "sync_valid", "text_clip_f", "audio_valid_samples",
)
CLIP_RECORD_FORMAT = "selva.training_features.clip"
_EPS = 1e-6


class ExtractionStopped(Exception):
    """``should_stop`` asked :func:`build_feature_cache` to stop (the cache keeps what it has)."""


class FeatureExtractor(Protocol):
    """What the feature cache needs from a pipeline (``SelvaPipeline`` provides all of it).

    Every method is called under ``torch.inference_mode`` with one clip window at a time.
    """

    @property
    def variant(self) -> ModelVariant | str:
        """The model variant (or its name); must equal the cache settings' variant."""

    def extract_features(self, frames: torch.Tensor, prompt: str, duration: float | None = None
                         ) -> Any:
        """Frames (T, 3, H, W) at 25 fps, uint8 or float [0, 1] -> an object with ``sync_f``
        (1, S, sync_dim) and ``text_clip_f`` (1, 77, text_dim)."""

    def encode_prompt(self, prompts: list[str]) -> tuple[torch.Tensor, ...]:
        """Prompts -> ``(clip_text_f (B, 77, text_dim), ...)`` (used for ``.npz`` clips)."""

    def encode_audio(self, waveform: torch.Tensor, sample_rate: int) -> Any:
        """Mono waveform (1, samples) -> the raw VAE posterior ``(mean, std)`` (1, N, C) or an
        object with ``mean`` / ``std``."""

    # Optional: ``prepare_sync_frames(frames uint8) -> frames at the video encoder's size in
    # [-1, 1]``; when present, frames are resized while decoding (bounds memory on long clips).


@dataclass(frozen=True)
class FeatureCacheSettings:
    """Everything about extraction that changes the cached tensors (all part of the key).

    ``frame_size`` and ``sample_rate`` default to the variant's; they are recorded (and
    checked against the pipeline) rather than free choices. ``model_tag`` names the encoder
    weights when they are not the variant's official ones (e.g. ``"tiny seed 0"``), so a
    cache built with other weights is not reused.
    """

    variant: str
    duration: float = TRAIN_DURATION_S
    window_policy: str = "all"
    pad_policy: str = "pad"
    frame_size: int | None = None
    sample_rate: int | None = None
    extractor_version: str = EXTRACTOR_VERSION
    model_tag: str = ""

    def __post_init__(self):
        variant = get_variant(self.variant)  # unknown names raise with the list of choices
        if self.window_policy not in WINDOW_POLICIES:
            raise ValueError(
                f"window_policy must be one of {WINDOW_POLICIES}, got {self.window_policy!r}"
            )
        if self.pad_policy not in PAD_POLICIES:
            raise ValueError(f"pad_policy must be one of {PAD_POLICIES}, got {self.pad_policy!r}")
        duration = float(self.duration)
        if not math.isfinite(duration) or duration + _EPS < min_duration():
            raise ValueError(
                f"training duration {self.duration!r} s is too short: it must hold one sync "
                f"window ({min_duration():.2f} s)"
            )
        object.__setattr__(self, "duration", duration)
        if self.frame_size is None:
            object.__setattr__(self, "frame_size", variant.video_encoder.frame_size)
        if self.sample_rate is None:
            object.__setattr__(self, "sample_rate", variant.sample_rate)
        if self.frame_size != variant.video_encoder.frame_size:
            raise ValueError(
                f"frame_size {self.frame_size} does not match variant {self.variant!r} "
                f"({variant.video_encoder.frame_size}); leave it unset"
            )
        if self.sample_rate != variant.sample_rate:
            raise ValueError(
                f"sample_rate {self.sample_rate} does not match variant {self.variant!r} "
                f"({variant.sample_rate} Hz); leave it unset"
            )

    @property
    def model_variant(self) -> ModelVariant:
        return get_variant(self.variant)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


# --- hashing ----------------------------------------------------------------------------------
def cache_key(
    file_hashes: list[tuple[str, str]], settings: FeatureCacheSettings, prompt: str, window: Window
) -> str:
    """sha256 over the input files' hashes, the settings, the prompt and the window."""
    material = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "files": file_hashes,
        "settings": settings.to_dict(),
        "prompt": prompt,
        "window": [window.index, round(window.start, 6)],
    }
    blob = json.dumps(material, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


def clip_key(file_hashes: list[tuple[str, str]], settings: FeatureCacheSettings,
             prompt: str) -> str:
    """sha256 naming a clip's record: its files' hashes, the settings and the prompt."""
    material = {"format": CLIP_RECORD_FORMAT, "format_version": FORMAT_VERSION,
                "files": file_hashes, "settings": settings.to_dict(), "prompt": prompt}
    blob = json.dumps(material, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


def _safe_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80] or "clip"


# --- pipeline adapters ------------------------------------------------------------------------
def _variant_name(pipeline: FeatureExtractor) -> str:
    variant = getattr(pipeline, "variant", None)
    return str(getattr(variant, "name", variant))


def _rows(t: Any, what: str) -> torch.Tensor:
    """(1, N, D) or (N, D) tensor -> float32 CPU (N, D)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"pipeline returned {type(t).__name__} for {what}, expected a tensor")
    if t.dim() == 3 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 2:
        raise ValueError(f"pipeline returned {what} of shape {tuple(t.shape)}, expected (1, N, D)")
    return t.detach().to("cpu", torch.float32).contiguous()


def _raw_moments(moments: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, std)`` or a LatentMoments-like object -> raw (N, C) moments."""
    if getattr(moments, "normalized", False):
        raise ValueError("pipeline.encode_audio returned normalised moments; the cache stores "
                         "raw VAE moments (call it with normalize=False)")
    if hasattr(moments, "mean") and hasattr(moments, "std"):
        mean, std = moments.mean, moments.std
    else:
        mean, std = moments
    return _rows(mean, "latent mean"), _rows(std, "latent std")


def _fit_sync(
    sync: torch.Tensor, valid_tokens: int, length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut/pad sync tokens to ``length``; positions past ``valid_tokens`` are flagged invalid."""
    valid_tokens = max(0, min(valid_tokens, sync.shape[0], length))
    out = torch.zeros(length, sync.shape[1], dtype=torch.float32)
    out[:valid_tokens] = sync[:valid_tokens]
    mask = torch.zeros(length, dtype=torch.bool)
    mask[:valid_tokens] = True
    return out, mask


def _resizer(pipeline: FeatureExtractor):
    """Chunk transform: uint8 frames -> the encoder's size as float [0, 1] (bounds memory).

    Uses the pipeline's own ``prepare_sync_frames`` (its [-1, 1] output mapped back to
    [0, 1], which ``extract_features`` accepts unchanged); None when the pipeline has none.
    """
    prepare = getattr(pipeline, "prepare_sync_frames", None)
    if prepare is None:
        return None
    return lambda chunk: ((prepare(chunk).float().cpu() + 1.0) * 0.5).clamp_(0.0, 1.0)


def _content_frames(seconds: float) -> int:
    return max(0, math.floor(seconds * SYNC_FPS + _EPS))


# --- extraction of one window -----------------------------------------------------------------
@dataclass
class _ClipData:
    clip: ClipSource
    wave: np.ndarray
    length: float  # usable seconds = min(audio, visual)
    visual_length: float
    npz: NpzFeatures | None


def _load_clip(clip: ClipSource, settings: FeatureCacheSettings) -> _ClipData:
    """Decode and validate the audio, measure the picture; BadClipError if unusable."""
    audio_src = clip.audio_path if clip.audio_path is not None else clip.video_path
    wave = load_mono(audio_src, settings.sample_rate, from_video=clip.audio_path is None)
    audio_length = wave.shape[0] / settings.sample_rate
    npz = None
    if clip.npz_path is not None:
        npz = read_feature_npz(clip.npz_path)
        width = settings.model_variant.generator.sync_dim
        if npz.sync_features.shape[1] != width:
            raise BadClipError(
                clip.npz_path,
                f"its sync features are {npz.sync_features.shape[1]} wide but variant "
                f"{settings.variant!r} expects {width}",
                "extract features for this variant from the video instead",
            )
        if npz.variant and npz.variant != settings.variant:
            log.info("%s: features stored for variant %s, used with %s (same TextSynch)",
                     clip.npz_path, npz.variant, settings.variant)
        visual = npz.visual_length
    else:
        assert clip.video_path is not None
        visual = probe_video(clip.video_path).duration
    return _ClipData(clip, wave, min(audio_length, visual), visual, npz)


def _extract_window(
    data: _ClipData, window: Window, pipeline: FeatureExtractor, settings: FeatureCacheSettings
) -> dict[str, torch.Tensor]:
    clip = data.clip
    seq = settings.model_variant.sequence_lengths(settings.duration)
    content = min(settings.duration, data.length - window.start)
    want_frames = min(_content_frames(settings.duration), _content_frames(content))
    valid_tokens = SYNC_TOKENS_PER_SEGMENT * num_sync_segments(want_frames)

    if data.npz is not None:
        first = window.start_frame // SYNC_STEP_FRAMES * SYNC_TOKENS_PER_SEGMENT
        tokens = torch.from_numpy(data.npz.sync_features[first: first + seq.sync])
        sync, sync_valid = _fit_sync(tokens, valid_tokens, seq.sync)
        clip_text, _, _ = pipeline.encode_prompt([clip.prompt])
        text = _rows(clip_text, "CLIP-text features")
    else:
        assert clip.video_path is not None
        frames = decode_frames(clip.video_path, fps=SYNC_FPS, start=window.start,
                               num_frames=want_frames, transform=_resizer(pipeline))
        if frames.shape[0] < SYNC_SEGMENT_FRAMES:
            raise BadClipError(
                clip.video_path,
                f"window {window.index} at {window.start:.2f} s decodes only {frames.shape[0]} "
                f"frames; one sync window needs {SYNC_SEGMENT_FRAMES}",
                "re-encode the video or remove it")
        # half a frame of slack: the frame count, not float rounding, sets the window count
        features = pipeline.extract_features(
            frames, clip.prompt, duration=(frames.shape[0] + 0.5) / SYNC_FPS
        )
        tokens = _rows(features.sync_f, "sync features")
        valid_tokens = SYNC_TOKENS_PER_SEGMENT * num_sync_segments(frames.shape[0])
        sync, sync_valid = _fit_sync(tokens, valid_tokens, seq.sync)
        text = _rows(features.text_clip_f, "CLIP-text features")

    sr = settings.sample_rate
    start = round(window.start * sr)
    chunk = data.wave[start: start + seq.audio_samples]
    audio = np.zeros(seq.audio_samples, np.float32)
    audio[: chunk.shape[0]] = chunk
    mean, std = _raw_moments(pipeline.encode_audio(torch.from_numpy(audio)[None], sr))
    latent_dim = settings.model_variant.generator.latent_dim
    if mean.shape != (seq.latent, latent_dim) or std.shape != mean.shape:
        raise ValueError(
            f"pipeline.encode_audio returned moments of shape {tuple(mean.shape)} / "
            f"{tuple(std.shape)}, expected ({seq.latent}, {latent_dim}) in (N, C) layout"
        )
    return {
        "latent_mean": mean,
        "latent_std": std,
        "sync_f": sync,
        "sync_valid": sync_valid,
        "text_clip_f": text,
        "audio_valid_samples": torch.tensor(int(chunk.shape[0]), dtype=torch.int64),
    }


def _reusable(path: Path, key: str) -> bool:
    """True when ``path`` is a complete cache file for ``key``; a damaged one is re-extracted."""
    if not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            keys = set(f.keys())
    except (SafetensorError, OSError) as e:
        log.warning("cache file %s is unreadable (%s); extracting again", path, e)
        return False
    ok = (meta.get("format") == FORMAT_NAME and meta.get("cache_key") == key
          and set(TENSOR_KEYS) <= keys)
    if not ok:
        log.warning("cache file %s does not match its key; extracting again", path)
    return ok


def _example(path: Path, clip: ClipSource, index: int, start: float, key: str,
             reused: bool) -> CachedExample:
    return CachedExample(path=path, name=f"{clip.name}#w{index}", prompt=clip.prompt,
                         source=str(clip.main_path), window_index=index, window_start=start,
                         cache_key=key, reused=reused)


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
    if not windows or not all(_reusable(path, wkey) for path, _, _, wkey in windows):
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
    hashes = [(role, file_sha256(p)) for role, p in
              (("video", clip.video_path), ("npz", clip.npz_path), ("audio", clip.audio_path))
              if p is not None]
    ckey = clip_key(hashes, settings, clip.prompt)
    record_path = _record_path(cache_dir, clip, ckey)
    if record_path.is_file():
        found = _reuse_from_record(clip, record_path, ckey, cache_dir, stats)
        if found is not None:
            return found
    data = _load_clip(clip, settings)
    windows = plan_windows(data.length, settings.duration, settings.window_policy,
                           settings.pad_policy)
    if not windows:
        if data.length + _EPS < min_duration():
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
        path = cache_dir / f"{_safe_stem(clip.name)}.w{window.index}.{key[:16]}.safetensors"
        reused = _reusable(path, key)
        if not reused:
            with torch.inference_mode():
                tensors = _extract_window(data, window, pipeline, settings)
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
            save_safetensors_atomic(path, tensors, metadata)
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
    if _variant_name(pipeline) != settings.variant:
        raise ValueError(
            f"the pipeline is variant {_variant_name(pipeline)!r} but the cache settings say "
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
            if not _reusable(path, str(w.get("key", ""))):
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
