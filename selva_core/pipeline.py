"""SelvaPipeline: frames + prompt -> condition features -> latent -> waveform, for users.

One object holds every network of a variant (generator, TextSynch, CLIP-text and FLAN-T5
encoders, mel VAE, BigVGAN vocoder, mel front end) and exposes the steps as separate methods,
so the ComfyUI nodes, ``train_lora.py`` and ``eval_adapters.py`` all call the same code:

* :meth:`SelvaPipeline.extract_features` — 25 fps frames + prompt -> :class:`ConditionFeatures`
  (TextSynch sync features steered by the FLAN-T5 prompt with [SUP] tokens, CLIP-text
  features); SelVA never uses CLIP-visual features, so ``clip_f`` stays ``None``.
* :meth:`SelvaPipeline.sample` — Euler + CFG from seeded noise (drawn on the CPU, so a seed
  gives the same audio on any device) -> un-normalised VAE latent (B, N, C).
* :meth:`SelvaPipeline.decode` — latent -> log-mel (VAE decoder) -> waveform (BigVGAN).
* :meth:`SelvaPipeline.encode_audio` — waveform -> VAE posterior moments (training targets).

:meth:`SelvaPipeline.from_pretrained` downloads / verifies / strictly loads the official
weights (:mod:`selva_core.weights`); :meth:`SelvaPipeline.tiny` builds the ``tiny_16k``
variant at random (tests and the demo; no downloads).

The steps run under ``torch.no_grad`` (not ``inference_mode``): their outputs, and the RoPE
tables the generator rebuilds for a new duration, stay ordinary tensors that a trainer
sharing the generator can use in autograd afterwards.
"""

from __future__ import annotations

import gc
import logging
import math
import os
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .audio.mel import MelConverter
from .features import ConditionFeatures
from .flow_matching import DEFAULT_CONFIG, euler_sample
from .variants import (
    SYNC_FPS,
    SYNC_SEGMENT_FRAMES,
    SYNC_STEP_FRAMES,
    TRAIN_DURATION_S,
    CheckpointFile,
    ModelVariant,
    get_variant,
)
from .weights import (
    build_component,
    ensure_checkpoint,
    load_checked,
    read_state_dict,
    resolve_models_dir,
    skip_random_init,
)

logger = logging.getLogger(__name__)

TINY_VARIANT = "tiny_16k"
#: Frames a clip may lack at its end for the requested duration; they are filled by repeating
#: the last frame (SelVA's training data code pads short clips the same way, by <= 3 frames).
MAX_PAD_FRAMES = 3
_RESIZE_CHUNK = 32  # frames resized at a time (bounds memory for long HD clips)

ProgressCallback = Callable[[int, int], None]


