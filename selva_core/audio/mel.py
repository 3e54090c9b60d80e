"""Log-mel front end shared by the mel VAE and the vocoders (Make-An-Audio 2 convention).

The VAE was trained on, and the vocoders invert, one exact log-mel definition
(docs/REFERENCE_ARCHITECTURE.md §5.1); any deviation shifts the whole latent space, so this
module reproduces it step by step:

1. clamp the waveform to [-1, 1];
2. reflect-pad ``(n_fft - hop) // 2`` samples on both sides;
3. STFT with ``center=False``, a periodic Hann window of ``win_size``, onesided, unnormalised;
4. magnitude ``sqrt(re^2 + im^2 + 1e-9)`` (the epsilon keeps the gradient finite at 0);
5. project with librosa's Slaney mel filterbank (Slaney scale, Slaney area norm);
6. ``log10`` (16 kHz) or natural ``log`` (44.1 kHz) of ``clamp(x, min=1e-5)``.

For a waveform of ``L`` samples this yields ``(L - hop) // hop + 1`` frames, i.e. exactly
``L / hop`` when ``L`` is a multiple of the hop.
"""

from __future__ import annotations

import logging

import librosa
import torch
import torch.nn.functional as F
from torch import nn

from selva_core.variants import MelConfig

logger = logging.getLogger(__name__)

MAGNITUDE_EPS = 1e-9  # added to re^2 + im^2 before the square root
LOG_FLOOR = 1e-5  # mel energies are clamped to this before the log


def slaney_mel_basis(cfg: MelConfig) -> torch.Tensor:
    """The (n_mels, n_fft // 2 + 1) float32 mel filterbank of ``cfg`` (librosa, Slaney)."""
    basis = librosa.filters.mel(
        sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax
    )
    return torch.from_numpy(basis).to(torch.float32)


class MelConverter(nn.Module):
    """Waveform (B, L) or (L,) in [-1, 1] -> log-mel (B, n_mels, frames).

    The window and the filterbank are non-persistent buffers: they are derived from the
    config, never stored in a checkpoint, and follow ``.to(device)``. Computation runs in
    float32 whatever the input dtype (the STFT is precision-sensitive); the output is
    float32.
    """

    def __init__(self, cfg: MelConfig):
        super().__init__()
        if cfg.win_size > cfg.n_fft:
            raise ValueError(
                f"MelConfig.win_size ({cfg.win_size}) must not exceed n_fft ({cfg.n_fft})"
            )
        if cfg.hop_size <= 0 or cfg.hop_size > cfg.n_fft:
            raise ValueError(f"MelConfig.hop_size must be in (0, n_fft], got {cfg.hop_size}")
        self.cfg = cfg
        self.pad = (cfg.n_fft - cfg.hop_size) // 2
        self.register_buffer("mel_basis", slaney_mel_basis(cfg), persistent=False)
        self.register_buffer(
            "window", torch.hann_window(cfg.win_size, periodic=True), persistent=False
        )

    @property
    def sample_rate(self) -> int:
        return self.cfg.sample_rate

    @property
    def hop_size(self) -> int:
        return self.cfg.hop_size

    def num_frames(self, num_samples: int) -> int:
        """Mel frames produced for ``num_samples`` input samples."""
        return (num_samples + 2 * self.pad - self.cfg.n_fft) // self.cfg.hop_size + 1

    def magnitude(self, waveform: torch.Tensor) -> torch.Tensor:
        """Linear STFT magnitude (B, n_fft // 2 + 1, frames) after clamp and reflect pad."""
        x = self._as_batch(waveform)
        x = x.clamp(-1.0, 1.0)
        x = F.pad(x.unsqueeze(1), (self.pad, self.pad), mode="reflect").squeeze(1)
        spec = torch.stft(
            x,
            n_fft=self.cfg.n_fft,
            hop_length=self.cfg.hop_size,
            win_length=self.cfg.win_size,
            window=self.window,
            center=False,
            normalized=False,
            onesided=True,
            return_complex=True,
        )
        spec = torch.view_as_real(spec)
        return torch.sqrt(spec.pow(2).sum(-1) + MAGNITUDE_EPS)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        mel = torch.matmul(self.mel_basis, self.magnitude(waveform))
        mel = mel.clamp(min=LOG_FLOOR)
        return torch.log10(mel) if self.cfg.log == "log10" else torch.log(mel)

    def _as_batch(self, waveform: torch.Tensor) -> torch.Tensor:
        if not isinstance(waveform, torch.Tensor):
            raise TypeError(f"waveform must be a torch.Tensor, got {type(waveform).__name__}")
        if waveform.ndim == 1:
            waveform = waveform.unsqueeze(0)
        if waveform.ndim != 2:
            raise ValueError(
                f"waveform must have shape (L,) or (B, L) (mono), got {tuple(waveform.shape)}; "
                "mix multi-channel audio down to mono first"
            )
        if waveform.shape[-1] <= self.pad:
            raise ValueError(
                f"waveform has {waveform.shape[-1]} samples; the {self.cfg.sample_rate} Hz mel "
                f"front end needs more than {self.pad} (reflect padding) and at least "
                f"{self.cfg.hop_size} for one frame"
            )
        if self.num_frames(waveform.shape[-1]) < 1:
            raise ValueError(
                f"waveform has {waveform.shape[-1]} samples: too short for one mel frame "
                f"(needs at least {self.cfg.hop_size})"
            )
        return waveform.to(device=self.window.device, dtype=torch.float32)
