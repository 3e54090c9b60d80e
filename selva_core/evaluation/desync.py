"""DeSync: how far (in seconds) the sound is offset from the picture, per Synchformer.

av-benchmark's definition (``av_bench/evaluate.py``, the metric SelVA and MMAudio report):
the full Synchformer (video MotionFormer, audio AST, projections and a 3-layer transformer
with an offset head over 21 classes on [-2, 2] s) compares the first 14 and the last 14
segments of a clip (0.64 s segments every 0.32 s, i.e. the first and last 4.8 s); each
comparison gives the offset class with the largest logit, and DeSync is the mean of
``|offset|`` over both (lower is better; 0 = in sync). Inputs as av-benchmark prepares them:

* video: 25 fps frames as FFmpeg's ``fps`` filter gives them, ``Resize(224)`` as torchvision
  does it on uint8 frames (bicubic, antialiased; longer side ``int(224 * long / short)``),
  centre crop 224, in [-1, 1], cut into 16-frame segments with stride 8;
* audio: mono 16 kHz, 10240-sample segments with stride 5120, each a 128-band mel power
  spectrogram (n_fft 1024, window 400, hop 160, HTK mels, no norm, centred with reflection),
  ``log(x + 1e-6)``, zero-padded to 66 frames, normalised by ``(x + 4.2677393) / (2 * 4.5689974)``.

The weights are ``synchformer_state_dict.pth``, the file MMAudio and SelVA ship in
``ext_weights/`` (the user already has it); every tensor of :class:`Synchformer` is loaded
from it by name and shape (others in the file are ignored). The names and shapes equal
av-benchmark's ``Synchformer``, whose modules are re-implemented here without
einops/timm/omegaconf (outputs equal to float rounding on the same weights). Nothing is
downloaded: when the file is missing the metric is reported as unavailable with the reason.
The ``tiny_16k`` variant gets a tiny random Synchformer (2-segment comparisons) so the whole
path runs in tests.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from selva_core.audio.metrics import mel_filterbank
from selva_core.model.video_encoder import MotionFormer, SpatialAttentionAggregation
from selva_core.variants import SYNC_FPS, TextSynchConfig

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "synchformer_state_dict.pth"
AUDIO_RATE = 16000
MEL_MEAN, MEL_STD = -4.2677393, 4.5689974


@dataclass(frozen=True)
class SynchformerConfig:
    """Sizes of the full Synchformer (defaults: the released model)."""

    video: TextSynchConfig = field(default_factory=TextSynchConfig)
    dim: int = 768
    ast_layers: int = 12
    ast_heads: int = 12
    ast_hidden: int = 3072
    n_mels: int = 128
    patch: int = 16
    freq_stride: int = 10
    time_stride: int = 10
    spec_frames: int = 66  # mel frames per audio segment (after padding)
    seg_samples: int = 10240
    seg_step: int = 5120
    n_fft: int = 1024
    win: int = 400
    hop: int = 160
    layers: int = 3
    heads: int = 8
    offsets: int = 21
    max_offset_s: float = 2.0
    segments: int = 14  # segments per comparison (the position table holds exactly these)

    @property
    def freq_patches(self) -> int:
        return (self.n_mels - self.patch) // self.freq_stride + 1

    @property
    def time_patches(self) -> int:
        return (self.spec_frames - self.patch) // self.time_stride + 1

    @property
    def sequence(self) -> int:
        return 2 + self.segments * (self.video.tokens_per_segment + self.time_patches)

    @property
    def min_seconds(self) -> float:
        """Shortest clip with ``segments`` segments of both streams."""
        frames = self.video.segment_frames + self.video.segment_step * (self.segments - 1)
        return frames / SYNC_FPS

    def offset_grid(self) -> torch.Tensor:
        return torch.linspace(-self.max_offset_s, self.max_offset_s, self.offsets)


def tiny_config(video: TextSynchConfig) -> SynchformerConfig:
    """A tiny random Synchformer for the ``tiny_16k`` variant (tests; no files)."""
    small_video = replace(video, depth=1, num_heads=1)
    return SynchformerConfig(video=small_video, dim=small_video.embed_dim, ast_layers=1,
                             ast_heads=2, ast_hidden=2 * small_video.embed_dim, layers=1,
                             heads=2, segments=2)


# --- AST (the audio branch), parameter names as Hugging Face's ASTModel -----------------------
class _Named(nn.Module):
    def __init__(self, **children: nn.Module):
        super().__init__()
        for k, v in children.items():
            self.add_module(k, v)


class ASTEmbeddings(nn.Module):
    def __init__(self, cfg: SynchformerConfig):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.distillation_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.patch_embeddings = _Named(projection=nn.Conv2d(
            1, cfg.dim, kernel_size=cfg.patch, stride=(cfg.freq_stride, cfg.time_stride)))
        self.position_embeddings = nn.Parameter(
            torch.zeros(1, cfg.freq_patches * cfg.time_patches + 2, cfg.dim))

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        """spec (N, T, F) -> tokens (N, 2 + f * t, D) (frequency-major patches)."""
        x = self.patch_embeddings.projection(spec.unsqueeze(1).transpose(2, 3))
        x = x.flatten(2).transpose(1, 2)
        n = x.shape[0]
        x = torch.cat([self.cls_token.expand(n, -1, -1),
                       self.distillation_token.expand(n, -1, -1), x], dim=1)
        return x + self.position_embeddings


class ASTLayer(nn.Module):
    def __init__(self, cfg: SynchformerConfig):
        super().__init__()
        d = cfg.dim
        self.heads = cfg.ast_heads
        self.attention = _Named(
            attention=_Named(query=nn.Linear(d, d), key=nn.Linear(d, d), value=nn.Linear(d, d)),
            output=_Named(dense=nn.Linear(d, d)))
        self.intermediate = _Named(dense=nn.Linear(d, cfg.ast_hidden))
        self.output = _Named(dense=nn.Linear(cfg.ast_hidden, d))
        self.layernorm_before = nn.LayerNorm(d, eps=1e-12)
        self.layernorm_after = nn.LayerNorm(d, eps=1e-12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        att = self.attention.attention
        h = self.layernorm_before(x)
        b, n, d = h.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

        y = F.scaled_dot_product_attention(heads(att.query(h)), heads(att.key(h)),
                                           heads(att.value(h)))
        x = x + self.attention.output.dense(y.transpose(1, 2).reshape(b, n, d))
        return x + self.output.dense(F.gelu(self.intermediate.dense(self.layernorm_after(x))))


class AST(nn.Module):
    """``afeat_extractor``: AST + per-time-step frequency aggregation -> (N, t, D)."""

    def __init__(self, cfg: SynchformerConfig):
        super().__init__()
        self.cfg = cfg
        self.ast = _Named(embeddings=ASTEmbeddings(cfg),
                          encoder=_Named(layer=nn.ModuleList(
                              ASTLayer(cfg) for _ in range(cfg.ast_layers))),
                          layernorm=nn.LayerNorm(cfg.dim, eps=1e-12))
        self.freq_attn_agg = SpatialAttentionAggregation(cfg.dim, cfg.ast_heads, cfg.ast_hidden)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        """spec (N, T=66, F=128) -> (N, time patches, D)."""
        x = self.ast.embeddings(spec)
        for layer in self.ast.encoder.layer:
            x = layer(x)
        x = self.ast.layernorm(x)[:, 2:]
        n, _, d = x.shape
        f, t = self.cfg.freq_patches, self.cfg.time_patches
        x = x.transpose(1, 2).reshape(n, d, f, t).permute(0, 3, 2, 1).reshape(n * t, f, d)
        return self.freq_attn_agg.aggregate(x).view(n, t, d)


# --- the sync head (av-benchmark's GlobalTransformer) ----------------------------------------
class _SelfAttention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.key, self.query, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.proj = nn.Linear(d, d)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

        y = F.scaled_dot_product_attention(heads(self.query(x)), heads(self.key(x)),
                                           heads(self.value(x)))
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class _Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = _SelfAttention(d, heads)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d),
                                 nn.Dropout(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class SyncTransformer(nn.Module):
    """[OFF] video tokens [MOD] audio tokens -> 3 blocks -> offset logits from [OFF]."""

    def __init__(self, cfg: SynchformerConfig):
        super().__init__()
        d = cfg.dim
        self.vis_in_lnorm, self.aud_in_lnorm = nn.LayerNorm(d), nn.LayerNorm(d)
        self.OFF_tok = nn.Parameter(torch.zeros(1, 1, d))
        self.MOD_tok = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_emb_cfg = _Named()
        self.pos_emb_cfg.pos_emb = nn.Parameter(torch.zeros(1, cfg.sequence, d))
        self.blocks = nn.Sequential(*(_Block(d, cfg.heads) for _ in range(cfg.layers)))
        self.ln_f = nn.LayerNorm(d)
        self.off_head = nn.Linear(d, cfg.offsets)

    def forward(self, v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        b = v.shape[0]
        x = torch.cat([self.OFF_tok.expand(b, -1, -1), self.vis_in_lnorm(v),
                       self.MOD_tok.expand(b, -1, -1), self.aud_in_lnorm(a)], dim=1)
        x = self.ln_f(self.blocks(x + self.pos_emb_cfg.pos_emb))
        return self.off_head(x[:, 0])


class Synchformer(nn.Module):
    """The full Synchformer; ``state_dict`` keys equal ``synchformer_state_dict.pth``'s."""

    def __init__(self, cfg: SynchformerConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or SynchformerConfig()
        self.vfeat_extractor = MotionFormer(cfg.video)
        self.afeat_extractor = AST(cfg)
        self.vproj = nn.Linear(cfg.dim, cfg.dim)
        self.aproj = nn.Linear(cfg.dim, cfg.dim)
        self.transformer = SyncTransformer(cfg)
        self.register_buffer("mel_fb", torch.from_numpy(
            mel_filterbank(AUDIO_RATE, cfg.n_fft, cfg.n_mels)).float(), persistent=False)
        self.register_buffer("window", torch.hann_window(cfg.win), persistent=False)

    # -- video ----------------------------------------------------------------------------
    @torch.no_grad()
    def video_features(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (T, 3, S, S) in [-1, 1] at 25 fps -> per segment tokens (segments, 8, D)."""
        v = self.cfg.video
        windows = frames.unfold(0, v.segment_frames, v.segment_step)  # (n, 3, S, S, F)
        windows = windows.permute(0, 1, 4, 2, 3).contiguous()  # (n, 3, F, S, S)
        p = next(self.parameters())
        out = []
        for i in range(0, windows.shape[0], 8):
            x = self.vfeat_extractor.patch_tokens(windows[i: i + 8].to(p.device, p.dtype))
            out.append(self.vfeat_extractor.aggregate(x).float())
        return torch.cat(out)

    # -- audio ----------------------------------------------------------------------------
    def log_mel_segments(self, wave16k: torch.Tensor) -> torch.Tensor:
        """Mono 16 kHz (samples,) -> normalised log-mel segments (n, T=66, F=128)."""
        c = self.cfg
        segs = wave16k.float().unfold(0, c.seg_samples, c.seg_step)  # (n, 10240)
        pad = c.n_fft // 2
        x = F.pad(segs[:, None], (pad, pad), mode="reflect")[:, 0]
        window = F.pad(self.window, ((c.n_fft - c.win) // 2, (c.n_fft - c.win + 1) // 2))
        spec = torch.stft(x, c.n_fft, hop_length=c.hop, win_length=c.n_fft,
                          window=window.to(x.device), center=False, return_complex=True)
        power = spec.abs() ** 2  # (n, 513, frames)
        mel = torch.einsum("nft,fm->nmt", power, self.mel_fb.to(power.device))
        mel = torch.log(mel + 1e-6)
        if mel.shape[-1] < c.spec_frames:
            mel = F.pad(mel, (0, c.spec_frames - mel.shape[-1]))
        mel = mel[..., : c.spec_frames]
        mel = (mel - MEL_MEAN) / (2 * MEL_STD)
        return mel.transpose(1, 2)  # (n, T, F)

    @torch.no_grad()
    def audio_features(self, wave16k: torch.Tensor) -> torch.Tensor:
        """Mono 16 kHz audio -> per segment tokens (segments, 6, D)."""
        p = next(self.parameters())
        spec = self.log_mel_segments(wave16k.to(p.device))
        out = [self.afeat_extractor(spec[i: i + 16].to(p.dtype)).float()
               for i in range(0, spec.shape[0], 16)]
        return torch.cat(out)

    @torch.no_grad()
    def offset_logits(self, vis: torch.Tensor, aud: torch.Tensor) -> torch.Tensor:
        """(B, S, tv, D) video and (B, S, ta, D) audio tokens -> (B, offsets) logits."""
        p = next(self.parameters())
        vis = self.vproj(vis.to(p.device, p.dtype))
        aud = self.aproj(aud.to(p.device, p.dtype))
        b = vis.shape[0]
        return self.transformer(vis.reshape(b, -1, vis.shape[-1]),
                                aud.reshape(b, -1, aud.shape[-1])).float()


def _random_init_(model: nn.Module, seed: int) -> None:
    """Deterministic random weights for the tiny model (the global RNG is untouched)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("weight") and "norm" not in name and p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
            elif "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))


# --- the scorer --------------------------------------------------------------------------------
class DesyncScorer:
    """DeSync of renders of one clip: video tokens once per clip, audio per render."""

    def __init__(self, model: Synchformer, source: str):
        self.model = model.eval().requires_grad_(False)
        self.cfg = model.cfg
        self.source = source

    def prepare_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (T, 3, H, W) -> [-1, 1] (T, 3, S, S) as av-benchmark's torchvision steps:
        ``Resize(S)`` bicubic with antialias on the uint8 frames (shorter side to S, longer
        side ``int(S * long / short)``, the result rounded to uint8), ``CenterCrop(S)``, then
        scaled to [0, 1] and normalised by mean 0.5, std 0.5."""
        size = self.cfg.video.frame_size
        out = []
        for i in range(0, frames.shape[0], 32):
            x = frames[i: i + 32].float()
            h, w = x.shape[-2:]
            if h <= w:
                nh, nw = size, int(size * w / h)
            else:
                nh, nw = int(size * h / w), size
            if (nh, nw) != (h, w):
                x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False,
                                  antialias=True).round_().clamp_(0, 255)
            top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
            x = x[..., top: top + size, left: left + size] / 255.0
            out.append((x - 0.5) / 0.5)
        return torch.cat(out)

    def video_features_from_file(self, path: str | Path, duration: float) -> torch.Tensor:
        from selva_core.data.video import decode_frames

        # resized chunk by chunk as they are decoded: full-resolution frames never pile up
        frames = decode_frames(path, fps=SYNC_FPS, num_frames=int(SYNC_FPS * duration),
                               transform=self.prepare_frames)
        return self.model.video_features(frames)

    def comparisons(self, video_feats: torch.Tensor, wave: Any, sample_rate: int
                    ) -> list[torch.Tensor] | None:
        """Offset logits of the first and of the last ``segments`` segments, av-benchmark's
        way: the audio is cut to the span of the video's segments and each stream's first and
        last ``segments`` segments are compared. None when the clip is shorter than one
        comparison (``cfg.min_seconds``) or the audio is shorter than the video's segments
        (av-benchmark refuses such audio)."""
        wave = np.asarray(wave, dtype=np.float32).reshape(-1)
        if sample_rate != AUDIO_RATE:
            from selva_core.data.audio import resample

            wave = resample(wave, sample_rate, AUDIO_RATE)
        s = self.cfg.segments
        v = self.cfg.video
        if video_feats.shape[0] < s:
            return None
        span = v.segment_frames + v.segment_step * (video_feats.shape[0] - 1)
        needed = span * AUDIO_RATE // SYNC_FPS
        if wave.shape[0] < needed:
            log.info("DeSync: the audio holds %.2f s, less than the video's %.2f s; not scored",
                     wave.shape[0] / AUDIO_RATE, span / SYNC_FPS)
            return None
        aud = self.model.audio_features(torch.from_numpy(np.ascontiguousarray(wave[:needed])))
        return [self.model.offset_logits(vis[None], snd[None])[0]
                for vis, snd in ((video_feats[:s], aud[:s]), (video_feats[-s:], aud[-s:]))]

    def score(self, video_feats: torch.Tensor, wave: Any, sample_rate: int) -> float | None:
        """Mean |offset| (s) of :meth:`comparisons`' most likely offsets (None as there)."""
        logits = self.comparisons(video_feats, wave, sample_rate)
        if logits is None:
            return None
        grid = self.cfg.offset_grid()
        return float(np.mean([abs(float(grid[int(x.argmax())])) for x in logits]))


def find_checkpoint(path: str | os.PathLike | None, models_dir: str | os.PathLike | None
                    ) -> tuple[Path | None, list[Path]]:
    """The Synchformer file: ``path`` if given, else the models folder's (or its
    ``ext_weights/``); returns (found or None, places looked)."""
    if path:
        return (Path(path) if Path(path).is_file() else None), [Path(path)]
    from selva_core.weights import resolve_models_dir

    root = resolve_models_dir(models_dir)
    places = [root / CHECKPOINT_NAME, root / "ext_weights" / CHECKPOINT_NAME]
    return next((p for p in places if p.is_file()), None), places


def create_scorer(variant, *, path: str | None = None, models_dir: str | None = None,
                  device: torch.device | str = "cpu") -> tuple[DesyncScorer | None,
                                                                dict[str, Any]]:
    """(scorer, status) for ``variant``; status ``{"status": "ok"|"unavailable", "reason"}``.

    With ``"status": "ok"`` the status says ``"weights"``: ``"trained"`` (the checkpoint,
    checked key by key) or ``"random"`` (the tiny variant's test Synchformer: its figures
    exercise the code and mean nothing, so reports show DeSync as unavailable)."""
    if getattr(variant, "is_tiny", False) and not path:
        model = Synchformer(tiny_config(variant.video_encoder))
        _random_init_(model, seed=0)
        model.to(device)
        return DesyncScorer(model, "tiny random Synchformer (seed 0)"), {
            "status": "ok", "source": "tiny random Synchformer (seed 0; tests only)",
            "weights": "random", "min_seconds": model.cfg.min_seconds}
    found, places = find_checkpoint(path, models_dir)
    if found is None:
        reason = (f"{CHECKPOINT_NAME} not found (looked in {', '.join(str(p) for p in places)}); "
                  "it ships with MMAudio/SelVA as ext_weights/synchformer_state_dict.pth: put it "
                  "in the models folder or give its path as 'synchformer' in the spec")
        log.warning("DeSync unavailable: %s", reason)
        return None, {"status": "unavailable", "reason": reason}
    try:
        state = torch.load(found, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state and isinstance(
                state["state_dict"], dict):
            state = state["state_dict"]
        with torch.device("meta"):  # check names and shapes before allocating anything
            expected = {k: tuple(v.shape) for k, v in Synchformer().state_dict().items()}
        missing = sorted(set(expected) - set(state))
        wrong = [k for k in expected if k in state and tuple(state[k].shape) != expected[k]]
        if missing or wrong:
            raise ValueError(f"{len(missing)} missing keys (e.g. {missing[:3]}) and "
                             f"{len(wrong)} of another shape (e.g. {wrong[:3]})")
        extra = sorted(set(state) - set(expected))
        if extra:  # e.g. training-time extras; every tensor the metric uses is present
            log.info("%s: %d tensors DeSync does not use are ignored (e.g. %s)", found,
                     len(extra), extra[:3])
        from selva_core.weights import skip_random_init

        with skip_random_init():
            model = Synchformer()
        model.load_state_dict({k: state[k] for k in expected}, strict=True)
    except Exception as exc:  # a damaged or foreign file: report, do not stop the evaluation
        reason = f"{found} does not hold the full Synchformer ({exc})"
        log.warning("DeSync unavailable: %s", reason)
        return None, {"status": "unavailable", "reason": reason}
    model.to(device)
    return DesyncScorer(model, str(found)), {"status": "ok", "source": str(found),
                                             "weights": "trained",
                                             "min_seconds": model.cfg.min_seconds}


__all__ = ["Synchformer", "SynchformerConfig", "DesyncScorer", "create_scorer",
           "find_checkpoint", "tiny_config", "CHECKPOINT_NAME"]
