"""SelvaPipeline: every network of one SelVA variant and the steps that connect them.

The class holds the state (:class:`~selva_core.pipeline.state.PipelineState`) and binds the
job modules' functions as its methods, so each method's code and documentation live in the
module of its job:

* :mod:`~selva_core.pipeline.construction` — ``build``, ``from_pretrained``, ``tiny``;
* :mod:`~selva_core.pipeline.residency` — ``to``, ``networks``, ``free_encoders`` and the
  run context every step goes through (networks on the compute device for one run);
* :mod:`~selva_core.pipeline.forking` — ``fork``, ``with_adapters``, ``with_embeddings``;
* :mod:`~selva_core.pipeline.encoding` — ``encode_prompt``, ``prepare_sync_frames``,
  ``extract_features``, ``encode_audio``;
* :mod:`~selva_core.pipeline.rendering` — ``sample``, ``decode``, ``plan_render``,
  ``window_features``, ``render``, ``generate``.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

from ..audio.mel import MelConverter
from ..variants import ModelVariant, get_variant
from . import construction, encoding, forking, rendering, residency
from .forking import AppliedAdapter


class SelvaPipeline:
    """Every network of one SelVA variant plus the steps that connect them.

    Build with :meth:`build` (front ends), :meth:`from_pretrained` or :meth:`tiny`.
    Attributes: ``generator`` (:class:`~selva_core.model.generator.SelvaGenerator`),
    ``video_encoder`` (TextSynch), ``clip_text`` / ``t5`` (text encoders), ``vae``,
    ``vocoder``, ``mel``; the three encoders are ``None`` after :meth:`free_encoders`.
    ``offload`` says where the networks rest between runs (``gpu`` or ``cpu``).
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
        self._device = torch.device(device) if device is not None else residency.default_device()
        self.offload = "gpu"
        self._adapters: tuple[AppliedAdapter, ...] = ()
        self._embeddings: tuple = ()  # textual-inversion TokenEmbeddings (with_embeddings)
        # Pipelines made by fork()/with_adapters share networks with this one; free_encoders()
        # drops the shared VAE encoder only when no other member of the family is alive.
        self._family: weakref.WeakSet[SelvaPipeline] = weakref.WeakSet([self])
        self._vae_encoder_released = False
        self.to(self._device, dtype)

    # construction
    build = classmethod(construction.build)
    from_pretrained = classmethod(construction.from_pretrained)
    tiny = classmethod(construction.tiny)

    # residency
    networks = residency.networks
    to = residency.move
    free_encoders = residency.free_encoders
    _running = residency.running

    # forks, adapters and embeddings
    fork = forking.fork
    with_adapters = forking.with_adapters
    with_embeddings = forking.with_embeddings

    # inputs -> model space
    encode_prompt = encoding.encode_prompt
    prepare_sync_frames = encoding.prepare_sync_frames
    extract_features = encoding.extract_features
    encode_audio = encoding.encode_audio

    # features -> sound
    sample = rendering.sample
    decode = rendering.decode
    plan_render = rendering.plan_render
    window_features = rendering.window_features
    render = rendering.render
    generate = rendering.generate

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

    @property
    def embeddings(self) -> tuple:
        """The textual-inversion embeddings this pipeline's prompts understand."""
        return self._embeddings

    def __repr__(self) -> str:
        loaded = ", ".join(self.networks())
        return (
            f"SelvaPipeline(variant={self._variant.name!r}, device={self._device}, "
            f"dtype={self.dtype}, networks=[{loaded}])"
        )


__all__ = ["SelvaPipeline"]
