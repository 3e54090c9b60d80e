"""From condition features to sound: one window (:func:`sample`, :func:`decode`) or any length.

* :func:`sample` — Euler + CFG from seeded noise (drawn on the CPU, so a seed gives the same
  audio on any device) -> un-normalised VAE latent (B, N, C) of ONE window.
* :func:`decode` — latent -> log-mel (VAE decoder) -> waveform (BigVGAN).
* :func:`render` — any duration: windows that start on sync-segment boundaries
  (:func:`plan_windows`), each sampled from its own span of the features with its own seed
  (:func:`window_seed`), joined by an equal-power crossfade (:func:`crossfade_curves`).
* :func:`generate` — frames + prompt -> waveform (``extract_features`` then :func:`render`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..features import ConditionFeatures
from ..flow_matching import DEFAULT_CONFIG, ProgressCallback, euler_sample
from ..variants import (
    CLIP_FPS,
    SYNC_FPS,
    SYNC_SEGMENT_FRAMES,
    SYNC_STEP_FRAMES,
    SYNC_TOKENS_PER_SEGMENT,
    TRAIN_DURATION_S,
)
from .encoding import negative_text
from .residency import running
from .state import PipelineState

logger = logging.getLogger(__name__)

#: Default overlap of neighbouring windows in :func:`render` (seconds).
DEFAULT_OVERLAP_S = 1.0
#: Seeds of the windows after the first: ``seed + k * WINDOW_SEED_STRIDE`` (mod 2**63).
WINDOW_SEED_STRIDE = 0x9E3779B97F4A7C15


@dataclass(frozen=True)
class RenderWindow:
    """One window of a long render: starts at sync segment ``segment`` (``start_s`` seconds),
    lasts ``duration_s`` seconds and draws its noise from ``seed``."""

    index: int
    segment: int
    start_s: float
    duration_s: float
    seed: int | list[int]


def window_seed(seed: int | Sequence[int], index: int) -> int | list[int]:
    """Noise seed of window ``index`` of a render with ``seed`` (window 0 uses ``seed``);
    per clip for a sequence of seeds."""
    if not isinstance(seed, int) and isinstance(seed, Sequence):
        return [window_seed(s, index) for s in seed]
    return (int(seed) + index * WINDOW_SEED_STRIDE) % 2**63


def _initial_noise(seed: int | Sequence[int], shape: tuple[int, int, int]) -> torch.Tensor:
    """Standard normal noise drawn on the CPU: all of it from one ``seed``, or clip ``i``'s
    from ``seed[i]``."""
    if isinstance(seed, int) or not isinstance(seed, Sequence):
        return torch.randn(shape, generator=torch.Generator().manual_seed(int(seed)))
    seeds = [int(s) for s in seed]
    if len(seeds) != shape[0]:
        raise ValueError(f"{len(seeds)} seeds for {shape[0]} clips; give one seed or {shape[0]}")
    return torch.cat([
        torch.randn((1, *shape[1:]), generator=torch.Generator().manual_seed(s)) for s in seeds
    ])


def plan_windows(
    duration: float, window_s: float, overlap_s: float, seed: int | Sequence[int] = 0
) -> list[RenderWindow]:
    """Windows that cover ``duration`` seconds, each starting on a sync-segment boundary.

    A ``duration`` that fits in one window (up to one sync step, 0.32 s, more) gives one
    window of that duration. Otherwise the fewest windows whose neighbours overlap by at least
    ``overlap_s``, spread evenly in whole sync segments: all last ``window_s`` except the last,
    which ends exactly at ``duration`` (at most one sync step longer).
    """
    duration, window_s, overlap_s = float(duration), float(window_s), float(overlap_s)
    step_s = SYNC_STEP_FRAMES / SYNC_FPS
    if window_s < SYNC_SEGMENT_FRAMES / SYNC_FPS:
        raise ValueError(f"window_s {window_s:g} s is shorter than one sync window (0.64 s)")
    eps = 1e-6
    last = int(math.floor((duration - window_s) / step_s + eps))
    if last <= 0:
        return [RenderWindow(0, 0, 0.0, duration, window_seed(seed, 0))]
    if not 0.0 <= overlap_s <= window_s - step_s + eps:
        raise ValueError(
            f"overlap_s {overlap_s:g} s must be >= 0 and leave the {window_s:g} s windows at "
            f"least one sync step ({step_s:g} s) apart"
        )
    hop = max(1, int(math.floor((window_s - overlap_s) / step_s + eps)))
    gaps = -(-last // hop)
    segments = [int(math.floor(k * last / gaps + 0.5)) for k in range(gaps + 1)]
    return [
        RenderWindow(
            k, seg, seg * step_s, duration - seg * step_s if k == gaps else window_s,
            window_seed(seed, k),
        )
        for k, seg in enumerate(segments)
    ]


def crossfade_curves(length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Equal-power fade-out ``cos`` and fade-in ``sin`` over ``length`` samples (float32).

    ``out**2 + in**2 == 1`` at every sample, so two uncorrelated signals keep their power
    through the seam.
    """
    x = (torch.arange(length, dtype=torch.float64) + 0.5) / length * (math.pi / 2)
    return torch.cos(x).float(), torch.sin(x).float()


