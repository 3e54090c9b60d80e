"""Mel VAE: log-mel (B, n_mels, T) <-> latent (B, embed_dim, T / 2).

The generator works in the latent space of this 1-D convolutional VAE
(docs/REFERENCE_ARCHITECTURE.md §5.2). It is built from the *magnitude-preserving* layers of
EDM2 (Karras et al., "Analyzing and Improving the Training Dynamics of Diffusion Models",
2024), re-stated here from the paper's equations:

* MP convolution: bias-free, each output filter has unit norm ("forced weight
  normalisation"), so unit-variance inputs give unit-variance outputs;
* MP-SiLU: ``silu(x) / 0.596`` (0.596 = std of silu of a standard normal);
* MP-sum: ``((1 - t) a + t b) / sqrt((1 - t)^2 + t^2)`` (a weighted residual that keeps the
  variance), here with t = 0.3;
* pixel norm: ``x / (eps + ||x||_C / sqrt(C))`` over channels, eps = 1e-4.

Topology (hidden width h, ch_mult (1, 2, 4)): the encoder runs conv_in, three levels of
residual blocks (2 each; the first level ends with a 2x downsampler), a middle
block-attention-block, then MP-SiLU and ``conv_out`` to 2 * embed_dim moments (mean,
logvar). The decoder mirrors it (3 blocks per level, a 2x upsampler after the middle level)
and ends in ``conv_out`` to n_mels. Activations are clamped to +-clip_act after every block.
Mels are standardised per bin with the persistent ``data_mean`` / ``data_std`` buffers.

Weight renormalisation contract
-------------------------------
Checkpoints (and the golden seeded weights) store **raw** MP-conv weights. After a strict
``load_state_dict`` the loader must call :meth:`MelVAE.normalize_weights_` once: every weight
row becomes ``w_o / (1e-4 * sqrt(fan_in) + ||w_o||)`` (float32 maths), after which the forward
pass uses the weights as they are (times ``learnable_gain + 1`` for the two ``conv_out``). A
freshly built random model (tests, the tiny demo) normalises itself on first use. Loading
weights (any state dict that holds MP-conv weights) marks the model as raw, and
:meth:`encode` / :meth:`decode` refuse to run on loaded raw weights, so the step can be neither
forgotten nor applied twice by accident. Note that
``state_dict()`` of a normalised model holds normalised weights; do not feed it back as if it
were a checkpoint.

The implementation follows the published architecture; NVIDIA's EDM2 code (CC BY-NC-SA) was
not used.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selva_core.variants import VAEConfig

logger = logging.getLogger(__name__)

MP_SILU_SCALE = 0.596  # std of silu(x) for x ~ N(0, 1)


# --- magnitude-preserving primitives (EDM2 paper, eqs. for MP-SiLU / MP-sum / pixel norm) --
def pixel_norm(x: torch.Tensor, dim: int = 1, eps: float = 1e-4) -> torch.Tensor:
    """Scale vectors along ``dim`` to norm sqrt(size): ``x / (eps + ||x|| / sqrt(n))``."""
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32)
    norm = eps + norm / math.sqrt(x.shape[dim])
    return x / norm.to(x.dtype)


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    return F.silu(x) / MP_SILU_SCALE


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Variance-preserving blend: ``((1 - t) a + t b) / sqrt((1 - t)^2 + t^2)``."""
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t**2)


class MPConv1d(nn.Module):
    """Bias-free 1-D convolution with 'same' padding; weight (out, in, k).

    The weight is used as stored (times ``gain``); :meth:`normalize_` turns raw weights into
    unit-norm rows once (see the module docstring).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size))
        nn.init.normal_(self.weight)  # EDM2 init: N(0, 1), made unit-norm by normalize_

    @property
    def fan_in(self) -> int:
        return self.weight.shape[1] * self.weight.shape[2]

    @torch.no_grad()
    def normalize_(self, eps: float) -> None:
        if self.weight.is_meta:  # shape-only model: weights arrive with a later load
            return
        w = self.weight.float()
        norm = torch.linalg.vector_norm(w, dim=(1, 2), keepdim=True)
        self.weight.copy_(w / (eps * math.sqrt(self.fan_in) + norm))

    def forward(self, x: torch.Tensor, gain: torch.Tensor | float = 1.0) -> torch.Tensor:
        w = self.weight
        if not (isinstance(gain, float) and gain == 1.0):
            w = w * gain
        return F.conv1d(x, w.to(x.dtype), padding=w.shape[-1] // 2)


class ResBlock(nn.Module):
    """Pixel norm -> [MP-SiLU -> conv] x 2, 1x1 shortcut if the width changes, MP-sum."""

    def __init__(self, in_dim: int, out_dim: int, kernel_size: int, cfg: VAEConfig):
        super().__init__()
        self.eps, self.t = cfg.normalize_eps, cfg.mp_sum_t
        self.conv1 = MPConv1d(in_dim, out_dim, kernel_size)
        self.conv2 = MPConv1d(out_dim, out_dim, kernel_size)
        self.nin_shortcut = MPConv1d(in_dim, out_dim, 1) if in_dim != out_dim else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pixel_norm(x, 1, self.eps)
        h = self.conv2(mp_silu(self.conv1(mp_silu(x))))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return mp_sum(x, h, self.t)


class AttnBlock(nn.Module):
    """Single-head self-attention over time with pixel-normalised q, k, v (cosine attention).

    ``qkv`` output channels are interleaved: channel ``3 c + j`` is q (j=0), k (1), v (2).
    """

    def __init__(self, dim: int, cfg: VAEConfig):
        super().__init__()
        self.eps, self.t = cfg.normalize_eps, cfg.mp_sum_t
        self.qkv = MPConv1d(dim, 3 * dim, 1)
        self.proj_out = MPConv1d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, n = x.shape
        qkv = pixel_norm(self.qkv(x).view(b, c, 3, n), 1, self.eps)
        q, k, v = (qkv[:, :, j].transpose(1, 2).unsqueeze(1) for j in range(3))  # (B,1,N,C)
        y = F.scaled_dot_product_attention(q, k, v)
        y = self.proj_out(y.squeeze(1).transpose(1, 2))
        return mp_sum(x, y, self.t)


class Downsample(nn.Module):
    """1x1 conv -> average pool 2 -> 1x1 conv."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv1 = MPConv1d(dim, dim, 1)
        self.conv2 = MPConv1d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.avg_pool1d(self.conv1(x), 2))


