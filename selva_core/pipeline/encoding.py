"""What goes into the generator: prompts, frames and audio encoded into model space.

* :func:`encode_prompt` — prompts -> CLIP-text features (the generator's text condition) and
  FLAN-T5 states (what steers TextSynch), with the pipeline's textual-inversion tokens.
* :func:`extract_features` — 25 fps frames + prompt -> :class:`ConditionFeatures`
  (TextSynch sync features steered by the prompt, CLIP-text features); SelVA never uses
  CLIP-visual features, so ``clip_f`` stays ``None``.
* :func:`encode_audio` — waveform -> VAE posterior moments (training targets), mixed to mono
  by the same surround-aware downmix as the training data (:func:`selva_core.data.audio.to_mono`).

The steps run under ``torch.no_grad`` (not ``inference_mode``): their outputs stay ordinary
tensors that a trainer sharing the networks can use in autograd afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from ..features import ConditionFeatures
from ..variants import SYNC_FPS, SYNC_SEGMENT_FRAMES, SYNC_STEP_FRAMES
from .residency import require, running
from .state import PipelineState

#: Frames a clip may lack at its end for the requested duration; they are filled by repeating
#: the last frame (SelVA's training data code pads short clips the same way, by <= 3 frames).
MAX_PAD_FRAMES = 3
_RESIZE_CHUNK = 32  # frames resized at a time (bounds memory for long HD clips)


class LatentMoments(NamedTuple):
    """VAE posterior moments of a waveform in the generator's token layout (B, N, C).

    Unpacks as ``mean, std``. Raw (VAE space) unless ``encode_audio(normalize=True)`` was
    asked for; a training target is ``mean + std * eps``, then ``generator.normalize`` for
    raw moments.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def sample(self, rng: torch.Generator | None = None) -> torch.Tensor:
        """One draw ``mean + std * eps`` (eps drawn where ``rng`` lives, then moved)."""
        where = rng.device if rng is not None else self.mean.device
        eps = torch.randn(self.mean.shape, generator=rng, device=where)
        return self.mean + self.std * eps.to(self.mean.device, self.mean.dtype)


def as_prompts(prompt: str | Sequence[str], batch: int | None = None) -> list[str]:
    """One prompt or a list -> a list (of ``batch`` prompts: one prompt is repeated)."""
    prompts = [prompt] if isinstance(prompt, str) else [str(p) for p in prompt]
    if not prompts:
        raise ValueError("no prompt given: pass a string or a non-empty list of strings")
    if batch is not None and len(prompts) != batch:
        if len(prompts) != 1:
            raise ValueError(f"{len(prompts)} prompts for {batch} clips; give 1 or {batch}")
        prompts = prompts * batch
    return prompts


