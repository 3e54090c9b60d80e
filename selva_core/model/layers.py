"""Small building blocks shared by the generator and the TextSynch video encoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def swiglu_hidden_dim(dim: int, mlp_ratio: float = 4.0, multiple_of: int = 256) -> int:
    """SwiGLU width rule of MMAudio: int(2/3 * ratio * dim) rounded up to ``multiple_of``.

    448 -> 1280, 896 -> 2560, 768 -> 2048.
    """
    hidden = int(2 * int(dim * mlp_ratio) / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


class ChannelLastConv1d(nn.Conv1d):
    """A Conv1d applied to (B, N, C) tokens: transpose, convolve, transpose back.

    ``channel_last`` tells wrappers (LoRA) which layout the layer's input and output use.
    """

    channel_last = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class MLP(nn.Module):
    """SwiGLU feed-forward on tokens: w2(silu(w1 x) * w3 x), no biases."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class ConvMLP(nn.Module):
    """SwiGLU feed-forward whose three projections are channel-last 1-D convolutions."""

    def __init__(self, dim: int, hidden_dim: int, kernel_size: int = 3):
        super().__init__()
        pad = kernel_size // 2
        self.w1 = ChannelLastConv1d(dim, hidden_dim, kernel_size, padding=pad, bias=False)
        self.w2 = ChannelLastConv1d(hidden_dim, dim, kernel_size, padding=pad, bias=False)
        self.w3 = ChannelLastConv1d(dim, hidden_dim, kernel_size, padding=pad, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class HeadRMSNorm(nn.Module):
    """RMSNorm over the head dimension with eps = machine epsilon of the input dtype.

    Matches ``nn.RMSNorm(head_dim)`` with ``eps=None`` as the reference uses it.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The weight follows the activation dtype so bf16 autocast keeps the fused kernel.
        weight = self.weight.to(x.dtype)
        return F.rms_norm(x, (x.shape[-1],), weight, eps=torch.finfo(x.dtype).eps)