class Upsample(nn.Module):
    """Nearest 2x repetition -> conv k3."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv = MPConv1d(dim, dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest-exact"))


def _level(blocks: nn.ModuleList) -> nn.Module:
    level = nn.Module()
    level.block = blocks
    return level


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        h, k = cfg.hidden_dim, cfg.kernel_size
        self.clip_act, self.down_layers = cfg.clip_act, tuple(cfg.down_layers)
        self.conv_in = MPConv1d(cfg.data_dim, h, k)
        self.down = nn.ModuleList()
        dim = h
        for i, mult in enumerate(cfg.ch_mult):
            blocks = nn.ModuleList()
            for _ in range(cfg.encoder_num_res_blocks):
                blocks.append(ResBlock(dim, h * mult, k, cfg))
                dim = h * mult
            level = _level(blocks)
            if i in self.down_layers:
                level.downsample = Downsample(dim)
            self.down.append(level)
        self.mid = nn.Module()
        self.mid.block_1 = ResBlock(dim, dim, k, cfg)
        self.mid.attn_1 = AttnBlock(dim, cfg)
        self.mid.block_2 = ResBlock(dim, dim, k, cfg)
        self.conv_out = MPConv1d(dim, 2 * cfg.embed_dim, k)
        self.learnable_gain = nn.Parameter(torch.zeros([]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for i, level in enumerate(self.down):
            for block in level.block:
                x = block(x).clamp(-self.clip_act, self.clip_act)
            if i in self.down_layers:
                x = level.downsample(x)
        x = self.mid.block_2(self.mid.attn_1(self.mid.block_1(x)))
        x = x.clamp(-self.clip_act, self.clip_act)
        return self.conv_out(mp_silu(x), gain=self.learnable_gain + 1)


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        h, k = cfg.hidden_dim, cfg.kernel_size
        self.clip_act = cfg.clip_act
        self.up_layers = tuple(i + 1 for i in cfg.down_layers)  # upsample after this level
        dim = h * cfg.ch_mult[-1]
        self.conv_in = MPConv1d(cfg.embed_dim, dim, k)
        self.mid = nn.Module()
        self.mid.block_1 = ResBlock(dim, dim, k, cfg)
        self.mid.attn_1 = AttnBlock(dim, cfg)
        self.mid.block_2 = ResBlock(dim, dim, k, cfg)
        levels: list[nn.Module] = []
        for i in reversed(range(len(cfg.ch_mult))):
            blocks = nn.ModuleList()
            for _ in range(cfg.decoder_num_res_blocks):
                blocks.append(ResBlock(dim, h * cfg.ch_mult[i], k, cfg))
                dim = h * cfg.ch_mult[i]
            level = _level(blocks)
            if i in self.up_layers:
                level.upsample = Upsample(dim)
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)  # indexed by level, run from the deepest
        self.conv_out = MPConv1d(dim, cfg.data_dim, k)
        self.learnable_gain = nn.Parameter(torch.zeros([]))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(z)
        x = self.mid.block_2(self.mid.attn_1(self.mid.block_1(x)))
        x = x.clamp(-self.clip_act, self.clip_act)
        for i in reversed(range(len(self.up))):
            level = self.up[i]
            for block in level.block:
                x = block(x).clamp(-self.clip_act, self.clip_act)
            if i in self.up_layers:
                x = level.upsample(x)
        return self.conv_out(mp_silu(x), gain=self.learnable_gain + 1)


@dataclass
class DiagonalGaussian:
    """The VAE posterior N(mean, exp(logvar)) over latents (B, embed_dim, T / 2).

    ``logvar`` is already clamped to the config's range. SelVA uses ``mean`` (the mode) as the
    latent of a clip; training targets may use :meth:`sample`.
    """

    mean: torch.Tensor
    logvar: torch.Tensor

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    def mode(self) -> torch.Tensor:
        return self.mean

    def sample(self, rng: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(
            self.mean.shape, generator=rng, device=self.mean.device, dtype=self.mean.dtype
        )
        return self.mean + self.std * noise


class MelVAE(nn.Module):
    """EDM2-style 1-D mel VAE (encoder optional at inference); see the module docstring."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        if any(i < 0 or i >= len(cfg.ch_mult) - 1 for i in cfg.down_layers):
            raise ValueError(
                f"VAEConfig.down_layers {cfg.down_layers} must index levels below the last "
                f"of ch_mult {cfg.ch_mult}"
            )
        self.cfg = cfg
        self.register_buffer("data_mean", torch.zeros(1, cfg.data_dim, 1))
        self.register_buffer("data_std", torch.ones(1, cfg.data_dim, 1))
        self.encoder: Encoder | None = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self._weights_normalized = False
        # A fresh random model normalises itself on first use (no cost for models whose
        # weights are about to be loaded); loaded weights need an explicit call.
        self._auto_normalize = True
        self.register_load_state_dict_pre_hook(_mark_raw_on_load)

    # -- weights ---------------------------------------------------------------------------
    @property
    def weights_normalized(self) -> bool:
        return self._weights_normalized

    @property
    def time_downsample(self) -> int:
        return 2 ** len(self.cfg.down_layers)

    def normalize_weights_(self) -> MelVAE:
        """Renormalise every raw MP-conv weight once (the reference's ``remove_weight_norm``).

        Call after loading a checkpoint; a second call is a no-op (logged), because
        renormalising already-normalised rows would shrink them slightly again.
        """
        if self._weights_normalized:
            logger.debug("MelVAE weights already normalised; skipping")
            return self
        count = 0
        for module in self.modules():
            if isinstance(module, MPConv1d):
                module.normalize_(self.cfg.normalize_eps)
                count += 1
        self._weights_normalized = True
        logger.debug("MelVAE: normalised %d MP-conv weights", count)
        return self

    def drop_encoder(self) -> MelVAE:
        """Delete the encoder (inference only needs the decoder); frees ~half the memory."""
        self.encoder = None
        return self

    # -- encode / decode -------------------------------------------------------------------
    def encode(self, mel: torch.Tensor) -> DiagonalGaussian:
        """log-mel (B, n_mels, T), T divisible by 2 -> posterior over (B, embed_dim, T / 2)."""
        if self.encoder is None:
            raise RuntimeError(
                "MelVAE.encode: the encoder was dropped (drop_encoder); build/load the VAE "
                "with its encoder to encode audio"
            )
        self._check_ready()
        self._check_shape(mel, self.cfg.data_dim, "mel", "n_mels")
        if mel.shape[-1] % self.time_downsample:
            raise ValueError(
                f"MelVAE.encode: mel has {mel.shape[-1]} frames; the VAE halves time, so the "
                f"frame count must be divisible by {self.time_downsample} (trim or pad the audio)"
            )
        x = (mel - self.data_mean) / self.data_std
        moments = self.encoder(x)
        mean, logvar = moments.chunk(2, dim=1)
        lo, hi = self.cfg.logvar_clamp
        return DiagonalGaussian(mean=mean, logvar=logvar.clamp(lo, hi))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """latent (B, embed_dim, N) (channels first) -> log-mel (B, n_mels, 2 N)."""
        self._check_ready()
        self._check_shape(z, self.cfg.embed_dim, "latent", "embed_dim")
        return self.decoder(z) * self.data_std + self.data_mean

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """Reconstruction through the posterior mean: decode(encode(mel).mean)."""
        return self.decode(self.encode(mel).mean)

    def _check_ready(self) -> None:
        if self._weights_normalized:
            return
        if self._auto_normalize:
            self.normalize_weights_()
        else:
            raise RuntimeError(
                "MelVAE holds raw (checkpoint) MP-conv weights: call normalize_weights_() once "
                "after load_state_dict"
            )

    @staticmethod
    def _check_shape(x: torch.Tensor, channels: int, what: str, name: str) -> None:
        if x.ndim != 3 or x.shape[1] != channels:
            raise ValueError(
                f"MelVAE expects a {what} of shape (B, {channels}, T) (channels first, "
                f"{name}={channels}), got {tuple(x.shape)}; a generator latent (B, N, C) must "
                "be transposed"
            )


def _mark_raw_on_load(module: MelVAE, state_dict, prefix, *args) -> None:
    """Loading MP-conv weights replaces normalised weights by raw ones: reset the flag."""
    if any(k.startswith(prefix) and k.endswith(".weight") for k in state_dict):
        module._weights_normalized = False
        module._auto_normalize = False
