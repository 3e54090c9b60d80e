"""LoRA-XS: ``y = W x + b + strength * s * B R (A x)``, only the r x r core ``R`` trained.

Bałazy et al., "LoRA-XS: Low-Rank Adaptation with Extremely Small Number of Parameters",
arXiv 2405.17604. ``B = U_r S_r`` (out, r) and ``A = V_r^T`` (r, in*k) come from the truncated
SVD of the base weight ``W = U S V^T`` (conv weights as (out, in*k) matrices, so ``A`` is a
conv with the base kernel as in LoRA) and stay frozen; ``R`` (r, r, fp32) is the only trained
tensor: r^2 numbers per layer instead of r (in + out).

Identity at init: ``R = 0``, so the added term is exactly 0; its gradient ``s B^T G (A x)^T``
is not zero because ``A`` and ``B`` are (the basis of ``W``'s top directions).

The learned change is ``dW = s B R A``, independent of the base weights once the basis is
stored; files hold ``lora_A`` / ``lora_B`` (the basis, float32 only: a storage that
re-factorised them would break their tie to the core) and ``lora_core``. Merging adapter
files uses the plain factors ``(R A, B)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .lora import needs_fp32_path


def _core_apply(h: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """``R h`` in rank space: (tokens, r) rows for Linear, channel-first (B, r, N) for convs."""
    return F.linear(h, R) if h.dim() == 2 else torch.matmul(R, h)


class LoRAXS:
    name = "loraxs"
    extra_keys: tuple[str, ...] = ("lora_core",)
    plain_factors = False
    has_factors = True

    @staticmethod
    def extra_shapes(A: torch.Tensor, B: torch.Tensor) -> dict[str, tuple[int, ...]]:
        return {"lora_core": (A.shape[0], A.shape[0])}

    @staticmethod
    def init(layer, adapter) -> None:
        """A, B = the top-r SVD basis of W (frozen); R = 0 (trainable)."""
        if adapter.is_pissa:
            raise ValueError("LoRA-XS builds its own SVD basis; use init 'standard' with it")
        r = adapter.rank
        with torch.no_grad():
            U, S, Vh = torch.linalg.svd(layer.weight2d().double(), full_matrices=False)
            B2 = (U[:, :r] * S[:r]).float()
            A2 = Vh[:r].float()
        trainable = adapter.lora_A.requires_grad
        adapter.set_plain_factors(B2, A2, adapter.init)
        adapter.lora_A.requires_grad_(False)
        adapter.lora_B.requires_grad_(False)
        core = torch.zeros(r, r, device=adapter.lora_A.device)
        adapter.lora_core = nn.Parameter(core, requires_grad=trainable)

    @staticmethod
    def forward(layer, adapter, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        A, B = adapter.lora_A, adapter.lora_B
        R = adapter.lora_core
        if adapter.dropout > 0.0 and layer.training:
            x = F.dropout(x, adapter.dropout, training=True)
        coef = adapter.strength * adapter.scale
        if needs_fp32_path(x, A):
            h = _core_apply(layer.apply_a(x.to(A.dtype), A), R)
            return layer.add_b(y.to(A.dtype), h, B, coef).to(y.dtype)
        h = layer.apply_a(x, A)
        return layer.add_b(y, _core_apply(h, R.to(h.dtype)), B, coef)

    @staticmethod
    def lowrank(adapter) -> tuple[torch.Tensor, torch.Tensor]:
        """(R A, B) in layer shapes: the change is ``scale * B (R A)``."""
        A = adapter.lora_A
        RA = adapter.lora_core.float() @ A.reshape(A.shape[0], -1).float()
        return RA.reshape(A.shape), adapter.lora_B

    @staticmethod
    def delta_weight(layer, adapter) -> torch.Tensor:
        A = adapter.lora_A.reshape(adapter.lora_A.shape[0], -1).float()
        B = adapter.lora_B.reshape(adapter.lora_B.shape[0], -1).float()
        return adapter.scale * (B @ adapter.lora_core.float() @ A)
