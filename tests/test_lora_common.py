"""Shared fixtures of the LoRA tests: a tiny module shaped like MMAudio's blocks.

Module paths follow the generator (``joint_blocks.{i}.{latent,text}_block.attn.qkv``,
``linear1`` as a kernel-3 ``ChannelLastConv1d`` on the latent stream and ``nn.Linear`` on the
text stream, ConvMLP / MLP ``ffn``, ``adaLN_modulation.1``, latent-only ``fused_blocks``).
``channel_last=False`` builds a twin whose convs are plain channel-first ``nn.Conv1d`` with
the transposes in the parent (same parameters and function), which peft can drive natively.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from selva_core.model.layers import ChannelLastConv1d
from selva_core.model.lora import adapter_layers

D, H, N_LAT, N_TXT = 16, 32, 12, 5


def _conv(layer: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    if getattr(layer, "channel_last", False) or getattr(
        getattr(layer, "base_layer", None), "channel_last", False
    ):
        return layer(x)
    return layer(x.transpose(1, 2)).transpose(1, 2)


class _Attn(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)


class _FFN(nn.Module):
    def __init__(self, d: int, h: int, conv: bool, channel_last: bool):
        super().__init__()
        self.conv = conv
        if conv:
            cls = ChannelLastConv1d if channel_last else nn.Conv1d
            self.w1 = cls(d, h, 3, padding=1, bias=False)
            self.w2 = cls(h, d, 3, padding=1, bias=False)
            self.w3 = cls(d, h, 3, padding=1, bias=False)
        else:
            self.w1 = nn.Linear(d, h, bias=False)
            self.w2 = nn.Linear(h, d, bias=False)
            self.w3 = nn.Linear(d, h, bias=False)

    def forward(self, x):
        if self.conv:
            return _conv(self.w2, F.silu(_conv(self.w1, x)) * _conv(self.w3, x))
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class _Stream(nn.Module):
    def __init__(self, d: int, conv: bool, channel_last: bool, pre_only: bool = False):
        super().__init__()
        self.pre_only = pre_only
        self.attn = _Attn(d)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, (2 if pre_only else 6) * d))
        if not pre_only:
            if conv:
                cls = ChannelLastConv1d if channel_last else nn.Conv1d
                self.linear1 = cls(d, d, 3, padding=1)
            else:
                self.linear1 = nn.Linear(d, d)
            self.ffn = _FFN(d, H, conv, channel_last)
        self.conv = conv

    def forward(self, x, c):
        mod = self.adaLN_modulation(c).chunk(2 if self.pre_only else 6, dim=-1)
        h = F.layer_norm(x, x.shape[-1:]) * (1 + mod[1]) + mod[0]
        q, k, v = self.attn.qkv(h).chunk(3, dim=-1)
        o = F.scaled_dot_product_attention(q, k, v)
        if self.pre_only:
            return x + o
        lin = _conv(self.linear1, o) if self.conv else self.linear1(o)
        x = x + lin * mod[2]
        h2 = F.layer_norm(x, x.shape[-1:]) * (1 + mod[4]) + mod[3]
        return x + self.ffn(h2) * mod[5]


class _Joint(nn.Module):
    def __init__(self, d: int, channel_last: bool, pre_only: bool):
        super().__init__()
        self.latent_block = _Stream(d, True, channel_last)
        self.text_block = _Stream(d, False, channel_last, pre_only=pre_only)

    def forward(self, x, t, c):
        return self.latent_block(x, c), self.text_block(t, c)


class TinyMMDiT(nn.Module):
    """Two joint blocks (the last one pre-only on the text stream), one fused block."""

    def __init__(self, d: int = D, channel_last: bool = True):
        super().__init__()
        self.cond = nn.Linear(d, d)
        self.joint_blocks = nn.ModuleList(
            [_Joint(d, channel_last, pre_only=False), _Joint(d, channel_last, pre_only=True)]
        )
        self.fused_blocks = nn.ModuleList([_Stream(d, True, channel_last)])
        cls = ChannelLastConv1d if channel_last else nn.Conv1d
        self.final = cls(d, d, 3, padding=1)

    def forward(self, x, text):
        c = self.cond(text.mean(1, keepdim=True))
        for blk in self.joint_blocks:
            x, text = blk(x, text, c)
        for blk in self.fused_blocks:
            x = blk(x, c)
        return _conv(self.final, x)


def make_model(seed: int = 0, channel_last: bool = True) -> TinyMMDiT:
    torch.manual_seed(seed)
    return TinyMMDiT(channel_last=channel_last)


def make_twin(model: TinyMMDiT) -> TinyMMDiT:
    """The channel-first twin with the same parameters (state-dict keys are identical)."""
    twin = TinyMMDiT(channel_last=False)
    twin.load_state_dict(model.state_dict())
    return twin


def make_inputs(seed: int = 1, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, N_LAT, D, generator=g), torch.randn(batch, N_TXT, D, generator=g)


@torch.no_grad()
def perturb(model: nn.Module, name: str = "default", seed: int = 3, std: float = 0.05) -> None:
    """Give every factor of adapter ``name`` a random change (as if trained)."""
    g = torch.Generator().manual_seed(seed)
    for st in adapter_layers(model, name).values():
        st.lora_A.add_(torch.randn(st.lora_A.shape, generator=g) * std)
        st.lora_B.add_(torch.randn(st.lora_B.shape, generator=g) * std)
        if hasattr(st, "lora_magnitude"):
            st.lora_magnitude.mul_(1 + 0.1 * torch.randn(st.lora_magnitude.shape, generator=g))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def state_bits(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_twin_computes_the_same_function():
    model = make_model()
    x, t = make_inputs()
    assert torch.allclose(model(x, t), make_twin(model)(x, t), atol=1e-6)
