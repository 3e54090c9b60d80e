"""LoRA: ``y = W x + b + strength * s * B (A x)``.

Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", arXiv 2106.09685.
Scale ``s = alpha / r`` or rsLoRA ``alpha / sqrt(r)`` (Kalajdzievski, arXiv 2312.03732).

Identity at init: B = 0 (standard / gaussian) makes the added term exactly 0; PiSSA's change
``s (B A - B0 A0)`` starts at 0 up to fp32 rounding (A = A0, B = B0).

The learned change is ``dW = s B A`` (PiSSA: ``s [B, -B0] [A; A0]``); ``strength`` scales it.
Adapter tensors stay fp32; outside autocast a lower-precision input is lifted to fp32 for the
adapter path and the sum is cast back to the output dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def needs_fp32_path(x: torch.Tensor, A: torch.Tensor) -> bool:
    """Input dtype differs from the adapter's and autocast will not reconcile them."""
    return x.dtype != A.dtype and not torch.is_autocast_enabled(x.device.type)


class LoRA:
    name = "lora"
    extra_keys: tuple[str, ...] = ()
    plain_factors = True
    has_factors = True

    @staticmethod
    def extra_shapes(A: torch.Tensor, B: torch.Tensor) -> dict[str, tuple[int, ...]]:
        return {}

    @staticmethod
    def lowrank(adapter) -> tuple[torch.Tensor, torch.Tensor]:
        return adapter.factors()

    @staticmethod
    def init(layer, adapter) -> None:
        """Plain LoRA has no extra tensors."""

    @staticmethod
    def forward(layer, adapter, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        A, B = adapter.factors()
        if adapter.dropout > 0.0 and layer.training:
            x = F.dropout(x, adapter.dropout, training=True)
        coef = adapter.strength * adapter.scale
        if needs_fp32_path(x, A):
            h = layer.apply_a(x.to(A.dtype), A)
            return layer.add_b(y.to(A.dtype), h, B, coef).to(y.dtype)
        return layer.add_b(y, layer.apply_a(x, A), B, coef)

    @staticmethod
    def delta_weight(layer, adapter) -> torch.Tensor:
        B, A = adapter.factors2d()
        return adapter.scale * (B.float() @ A.float())
