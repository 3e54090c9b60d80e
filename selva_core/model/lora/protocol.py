"""The small protocol every LoRA kind implements (documentation of the interface).

A *kind* (``lora``, ``dora``, ``loraxs``, ``ia3``, ``hra``) owns the math of one adapter on one
wrapped layer; the runtime (``layers.py``, ``runtime.py``) owns targeting, attaching, strength,
merging and files; ``kind.py`` is the registry of kinds. One file per kind in ``kinds/``, each
opening with its formula, its identity-at-init argument and its paper.
("Variant" always means the *model* variant, e.g. ``small_16k``.)

A kind's ``forward`` gets ``x`` and ``y`` in the wrapper's *internal layout* (Linear:
(tokens, features); Conv1d: module-layout input, channel-first output; see ``layers.py``).
Hooks a kind may use on the wrapped layer (``LoRALinear`` / ``LoRAConv1d``):
``layer.apply_a(x, A)`` (input -> rank space, channel-first for convs),
``layer.add_b(y, h, B, coef)`` (``y + coef * B h``; may accumulate into ``y`` in place, so pass
a ``y`` nothing else keeps), ``layer.base_forward(x)`` (a fresh ``W x + b``),
``layer.weight2d()`` ((out, in*k) base weight), ``layer.channel_view(v, y)`` (broadcast a
per-output-channel vector over ``y``), ``layer.base_bias()``.

Kinds without low-rank factors (``has_factors = False``: IA3's scaling vectors, HRA's
reflection vectors) hold only their ``extra_keys`` tensors; their ``AdapterState`` has no
``lora_A`` / ``lora_B``, and they also implement ``rank``, ``weight_delta`` (the dense change
for a given weight, used by the load-time checks), ``check_tensors`` (do the loaded tensors fit
the layer) and, when they change the bias, ``bias_delta``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Protocol

import torch

if TYPE_CHECKING:
    from .layers import AdapterState, LoRALayer


class LoRAKind(Protocol):
    """Static-method namespace; see ``kinds/lora.py`` for the reference implementation."""

    name: ClassVar[str]
    # extra per-layer tensors (AdapterState attribute names) that files carry, e.g. DoRA's m
    extra_keys: ClassVar[tuple[str, ...]]
    # A and B are the change's own factors, so a storage may re-factorise them (q16, halves)
    plain_factors: ClassVar[bool]
    # False: no A/B at all, only the extra tensors (ia3, hra)
    has_factors: ClassVar[bool]

    @staticmethod
    def extra_shapes(A: torch.Tensor, B: torch.Tensor) -> dict[str, tuple[int, ...]]:
        """Shape of each extra tensor for a layer with factors ``A``, ``B`` (file checks)."""

    @staticmethod
    def lowrank(adapter: AdapterState) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(A, B) in layer shapes with change ``scale * B A`` independent of the base weights
        (what merging adapter files and the spectral diagnostics sum), or None when the
        change depends on the base weights (DoRA)."""

    @staticmethod
    def init(layer: LoRALayer, adapter: AdapterState) -> None:
        """Create the kind's extra tensors after A and B exist (identity at init)."""

    @staticmethod
    def forward(
        layer: LoRALayer, adapter: AdapterState, x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        """``y`` (output so far) plus ``adapter.strength`` times this adapter's change."""

    @staticmethod
    def delta_weight(layer: LoRALayer, adapter: AdapterState) -> torch.Tensor:
        """Dense change of the (out, in*k) weight at strength 1, fp32 (merge, diagnostics)."""
