"""HRA: ``y = W H x + b`` with ``H = H_1 H_2 ... H_r``, ``H_i = I - 2 u_i u_i^T / ||u_i||^2``.

Yuan et al., "Bridging The Gap between Low-rank and Orthogonal Adaptation via Householder
Reflection Adaptation", arXiv 2405.17484, as peft's ``HRA`` (without its optional Gram-Schmidt
orthogonalisation, ``apply_GS=False``, peft's default). ``hra_u`` (in*k, r, fp32, trainable)
holds the r reflection vectors as columns, peft's shape; conv weights are (out, in*k) matrices
whose flattened kernels are reflected (as peft's ``HRAConv2d``).

Identity at init: the rank must be even and the vectors come in equal pairs
(``u_{2j} = u_{2j+1}``, peft's symmetric init); a reflection is its own inverse, so ``H = I``
and the change is 0 up to rounding. An odd rank is refused.

Forward at strength ``st``: ``y + st (W H - W) x``. With the unit vectors ``V = [v_1..v_r]``
the product is ``H = I - V T V^T`` (compact WY form, Schreiber & Van Loan 1989: ``T`` upper
triangular r x r, ``T_jj = 2``, ``T[:j, j] = -2 T[:j, :j] V[:, :j]^T v_j``), so the change is
the rank-r product ``-(W V T) (V^T x)``: it runs as a LoRA with ``A = V^T`` (a conv with the
base kernel) and ``B = -W V T``, never forming an (in, in) or (out, in) matrix. Stacked
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

from .lora import needs_fp32_path


def compact_wy(U: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(V, T) with ``H_1 ... H_r = I - V T V^T`` for the reflections of ``U``'s columns, fp32
    (differentiable)."""
    V = U.float() / U.float().norm(dim=0)
    G = V.T @ V
    T = V.new_full((1, 1), 2.0)
    for j in range(1, V.shape[1]):
        z = -2.0 * (T @ G[:j, j:j + 1])
        T = torch.cat([torch.cat([T, z], 1),
                       torch.cat([V.new_zeros(1, j), V.new_full((1, 1), 2.0)], 1)], 0)
    return V, T


def _factors(W2d: torch.Tensor, adapter) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) as matrices with ``W (H - I) = B A``: ``A = V^T`` (r, in*k), ``B = -W V T``."""
    V, T = compact_wy(adapter.hra_u)
    return V.T, -(W2d.float() @ V) @ T


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
        w = layer.weight
        A, B = _factors(layer.weight2d(), adapter)
        A = A.reshape(A.shape[0], *w.shape[1:])
        B = B.reshape(*B.shape, *([1] * (w.dim() - 2)))
        st = adapter.strength
        if needs_fp32_path(x, A):
            h = layer.apply_a(x.to(A.dtype), A)
            return layer.add_b(y.to(A.dtype), h, B, st).to(y.dtype)
        return layer.add_b(y, layer.apply_a(x, A), B, st)

    @staticmethod
    def weight_delta(W2d: torch.Tensor, adapter) -> torch.Tensor:
        """``W (H - I)`` of an (out, in*k) weight at strength 1, fp32."""
        A, B = _factors(W2d, adapter)
        return B @ A

    @staticmethod
    def delta_weight(layer, adapter) -> torch.Tensor:
        return HRA.weight_delta(layer.weight2d(), adapter)