def _conditions_for(
    pipe: PipelineState, features: ConditionFeatures, duration: float
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Features cut to ``duration``'s token counts (every stream is causal in time)."""
    seq = pipe._variant.sequence_lengths(duration)
    if features.variant != pipe._variant.name:
        logger.info("using %s features with the %s generator", features.variant,
                    pipe._variant.name)
    streams = {"sync_f": (features.sync_f, seq.sync)}
    if features.clip_f is not None:
        streams["clip_f"] = (features.clip_f, seq.clip)
    out = {}
    for name, (tensor, length) in streams.items():
        if tensor.shape[1] < length:
            raise ValueError(
                f"the features hold {tensor.shape[1]} {name} tokens ({features.duration:g} s) "
                f"but {duration:g} s needs {length}; extract the features for at least "
                f"{duration:g} s or sample a shorter duration"
            )
        out[name] = tensor[:, :length].to(pipe._device, pipe.dtype)
    text = features.text_clip_f.to(pipe._device, pipe.dtype)
    return out.get("clip_f"), out["sync_f"], text


def _sample_latent(
    pipe: PipelineState,
    features: ConditionFeatures,
    duration: float,
    seed: int | Sequence[int],
    num_steps: int,
    cfg_strength: float,
    negative_text_f: torch.Tensor | None,
    progress_callback: ProgressCallback | None,
) -> torch.Tensor:
    """Euler + CFG for one window; the generator must already be set up for ``duration``."""
    seq = pipe._variant.sequence_lengths(duration)
    clip_f, sync_f, text_f = _conditions_for(pipe, features, duration)
    x0 = _initial_noise(
        seed, (features.batch_size, seq.latent, pipe._variant.generator.latent_dim)
    ).to(pipe._device, pipe.dtype)
    latent = euler_sample(
        pipe.generator, x0, clip_f, sync_f, text_f,
        negative_text_f=negative_text_f, num_steps=num_steps, cfg_strength=cfg_strength,
        progress_callback=progress_callback,
    )
    return pipe.generator.unnormalize(latent)


@torch.no_grad()
def sample(
    pipe: PipelineState,
    features: ConditionFeatures,
    *,
    seed: int | Sequence[int],
    num_steps: int = DEFAULT_CONFIG.num_steps,
    cfg_strength: float = DEFAULT_CONFIG.cfg_strength,
    negative_prompt: str | Sequence[str] | None = None,
    duration: float | None = None,
    progress_callback: ProgressCallback | None = None,
) -> torch.Tensor:
    """Generate the un-normalised VAE latent (B, N, C) of ONE window of ``features``.

    ``duration`` (default: the features' duration, which it may not exceed) sets every
    sequence length; :func:`render` handles clips longer than the model's window. The
    initial noise comes from ``torch.Generator('cpu')`` seeded with ``seed`` and is then
    moved, so a seed gives the same result on any device; a sequence of seeds, one per
    clip, draws each clip's noise from its own seed (a clip's result then does not depend
    on the batch it is in). A ``negative_prompt`` replaces
    the empty text in the unconditional CFG branch. ``progress_callback(step, total)`` is
    called after every Euler step and may raise to stop. The generator's sequence lengths,
    train/eval flags, device and dtype are as found afterwards, also when it raises.
    """
    duration = features.duration if duration is None else float(duration)
    seq = pipe._variant.sequence_lengths(duration)
    _conditions_for(pipe, features, duration)  # checks the features before any work
    negative_text_f = negative_text(pipe, negative_prompt, features.batch_size)
    with running(pipe, "generator", seq=seq):
        return _sample_latent(pipe, features, duration, seed, num_steps, cfg_strength,
                              negative_text_f, progress_callback)


@torch.no_grad()
def decode(pipe: PipelineState, latent: torch.Tensor) -> torch.Tensor:
    """Un-normalised latent (B, N, C) -> waveform (B, N * 2 * hop) float32 in [-1, 1]."""
    latent_dim = pipe._variant.generator.latent_dim
    if latent.ndim != 3 or latent.shape[-1] != latent_dim:
        raise ValueError(f"latent must be (B, N, {latent_dim}), got {tuple(latent.shape)}")
    with running(pipe, "vae", "vocoder"):
        mel = pipe.vae.decode(latent.to(pipe._device, pipe.dtype).transpose(1, 2))
        wave = pipe.vocoder(mel.to(pipe.dtype))
    return wave.squeeze(1).float()


def plan_render(
    pipe: PipelineState,
    duration: float,
    *,
    seed: int | Sequence[int] = 0,
    window_s: float | None = None,
    overlap_s: float = DEFAULT_OVERLAP_S,
) -> list[RenderWindow]:
    """The windows :func:`render` uses for ``duration`` seconds (see :func:`plan_windows`)."""
    window_s = TRAIN_DURATION_S if window_s is None else float(window_s)
    pipe._variant.sequence_lengths(duration)  # raises for less than one sync window
    return plan_windows(duration, window_s, overlap_s, seed)


def window_features(
    pipe: PipelineState, features: ConditionFeatures, window: RenderWindow
) -> ConditionFeatures:
    """``features`` cut to ``window``'s span: its own sync segments (and CLIP frames)."""
    seq = pipe._variant.sequence_lengths(window.duration_s)
    first = window.segment * SYNC_TOKENS_PER_SEGMENT
    sync_f = features.sync_f[:, first : first + seq.sync]
    if sync_f.shape[1] < seq.sync:
        raise ValueError(
            f"the features hold {features.sync_f.shape[1]} sync tokens "
            f"({features.duration:g} s), too few for the window at {window.start_s:g} s; "
            f"extract the features for the whole duration"
        )
    clip_f = None
    if features.clip_f is not None:
        c0 = int(round(window.start_s * CLIP_FPS))
        clip_f = features.clip_f[:, c0 : c0 + seq.clip]
    return ConditionFeatures(
        text_clip_f=features.text_clip_f, sync_f=sync_f, clip_f=clip_f,
        duration=window.duration_s, prompts=list(features.prompts),
        variant=features.variant, extra=dict(features.extra),
    )


def _render_windows(
    pipe: PipelineState,
    features: ConditionFeatures,
    windows: list[RenderWindow],
    duration: float,
    num_steps: int,
    cfg_strength: float,
    negative_text_f: torch.Tensor | None,
    progress_callback: ProgressCallback | None,
) -> torch.Tensor:
    """Each window sampled and decoded, neighbours joined by an equal-power crossfade."""
    total_steps = num_steps * len(windows)
    rate = pipe._variant.sample_rate
    starts = [int(round(w.start_s * rate)) for w in windows]
    ends = [
        start + pipe._variant.sequence_lengths(w.duration_s).audio_samples
        for start, w in zip(starts, windows)
    ]
    length = min(pipe._variant.render_samples(duration), ends[-1])
    out: torch.Tensor | None = None
    for k, (w, start, end) in enumerate(zip(windows, starts, ends)):
        def step(i: int, n: int, done: int = k * num_steps) -> None:
            if progress_callback is not None:
                progress_callback(done + i, total_steps)

        feats = pipe.window_features(features, w)
        seq = pipe._variant.sequence_lengths(w.duration_s)
        with running(pipe, "generator", seq=seq):
            latent = _sample_latent(pipe, feats, w.duration_s, w.seed, num_steps,
                                    cfg_strength, negative_text_f, step)
        wave = pipe.decode(latent).cpu()[:, : min(end, length) - start]
        if out is None:
            out = torch.zeros(wave.shape[0], length)
            out[:, : wave.shape[1]] = wave
            continue
        fade_end = min(ends[k - 1], starts[k + 1] if k + 1 < len(windows) else length)
        fade = fade_end - start
        fade_out, fade_in = crossfade_curves(fade)
        out[:, start:fade_end] = out[:, start:fade_end] * fade_out + wave[:, :fade] * fade_in
        out[:, fade_end : start + wave.shape[1]] = wave[:, fade:]
    return out


@torch.no_grad()
def render(
    pipe: PipelineState,
    features: ConditionFeatures,
    *,
    seed: int | Sequence[int],
    num_steps: int = DEFAULT_CONFIG.num_steps,
    cfg_strength: float = DEFAULT_CONFIG.cfg_strength,
    negative_prompt: str | Sequence[str] | None = None,
    duration: float | None = None,
    window_s: float | None = None,
    overlap_s: float = DEFAULT_OVERLAP_S,
    progress_callback: ProgressCallback | None = None,
) -> torch.Tensor:
    """Waveform (B, samples) float32 on the CPU for ANY duration of ``features``.

    Exactly ``duration`` seconds long (:meth:`ModelVariant.render_samples`). Up to one
    window (``window_s``, default the variant's training duration of
    :data:`~selva_core.variants.TRAIN_DURATION_S`) this is ``decode(sample(...))`` cut to
    that length.
    Longer clips are cut into windows that start on sync-segment boundaries and overlap
    by at least ``overlap_s`` (:func:`plan_render`); each window is sampled from its own
    span of the features with its own seed (:func:`window_seed`) and decoded, and
    neighbours are joined by an equal-power crossfade (cos / sin) over their overlap (cut
    at the next window's start where overlaps would nest). ``progress_callback(done,
    total)`` counts Euler steps over all windows and may raise to stop; the pipeline is
    then as found.
    """
    duration = features.duration if duration is None else float(duration)
    if duration > features.duration + 1e-6:
        _conditions_for(pipe, features, duration)  # raises: the features are too short
    windows = pipe.plan_render(duration, seed=seed, window_s=window_s, overlap_s=overlap_s)
    if len(windows) == 1:
        latent = pipe.sample(
            features, seed=seed, num_steps=num_steps, cfg_strength=cfg_strength,
            negative_prompt=negative_prompt, duration=duration,
            progress_callback=progress_callback,
        )
        wave = pipe.decode(latent).cpu()
        return wave[:, : pipe._variant.render_samples(duration)].contiguous()
    negative_text_f = negative_text(pipe, negative_prompt, features.batch_size)
    return _render_windows(pipe, features, windows, duration, num_steps, cfg_strength,
                           negative_text_f, progress_callback)


@torch.no_grad()
def generate(
    pipe: PipelineState,
    frames: torch.Tensor,
    prompt: str | Sequence[str],
    *,
    seed: int | Sequence[int] = 0,
    duration: float | None = None,
    num_steps: int = DEFAULT_CONFIG.num_steps,
    cfg_strength: float = DEFAULT_CONFIG.cfg_strength,
    negative_prompt: str | Sequence[str] | None = None,
    window_s: float | None = None,
    overlap_s: float = DEFAULT_OVERLAP_S,
    progress_callback: ProgressCallback | None = None,
) -> tuple[torch.Tensor, int]:
    """Frames + prompt -> (waveform (B, samples) float32 on the CPU, sample rate).

    Any duration (default: the frames' length): ``extract_features`` then :func:`render`.
    """
    features = pipe.extract_features(frames, prompt, duration)
    wave = pipe.render(
        features, seed=seed, num_steps=num_steps, cfg_strength=cfg_strength,
        negative_prompt=negative_prompt, window_s=window_s, overlap_s=overlap_s,
        progress_callback=progress_callback,
    )
    return wave, pipe._variant.sample_rate


__all__ = [
    "DEFAULT_OVERLAP_S",
    "WINDOW_SEED_STRIDE",
    "RenderWindow",
    "crossfade_curves",
    "decode",
    "generate",
    "plan_render",
    "plan_windows",
    "render",
    "sample",
    "window_features",
    "window_seed",
]
