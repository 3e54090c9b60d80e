"""One clip window's features, as the feature cache stores them (:mod:`selva_core.feature_cache`).

:func:`extract_window` is the one extraction: the window's 25 fps frames (resized while
decoding, :func:`encoder_frames`) through the pipeline's video and text encoders, or the slice
of an imported ``.npz``, and for training windows the raw VAE moments of its audio. What the
tensors hold is described in :mod:`selva_core.feature_cache`; :class:`FeatureCacheSettings` is
everything about extraction that changes them. The pipeline is used through the
:class:`FeatureExtractor` protocol (``selva_core.pipeline.SelvaPipeline`` implements it).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from selva_core.audio.sync import motion_energy
from selva_core.data.audio import load_mono
from selva_core.data.clips import ClipSource
from selva_core.data.errors import BadClipError
from selva_core.data.npz_import import NpzFeatures, read_feature_npz
from selva_core.data.video import decode_frames, probe_video
from selva_core.data.windows import PAD_POLICIES, WINDOW_POLICIES, Window
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

EXTRACTOR_VERSION = "selva-lora-features-2"  # bump when extraction code changes its output
# 2: frames by the fps filter (data/fps_filter.py), turned upright; AAC priming and padding trimmed
CONDITION_KEYS: tuple[str, ...] = ("sync_f", "sync_valid", "text_clip_f")
TENSOR_KEYS: tuple[str, ...] = (
    "latent_mean", "latent_std", *CONDITION_KEYS, "audio_valid_samples",
)
MOTION_KEY = "motion_energy"  # a conditions window's metadata: its frames' motion energy (JSON)
EPS_S = 1e-6  # seconds of slack when float lengths are compared with whole frames


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
    cache built with other weights is not reused. ``latents``: True for training windows
    (the audio's VAE moments too); False for the condition features alone (evaluation).
    """

    variant: str
    duration: float = TRAIN_DURATION_S
    window_policy: str = "all"
    pad_policy: str = "pad"
    frame_size: int | None = None
    sample_rate: int | None = None
    extractor_version: str = EXTRACTOR_VERSION
    model_tag: str = ""
    latents: bool = True

    def __post_init__(self):
        variant = get_variant(self.variant)  # unknown names raise with the list of choices
        if self.window_policy not in WINDOW_POLICIES:
            raise ValueError(
                f"window_policy must be one of {WINDOW_POLICIES}, got {self.window_policy!r}"
            )
        if self.pad_policy not in PAD_POLICIES:
            raise ValueError(f"pad_policy must be one of {PAD_POLICIES}, got {self.pad_policy!r}")
        duration = float(self.duration)
        if not math.isfinite(duration) or duration + EPS_S < min_duration():
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

    @property
    def tensor_keys(self) -> tuple[str, ...]:
        """The tensors a window file of these settings holds."""
        return TENSOR_KEYS if self.latents else CONDITION_KEYS

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

# --- pipeline adapters ------------------------------------------------------------------------
def pipeline_variant(pipeline: FeatureExtractor) -> str:
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


def encoder_frames(pipeline: FeatureExtractor, video: Path, num_frames: int,
                   start: float = 0.0) -> torch.Tensor:
    """``num_frames`` frames of ``video`` from ``start`` at the sync rate, resized while
    decoding as the video encoder takes them (a long high-resolution clip never sits in memory
    at full size)."""
    return decode_frames(video, fps=SYNC_FPS, start=start, num_frames=num_frames,
                         transform=_resizer(pipeline))


def condition_frame_count(duration: float) -> int:
    """Frames decoded for a conditions window of ``duration`` s (one past its end, so the
    pipeline's frame fitting and the motion energy see the whole window)."""
    return int(math.ceil(duration * SYNC_FPS)) + 1


def _content_frames(seconds: float) -> int:
    return max(0, math.floor(seconds * SYNC_FPS + EPS_S))


# --- extraction of one window -----------------------------------------------------------------
@dataclass
class ClipData:
    """A clip as its windows are extracted from: its decoded sound and its lengths."""

    clip: ClipSource
    wave: np.ndarray | None  # None for conditions-only settings (the sound is not read)
    length: float  # usable seconds = min(audio, visual)
    visual_length: float
    npz: NpzFeatures | None


