"""SVD of a low-rank product ``B A`` without forming it, and the inverse re-factorisation.

``B = Qb Rb`` and ``A^T = Qa Ra`` (reduced QR) give ``B A = Qb (Rb Ra^T) Qa^T``; the SVD of the
small core ``Rb Ra^T = Uc S Vc^T`` yields ``B A = (Qb Uc) S (Qa Vc)^T``. Cost O((out + in) R^2)
instead of O(out in R), and no (out, in) matrix. Computed in float64 for clean round trips.
"""

from __future__ import annotations

import torch


def lowrank_svd(
    B: torch.Tensor, A: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """U (out, K), S (K,), V (in, K) with ``B @ A = U diag(S) V^T``; K = min(out, in, R)."""
    Qb, Rb = torch.linalg.qr(B.double())
    Qa, Ra = torch.linalg.qr(A.double().T)
    Uc, S, Vch = torch.linalg.svd(Rb @ Ra.T, full_matrices=False)
    return Qb @ Uc, S, Qa @ Vch.T


def refactor(
    U: torch.Tensor, S: torch.Tensor, V: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Balanced factors (B, A) with ``scale * B @ A = U diag(S) V^T`` (S >= 0), fp32."""
    root = (S.double().clamp_min(0) / scale).sqrt()
    B = U.double() * root[None, :]
    A = (V.double() * root[None, :]).T
    return B.float().contiguous(), A.float().contiguous()


def delta_svd(adapter) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SVD of an adapter's learned change ``s B A`` (PiSSA: ``s (B A - B0 A0)``; a kind with
    other factors gives them through its ``lowrank``)."""
    factors = adapter.impl.lowrank(adapter)
    if factors is None:
        raise ValueError(f"adapter kind {adapter.kind!r} has no low-rank change of its own")
    A, B = factors
    B, A = B.reshape(B.shape[0], B.shape[1]), A.reshape(A.shape[0], -1)
    U, S, V = lowrank_svd(B.detach(), A.detach())
    return U, S * adapter.scale, V
