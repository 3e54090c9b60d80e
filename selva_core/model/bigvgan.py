"""BigVGAN vocoders: log-mel (B, n_mels, F) -> waveform (B, 1, F * total_upsample).

Two checkpoints are used by SelVA (docs/REFERENCE_ARCHITECTURE.md §5.3):

* **v1, 16 kHz** (Make-An-Audio 2, ``best_netG.pt``): final ``tanh``, ``conv_post`` with bias;
* **v2, 44.1 kHz** (``nvidia/bigvgan_v2_44khz_128band_512x``): output clamped to [-1, 1],
  ``conv_post`` without bias.

Both share one generator: ``conv_pre`` -> per stage [weight-normalised ConvTranspose1d
upsampler -> mean of three AMPBlock1 residual blocks (kernels 3/7/11, dilations 1/3/5)]
-> anti-aliased SnakeBeta -> ``conv_post``. Every SnakeBeta activation (log-scale alpha and
beta) runs at twice the sample rate between a kaiser-sinc 2x upsampler and a kaiser-sinc
low-pass 2x downsampler. The 12 filter taps are persistent buffers (``...upsample.filter``,
``...downsample.lowpass.filter``): default taps are computed here at construction, but
whatever a checkpoint stores is what the model uses.

Why not NVIDIA's PyPI ``bigvgan`` package: it reproduces the golden waveforms, but only after
renaming every weight-norm key (it uses the deprecated ``torch.nn.utils.weight_norm``, so it
expects ``weight_g``/``weight_v`` instead of the ``parametrizations.weight.original0/1`` the
manifests use), it imports matplotlib/scipy/librosa/huggingface_hub at import time, and its
declared dependencies pull tensorboard, grpcio, auraloss, nnaudio, ninja and pesq (a
source-only package compiled with a C compiler at install time) into a ComfyUI environment
for ~200 lines of inference code. This module is a self-contained re-statement of the
published architecture that loads both key styles.

Weight norm uses :func:`torch.nn.utils.parametrizations.weight_norm`, so state-dict keys are
``X.parametrizations.weight.original0`` (g) / ``original1`` (v). Legacy ``X.weight_g`` /
``X.weight_v`` dicts load too (torch's compatibility pre-hook) and
:func:`convert_legacy_weight_norm_keys` renames them explicitly for loaders that validate
keys first. For inference call :meth:`BigVGAN.remove_weight_norm` once after loading: it folds
``g * v / ||v||`` into a plain weight so no step recomputes it.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from selva_core.variants import BigVGANConfig

logger = logging.getLogger(__name__)

ALIAS_RATIO = 2  # SnakeBeta runs at 2x the stage's sample rate
ALIAS_KERNEL = 12  # int(6 * ratio // 2) * 2 taps for ratio 2
SNAKE_EPS = 1e-9  # keeps 1 / exp(beta) finite
CONV_INIT_STD = 0.01  # BigVGAN's normal init of the generator convs (tiny/random builds)

_LEGACY_WN = re.compile(r"^(?P<prefix>.*)\.weight_(?P<which>[gv])$")


# --- anti-aliasing filters -----------------------------------------------------------------
def kaiser_sinc_filter(cutoff: float, half_width: float, kernel_size: int) -> torch.Tensor:
    """Kaiser-windowed sinc low-pass taps, shape (1, 1, kernel_size), summing to 1.

    ``cutoff`` and ``half_width`` are in cycles per sample (Nyquist = 0.5). The Kaiser beta
    follows Kaiser's empirical design formula for the attenuation that a transition band of
    ``2 * half_width`` allows with ``kernel_size // 2`` taps per side.
    """
    half = kernel_size // 2
    attenuation = 2.285 * (half - 1) * math.pi * (4 * half_width) + 7.95
    if attenuation > 50.0:
        beta = 0.1102 * (attenuation - 8.7)
    elif attenuation >= 21.0:
        beta = 0.5842 * (attenuation - 21.0) ** 0.4 + 0.07886 * (attenuation - 21.0)
    else:
        beta = 0.0
    f64, cpu = torch.float64, torch.device("cpu")  # design on the CPU whatever the context
    window = torch.kaiser_window(kernel_size, periodic=False, beta=beta, dtype=f64, device=cpu)
    if kernel_size % 2 == 0:
        t = torch.arange(-half, half, dtype=f64, device=cpu) + 0.5
    else:
        t = torch.arange(kernel_size, dtype=f64, device=cpu) - half
    taps = 2 * cutoff * window * torch.sinc(2 * cutoff * t)
    taps = taps / taps.sum()
    return taps.to(torch.float32).view(1, 1, kernel_size)


def _replicate_pad(x: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """``F.pad(x, (left, right), mode="replicate")`` via concatenation (cheaper on CPU)."""
    return torch.cat(
        [x[..., :1].expand(-1, -1, left), x, x[..., -1:].expand(-1, -1, right)], dim=-1
    )


@functools.lru_cache(maxsize=1)
def _default_taps_cpu() -> torch.Tensor:
    return kaiser_sinc_filter(0.5 / ALIAS_RATIO, 0.6 / ALIAS_RATIO, ALIAS_KERNEL)


def _default_taps() -> torch.Tensor:
    """A fresh copy of the default taps on the current default device (meta builds too)."""
    return _default_taps_cpu().to(torch.empty(0).device, copy=True)


class UpSample1d(nn.Module):
    """2x upsampling: zero-stuffing + kaiser-sinc interpolation, replicate-padded edges.

    Written as a polyphase filter (even / odd output samples each use every other tap),
    which equals ``ratio * conv_transpose1d(pad(x), filter, stride=2)`` cropped to 2T.
    """

    def __init__(self):
        super().__init__()
        self.register_buffer("filter", _default_taps())
        self.pad = ALIAS_KERNEL // ALIAS_RATIO - 1  # input samples replicated on each side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        taps = self.filter.to(x.dtype).reshape(-1) * ALIAS_RATIO
        # conv_transpose output y[n] = sum_j xp[j] f[n - 2j], cropped by
        # pad * ratio + (k - ratio) // 2 = 15: odd outputs use the even taps, even outputs
        # the odd taps. Interleaving the two depthwise correlations (even-tap phase first)
        # gives the cropped signal from offset 5 on.
        phase_a = taps[0::2].flip(0)
        phase_b = taps[1::2].flip(0)
        weight = torch.stack([phase_a, phase_b]).unsqueeze(1)  # (2, 1, 6)
        weight = weight.repeat(channels, 1, 1)  # (2C, 1, 6): channel c -> rows 2c, 2c+1
        xp = _replicate_pad(x, self.pad, self.pad)
        y = F.conv1d(xp, weight, groups=channels)  # (B, 2C, T + 5)
        b, _, n = y.shape
        y = y.view(b, channels, 2, n).transpose(2, 3).reshape(b, channels, 2 * n)
        offset = ALIAS_KERNEL // 2 - 1
        return y[..., offset : offset + 2 * x.shape[-1]]


class LowPassFilter1d(nn.Module):
    """Strided depthwise low-pass (the 2x downsampler's filter), replicate-padded."""

    def __init__(self, stride: int = ALIAS_RATIO):
        super().__init__()
        self.register_buffer("filter", _default_taps())
        self.stride = stride
        self.pad_left = ALIAS_KERNEL // 2 - 1  # even kernel: one sample less on the left
        self.pad_right = ALIAS_KERNEL // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        xp = _replicate_pad(x, self.pad_left, self.pad_right)
        weight = self.filter.to(x.dtype).expand(channels, -1, -1)
        return F.conv1d(xp, weight, stride=self.stride, groups=channels)


class DownSample1d(nn.Module):
    def __init__(self):
        super().__init__()
        self.lowpass = LowPassFilter1d(ALIAS_RATIO)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lowpass(x)


class SnakeBeta(nn.Module):
    """``x + 1 / (exp(beta) + eps) * sin(exp(alpha) * x)^2`` per channel (log-scale params)."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha.exp().view(1, -1, 1)
        inv_beta = 1.0 / (self.beta.exp().view(1, -1, 1) + SNAKE_EPS)
        return x + inv_beta * torch.sin(x * alpha).pow(2)


class Activation1d(nn.Module):
    """Anti-aliased activation: upsample 2x -> SnakeBeta -> low-pass downsample 2x."""

    def __init__(self, channels: int):
        super().__init__()
        self.act = SnakeBeta(channels)
        self.upsample = UpSample1d()
        self.downsample = DownSample1d()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(self.act(self.upsample(x)))


# --- generator ---------------------------------------------------------------------------
def _wn_conv(*args, **kwargs) -> nn.Conv1d:
    conv = nn.Conv1d(*args, **kwargs)
    _init_normal(conv.weight)
    return weight_norm(conv)


def _init_normal(weight: torch.Tensor) -> None:
    if not weight.is_meta:  # meta builds only need shapes
        nn.init.normal_(weight, 0.0, CONV_INIT_STD)


def _same_padding(kernel_size: int, dilation: int = 1) -> int:
    return dilation * (kernel_size - 1) // 2


class AMPBlock1(nn.Module):
    """Residual block: for each dilation d, x += conv(act(conv_d(act(x))))."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]):
        super().__init__()
        self.convs1 = nn.ModuleList(
            _wn_conv(
                channels, channels, kernel_size, dilation=d, padding=_same_padding(kernel_size, d)
            )
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            _wn_conv(channels, channels, kernel_size, padding=_same_padding(kernel_size))
            for _ in dilations
        )
        self.activations = nn.ModuleList(Activation1d(channels) for _ in range(2 * len(dilations)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, (c1, c2) in enumerate(zip(self.convs1, self.convs2)):
            h = c2(self.activations[2 * i + 1](c1(self.activations[2 * i](x))))
            x = x + h
        return x


def _stage_channels(initial: int, stage: int) -> int:
    """Width after ``stage`` upsamplers: halves each time (reference rule), never below 1.

    The floor only matters for tiny test configs (e.g. 32 channels over 6 stages), where the
    reference rule would reach 0 channels; real configs (1536 / 2**6 = 24) are unaffected.
    """
    return max(initial // 2**stage, 1)


class BigVGAN(nn.Module):
    """BigVGAN generator (v1 or v2 by config flags); see the module docstring."""

    def __init__(self, cfg: BigVGANConfig):
        super().__init__()
        if len(cfg.upsample_rates) != len(cfg.upsample_kernel_sizes):
            raise ValueError(
                f"BigVGANConfig: {len(cfg.upsample_rates)} upsample_rates but "
                f"{len(cfg.upsample_kernel_sizes)} upsample_kernel_sizes; they must pair up"
            )
        if len(cfg.resblock_kernel_sizes) != len(cfg.resblock_dilation_sizes):
            raise ValueError(
                "BigVGANConfig: resblock_kernel_sizes and resblock_dilation_sizes differ in length"
            )
        if not cfg.snake_logscale:
            raise ValueError("BigVGANConfig.snake_logscale=False is not supported (no checkpoint)")
        if cfg.upsample_initial_channel < 1:
            raise ValueError("BigVGANConfig.upsample_initial_channel must be positive")
        self.cfg = cfg
        self.num_kernels = len(cfg.resblock_kernel_sizes)
        ch = cfg.upsample_initial_channel
        self.conv_pre = weight_norm(nn.Conv1d(cfg.num_mels, ch, 7, padding=3))
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for i, (rate, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)):
            c_in, c_out = _stage_channels(ch, i), _stage_channels(ch, i + 1)
            up = nn.ConvTranspose1d(c_in, c_out, k, rate, padding=(k - rate) // 2)
            _init_normal(up.weight)
            self.ups.append(nn.ModuleList([weight_norm(up)]))
            for rk, dil in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes):
                self.resblocks.append(AMPBlock1(c_out, rk, tuple(dil)))
        c_final = _stage_channels(ch, len(cfg.upsample_rates))
        self.activation_post = Activation1d(c_final)
        self.conv_post = _wn_conv(c_final, 1, 7, padding=3, bias=cfg.use_bias_at_final)

    @property
    def total_upsample(self) -> int:
        return self.cfg.total_upsample

    @property
    def weight_norm_folded(self) -> bool:
        return not parametrize.is_parametrized(self.conv_pre)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """mel (B, n_mels, F) or (n_mels, F) -> waveform (B, 1, F * total_upsample)."""
        x = self._check_mel(mel)
        x = self.conv_pre(x)
        for i, up in enumerate(self.ups):
            x = up[0](x)
            blocks = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
            acc = blocks[0](x)
            for block in blocks[1:]:
                acc = acc + block(x)
            x = acc / self.num_kernels
        x = self.conv_post(self.activation_post(x))
        return torch.tanh(x) if self.cfg.use_tanh_at_final else x.clamp(-1.0, 1.0)

    def remove_weight_norm(self) -> BigVGAN:
        """Fold every ``g * v / ||v||`` into a plain ``weight`` (inference; call once).

        Afterwards the state dict has ``X.weight`` keys instead of the parametrised ones, so
        load checkpoints *before* folding. Calling it again is a no-op.
        """
        folded = 0
        for module in self.modules():
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
                folded += 1
        if folded:
            logger.debug("BigVGAN: folded weight norm of %d layers", folded)
        return self

    def _check_mel(self, mel: torch.Tensor) -> torch.Tensor:
        if mel.ndim == 2:
            mel = mel.unsqueeze(0)
        if mel.ndim != 3 or mel.shape[1] != self.cfg.num_mels:
            raise ValueError(
                f"BigVGAN expects a log-mel of shape (B, {self.cfg.num_mels}, frames), got "
                f"{tuple(mel.shape)}; check the mel front end matches the vocoder's variant"
            )
        if mel.shape[-1] < 1:
            raise ValueError("BigVGAN got a mel with 0 frames")
        return mel


def convert_legacy_weight_norm_keys(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Rename legacy ``X.weight_g`` / ``X.weight_v`` to ``X.parametrizations.weight.original0/1``.

    Older BigVGAN checkpoints (and NVIDIA's ``bigvgan`` package) use the deprecated
    ``torch.nn.utils.weight_norm`` names. Other keys pass through unchanged; a dict already in
    the parametrised style is returned as a (shallow) copy.
    """
    out: dict = {}
    for key, value in state_dict.items():
        m = _LEGACY_WN.match(key)
        if m:
            idx = "0" if m.group("which") == "g" else "1"
            key = f"{m.group('prefix')}.parametrizations.weight.original{idx}"
        if key in out:
            raise ValueError(
                f"state dict holds both legacy and parametrised weight-norm tensors for {key!r}; "
                "keep only one style"
            )
        out[key] = value
    return out
