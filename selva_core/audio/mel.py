"""Log-mel front end shared by the mel VAE and the vocoders (Make-An-Audio 2 convention).

The VAE was trained on, and the vocoders invert, one exact log-mel definition
(docs/REFERENCE_ARCHITECTURE.md §5.1); any deviation shifts the whole latent space, so this
module reproduces it step by step:

1. clamp the waveform to [-1, 1];
2. reflect-pad ``(n_fft - hop) // 2`` samples on both sides;
3. STFT with ``center=False``, a periodic Hann window of ``win_size``, onesided, unnormalised;
4. magnitude ``sqrt(re^2 + im^2 + 1e-9)`` (the epsilon keeps the gradient finite at 0);
5. project with librosa's Slaney mel filterbank (Slaney scale, Slaney area norm), built here
   with numpy to librosa's exact recipe so that rendering needs no librosa (and no numba);
6. ``log10`` (16 kHz) or natural ``log`` (44.1 kHz) of ``clamp(x, min=1e-5)``.

For a waveform of ``L`` samples this yields ``(L - hop) // hop + 1`` frames, i.e. exactly
``L / hop`` when ``L`` is a multiple of the hop.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from selva_core.variants import MelConfig

logger = logging.getLogger(__name__)

MAGNITUDE_EPS = 1e-9  # added to re^2 + im^2 before the square root
LOG_FLOOR = 1e-5  # mel energies are clamped to this before the log


_SLANEY_F_SP = 200.0 / 3  # Hz per mel in the linear part
_SLANEY_MIN_LOG_HZ = 1000.0  # start of the log part
_SLANEY_LOGSTEP = np.log(6.4) / 27.0


def _hz_to_slaney_mel(hz: np.ndarray) -> np.ndarray:
    mel = hz / _SLANEY_F_SP
    log = hz >= _SLANEY_MIN_LOG_HZ
    min_log_mel = _SLANEY_MIN_LOG_HZ / _SLANEY_F_SP
    mel[log] = min_log_mel + np.log(hz[log] / _SLANEY_MIN_LOG_HZ) / _SLANEY_LOGSTEP
    return mel


def _slaney_mel_to_hz(mel: np.ndarray) -> np.ndarray:
    hz = _SLANEY_F_SP * mel
    min_log_mel = _SLANEY_MIN_LOG_HZ / _SLANEY_F_SP
    log = mel >= min_log_mel
    hz[log] = _SLANEY_MIN_LOG_HZ * np.exp(_SLANEY_LOGSTEP * (mel[log] - min_log_mel))
    return hz


def slaney_mel_basis(cfg: MelConfig) -> torch.Tensor:
    """The (n_mels, n_fft // 2 + 1) float32 mel filterbank of ``cfg``: bit-for-bit
    ``librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax)`` (Slaney scale and area norm, the
    same float64 steps and float32 rows)."""
    fmax = cfg.sample_rate / 2 if cfg.fmax is None else cfg.fmax
    fft_hz = np.fft.rfftfreq(n=cfg.n_fft, d=1.0 / cfg.sample_rate)
    edges = np.array([cfg.fmin, fmax], dtype=np.float64)
    mel_f = _slaney_mel_to_hz(np.linspace(*_hz_to_slaney_mel(edges), cfg.n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fft_hz)
    weights = np.zeros((cfg.n_mels, fft_hz.shape[0]), dtype=np.float32)
    for i in range(cfg.n_mels):
        weights[i] = np.maximum(0, np.minimum(-ramps[i] / fdiff[i], ramps[i + 2] / fdiff[i + 1]))
    weights *= (2.0 / (mel_f[2:] - mel_f[:-2]))[:, np.newaxis]
    return torch.from_numpy(weights)


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
