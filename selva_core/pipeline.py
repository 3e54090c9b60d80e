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
variant from the trained weights shipped in the package (the demo; no downloads), or at random
with ``trained=False`` (fast tests).

The steps run under ``torch.no_grad`` (not ``inference_mode``): their outputs, and the RoPE
tables the generator rebuilds for a new duration, stay ordinary tensors that a trainer
sharing the generator can use in autograd afterwards.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import logging
import math
import os
import re
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .audio.mel import MelConverter
from .features import ConditionFeatures
from .flow_matching import DEFAULT_CONFIG, euler_sample
from .model.lora import AdapterLoadError
from .model.precision import BASE_DTYPE_CHOICES, resolve_weight_dtype
from .variants import (
    CLIP_FPS,
    SYNC_FPS,
    SYNC_SEGMENT_FRAMES,
    SYNC_STEP_FRAMES,
    SYNC_TOKENS_PER_SEGMENT,
    TRAIN_DURATION_S,
    ModelVariant,
    SequenceLengths,
    WeightFile,
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

#: ``precision`` (weight dtype) choices of :meth:`SelvaPipeline.build` (``auto``: bf16 on a GPU
#: that computes it natively, fp32 elsewhere): the trainer's ``--base_dtype`` names and rule.
PRECISION_CHOICES = BASE_DTYPE_CHOICES
#: ``offload`` choices: where the networks rest between runs (``gpu``: on the compute device;
#: ``cpu``: in host memory, moved to the compute device for each run and back after it).
OFFLOAD_CHOICES = ("auto", "gpu", "cpu")
#: ``offload="auto"`` keeps the networks on the GPU when they fill at most this share of its memory.
AUTO_OFFLOAD_MAX_SHARE = 0.5
#: Default overlap of neighbouring windows in :meth:`SelvaPipeline.render` (seconds).
DEFAULT_OVERLAP_S = 1.0
#: Seeds of the windows after the first: ``seed + k * WINDOW_SEED_STRIDE`` (mod 2**63).
WINDOW_SEED_STRIDE = 0x9E3779B97F4A7C15
_ADAPTER_NAME_RE = re.compile(r"[^A-Za-z0-9_-]+")


def _module_device(module: nn.Module) -> torch.device | None:
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return None


def _tensor_slots(module: nn.Module) -> tuple[list, list]:
    """Every parameter (object and data) and buffer of ``module``, with its owner and name."""
    params, buffers = [], []
    for m in module.modules():
        params += [(m, n, p, p.data) for n, p in m._parameters.items() if p is not None]
        buffers += [(m, n, b) for n, b in m._buffers.items() if b is not None]
    return params, buffers


def _restore_tensor_slots(slots: tuple[list, list]) -> None:
    """Put back the very parameter objects (a move may swap their data or replace them)."""
    params, buffers = slots
    for m, name, p, data in params:
        p.data = data
        m._parameters[name] = p
    for m, name, b in buffers:
        m._buffers[name] = b


def _module_bytes(modules: Sequence[nn.Module]) -> int:
    seen: set[int] = set()
    total = 0
    for m in modules:
        for t in (*m.parameters(), *m.buffers()):
            if id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
    return total


@dataclass(frozen=True)
class AppliedAdapter:
    """One adapter a pipeline's generator carries: its name on the generator, where it came
    from (file path, or ``<state dict N>``), its strength and the file's metadata."""

    name: str
    source: str
    strength: float
    metadata: dict[str, str] = field(default_factory=dict, compare=False)


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


def _read_adapter_source(
    source: str | os.PathLike | Mapping | tuple, index: int
) -> tuple[str, str, Mapping[str, torch.Tensor], Mapping[str, str]]:
    """(label for messages and :class:`AppliedAdapter`, name hint, tensors, metadata)."""
    from .model.lora import read_adapter_file

    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        tensors, metadata = read_adapter_file(path)
        return str(path), path.stem, tensors, metadata
    if isinstance(source, tuple) and len(source) == 2 and isinstance(source[0], Mapping):
        tensors, metadata = source
    elif isinstance(source, Mapping):
        tensors = {k: v for k, v in source.items() if k != "__metadata__"}
        metadata = source.get("__metadata__") or {}
    else:
        raise AdapterLoadError(
            f"adapter source {index + 1} is a {type(source).__name__}; give a file path, "
            "(tensors, metadata) or a tensor mapping with '__metadata__'"
        )
    label = f"<adapter state {index + 1}>"
    if not all(isinstance(t, torch.Tensor) for t in tensors.values()):
        raise AdapterLoadError(f"{label}: every value of the tensor mapping must be a tensor")
    metadata = {str(k): str(v) for k, v in dict(metadata).items()}
    return label, metadata.get("name") or f"adapter_{index + 1}", tensors, metadata


def _unique_adapter_name(hint: str, taken: set[str]) -> str:
    """A valid adapter name from ``hint`` (letters, digits, '_' and '-'), not in ``taken``."""
    base = _ADAPTER_NAME_RE.sub("_", hint).strip("_") or "adapter"
    if not base[0].isalnum():
        base = f"a{base}"
    name, n = base, 2
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    return name


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
        self.offload = "gpu"
        self._adapters: tuple[AppliedAdapter, ...] = ()
        self._embeddings: tuple = ()  # textual-inversion TokenEmbeddings (with_embeddings)
        # Pipelines made by fork()/with_adapters share networks with this one; free_encoders()
        # drops the shared VAE encoder only when no other member of the family is alive.
        self._family: weakref.WeakSet[SelvaPipeline] = weakref.WeakSet([self])
        self._vae_encoder_released = False
        self.to(self._device, dtype)

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        variant: str = "small_16k",
        *,
        models_dir: str | os.PathLike | None = None,
        device: torch.device | str | None = None,
        precision: str | torch.dtype = "auto",
        offload: str = "auto",
        download: bool = False,
        need_vae_encoder: bool = False,
        seed: int = 0,
    ) -> SelvaPipeline:
        """The one way front ends get a pipeline: every network frozen and in eval mode.

        ``variant``: an official variant (weights from ``models_dir``; with ``download`` the
        missing ones are fetched, otherwise one error lists them) or ``tiny_16k`` (the
        trained weights shipped in the package, no download). ``device``: where the networks
        compute (default the GPU if there is one). ``precision``: ``auto`` (bf16 on a GPU
        that supports it, fp32 otherwise), ``bf16``, ``fp16`` or ``fp32``. ``offload``: where
        the networks rest between runs, ``gpu`` (on ``device``) or ``cpu`` (moved to
        ``device`` for each run and back after it); ``auto`` keeps them on the GPU when they
        fill at most :data:`AUTO_OFFLOAD_MAX_SHARE` of its memory. ``need_vae_encoder``: keep
        the VAE encoder (training encodes audio).
        """
        v = get_variant(variant)
        target = torch.device(device) if device is not None else _default_device()
        dtype = resolve_weight_dtype(precision, target)
        if offload not in OFFLOAD_CHOICES:
            raise ValueError(f"offload {offload!r} is unknown; choose one of {OFFLOAD_CHOICES}")
        if v.is_tiny:
            pipe = cls.tiny(seed=seed, device="cpu", dtype=dtype)
            if not need_vae_encoder:
                pipe.vae.drop_encoder()
        else:
            pipe = cls.from_pretrained(
                v.name, models_dir=models_dir, device="cpu", dtype=dtype, download=download,
                need_vae_encoder=need_vae_encoder,
            )
        for module in pipe.networks().values():
            module.requires_grad_(False)
            module.eval()
        if target.type != "cuda" and offload == "auto":
            offload = "gpu"  # no device memory to spare: the networks live where they compute
        elif offload == "auto":
            size = _module_bytes(list(pipe.networks().values()))
            total = torch.cuda.get_device_properties(target).total_memory
            offload = "gpu" if size <= AUTO_OFFLOAD_MAX_SHARE * total else "cpu"
        pipe._device = target
        pipe.offload = offload
        if offload == "gpu":
            pipe.to(target)
        else:
            pipe.mel.to(target)
        logger.info("built %r (offload %s)", pipe, offload)
        return pipe

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
        one :class:`~selva_core.weights.WeightsError`). The VAE is re-normalised once and
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
        # Every file first (networks and text-encoder folders): one error lists all missing.
        from .weights import preflight

        preflight(v, models_dir, download=download, verify=verify,
                  text_encoders=clip_source is None and t5_source is None)
        from .model.bigvgan import convert_legacy_weight_norm_keys
        from .model.text_encoders import load_text_encoders
        from .model.video_encoder import CHECKPOINT_PREFIXES

        def load(component: str, file: WeightFile, transform=None) -> nn.Module:
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
        trained: bool = True,
    ) -> SelvaPipeline:
        """The ``tiny_16k`` variant: same classes, toy width, no downloads.

        ``trained=True`` (default): the weights shipped in the package, trained by
        ``scripts/train_tiny_base.py`` on synthetic clips (generator, VAE, vocoder, TextSynch
        and T5 loaded and sha256-checked by :mod:`selva_core.weights.bundled`; the CLIP-text encoder
        rebuilt at :data:`~selva_core.variants.TINY_TRAINED_TEXT_SEED`); ``seed`` is unused.
        ``trained=False``: random weights drawn from ``seed`` (tests that need speed or a
        model independent of the shipped files). Deterministic either way (the global RNG is
        left untouched); outputs are non-trivial, so tests can tell prompts, seeds and
        negative prompts apart.
        """
        from .model.text_encoders import load_text_encoders

        v = get_variant(TINY_VARIANT)
        if trained:
            from .variants import TINY_TRAINED_TEXT_SEED

            seed = TINY_TRAINED_TEXT_SEED
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            generator = build_component("generator", v)
            generator.update_seq_lengths(v.sequence_lengths(duration))
            video_encoder = build_component("video_encoder", v)
            vae = build_component("vae", v)
            vae.normalize_weights_()
            vocoder = build_component("vocoder", v)
            _audible_random_init_(vocoder, seed)
            clip_text, t5 = load_text_encoders(v.text_encoders, device="cpu", seed=seed)
        if trained:
            from .weights.bundled import load_bundled

            load_bundled(v.name, {"generator": generator, "vae": vae, "vocoder": vocoder,
                                  "video_encoder": video_encoder, "t5": t5})
        vocoder.remove_weight_norm()
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

    @property
    def adapters(self) -> tuple[AppliedAdapter, ...]:
        """The adapters this pipeline's generator carries (attach order)."""
        return self._adapters

    def networks(self) -> dict[str, nn.Module]:
        """Name -> network of every network this pipeline holds (freed encoders left out)."""
        names = ("generator", "video_encoder", "clip_text", "t5", "vae", "vocoder")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        """Move every network (and cast its floating weights when ``dtype`` is given).

        The networks other than the generator are shared with the pipelines made by
        :meth:`fork` / :meth:`with_adapters`, so those see them move too (each run moves what
        it needs to its own pipeline's device and back).
        """
        if device is not None:
            self._device = torch.device(device)
        if dtype is not None:
            self.dtype = dtype
        for module in self.networks().values():
            module.to(device=self._device, dtype=self.dtype)
        self.mel.to(self._device)  # the mel front end always computes in float32
        return self

    def _rest_device(self) -> torch.device:
        return self._device if self.offload == "gpu" else torch.device("cpu")

    @contextlib.contextmanager
    def _running(self, *names: str, seq: SequenceLengths | None = None) -> Iterator[None]:
        """The named networks on the compute device in eval mode (and the generator at ``seq``)
        for the duration of the block; afterwards every module's train/eval flag, device and
        the generator's sequence lengths are as they were found, also when the block raises.
        Dtypes are never changed.

        A network moved for the run gets its very tensors back afterwards (not copies made on
        the way back), so an offloaded network keeps sharing its storage with its forks.
        """
        found = []
        old_seq = None
        try:
            for name in names:
                module = getattr(self, name)
                if module is None:
                    continue
                modes = [(m, m.training) for m in module.modules()]
                where = _module_device(module)
                moved = where is not None and where != self._device
                tensors = _tensor_slots(module) if moved else None
                found.append((modes, tensors))
                if moved:
                    module.to(self._device)
                module.eval()
            if seq is not None and self.generator.seq != seq:
                old_seq = self.generator.seq
                self.generator.update_seq_lengths(seq)
            yield
        finally:
            if old_seq is not None:
                self.generator.update_seq_lengths(old_seq)
            for modes, tensors in reversed(found):
                if tensors is not None:
                    _restore_tensor_slots(tensors)
                for m, mode in modes:
                    m.training = mode

    def free_encoders(self) -> None:
        """Release TextSynch, FLAN-T5, CLIP-text and the VAE encoder (features must be extracted
        before); the generator, VAE decoder and vocoder stay for sampling.

        A pipeline that shares its networks with others (:meth:`fork`) only drops its own
        references: the shared VAE keeps its encoder while another member is alive.
        """
        self.video_encoder = self.clip_text = self.t5 = None
        self._vae_encoder_released = True
        others = [p for p in self._family if p is not self and p.vae is self.vae]
        if not others and self.vae.encoder is not None:
            self.vae.drop_encoder()
        gc.collect()
        if self._device.type == "cuda":
            torch.cuda.empty_cache()
        logger.info("freed the feature encoders (TextSynch, FLAN-T5, CLIP text, VAE encoder)")

    # --- sharing: forks and adapters ----------------------------------------------------------
    def fork(self) -> SelvaPipeline:
        """A new pipeline with its own generator structure over the same frozen tensors.

        The generator's module objects are copied while every parameter keeps its storage
        (new ``nn.Parameter`` objects over the same tensors, so ``requires_grad`` flags and
        device moves stay per pipeline) and buffers are shared; the other networks are
        shared by reference. Attaching, training or removing adapters on the fork leaves this
        pipeline as it is; writing into the shared tensors in place (merging adapters into the
        base weights) would not, so a merged generator cannot be forked.
        """
        from .model.lora import iter_lora_layers

        if any(layer.merged for _, layer in iter_lora_layers(self.generator)):
            raise RuntimeError(
                "cannot fork a pipeline whose generator has merged adapters (the merge writes "
                "into the shared base weights); unmerge_adapters(pipeline.generator) first"
            )
        memo: dict[int, object] = {}
        for p in self.generator.parameters():
            memo[id(p)] = nn.Parameter(p.detach(), requires_grad=p.requires_grad)
        for b in self.generator.buffers():
            memo[id(b)] = b
        generator = copy.deepcopy(self.generator, memo)
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)
        other.generator = generator
        other._family = self._family
        self._family.add(other)
        return other

    def with_adapters(
        self,
        adapters: Sequence[tuple[str | os.PathLike | Mapping | tuple, float]],
    ) -> SelvaPipeline:
        """A :meth:`fork` whose generator carries ``adapters`` on top of this one's.

        Each item is ``(source, strength)``: ``source`` an adapter file, or an adapter in
        memory as ``(tensors, metadata)`` (what ``read_adapter_file`` returns) or a tensor
        mapping with its metadata under ``"__metadata__"``. This pipeline is never changed:
        a bad adapter (damaged file, another model variant, non-finite factors) raises the LoRA
        library's error naming it, and nothing is attached anywhere. Calling it twice with the
        same list gives two equal pipelines (each starts from this pipeline's generator).
        """
        from .model.lora import adapter_names
        from .model.lora.io import load_adapter_tensors

        items = list(adapters)
        for item in items:
            if not (isinstance(item, (tuple, list)) and len(item) == 2):
                raise ValueError(f"adapters must be (source, strength) pairs, got {item!r}")
            strength = item[1]
            if isinstance(strength, bool) or not isinstance(strength, (int, float)) or (
                not math.isfinite(float(strength))
            ):
                raise ValueError(f"adapter strength must be a finite number, got {strength!r}")
        loaded = [_read_adapter_source(source, i) for i, (source, _) in enumerate(items)]
        other = self.fork()
        applied = list(self._adapters)
        taken = set(adapter_names(other.generator))
        for (label, hint, tensors, metadata), (_, strength) in zip(loaded, items):
            name = _unique_adapter_name(hint, taken)
            load_adapter_tensors(
                other.generator, tensors, metadata, name=name, strength=float(strength),
                expected_variant=self._variant.name, freeze_base=False, source=label,
            )
            taken.add(name)
            applied.append(AppliedAdapter(name, label, float(strength), dict(metadata)))
        other._adapters = tuple(applied)
        return other

    @property
    def embeddings(self) -> tuple:
        """The textual-inversion embeddings this pipeline's prompts understand."""
        return self._embeddings

    def with_embeddings(self, sources: Sequence[str | os.PathLike | object]) -> SelvaPipeline:
        """A :meth:`fork` whose prompts also understand the tokens of ``sources`` (embedding
        files or :class:`~selva_core.model.textual_inversion.TokenEmbedding` objects).

        The networks are not changed (the vectors are spliced in when a prompt is encoded), so
        this pipeline and its other forks keep their prompts' meaning. A bad file, another
        variant or a token already loaded raises one ``AdapterLoadError`` and nothing changes.
        """
        from .model.lora import AdapterLoadError
        from .model.textual_inversion import TokenEmbedding, read_embedding, tokenizer_identities

        clip_text = self._require("clip_text", "loading an embedding")
        t5 = self._require("t5", "loading an embedding")
        identities = tokenizer_identities(clip_text, t5)
        loaded = list(self._embeddings)
        for source in sources:
            emb = source if isinstance(source, TokenEmbedding) else read_embedding(
                source, variant=self._variant.name, clip_width=clip_text.width,
                t5_dim=t5.d_model, identities=identities, clip_tokenizer=clip_text.tokenizer)
            if any(e.token == emb.token for e in loaded):
                raise AdapterLoadError(f"embedding {emb.source}: token {emb.token!r} is "
                                       "already loaded on this model; load it once")
            loaded.append(emb)
        other = self.fork()
        other._embeddings = tuple(loaded)
        return other

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
        from .model.textual_inversion import encode_clip, encode_t5, warn_unknown_tokens

        warn_unknown_tokens(prompts, [e.token for e in self._embeddings])
        with self._running("clip_text", "t5"):
            if self._embeddings:
                clip_f = encode_clip(clip_text, prompts, self._embeddings)
                states, mask = encode_t5(t5, prompts, self._embeddings)
            else:
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
        with self._running("video_encoder", "clip_text", "t5"):
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

    def _negative_text(
        self, negative_prompt: str | Sequence[str] | None, batch: int
    ) -> torch.Tensor | None:
        if negative_prompt is None or (isinstance(negative_prompt, str)
                                       and not negative_prompt.strip()):
            return None
        return self.encode_prompt(_as_prompts(negative_prompt, batch))[0]

    def _sample_latent(
        self,
        features: ConditionFeatures,
        duration: float,
        seed: int | Sequence[int],
        num_steps: int,
        cfg_strength: float,
        negative_text_f: torch.Tensor | None,
        progress_callback: ProgressCallback | None,
    ) -> torch.Tensor:
        """Euler + CFG for one window; the generator must already be set up for ``duration``."""
        seq = self._variant.sequence_lengths(duration)
        clip_f, sync_f, text_f = self._conditions_for(features, duration)
        x0 = _initial_noise(
            seed, (features.batch_size, seq.latent, self._variant.generator.latent_dim)
        ).to(self._device, self.dtype)
        latent = euler_sample(
            self.generator, x0, clip_f, sync_f, text_f,
            negative_text_f=negative_text_f, num_steps=num_steps, cfg_strength=cfg_strength,
            progress_callback=progress_callback,
        )
        return self.generator.unnormalize(latent)

    @torch.no_grad()
    def sample(
        self,
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
        sequence length; :meth:`render` handles clips longer than the model's window. The
        initial noise comes from ``torch.Generator('cpu')`` seeded with ``seed`` and is then
        moved, so a seed gives the same result on any device; a sequence of seeds, one per
        clip, draws each clip's noise from its own seed (a clip's result then does not depend
        on the batch it is in). A ``negative_prompt`` replaces
        the empty text in the unconditional CFG branch. ``progress_callback(step, total)`` is
        called after every Euler step and may raise to stop. The generator's sequence lengths,
        train/eval flags, device and dtype are as found afterwards, also when it raises.
        """
        duration = features.duration if duration is None else float(duration)
        seq = self._variant.sequence_lengths(duration)
        self._conditions_for(features, duration)  # checks the features before any work
        negative_text_f = self._negative_text(negative_prompt, features.batch_size)
        with self._running("generator", seq=seq):
            return self._sample_latent(features, duration, seed, num_steps, cfg_strength,
                                       negative_text_f, progress_callback)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Un-normalised latent (B, N, C) -> waveform (B, N * 2 * hop) float32 in [-1, 1]."""
        latent_dim = self._variant.generator.latent_dim
        if latent.ndim != 3 or latent.shape[-1] != latent_dim:
            raise ValueError(f"latent must be (B, N, {latent_dim}), got {tuple(latent.shape)}")
        with self._running("vae", "vocoder"):
            mel = self.vae.decode(latent.to(self._device, self.dtype).transpose(1, 2))
            wave = self.vocoder(mel.to(self.dtype))
        return wave.squeeze(1).float()

    def plan_render(
        self,
        duration: float,
        *,
        seed: int | Sequence[int] = 0,
        window_s: float | None = None,
        overlap_s: float = DEFAULT_OVERLAP_S,
    ) -> list[RenderWindow]:
        """The windows :meth:`render` uses for ``duration`` seconds (see :func:`plan_windows`)."""
        window_s = TRAIN_DURATION_S if window_s is None else float(window_s)
        self._variant.sequence_lengths(duration)  # raises for less than one sync window
        return plan_windows(duration, window_s, overlap_s, seed)

    def window_features(
        self, features: ConditionFeatures, window: RenderWindow
    ) -> ConditionFeatures:
        """``features`` cut to ``window``'s span: its own sync segments (and CLIP frames)."""
        seq = self._variant.sequence_lengths(window.duration_s)
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

    @torch.no_grad()
    def render(
        self,
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
        by at least ``overlap_s`` (:meth:`plan_render`); each window is sampled from its own
        span of the features with its own seed (:func:`window_seed`) and decoded, and
        neighbours are joined by an equal-power crossfade (cos / sin) over their overlap (cut
        at the next window's start where overlaps would nest). ``progress_callback(done,
        total)`` counts Euler steps over all windows and may raise to stop; the pipeline is
        then as found.
        """
        duration = features.duration if duration is None else float(duration)
        if duration > features.duration + 1e-6:
            self._conditions_for(features, duration)  # raises: the features are too short
        windows = self.plan_render(duration, seed=seed, window_s=window_s, overlap_s=overlap_s)
        if len(windows) == 1:
            latent = self.sample(
                features, seed=seed, num_steps=num_steps, cfg_strength=cfg_strength,
                negative_prompt=negative_prompt, duration=duration,
                progress_callback=progress_callback,
            )
            wave = self.decode(latent).cpu()
            return wave[:, : self._variant.render_samples(duration)].contiguous()

        negative_text_f = self._negative_text(negative_prompt, features.batch_size)
        total_steps = num_steps * len(windows)
        rate = self.sample_rate
        starts = [int(round(w.start_s * rate)) for w in windows]
        ends = [
            start + self._variant.sequence_lengths(w.duration_s).audio_samples
            for start, w in zip(starts, windows)
        ]
        length = min(self._variant.render_samples(duration), ends[-1])
        out: torch.Tensor | None = None
        for k, (w, start, end) in enumerate(zip(windows, starts, ends)):
            def step(i: int, n: int, done: int = k * num_steps) -> None:
                if progress_callback is not None:
                    progress_callback(done + i, total_steps)

            feats = self.window_features(features, w)
            seq = self._variant.sequence_lengths(w.duration_s)
            with self._running("generator", seq=seq):
                latent = self._sample_latent(feats, w.duration_s, w.seed, num_steps,
                                             cfg_strength, negative_text_f, step)
            wave = self.decode(latent).cpu()[:, : min(end, length) - start]
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
    def generate(
        self,
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

        Any duration (default: the frames' length): :meth:`extract_features` then
        :meth:`render`.
        """
        features = self.extract_features(frames, prompt, duration)
        wave = self.render(
            features, seed=seed, num_steps=num_steps, cfg_strength=cfg_strength,
            negative_prompt=negative_prompt, window_s=window_s, overlap_s=overlap_s,
            progress_callback=progress_callback,
        )
        return wave, self.sample_rate

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
        if getattr(self.vae, "encoder", None) is None or self._vae_encoder_released:
            raise RuntimeError(
                "encode_audio needs the VAE encoder, which this pipeline dropped (free_encoders(), "
                "or loaded without it); encode audio before free_encoders(), or load with "
                "SelvaPipeline.from_pretrained(..., need_vae_encoder=True)"
            )
        mel = self.mel(wave.to(self._device))
        with self._running("vae"):
            posterior = self.vae.encode(mel.to(self.dtype))
        mean = posterior.mean.transpose(1, 2)
        std = posterior.std.transpose(1, 2)
        if normalize:
            mean = self.generator.normalize(mean)
            std = std / self.generator.latent_std
        return LatentMoments(mean, std)

    def __repr__(self) -> str:
        loaded = ", ".join(self.networks())
        return (
            f"SelvaPipeline(variant={self._variant.name!r}, device={self._device}, "
            f"dtype={self.dtype}, networks=[{loaded}])"
        )


__all__ = [
    "AdapterLoadError",
    "AppliedAdapter",
    "ConditionFeatures",
    "LatentMoments",
    "RenderWindow",
    "SelvaPipeline",
    "crossfade_curves",
    "plan_windows",
    "window_seed",
]