# --- text -------------------------------------------------------------------------------------
@torch.no_grad()
def encode_prompt(
    pipe: PipelineState, prompts: str | Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prompts -> (CLIP-text features (B, 77, text_dim), T5 states (B, L, d), T5 mask (B, L)).

    The CLIP-text features condition the generator; the T5 states (mask True = real token)
    steer TextSynch. Tensors are on the pipeline's device in its dtype (mask bool).
    """
    prompts = as_prompts(prompts)
    clip_text = require(pipe, "clip_text", "encoding a prompt")
    t5 = require(pipe, "t5", "encoding a prompt")
    from ..model.textual_inversion import encode_clip, encode_t5, warn_unknown_tokens

    warn_unknown_tokens(prompts, [e.token for e in pipe._embeddings])
    with running(pipe, "clip_text", "t5"):
        if pipe._embeddings:
            clip_f = encode_clip(clip_text, prompts, pipe._embeddings)
            states, mask = encode_t5(t5, prompts, pipe._embeddings)
        else:
            clip_f = clip_text.encode(prompts)
            states, mask = t5.encode(prompts)
    return (
        clip_f.to(pipe._device, pipe.dtype),
        states.to(pipe._device, pipe.dtype),
        mask.to(pipe._device, torch.bool),
    )


def negative_text(
    pipe: PipelineState, negative_prompt: str | Sequence[str] | None, batch: int
) -> torch.Tensor | None:
    """CLIP-text features of a negative prompt for ``batch`` clips (None for none or blank)."""
    if negative_prompt is None or (isinstance(negative_prompt, str)
                                   and not negative_prompt.strip()):
        return None
    return pipe.encode_prompt(as_prompts(negative_prompt, batch))[0]


# --- video ------------------------------------------------------------------------------------
def prepare_sync_frames(pipe: PipelineState, frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames (T, 3, H, W) or (B, T, 3, H, W) -> float in [-1, 1] at the encoder size.

    Bicubic, antialiased resize that squashes to ``frame_size`` x ``frame_size`` (no crop,
    as SelVA); uint8 input is rounded back to 8-bit levels after resizing as an 8-bit image
    pipeline would. Float input is taken as [0, 1]. Same rank as the input.
    """
    if not isinstance(frames, torch.Tensor):
        frames = torch.as_tensor(np.asarray(frames))
    if frames.ndim not in (4, 5) or frames.shape[-3] != 3:
        raise ValueError(
            f"frames must be (T, 3, H, W) or (B, T, 3, H, W) RGB, got {tuple(frames.shape)}"
        )
    is_uint8 = frames.dtype == torch.uint8
    if not is_uint8 and not frames.is_floating_point():
        raise ValueError(f"frames must be uint8 or float in [0, 1], got {frames.dtype}")
    size = pipe._variant.video_encoder.frame_size
    flat = frames.reshape(-1, *frames.shape[-3:])
    out = torch.empty(flat.shape[0], 3, size, size, dtype=torch.float32, device=pipe._device)
    for i in range(0, flat.shape[0], _RESIZE_CHUNK):
        chunk = flat[i : i + _RESIZE_CHUNK].to(pipe._device, torch.float32)
        if is_uint8:
            chunk = chunk / 255.0
        if tuple(chunk.shape[-2:]) != (size, size):
            chunk = F.interpolate(
                chunk, size=(size, size), mode="bicubic", align_corners=False, antialias=True
            )
            chunk = (chunk * 255.0).round() / 255.0 if is_uint8 else chunk
        out[i : i + _RESIZE_CHUNK] = chunk.clamp(0.0, 1.0)
    out = out * 2.0 - 1.0
    return out.reshape(*frames.shape[:-2], size, size)


def _fit_frames(
    pipe: PipelineState, frames: torch.Tensor, duration: float | None
) -> tuple[torch.Tensor, float]:
    """Cut (or pad by <= MAX_PAD_FRAMES) 25 fps frames (B, T, ...) to ``duration``'s windows."""
    available = frames.shape[1]
    if duration is None:
        duration = available / SYNC_FPS
    seq = pipe._variant.sequence_lengths(duration)  # raises for < one sync window
    needed = SYNC_SEGMENT_FRAMES + SYNC_STEP_FRAMES * (seq.sync_segments - 1)
    if available < needed:
        if needed - available > MAX_PAD_FRAMES:
            raise ValueError(
                f"{available} frames ({available / SYNC_FPS:.2f} s at {SYNC_FPS} fps) are "
                f"too few for a {duration:g} s clip, which needs {needed}; pass frames at "
                f"{SYNC_FPS} fps or a shorter duration"
            )
        pad = frames[:, -1:].expand(-1, needed - available, *frames.shape[2:])
        frames = torch.cat([frames, pad], dim=1)
    return frames[:, :needed], seq.duration


@torch.no_grad()
def extract_features(
    pipe: PipelineState,
    frames: torch.Tensor,
    prompt: str | Sequence[str],
    duration: float | None = None,
) -> ConditionFeatures:
    """25 fps frames (T, 3, H, W) / (B, T, 3, H, W) + prompt(s) -> ConditionFeatures.

    ``duration`` defaults to the frames' length; longer footage is cut to it, and up to
    :data:`MAX_PAD_FRAMES` missing frames are filled by repeating the last one.
    """
    video_encoder = require(pipe, "video_encoder", "extracting features")
    if not isinstance(frames, torch.Tensor):
        frames = torch.as_tensor(np.asarray(frames))
    batched = frames.ndim == 5
    frames = frames if batched else frames.unsqueeze(0)
    if frames.ndim != 5:
        raise ValueError(
            f"frames must be (T, 3, H, W) or (B, T, 3, H, W), got {tuple(frames.shape)}"
        )
    prompts = as_prompts(prompt, frames.shape[0])
    frames, duration = _fit_frames(pipe, frames, duration)
    video = pipe.prepare_sync_frames(frames).to(pipe.dtype)
    with running(pipe, "video_encoder", "clip_text", "t5"):
        clip_f, t5_states, t5_mask = pipe.encode_prompt(prompts)
        sync_f = video_encoder(video, t5_states, t5_mask)
    return ConditionFeatures(
        text_clip_f=clip_f, sync_f=sync_f, duration=duration, prompts=prompts,
        variant=pipe._variant.name,
    )


# --- audio -> latent --------------------------------------------------------------------------
def _mono_at_rate(
    pipe: PipelineState, waveform: torch.Tensor | np.ndarray, sample_rate: int
) -> torch.Tensor:
    """(B, samples) float32 on the CPU at the model's rate: channels mixed to mono and
    resampled exactly as :func:`selva_core.data.audio.load_mono` does for training clips."""
    wave = torch.as_tensor(np.asarray(waveform) if not isinstance(waveform, torch.Tensor)
                           else waveform).detach().float().cpu()
    if wave.ndim == 1:
        wave = wave.unsqueeze(0)
    elif wave.ndim == 3 and wave.shape[1] > 0:  # (B, channels, samples): mix down
        from ..data.audio import to_mono

        wave = torch.from_numpy(np.stack([to_mono(clip) for clip in wave.numpy()]))
    if wave.ndim != 2:
        raise ValueError(
            f"waveform must be (samples,), (B, samples) or (B, channels, samples), got "
            f"{tuple(wave.shape)}"
        )
    if not torch.isfinite(wave).all():
        raise ValueError("waveform contains NaN or infinite samples")
    sample_rate = int(sample_rate)
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    target = pipe._variant.sample_rate
    if sample_rate != target:
        from ..data.audio import resample

        wave = torch.from_numpy(np.ascontiguousarray(
            np.stack([resample(clip, sample_rate, target) for clip in wave.numpy()]),
            dtype=np.float32,
        ))
    return wave


@torch.no_grad()
def encode_audio(
    pipe: PipelineState,
    waveform: torch.Tensor | np.ndarray,
    sample_rate: int,
    *,
    duration: float | None = None,
    normalize: bool = False,
) -> LatentMoments:
    """Waveform -> VAE posterior moments ``(mean, std)`` as (B, N, C).

    Accepts (samples,), (B, samples) or (B, channels, samples) at any ``sample_rate``:
    channels are mixed to mono as the training data is (surround ITU-style without the LFE,
    in the usual WAV order for the channel count: 5.1 = L R C LFE Ls Rs) and resampled with
    soxr. ``duration`` pads with silence or cuts to exactly that many seconds' samples, so N
    equals the generator's latent length. Raw VAE-space moments by default (what the feature
    cache stores); ``normalize=True`` divides by the generator's latent statistics. Needs the
    VAE encoder (``need_vae_encoder=True`` for pretrained pipelines).
    """
    wave = _mono_at_rate(pipe, waveform, sample_rate)
    if duration is not None:
        samples = pipe._variant.sequence_lengths(duration).audio_samples
        wave = wave[:, :samples]
        if wave.shape[1] < samples:
            wave = F.pad(wave, (0, samples - wave.shape[1]))
    down = pipe._variant.mel.hop_size * 2
    if wave.shape[1] % down:  # whole latent frames: pad to a multiple of 2 hops
        wave = F.pad(wave, (0, down - wave.shape[1] % down))
    if getattr(pipe.vae, "encoder", None) is None or pipe._vae_encoder_released:
        raise RuntimeError(
            "encode_audio needs the VAE encoder, which this pipeline dropped (free_encoders(), "
            "or loaded without it); encode audio before free_encoders(), or load with "
            "SelvaPipeline.from_pretrained(..., need_vae_encoder=True)"
        )
    mel = pipe.mel(wave.to(pipe._device))
    with running(pipe, "vae"):
        posterior = pipe.vae.encode(mel.to(pipe.dtype))
    mean = posterior.mean.transpose(1, 2)
    std = posterior.std.transpose(1, 2)
    if normalize:
        mean = pipe.generator.normalize(mean)
        std = std / pipe.generator.latent_std
    return LatentMoments(mean, std)


__all__ = [
    "MAX_PAD_FRAMES",
    "LatentMoments",
    "encode_audio",
    "encode_prompt",
    "extract_features",
    "negative_text",
    "prepare_sync_frames",
]