def load_clip(clip: ClipSource, settings: FeatureCacheSettings) -> ClipData:
    """Decode and validate the audio (training windows), measure the picture; BadClipError if
    unusable."""
    wave = None
    if settings.latents:
        audio_src = clip.audio_path if clip.audio_path is not None else clip.video_path
        wave = load_mono(audio_src, settings.sample_rate, from_video=clip.audio_path is None)
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
    elif settings.latents or clip.seconds is None:
        assert clip.video_path is not None
        visual = probe_video(clip.video_path).duration
    else:
        visual = clip.seconds
    length = visual if wave is None else min(wave.shape[0] / settings.sample_rate, visual)
    return ClipData(clip, wave, length, visual, npz)


def _window_conditions(data: ClipData, window: Window, pipeline: FeatureExtractor,
                       settings: FeatureCacheSettings) -> tuple[dict[str, torch.Tensor],
                                                                dict[str, str]]:
    """The window's ``sync_f`` / ``sync_valid`` / ``text_clip_f`` and extra metadata (the
    motion energy of a conditions window's frames)."""
    clip = data.clip
    seq = settings.model_variant.sequence_lengths(settings.duration)
    if settings.latents:
        content = min(settings.duration, data.length - window.start)
        want_frames = min(_content_frames(settings.duration), _content_frames(content))
        valid_tokens = SYNC_TOKENS_PER_SEGMENT * num_sync_segments(want_frames)
    else:  # the whole window, as evaluation renders it
        want_frames, valid_tokens = condition_frame_count(settings.duration), seq.sync
    extra: dict[str, str] = {}
    if data.npz is not None:
        first = window.start_frame // SYNC_STEP_FRAMES * SYNC_TOKENS_PER_SEGMENT
        tokens = torch.from_numpy(data.npz.sync_features[first: first + seq.sync])
        if not settings.latents and tokens.shape[0] < seq.sync:
            raise BadClipError(clip.npz_path, f"its features cover {data.npz.visual_length:.2f} "
                               f"s, less than the {settings.duration:g} s to render",
                               "set a shorter 'duration' in the spec")
        clip_text, _, _ = pipeline.encode_prompt([clip.prompt])
        text = _rows(clip_text, "CLIP-text features")
    else:
        assert clip.video_path is not None
        frames = encoder_frames(pipeline, clip.video_path, want_frames, window.start)
        if settings.latents:
            if frames.shape[0] < SYNC_SEGMENT_FRAMES:
                raise BadClipError(
                    clip.video_path,
                    f"window {window.index} at {window.start:.2f} s decodes only "
                    f"{frames.shape[0]} frames; one sync window needs {SYNC_SEGMENT_FRAMES}",
                    "re-encode the video or remove it")
            # half a frame of slack: the frame count, not float rounding, sets the window count
            features = pipeline.extract_features(
                frames, clip.prompt, duration=(frames.shape[0] + 0.5) / SYNC_FPS
            )
            valid_tokens = SYNC_TOKENS_PER_SEGMENT * num_sync_segments(frames.shape[0])
        else:
            try:
                features = pipeline.extract_features(frames, clip.prompt,
                                                     duration=settings.duration)
            except ValueError as exc:
                raise BadClipError(clip.video_path, str(exc), "set a shorter 'duration' in "
                                   "the spec or remove the clip") from None
            extra = {MOTION_KEY: json.dumps(motion_energy(frames).tolist()),
                     "motion_fps": str(SYNC_FPS)}
        tokens = _rows(features.sync_f, "sync features")
        text = _rows(features.text_clip_f, "CLIP-text features")
    sync, sync_valid = _fit_sync(tokens, valid_tokens, seq.sync)
    return {"sync_f": sync, "sync_valid": sync_valid, "text_clip_f": text}, extra


def _window_latents(data: ClipData, window: Window, pipeline: FeatureExtractor,
                    settings: FeatureCacheSettings) -> dict[str, torch.Tensor]:
    """The raw VAE moments of the window's audio and how many of its samples are real."""
    assert data.wave is not None
    seq = settings.model_variant.sequence_lengths(settings.duration)
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
    return {"latent_mean": mean, "latent_std": std,
            "audio_valid_samples": torch.tensor(int(chunk.shape[0]), dtype=torch.int64)}


def extract_window(
    data: ClipData, window: Window, pipeline: FeatureExtractor, settings: FeatureCacheSettings
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """One window's tensors (:attr:`FeatureCacheSettings.tensor_keys`) and extra metadata."""
    tensors, extra = _window_conditions(data, window, pipeline, settings)
    if settings.latents:
        tensors.update(_window_latents(data, window, pipeline, settings))
    return tensors, extra
