"""Rotary position embedding tables (Flux-style interleaved pairs) for the MM-DiT generator.

Head-dimension channels (2i, 2i+1) form one complex pair rotated by the angle
``p * s * theta^(-2i / head_dim)`` at position ``p``; ``s`` (``freq_scale``) stretches a
stream's positions onto another stream's time axis (the CLIP stream uses
``N_latent / N_clip`` so both span the same clip).

Tables are computed and applied in float32 whatever the activation dtype, and the result is
cast back to the input dtype, as in the reference (MMAudio).
"""

from __future__ import annotations

import torch

ROPE_THETA = 10000.0


def rope_tables(
    length: int,
    head_dim: int,
    *,
    freq_scale: float = 1.0,
    theta: float = ROPE_THETA,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine and sine tables, each ``(length, head_dim // 2)`` float32.

    Built on ``device`` explicitly (default CPU) so that constructing a model under
    ``with torch.device('meta')`` still yields real tables.
    """
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head dimension, got {head_dim}")
    if length < 1:
        raise ValueError(f"RoPE table length must be >= 1, got {length}")
    half = torch.arange(0, head_dim, 2, dtype=torch.float32, device=device)
    freqs = 1.0 / (theta ** (half / head_dim))
    freqs = freqs * freq_scale
    pos = torch.arange(length, dtype=torch.float32, device=device)
    angles = pos[:, None] * freqs[None, :]
    return torch.cos(angles), torch.sin(angles)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved channel pairs of ``x`` (..., L, head_dim) by the tables (L, head_dim/2).

    ``(x0, x1) -> (cos x0 - sin x1, sin x0 + cos x1)`` in float32; returns ``x``'s dtype.
    """
    xf = x.float().unflatten(-1, (-1, 2))
    x0, x1 = xf.unbind(-1)
    cos = cos.float()
    sin = sin.float()
    out = torch.stack((cos * x0 - sin * x1, sin * x0 + cos * x1), dim=-1)
    return out.flatten(-2).to(x.dtype)
