"""Initial factors A (r, in*k) and B (out, r) of a new adapter.

* ``standard``: A ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (Kaiming-uniform with a = sqrt(5), as
  ``nn.Linear`` and peft), B = 0, so B A = 0: the wrapped layer equals the base layer exactly.
* ``gaussian``: A ~ N(0, std = 1/r) (peft / diffusers), B = 0; exact identity as above.
* ``pissa`` (Meng et al. 2024, arXiv 2404.02948): W = U S V^T in fp32; with
  S_r' = S[:r] / s (pre-divided by the LoRA scale s so that s B A is exactly the top-r part for
  any alpha), A = diag(sqrt(S_r')) V_r^T, B = U_r diag(sqrt(S_r')). The frozen copies A0 = A,
  B0 = B are returned too: the runtime applies ``W x + s (B A - B0 A0) x`` on the *untouched* W,
  which is the same function as PiSSA's ``W_res x + s B A x`` (W_res = W - s B0 A0) but keeps W
  bit-exact and makes strength, stacking and removal act on the learned change only.
* ``pissa_niter_<N>``: the same from ``torch.svd_lowrank`` (Halko et al.) with N subspace
  iterations and a small oversampling, for large layers.

Conv weights (out, in, k) are handled as (out, in*k) matrices; the layer reshapes the factors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .config import parse_init

PISSA_OVERSAMPLE = 8  # extra random directions for svd_lowrank (peft uses none)


@dataclass
class InitFactors:
    """Factors in matrix form; ``A0``/``B0`` are set for PiSSA only."""

    A: torch.Tensor
    B: torch.Tensor
    A0: torch.Tensor | None = None
    B0: torch.Tensor | None = None


def _generator(device: torch.device, seed: int | None) -> torch.Generator | None:
    if seed is None:
        return None
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def init_factors(
    weight2d: torch.Tensor, rank: int, init: str, scale: float, seed: int | None = None
) -> InitFactors:
    """Factors for a base weight viewed as (out, fan_in); fp32 on the weight's device."""
    kind, niter = parse_init(init)
    out_dim, fan_in = weight2d.shape
    device = weight2d.device
    if weight2d.is_meta:
        raise ValueError("cannot initialise LoRA factors on a meta-device weight; load it first")
    g = _generator(device, seed)
    if kind in ("standard", "gaussian"):
        if kind == "standard":
            bound = 1.0 / math.sqrt(fan_in)
            A = torch.empty(rank, fan_in, device=device).uniform_(-bound, bound, generator=g)
        else:
            A = torch.randn(rank, fan_in, device=device, generator=g) / rank
        return InitFactors(A=A, B=torch.zeros(out_dim, rank, device=device))
    if rank > min(out_dim, fan_in):
        raise ValueError(
            f"PiSSA rank {rank} exceeds the rank limit min(out, in*k) = {min(out_dim, fan_in)} "
            f"of a weight of shape {tuple(weight2d.shape)}; lower the rank or exclude this layer"
        )
    W = weight2d.detach().float()
    if niter is None:
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        U, S, Vh = U[:, :rank], S[:rank], Vh[:rank]
    else:
        q = min(rank + PISSA_OVERSAMPLE, out_dim, fan_in)
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(int(seed))
            U, S, V = torch.svd_lowrank(W, q=q, niter=niter)
        U, S, Vh = U[:, :rank], S[:rank], V[:, :rank].T
    root = (S / scale).sqrt()
    A = (root[:, None] * Vh).contiguous()
    B = (U * root[None, :]).contiguous()
    return InitFactors(A=A, B=B, A0=A.clone(), B0=B.clone())
