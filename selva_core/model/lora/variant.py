"""The small protocol every LoRA variant implements, and the registry of variants.

A variant owns the math of one adapter on one wrapped layer; the runtime (``layers.py``,
``runtime.py``) owns targeting, attaching, strength, merging and files. One file per variant in
``variants/``, each opening with its formula, its identity-at-init argument and its paper.

A variant's ``forward`` gets ``x`` and ``y`` in the wrapper's *internal layout* (Linear:
(tokens, features); Conv1d: module-layout input, channel-first output; see ``layers.py``).
Hooks a variant may use on the wrapped layer (``LoRALinear`` / ``LoRAConv1d``):
``layer.apply_a(x, A)`` (input -> rank space, channel-first for convs),
``layer.add_b(y, h, B, coef)`` (``y + coef * B h``; may accumulate into ``y`` in place, so pass
a ``y`` nothing else keeps), ``layer.base_forward(x)`` (a fresh ``W x + b``),
``layer.weight2d()`` ((out, in*k) base weight), ``layer.channel_view(v, y)`` (broadcast a
per-output-channel vector over ``y``), ``layer.base_bias()``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Protocol

import torch

if TYPE_CHECKING:
    from .layers import AdapterState, LoRALayer


class LoRAVariant(Protocol):
    """Static-method namespace; see ``variants/lora.py`` for the reference implementation."""

    name: ClassVar[str]
    # extra per-layer tensors (AdapterState attribute names) that files carry, e.g. DoRA's m
    extra_keys: ClassVar[tuple[str, ...]]

    @staticmethod
    def init(layer: LoRALayer, adapter: AdapterState) -> None:
        """Create the variant's extra tensors after A and B exist (identity at init)."""

    @staticmethod
    def forward(
        layer: LoRALayer, adapter: AdapterState, x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        """``y`` (output so far) plus ``adapter.strength`` times this adapter's change."""

    @staticmethod
    def delta_weight(layer: LoRALayer, adapter: AdapterState) -> torch.Tensor:
        """Dense change of the (out, in*k) weight at strength 1, fp32 (merge, diagnostics)."""


_REGISTRY: dict[str, type] = {}


def register_variant(cls: type) -> type:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    _REGISTRY[cls.name] = cls
    return cls


def get_variant(name: str) -> type:
    """The registered variant called ``name``; an unknown name lists the known ones."""
    from . import variants  # noqa: F401  (registers the built-in variants)

    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown LoRA variant {name!r}; choose one of: {', '.join(sorted(_REGISTRY))}"
        ) from None


def variant_names() -> list[str]:
    from . import variants  # noqa: F401

    return sorted(_REGISTRY)
