"""HRA: ``y = W H x + b`` with ``H = H_1 H_2 ... H_r``, ``H_i = I - 2 u_i u_i^T / ||u_i||^2``.

Yuan et al., "Bridging The Gap between Low-rank and Orthogonal Adaptation via Householder
Reflection Adaptation", arXiv 2405.17484, as peft's ``HRA`` (without its optional Gram-Schmidt
orthogonalisation, ``apply_GS=False``, peft's default). ``hra_u`` (in*k, r, fp32, trainable)
holds the r reflection vectors as columns, peft's shape; conv weights are (out, in*k) matrices
whose flattened kernels are reflected (as peft's ``HRAConv2d``).

Identity at init: the rank must be even and the vectors come in equal pairs
(``u_{2j} = u_{2j+1}``, peft's symmetric init); a reflection is its own inverse, so ``H = I``
and the change is 0 up to rounding. An odd rank is refused.

Forward at strength ``st``: ``y + st (W H - W) x``; ``W H`` is built as
``V <- V - 2 (V u_i) u_i^T`` from ``V = W`` (O(r out in) per call, like peft's). Stacked
adapters each add their own ``W H_a - W`` (peft chains ``W H_1 H_2``; the same for one
adapter). The learned change ``dW = W (H - I)`` has rank <= r but lives in W's row space, so it
has no low-rank form of its own: adapter files of this kind are not merged with others; export
bakes it into the generator. HRA has no scale or dropout: ``alpha`` and ``dropout`` are
ignored.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..kind import register_kind
from .lora import needs_fp32_path


def reflect(W2d: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """``W2d H`` for the reflections of the columns of ``U`` (in order), fp32."""
    Un = U.float() / U.float().norm(dim=0)
    V = W2d.float()
    for i in range(Un.shape[1]):
        u = Un[:, i:i + 1]
        V = V - 2.0 * (V @ u) @ u.T
    return V


@register_kind
class HRA:
    name = "hra"
    extra_keys: tuple[str, ...] = ("hra_u",)
    plain_factors = False
    has_factors = False

    @staticmethod
    def rank(adapter) -> int:
        return adapter.hra_u.shape[1]

    @staticmethod
    def lowrank(adapter) -> None:
        """None: ``W (H - I)`` depends on W."""
        return None

    @staticmethod
    def init(layer, adapter) -> None:
        """Pairs of equal vectors, each drawn as peft's (Kaiming-uniform, a = sqrt(5))."""
        r = adapter.spec.config.rank
        if r % 2:
            raise ValueError(f"HRA needs an even rank (reflections in equal pairs are the "
                             f"identity at init), got rank {r}")
        w = layer.weight2d()
        n, half = w.shape[1], r // 2
        g = None
        seed = getattr(adapter, "init_seed", None)
        if seed is not None:
            g = torch.Generator(device=w.device).manual_seed(int(seed))
        bound = 1.0 / math.sqrt(half)
        u = torch.empty(n, half, device=w.device).uniform_(-bound, bound, generator=g)
        adapter.hra_u = nn.Parameter(u.repeat_interleave(2, dim=1))

    @staticmethod
    def check_tensors(weight_shape, adapter) -> str | None:
        n = math.prod(weight_shape[1:])
        u = adapter.hra_u
        if u.dim() != 2 or u.shape[0] != n or u.shape[1] < 1:
            return f"hra_u has shape {tuple(u.shape)}, expected ({n}, r) with r >= 1"
        zero = torch.nonzero(~(u.detach().float().norm(dim=0) > 0)).flatten().tolist()
        if zero:
            return f"hra_u column {zero[0]} has norm 0 (a reflection needs a nonzero vector)"
        return None

    @staticmethod
    def forward(layer, adapter, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        W = layer.weight2d()
        dW = (reflect(W, adapter.hra_u) - W.float()).reshape(layer.weight.shape)
        if needs_fp32_path(x, dW):
            h = layer.apply_a(x.to(dW.dtype), dW)
            return torch.add(y.to(h.dtype), h, alpha=adapter.strength).to(y.dtype)
        return torch.add(y, layer.apply_a(x, dW).to(y.dtype), alpha=adapter.strength)

    @staticmethod
    def weight_delta(W2d: torch.Tensor, adapter) -> torch.Tensor:
        """``W (H - I)`` of an (out, in*k) weight at strength 1, fp32."""
        return reflect(W2d, adapter.hra_u) - W2d.float()

    @staticmethod
    def delta_weight(layer, adapter) -> torch.Tensor:
        return HRA.weight_delta(layer.weight2d(), adapter)