class LatentMoments(NamedTuple):
    """VAE posterior moments of a waveform in the generator's token layout (B, N, C).

    Unpacks as ``mean, std``. Raw (VAE space) unless ``encode_audio(normalize=True)`` was
    asked for; a training target is ``mean + std * eps``, then ``generator.normalize`` for
    raw moments.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """One draw ``mean + std * eps`` (eps drawn where ``generator`` lives, then moved)."""
        where = generator.device if generator is not None else self.mean.device
        eps = torch.randn(self.mean.shape, generator=generator, device=where)
        return self.mean + self.std * eps.to(self.mean.device, self.mean.dtype)


@torch.no_grad()
def _audible_random_init_(vocoder: nn.Module, seed: int) -> None:
    """Re-draw a random vocoder's parameters so that its output depends on its input.

    BigVGAN's own initialisation (N(0, 0.01) weights under weight norm) shrinks the signal at
    every stage, so a random tiny vocoder outputs a near-constant. Here matrices get
    fan-in-scaled normal weights, weight-norm magnitudes g in [0.5, 1), SnakeBeta log-scales
    0.1 N(0, 1) and biases 0.02 N(0, 1) (the roles of the golden seeded-weights recipe);
    buffers (the anti-aliasing filters) keep their designed values.
    """
    rng = torch.Generator().manual_seed(seed)
    for name, p in sorted(vocoder.named_parameters()):
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "original0":
            value = 0.5 + 0.5 * torch.rand(p.shape, generator=rng)
        elif leaf in ("alpha", "beta"):
            value = 0.1 * torch.randn(p.shape, generator=rng)
        elif leaf.endswith("bias") or p.ndim < 2:
            value = 0.02 * torch.randn(p.shape, generator=rng)
        else:
            value = torch.randn(p.shape, generator=rng) / math.sqrt(math.prod(p.shape[1:]))
        p.copy_(value)


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _as_prompts(prompt: str | Sequence[str], batch: int | None = None) -> list[str]:
    prompts = [prompt] if isinstance(prompt, str) else [str(p) for p in prompt]
    if not prompts:
        raise ValueError("no prompt given: pass a string or a non-empty list of strings")
    if batch is not None and len(prompts) != batch:
        if len(prompts) != 1:
            raise ValueError(f"{len(prompts)} prompts for {batch} clips; give 1 or {batch}")
        prompts = prompts * batch
    return prompts


def _local_text_encoder(models_dir: str | os.PathLike | None, hub_id: str) -> str | None:
    """``<models_dir>/<repo name>`` when that folder exists (offline text encoders)."""
    folder = resolve_models_dir(models_dir) / hub_id.rstrip("/").rsplit("/", 1)[-1]
    if folder.is_dir():
        logger.info("using the local text encoder folder %s", folder)
        return str(folder)
    return None


class SelvaPipeline:
    """Every network of one SelVA variant plus the steps that connect them.

    Build with :meth:`from_pretrained` or :meth:`tiny`. Attributes: ``generator``
    (:class:`~selva_core.model.generator.SelvaGenerator`), ``video_encoder`` (TextSynch),
    ``clip_text`` / ``t5`` (text encoders), ``vae``, ``vocoder``, ``mel``; the three encoders
    are ``None`` after :meth:`free_encoders`.
    """

    def __init__(
        self,
        variant: ModelVariant | str,
        *,
        generator: nn.Module,
        vae: nn.Module,
        vocoder: nn.Module,
        video_encoder: nn.Module | None = None,
        clip_text: nn.Module | None = None,
        t5: nn.Module | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        self._variant = get_variant(variant) if isinstance(variant, str) else variant
        self.generator = generator
        self.vae = vae
        self.vocoder = vocoder
        self.video_encoder = video_encoder
        self.clip_text = clip_text
        self.t5 = t5
        self.mel = MelConverter(self._variant.mel)
        self.dtype = dtype
        self._device = torch.device(device) if device is not None else _default_device()
        self.to(self._device, dtype)

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        variant: str = "small_16k",
        models_dir: str | os.PathLike | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        download: bool = True,
        clip_source: str | os.PathLike | None = None,
        t5_source: str | os.PathLike | None = None,
        need_vae_encoder: bool = False,
        verify: bool = True,
    ) -> SelvaPipeline:
        """Load the official weights of ``variant`` (downloaded into ``models_dir`` if missing).

        Each network is built without random init, then strictly loaded through
        :func:`~selva_core.weights.load_checked` (a wrong, broken or other-variant file raises
        one :class:`~selva_core.weights.CheckpointError`). The VAE is re-normalised once and
        its encoder dropped unless ``need_vae_encoder`` (training needs it); the vocoder's
        legacy weight-norm keys are converted and the weight norm folded. ``clip_source`` /
        ``t5_source``: hub id or local folder of the text encoders; by default a folder named
        after the hub repository inside ``models_dir`` (``DFN5B-CLIP-ViT-H-14-384``,
        ``flan-t5-base``) when it exists, so a complete models folder works offline, else the
        variant's hub ids. ``verify``: md5-check files already present (once; remembered).
        """
        v = get_variant(variant)
        files = v.checkpoint_files()
        missing = [c for c in ("generator", "video_encoder", "vae", "vocoder") if c not in files]
        if missing:
            hint = " (a random test model: use SelvaPipeline.tiny())" if v.is_tiny else ""
            raise ValueError(f"variant {v.name!r} has no weight file for {missing}{hint}")
        from .model.bigvgan import convert_legacy_weight_norm_keys
        from .model.text_encoders import load_text_encoders
        from .model.video_encoder import CHECKPOINT_PREFIXES

        def load(component: str, file: CheckpointFile, transform=None) -> nn.Module:
            path = ensure_checkpoint(file, models_dir, download=download, verify=verify)
            state_dict = read_state_dict(path, subkey=file.subkey)
            with skip_random_init():
                module = build_component(component, v)
            load_checked(
                module, state_dict, component=component, variant=v.name,
                transform=transform, source=path,
            )
            return module.eval()

        generator = load("generator", files["generator"])
        video_encoder = load(
            "video_encoder",
            files["video_encoder"],
            transform=lambda sd: {k: t for k, t in sd.items() if k.startswith(CHECKPOINT_PREFIXES)},
        )
        vae = load("vae", files["vae"])
        vae.normalize_weights_()
        if not need_vae_encoder:
            vae.drop_encoder()
        vocoder = load("vocoder", files["vocoder"], transform=convert_legacy_weight_norm_keys)
        vocoder.remove_weight_norm()
        target = torch.device(device) if device is not None else _default_device()
        clip_text, t5 = load_text_encoders(
            v.text_encoders,
            clip_source=clip_source or _local_text_encoder(models_dir, v.text_encoders.clip_hub_id),
            t5_source=t5_source or _local_text_encoder(models_dir, v.text_encoders.t5_hub_id),
            device="cpu",
        )
        return cls(
            v, generator=generator, vae=vae, vocoder=vocoder, video_encoder=video_encoder,
            clip_text=clip_text.eval(), t5=t5.eval(), device=target, dtype=dtype,
        )

    @classmethod
    def tiny(
        cls,
        seed: int = 0,
        device: torch.device | str = "cpu",
        duration: float = TRAIN_DURATION_S,
        dtype: torch.dtype = torch.float32,
    ) -> SelvaPipeline:
        """The ``tiny_16k`` variant with random weights: same classes, no downloads.

        Deterministic given ``seed`` (the global RNG is left untouched); outputs are
        non-trivial, so tests can tell prompts, seeds and negative prompts apart.
        """
        from .model.text_encoders import load_text_encoders

        v = get_variant(TINY_VARIANT)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            generator = build_component("generator", v)
            generator.update_seq_lengths(v.sequence_lengths(duration))
            video_encoder = build_component("video_encoder", v)
            vae = build_component("vae", v)
            vae.normalize_weights_()
            vocoder = build_component("vocoder", v)
            _audible_random_init_(vocoder, seed)
            vocoder.remove_weight_norm()
            clip_text, t5 = load_text_encoders(v.text_encoders, device="cpu", seed=seed)
        modules = (generator, video_encoder, vae, vocoder, clip_text, t5)
        for m in modules:
            m.eval()
        return cls(
            v, generator=generator, vae=vae, vocoder=vocoder, video_encoder=video_encoder,
            clip_text=clip_text, t5=t5, device=device, dtype=dtype,
        )

    # --- properties / housekeeping ------------------------------------------------------------
    @property
    def variant(self) -> ModelVariant:
        return self._variant

    @property
    def sample_rate(self) -> int:
        return self._variant.sample_rate

    @property
    def device(self) -> torch.device:
        return self._device

    def _modules(self) -> dict[str, nn.Module]:
        names = ("generator", "video_encoder", "clip_text", "t5", "vae", "vocoder")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        """Move every network (and cast its floating weights when ``dtype`` is given)."""
        if device is not None:
            self._device = torch.device(device)
        if dtype is not None:
            self.dtype = dtype
        for module in self._modules().values():
            module.to(device=self._device, dtype=self.dtype)
        self.mel.to(self._device)  # the mel front end always computes in float32
        return self

    def free_encoders(self) -> None:
        """Release TextSynch, FLAN-T5, CLIP-text and the VAE encoder (features must be extracted
        before); the generator, VAE decoder and vocoder stay for sampling."""
        self.video_encoder = self.clip_text = self.t5 = None
        if self.vae.encoder is not None:
            self.vae.drop_encoder()
        gc.collect()
        if self._device.type == "cuda":
            torch.cuda.empty_cache()
        logger.info("freed the feature encoders (TextSynch, FLAN-T5, CLIP text, VAE encoder)")

    def _require(self, name: str, purpose: str) -> nn.Module:
        module = getattr(self, name)
        if module is None:
            raise RuntimeError(
                f"{purpose} needs the {name} network, which was released by free_encoders(); "
                f"extract features before freeing the encoders, or load a new pipeline"
            )
        return module

    # --- text -------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompt(
        self, prompts: str | Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prompts -> (CLIP-text features (B, 77, text_dim), T5 states (B, L, d), T5 mask (B, L)).

        The CLIP-text features condition the generator; the T5 states (mask True = real token)
        steer TextSynch. Tensors are on the pipeline's device in its dtype (mask bool).
        """
        prompts = _as_prompts(prompts)
        clip_text = self._require("clip_text", "encoding a prompt")
        t5 = self._require("t5", "encoding a prompt")
        clip_f = clip_text.encode(prompts)
        states, mask = t5.encode(prompts)
        return (
            clip_f.to(self._device, self.dtype),
            states.to(self._device, self.dtype),
            mask.to(self._device, torch.bool),
        )

    # --- video ------------------------------------------------------------------------------
    def prepare_sync_frames(self, frames: torch.Tensor) -> torch.Tensor:
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
        size = self._variant.video_encoder.frame_size
        flat = frames.reshape(-1, *frames.shape[-3:])
        out = torch.empty(flat.shape[0], 3, size, size, dtype=torch.float32, device=self._device)
        for i in range(0, flat.shape[0], _RESIZE_CHUNK):
            chunk = flat[i : i + _RESIZE_CHUNK].to(self._device, torch.float32)
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
        self, frames: torch.Tensor, duration: float | None
    ) -> tuple[torch.Tensor, float]:
        """Cut (or pad by <= MAX_PAD_FRAMES) 25 fps frames (B, T, ...) to ``duration``'s windows."""
        available = frames.shape[1]
        if duration is None:
            duration = available / SYNC_FPS
        seq = self._variant.sequence_lengths(duration)  # raises for < one sync window
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
        self,
        frames: torch.Tensor,
        prompt: str | Sequence[str],
        duration: float | None = None,
    ) -> ConditionFeatures:
        """25 fps frames (T, 3, H, W) / (B, T, 3, H, W) + prompt(s) -> ConditionFeatures.

        ``duration`` defaults to the frames' length; longer footage is cut to it, and up to
        :data:`MAX_PAD_FRAMES` missing frames are filled by repeating the last one.
        """
        video_encoder = self._require("video_encoder", "extracting features")
        if not isinstance(frames, torch.Tensor):
            frames = torch.as_tensor(np.asarray(frames))
        batched = frames.ndim == 5
        frames = frames if batched else frames.unsqueeze(0)
        if frames.ndim != 5:
            raise ValueError(
                f"frames must be (T, 3, H, W) or (B, T, 3, H, W), got {tuple(frames.shape)}"
            )
        prompts = _as_prompts(prompt, frames.shape[0])
        frames, duration = self._fit_frames(frames, duration)
        video = self.prepare_sync_frames(frames).to(self.dtype)
        clip_f, t5_states, t5_mask = self.encode_prompt(prompts)
        sync_f = video_encoder(video, t5_states, t5_mask)
        return ConditionFeatures(
            text_clip_f=clip_f, sync_f=sync_f, duration=duration, prompts=prompts,
            variant=self._variant.name,
        )

    # --- generation -------------------------------------------------------------------------
    def _conditions_for(
        self, features: ConditionFeatures, duration: float
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """Features cut to ``duration``'s token counts (every stream is causal in time)."""
        seq = self._variant.sequence_lengths(duration)
        if features.variant != self._variant.name:
            logger.info("using %s features with the %s generator", features.variant,
                        self._variant.name)
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
            out[name] = tensor[:, :length].to(self._device, self.dtype)
        text = features.text_clip_f.to(self._device, self.dtype)
        return out.get("clip_f"), out["sync_f"], text

    @torch.no_grad()
    def sample(
        self,
        features: ConditionFeatures,
        *,
        seed: int,
        num_steps: int = DEFAULT_CONFIG.num_steps,
        cfg_strength: float = DEFAULT_CONFIG.cfg_strength,
        negative_prompt: str | Sequence[str] | None = None,
        duration: float | None = None,
        progress_callback: ProgressCallback | None = None,
    ) -> torch.Tensor:
        """Generate the un-normalised VAE latent (B, N, C) for ``features``.

        ``duration`` (default: the features' duration, which it may not exceed) sets every
        sequence length. The initial noise comes from ``torch.Generator('cpu')`` seeded with
        ``seed`` and is then moved, so a seed gives the same result on any device. A
        ``negative_prompt`` replaces the empty text in the unconditional CFG branch.
        ``progress_callback(step, total)`` is called after every Euler step.
        """
        duration = features.duration if duration is None else float(duration)
        seq = self._variant.sequence_lengths(duration)
        clip_f, sync_f, text_f = self._conditions_for(features, duration)
        batch = features.batch_size
        negative_text_f = None
        if negative_prompt is not None and (
            not isinstance(negative_prompt, str) or negative_prompt.strip()
        ):
            negative_text_f = self.encode_prompt(_as_prompts(negative_prompt, batch))[0]

        if self.generator.seq != seq:
            self.generator.update_seq_lengths(seq)
        noise_rng = torch.Generator(device="cpu").manual_seed(int(seed))
        x0 = torch.randn(
            (batch, seq.latent, self._variant.generator.latent_dim), generator=noise_rng
        ).to(self._device, self.dtype)
        latent = euler_sample(
            self.generator, x0, clip_f, sync_f, text_f,
            negative_text_f=negative_text_f, num_steps=num_steps, cfg_strength=cfg_strength,
            progress_callback=progress_callback,
        )
        return self.generator.unnormalize(latent)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Un-normalised latent (B, N, C) -> waveform (B, N * 2 * hop) float32 in [-1, 1]."""
        latent_dim = self._variant.generator.latent_dim
        if latent.ndim != 3 or latent.shape[-1] != latent_dim:
            raise ValueError(f"latent must be (B, N, {latent_dim}), got {tuple(latent.shape)}")
        mel = self.vae.decode(latent.to(self._device, self.dtype).transpose(1, 2))
        wave = self.vocoder(mel.to(self.dtype))
        return wave.squeeze(1).float()

    @torch.no_grad()
    def generate(
        self,
        frames: torch.Tensor,
        prompt: str | Sequence[str],
        *,
        seed: int = 0,
        duration: float | None = None,
        num_steps: int = DEFAULT_CONFIG.num_steps,
        cfg_strength: float = DEFAULT_CONFIG.cfg_strength,
        negative_prompt: str | Sequence[str] | None = None,
        progress_callback: ProgressCallback | None = None,
    ) -> tuple[torch.Tensor, int]:
        """Frames + prompt -> (waveform (B, samples) float32 on the CPU, sample rate)."""
        features = self.extract_features(frames, prompt, duration)
        latent = self.sample(
            features, seed=seed, num_steps=num_steps, cfg_strength=cfg_strength,
            negative_prompt=negative_prompt, progress_callback=progress_callback,
        )
        return self.decode(latent).cpu(), self.sample_rate

    # --- audio -> latent --------------------------------------------------------------------
    def _mono_at_rate(self, waveform: torch.Tensor | np.ndarray, sample_rate: int) -> torch.Tensor:
        wave = torch.as_tensor(np.asarray(waveform) if not isinstance(waveform, torch.Tensor)
                               else waveform).detach().float().cpu()
        if wave.ndim == 1:
            wave = wave.unsqueeze(0)
        elif wave.ndim == 3:  # (B, channels, samples): mix down
            wave = wave.mean(dim=1)
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
        if sample_rate != self.sample_rate:
            import librosa

            wave = torch.from_numpy(
                np.ascontiguousarray(
                    librosa.resample(
                        wave.numpy(), orig_sr=sample_rate, target_sr=self.sample_rate, axis=-1
                    ),
                    dtype=np.float32,
                )
            )
        return wave

    @torch.no_grad()
    def encode_audio(
        self,
        waveform: torch.Tensor | np.ndarray,
        sample_rate: int,
        *,
        duration: float | None = None,
        normalize: bool = False,
    ) -> LatentMoments:
        """Waveform -> VAE posterior moments ``(mean, std)`` as (B, N, C).

        Accepts (samples,), (B, samples) or (B, channels, samples) (mixed down to mono) at any
        ``sample_rate`` (resampled with librosa/soxr). ``duration`` pads with silence or cuts
        to exactly that many seconds' samples, so N equals the generator's latent length.
        Raw VAE-space moments by default (what the feature cache stores);
        ``normalize=True`` divides by the generator's latent statistics. Needs the VAE
        encoder (``need_vae_encoder=True`` for pretrained pipelines).
        """
        wave = self._mono_at_rate(waveform, sample_rate)
        if duration is not None:
            samples = self._variant.sequence_lengths(duration).audio_samples
            wave = wave[:, :samples]
            if wave.shape[1] < samples:
                wave = F.pad(wave, (0, samples - wave.shape[1]))
        down = self._variant.mel.hop_size * 2
        if wave.shape[1] % down:  # whole latent frames: pad to a multiple of 2 hops
            wave = F.pad(wave, (0, down - wave.shape[1] % down))
        if getattr(self.vae, "encoder", None) is None:
            raise RuntimeError(
                "encode_audio needs the VAE encoder, which this pipeline dropped (free_encoders(), "
                "or loaded without it); encode audio before free_encoders(), or load with "
                "SelvaPipeline.from_pretrained(..., need_vae_encoder=True)"
            )
        mel = self.mel(wave.to(self._device))
        posterior = self.vae.encode(mel.to(self.dtype))
        mean = posterior.mean.transpose(1, 2)
        std = posterior.std.transpose(1, 2)
        if normalize:
            mean = self.generator.normalize(mean)
            std = std / self.generator.latent_std
        return LatentMoments(mean, std)

    def __repr__(self) -> str:
        loaded = ", ".join(self._modules())
        return (
            f"SelvaPipeline(variant={self._variant.name!r}, device={self._device}, "
            f"dtype={self.dtype}, networks=[{loaded}])"
        )


__all__ = ["SelvaPipeline", "LatentMoments", "ConditionFeatures"]
