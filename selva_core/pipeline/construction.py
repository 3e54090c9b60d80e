"""Building a pipeline: from the official weights, from the shipped tiny weights, or at random.

:func:`build` is the one way front ends get a pipeline (every network frozen, in eval mode,
resting where ``offload`` says); :func:`from_pretrained` downloads / verifies / strictly loads
the official weights (:mod:`selva_core.weights`); :func:`tiny` builds the ``tiny_16k`` variant
from the trained weights shipped in the package (the demo; no downloads), or at random with
``trained=False`` (fast tests). Each takes the pipeline class as ``cls``:
:class:`~selva_core.pipeline.SelvaPipeline` binds them as its class methods.
"""

from __future__ import annotations

import logging
import math
import os

import torch
from torch import nn

from ..model.precision import BASE_DTYPE_CHOICES, resolve_weight_dtype
from ..variants import TRAIN_DURATION_S, WeightFile, get_variant
from ..weights import (
    build_component,
    ensure_checkpoint,
    load_checked,
    read_state_dict,
    resolve_models_dir,
    skip_random_init,
)
from .residency import check_offload, default_device, networks, resolve_offload

logger = logging.getLogger(__name__)

TINY_VARIANT = "tiny_16k"
#: ``precision`` (weight dtype) choices of :func:`build` (``auto``: bf16 on a GPU that computes
#: it natively, fp32 elsewhere): the trainer's ``--base_dtype`` names and rule.
PRECISION_CHOICES = BASE_DTYPE_CHOICES


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
):
    """The one way front ends get a pipeline: every network frozen and in eval mode.

    ``variant``: an official variant (weights from ``models_dir``; with ``download`` the
    missing ones are fetched, otherwise one error lists them) or ``tiny_16k`` (the
    trained weights shipped in the package, no download). ``device``: where the networks
    compute (default the GPU if there is one). ``precision``: ``auto`` (bf16 on a GPU
    that supports it, fp32 otherwise), ``bf16``, ``fp16`` or ``fp32``. ``offload``: where
    the networks rest between runs, ``gpu`` (on ``device``) or ``cpu`` (moved to
    ``device`` for each run and back after it); ``auto`` keeps them on the GPU when they
    fill at most :data:`~selva_core.pipeline.residency.AUTO_OFFLOAD_MAX_SHARE` of its
    memory. ``need_vae_encoder``: keep the VAE encoder (training encodes audio).
    """
    v = get_variant(variant)
    target = torch.device(device) if device is not None else default_device()
    dtype = resolve_weight_dtype(precision, target)
    check_offload(offload)  # before anything is built
    if v.is_tiny:
        pipe = cls.tiny(seed=seed, device="cpu", dtype=dtype)
        if not need_vae_encoder:
            pipe.vae.drop_encoder()
    else:
        pipe = cls.from_pretrained(
            v.name, models_dir=models_dir, device="cpu", dtype=dtype, download=download,
            need_vae_encoder=need_vae_encoder,
        )
    for module in networks(pipe).values():
        module.requires_grad_(False)
        module.eval()
    offload = resolve_offload(pipe, offload, target)
    pipe._device = target
    pipe.offload = offload
    if offload == "gpu":
        pipe.to(target)
    else:
        pipe.mel.to(target)
    logger.info("built %r (offload %s)", pipe, offload)
    return pipe


def _local_text_encoder(models_dir: str | os.PathLike | None, hub_id: str) -> str | None:
    """``<models_dir>/<repo name>`` when that folder exists (offline text encoders)."""
    folder = resolve_models_dir(models_dir) / hub_id.rstrip("/").rsplit("/", 1)[-1]
    if folder.is_dir():
        logger.info("using the local text encoder folder %s", folder)
        return str(folder)
    return None


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
):
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
    from ..weights import preflight

    preflight(v, models_dir, download=download, verify=verify,
              text_encoders=clip_source is None and t5_source is None)
    from ..model.bigvgan import convert_legacy_weight_norm_keys
    from ..model.text_encoders import load_text_encoders
    from ..model.video_encoder import CHECKPOINT_PREFIXES

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
    target = torch.device(device) if device is not None else default_device()
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


def tiny(
    cls,
    seed: int = 0,
    device: torch.device | str = "cpu",
    duration: float = TRAIN_DURATION_S,
    dtype: torch.dtype = torch.float32,
    trained: bool = True,
):
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
    from ..model.text_encoders import load_text_encoders

    v = get_variant(TINY_VARIANT)
    if trained:
        from ..variants import TINY_TRAINED_TEXT_SEED

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
        from ..weights.bundled import load_bundled

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


__all__ = ["PRECISION_CHOICES", "TINY_VARIANT", "build", "from_pretrained", "tiny"]
