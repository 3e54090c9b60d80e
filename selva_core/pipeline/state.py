"""What a pipeline holds: the state every job module of :mod:`selva_core.pipeline` works on.

The job modules (``construction``, ``residency``, ``forking``, ``encoding``, ``rendering``)
are functions of a pipeline; :class:`~selva_core.pipeline.facade.SelvaPipeline` binds them as
its methods. They use only what is declared here, so none of them needs the facade (which
imports them all). One step calls another through the pipeline (``pipe.decode(...)``), as
the methods did, so a pipeline whose method is replaced (a test's stand-in decoder) renders
through the replacement.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn

from ..audio.mel import MelConverter
from ..variants import ModelVariant


class PipelineState(Protocol):
    """The attributes of a :class:`~selva_core.pipeline.facade.SelvaPipeline`.

    The six networks (the three encoders are ``None`` after ``free_encoders``), the mel
    front end, the variant, where the networks compute (``_device``) and rest between runs
    (``offload``), their weight dtype, the adapters and textual-inversion embeddings the
    pipeline carries, and the family of pipelines that share its networks; then the steps
    one job calls on another.
    """

    generator: nn.Module
    video_encoder: nn.Module | None
    clip_text: nn.Module | None
    t5: nn.Module | None
    vae: nn.Module
    vocoder: nn.Module
    mel: MelConverter
    dtype: torch.dtype
    offload: str
    _variant: ModelVariant
    _device: torch.device
    _adapters: tuple
    _embeddings: tuple
    _family: weakref.WeakSet
    _vae_encoder_released: bool

    to: Callable[..., PipelineState]
    fork: Callable[[], PipelineState]
    encode_prompt: Callable[..., tuple]
    prepare_sync_frames: Callable[..., torch.Tensor]
    extract_features: Callable[..., object]
    sample: Callable[..., torch.Tensor]
    decode: Callable[..., torch.Tensor]
    plan_render: Callable[..., list]
    window_features: Callable[..., object]
    render: Callable[..., torch.Tensor]


__all__ = ["PipelineState"]
