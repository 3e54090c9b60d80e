"""DoRA: ``W' = m * (W + s B A) / ||W + s B A||_row``, the norm detached from the graph.

Liu et al., "DoRA: Weight-Decomposed Low-Rank Adaptation", arXiv 2402.09353 (section 4.3 for
the detached norm). ``m`` (one magnitude per output channel, fp32, trainable) starts at
``||W||_row``; rows are output channels, the norm runs over in*k (conv weights as matrices).

Forward, with f = m / ||W + s B A||_row (per output channel) and the bias b outside:
``y' = y + strength * ((f - 1) (W x) + f s B (A x))``, i.e. the output so far plus ``strength``
times the change ``W' x - W x`` (as in peft, the magnitude term uses the un-dropped input).
``W x`` is the bias-free *base* output: taken from ``y`` when this is the layer's first active
adapter, recomputed by the base layer when another adapter already added its change to ``y``
(otherwise ``f - 1`` would also scale that adapter's change and stacking would not add).

Identity at init: B = 0 gives ||W + s B A|| = ||W|| computed by the same expression as m, so
f = 1 exactly and the change is exactly 0 (PiSSA: 0 up to rounding).

The learned change at strength 1 is ``dW = f W' - W`` with ``W' = W + s B A``; merging adds
``strength * dW``. Stacked adapters each measure their change against the base weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .lora import needs_fp32_path


def _row_norm(layer, adapter) -> torch.Tensor:
    """||W + s B A|| per output channel, fp32, no gradient."""
    with torch.no_grad():
        B, A = adapter.factors2d()
        W = layer.weight2d().float()
        V = torch.addmm(W, B.float(), A.float(), alpha=adapter.scale)
        return V.pow(2).sum(1).sqrt()


def _base_output(layer, adapter, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``W x + b``: ``y`` itself when ``adapter`` is the first active adapter of the layer."""
    first = next(a for a in layer.adapters.values() if a.strength != 0.0)
    return y if first is adapter else layer.base_forward(x)


class DoRA:
    name = "dora"
    extra_keys: tuple[str, ...] = ("lora_magnitude",)
    plain_factors = True
    has_factors = True

    @staticmethod
    def extra_shapes(A: torch.Tensor, B: torch.Tensor) -> dict[str, tuple[int, ...]]:
        return {"lora_magnitude": (B.shape[0],)}

    @staticmethod
    def lowrank(adapter) -> None:
        """None: the magnitude renormalises ``W + s B A``, so the change depends on W."""
        return None

    @staticmethod
    def init(layer, adapter) -> None:
        """m = ||W + s B A||_row (= ||W||_row at init), fp32 and trainable."""
        m = _row_norm(layer, adapter).to(adapter.lora_A.device)
        adapter.lora_magnitude = nn.Parameter(m, requires_grad=adapter.lora_A.requires_grad)

    @staticmethod
    def forward(layer, adapter, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        A, B = adapter.factors()
        out_dtype = y.dtype
        wx = _base_output(layer, adapter, x, y)
        xa = F.dropout(x, adapter.dropout, True) if adapter.dropout > 0 and layer.training else x
        if needs_fp32_path(x, A):
            xa, y, wx = xa.to(A.dtype), y.to(A.dtype), wx.to(A.dtype)
        f = adapter.lora_magnitude / _row_norm(layer, adapter)
        bias = layer.base_bias()
        base = wx if bias is None else wx - layer.channel_view(bias.to(wx.dtype), wx)
        st = adapter.strength
        y = y + base * layer.channel_view((st * (f - 1.0)).to(y.dtype), y)
        Bf = B * f.reshape(-1, *([1] * (B.dim() - 1)))
        return layer.add_b(y, layer.apply_a(xa, A), Bf, st * adapter.scale).to(out_dtype)

    @staticmethod
    def delta_weight(layer, adapter) -> torch.Tensor:
        B, A = adapter.factors2d()
        W = layer.weight2d().float()
        V = torch.addmm(W, B.float(), A.float(), alpha=adapter.scale)
        f = adapter.lora_magnitude.float() / V.pow(2).sum(1).sqrt()
        return f[:, None] * V - W
