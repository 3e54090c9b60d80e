"""IA3: ``y = l * (W x + b)``, or on feed-forward layers ``y = W (l * x) + b``.

Liu et al., "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context
Learning", arXiv 2205.05638 ((IA)^3), as peft's ``IA3``. ``l`` (fp32, trainable) is one learned
scale per output channel, or, on the feed-forward layers (:data:`FEEDFORWARD`: the SwiGLU down
projection ``ffn.w2``, the counterpart of peft's defaults T5 ``wo`` / LLaMA ``down_proj``), one
per input channel (a conv's input channel scales all its kernel taps). Files hold ``ia3_l`` in
peft's Linear shapes, ``(out, 1)`` or ``(1, in)``; the shape says which.

Identity at init: ``l = 1`` exactly, so the change below is exactly 0.

Forward at strength ``st``: ``y + st (l - 1) (W x + b)`` (the bias is scaled too, as in peft;
``W x + b`` is the base output, recomputed when another adapter already added to ``y``, so
stacked adapters add) or ``y + st W ((l - 1) x)``. At strength 1 that is peft's function.
The learned change at strength 1: ``dW = diag(l - 1) W`` and ``db = (l - 1) b``, or
``dW = W diag(l - 1)``. It depends on the base weights (no low-rank form of its own), so
adapter files of this kind are not merged with others; export bakes it into the generator.
IA3 has no rank, scale or dropout: ``rank``, ``alpha`` and ``dropout`` are ignored.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from .dora import _base_output
from .lora import needs_fp32_path

FEEDFORWARD = re.compile(r"(^|.*\.)ffn\.w2")  # layers whose input is scaled (full match)


def is_feedforward(adapter) -> bool:
    """The adapter scales its layer's input (``ia3_l`` of shape (1, in))."""
    return adapter.ia3_l.shape[0] == 1 and adapter.ia3_l.shape[1] != 1


def _input_scale(W: torch.Tensor, adapter) -> torch.Tensor:
    """``W diag(l - 1)`` over the input channels, in the layer's weight shape, fp32."""
    d = adapter.ia3_l.reshape(-1).float() - 1.0
    return W.float() * d.reshape(1, -1, *([1] * (W.dim() - 2)))


class IA3:
    name = "ia3"
    extra_keys: tuple[str, ...] = ("ia3_l",)
    plain_factors = False
    has_factors = False

    @staticmethod
    def rank(adapter) -> int:
        """1: one vector per layer (IA3 has no rank)."""
        return 1

    @staticmethod
    def lowrank(adapter) -> None:
        """None: the change scales W's rows or columns, so it depends on W."""
        return None

    @staticmethod
    def init(layer, adapter) -> None:
        """l = 1: (1, in) on feed-forward layers, (out, 1) elsewhere."""
        w = layer.weight
        ff = FEEDFORWARD.fullmatch(getattr(adapter, "path", "") or "") is not None
        shape = (1, w.shape[1]) if ff else (w.shape[0], 1)
        adapter.ia3_l = nn.Parameter(torch.ones(shape, device=w.device))

    @staticmethod
    def check_tensors(weight_shape, adapter) -> str | None:
        out, cin = weight_shape[0], weight_shape[1]
        shape = tuple(adapter.ia3_l.shape)
        if shape not in ((out, 1), (1, cin)):
            return (f"ia3_l has shape {shape}, expected ({out}, 1) (output scaling) or "
                    f"(1, {cin}) (feed-forward input scaling)")
        return None

    @staticmethod
    def forward(layer, adapter, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        st = adapter.strength
        if is_feedforward(adapter):
            dW = _input_scale(layer.weight, adapter)
            if needs_fp32_path(x, dW):
                h = layer.apply_a(x.to(dW.dtype), dW)
                return torch.add(y.to(h.dtype), h, alpha=st).to(y.dtype)
            return torch.add(y, layer.apply_a(x, dW).to(y.dtype), alpha=st)
        wx = _base_output(layer, adapter, x, y)
        v = (st * (adapter.ia3_l.reshape(-1) - 1.0)).to(y.dtype)
        return y + wx * layer.channel_view(v, wx)

    @staticmethod
    def weight_delta(W2d: torch.Tensor, adapter) -> torch.Tensor:
        """Dense change of an (out, in*k) weight at strength 1, fp32."""
        d = adapter.ia3_l.reshape(-1).float() - 1.0
        if is_feedforward(adapter):
            return W2d.float() * d.repeat_interleave(W2d.shape[1] // d.numel())[None, :]
        return d[:, None] * W2d.float()

    @staticmethod
    def delta_weight(layer, adapter) -> torch.Tensor:
        return IA3.weight_delta(layer.weight2d(), adapter)

    @staticmethod
    def bias_delta(layer, adapter) -> torch.Tensor | None:
        """``(l - 1) b`` at strength 1 (output scaling of a layer with a bias), else None."""
        b = layer.base_bias()
        if b is None or is_feedforward(adapter):
            return None
        return (adapter.ia3_l.reshape(-1).float() - 1.0) * b.float()
