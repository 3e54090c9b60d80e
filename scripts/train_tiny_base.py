#!/usr/bin/env python
"""Train the ``tiny_16k`` base model (mel VAE, BigVGAN vocoder, generator) from scratch.

    python scripts/train_tiny_base.py --out selva_core/assets/tiny_16k   # ~30 min CPU, 1 thread
    python scripts/train_tiny_base.py --out /tmp/tiny_smoke --scale 0.02   # smoke run, ~15 s
    python scripts/train_tiny_base.py --out D --stages vocoder --reuse D   # retrain one stage

The data are the synthetic clips of :mod:`selva_core.data.synthetic` (sounds tied to the
picture). Everything runs on one CPU thread with seeded draws, so a run is deterministic:
the same command writes byte-identical files on the same torch build. Then put the printed
sha256 into ``selva_core.variants.BUNDLED_WEIGHTS``. Three stages:

1. **Mel VAE** on the log-mels of every class: L1 reconstruction + a small KL term, with EDM2's
   forced weight normalisation (each MP-conv uses ``w / (eps sqrt(fan_in) + ||w||)`` of its raw
   weight, and the raw rows are kept at unit norm), so the saved raw weights followed by
   ``MelVAE.normalize_weights_()`` give exactly the trained network. ``data_mean`` /
   ``data_std`` are the per-bin statistics of the training mels.
2. **Vocoder** (BigVGAN v1 at the tiny width) on what the shipped float16 VAE reconstructs from
   those mels (what it receives at inference): log-mel L1 plus a multi-resolution STFT loss
   (spectral convergence + log-magnitude L1) with floored logs, no discriminator at this
   scale. A data-dependent init starts every stage at unit RMS (:func:`data_dependent_init_`).
3. **Generator** with the project's flow-matching objective
   (:func:`selva_core.training.objective.training_loss`: logit-normal t, condition dropout 0.1)
   on VAE latents (of the VAE as shipped, float16) of the base classes
   (:data:`~selva_core.data.synthetic.BASE_CLASSES`: ``beep`` and ``swell``, whose events are
   large changes of the picture that last long enough to survive the sync-token layout),
   conditioned on the features of the tiny random encoders that ``SelvaPipeline.tiny(
   trained=False)`` builds at :data:`~selva_core.variants.TINY_TRAINED_TEXT_SEED`
   (TextSynch, CLIP-text, T5 are not trained: the random TextSynch's tokens already carry these
   classes' events, ``benchmarks/bench_sync.py --feature_probe``; the generator learns to read
   them). The TextSynch and T5 weights are shipped too (float16), so the generator keeps the
   exact features it was trained on; the CLIP-text encoder (mostly a 49k-token embedding) is
   rebuilt from its seed.

The codec (VAE + vocoder) hears the five other classes
(:data:`~selva_core.data.synthetic.CODEC_CLASSES`), like the real SelVA codec trained on broad
audio; no stage hears the held-out class (``burst``), which the demo's LoRA teaches.
Output: ``generator.safetensors`` (float16), ``vae.safetensors`` (float16 raw MP
weights, float32 statistics), ``vocoder.safetensors`` (float32, weight-norm form),
``video_encoder.safetensors`` and ``t5.safetensors`` (float16), ``train_summary.json``
(losses, seconds per stage, sha256 of each file).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from safetensors.torch import save_file  # noqa: E402

from selva_core.atomic import atomic_path, write_text_atomic  # noqa: E402
from selva_core.audio.mel import MelConverter  # noqa: E402
from selva_core.data.synthetic import (  # noqa: E402
    BASE_CLASSES,
    CLASS_PROMPTS,
    CODEC_CLASSES,
    HELD_OUT_CLASS,
    synthetic_clip,
)
from selva_core.model.vae import MPConv1d  # noqa: E402
from selva_core.training.objective import FeatureBatch, draw_examples, training_loss  # noqa: E402
from selva_core.variants import TINY_TRAINED_TEXT_SEED, get_variant  # noqa: E402
from selva_core.weights import build_component  # noqa: E402

log = logging.getLogger("train_tiny_base")

VARIANT = "tiny_16k"
ENCODER_SEED = TINY_TRAINED_TEXT_SEED  # seed of the tiny random encoders the generator reads
STAGES = ("vae", "vocoder", "generator")
DATA_SEED = 1000  # base clips; the demo makes its clips with seed 0, so they stay unseen


@dataclass
class BaseTrainConfig:
    """Every knob of the base training (the defaults made the committed weights)."""

    seed: int = 0
    duration: float = 2.0
    codec_clips_per_class: int = 48
    generator_clips_per_class: int = 96
    vae_steps: int = 1500
    vae_batch: int = 8
    vae_crop_frames: int = 64
    vae_lr: float = 2e-3
    vae_kl_weight: float = 1e-3
    vocoder_steps: int = 1000
    vocoder_batch: int = 4
    vocoder_crop_frames: int = 16
    vocoder_lr: float = 1e-3
    generator_steps: int = 2400
    generator_batch: int = 8
    generator_lr: float = 1e-3
    warmup_steps: int = 50

    def scaled(self, scale: float) -> BaseTrainConfig:
        """Step counts times ``scale`` (smoke runs), at least 2 each."""
        out = BaseTrainConfig(**asdict(self))
        for name in ("vae_steps", "vocoder_steps", "generator_steps"):
            setattr(out, name, max(2, round(getattr(self, name) * scale)))
        if scale < 1:
            for name in ("codec_clips_per_class", "generator_clips_per_class"):
                setattr(out, name, max(2, round(getattr(self, name) * scale * 4)))
            out.warmup_steps = max(1, round(self.warmup_steps * scale))
        return out


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to 5% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


# --- data ------------------------------------------------------------------------------------
def make_clips(classes, clips_per_class: int, cfg: BaseTrainConfig, samples: int):
    """(frames (B, T, 3, H, W) uint8, audio (B, samples) float32, prompts, names)."""
    frames, audio, prompts, names = [], [], [], []
    for name in classes:
        for clip in range(clips_per_class):
            f, a = synthetic_clip(name, clip, duration=cfg.duration, seed=DATA_SEED + cfg.seed)
            a = np.pad(a, (0, max(0, samples - len(a))))[:samples]
            frames.append(torch.from_numpy(f).permute(0, 3, 1, 2))
            audio.append(torch.from_numpy(a))
            prompts.append(CLASS_PROMPTS[name])
            names.append(f"{name}_{clip:03d}")
    return torch.stack(frames), torch.stack(audio), prompts, names


# --- mel VAE -----------------------------------------------------------------------------------
def _forced_norm_forward(self: MPConv1d, x: torch.Tensor, gain=1.0) -> torch.Tensor:
    w = self.weight
    norm = torch.linalg.vector_norm(w, dim=(1, 2), keepdim=True)
    w = w / (1e-4 * math.sqrt(self.fan_in) + norm)  # = MPConv1d.normalize_ (VAEConfig eps)
    if not (isinstance(gain, float) and gain == 1.0):
        w = w * gain
    return F.conv1d(x, w.to(x.dtype), padding=w.shape[-1] // 2)


@contextlib.contextmanager
def forced_weight_norm():
    """MP-convs normalise their raw weights inside the forward (differentiably)."""
    original = MPConv1d.forward
    MPConv1d.forward = _forced_norm_forward
    try:
        yield
    finally:
        MPConv1d.forward = original


@torch.no_grad()
def unit_rows_(vae) -> None:
    for m in vae.modules():
        if isinstance(m, MPConv1d):
            m.weight.div_(torch.linalg.vector_norm(m.weight, dim=(1, 2), keepdim=True))


def train_vae(mels: torch.Tensor, cfg: BaseTrainConfig, variant):
    torch.manual_seed(cfg.seed)
    vae = build_component("vae", variant)
    assert variant.vae.normalize_eps == 1e-4
    vae.data_mean.copy_(mels.mean(dim=(0, 2)).view_as(vae.data_mean))
    vae.data_std.copy_(mels.std(dim=(0, 2)).clamp_min(1e-3).view_as(vae.data_std))
    unit_rows_(vae)
    vae._weights_normalized = True  # the forward normalises (forced_weight_norm)
    vae.train()
    opt = torch.optim.Adam(vae.parameters(), lr=cfg.vae_lr, betas=(0.9, 0.99))
    rng = torch.Generator().manual_seed(cfg.seed + 1)
    crop = cfg.vae_crop_frames
    history = []
    with forced_weight_norm():
        bar = tqdm(range(cfg.vae_steps), desc="VAE", mininterval=30, file=sys.stderr)
        for step in bar:
            idx = torch.randint(0, mels.shape[0], (cfg.vae_batch,), generator=rng)
            start = torch.randint(0, (mels.shape[-1] - crop) // 2 + 1, (cfg.vae_batch,),
                                  generator=rng) * 2
            x = torch.stack([mels[i, :, s:s + crop] for i, s in zip(idx, start)])
            post = vae.encode(x)
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=rng)
            recon = vae.decode(z)
            rec = (recon - x).abs().mean()
            kl = 0.5 * (post.mean.pow(2) + post.logvar.exp() - 1 - post.logvar).mean()
            loss = rec + cfg.vae_kl_weight * kl
            set_lr(opt, lr_at(step, cfg.vae_steps, cfg.vae_lr, cfg.warmup_steps))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            unit_rows_(vae)
            history.append(rec.item())
            if step % 100 == 0 or step == cfg.vae_steps - 1:
                log.info("VAE step %d: L1 %.4f KL %.3f", step, rec.item(), kl.item())
    vae.eval()
    with forced_weight_norm(), torch.no_grad():
        post = vae.encode(mels)
        recon = vae.decode(post.mean)
        full_l1 = (recon - mels).abs().mean().item()
    log.info("VAE: full-clip reconstruction L1 %.4f (log10 mel)", full_l1)
    return vae, {"vae_final_l1": round(full_l1, 5),
                        "vae_train_l1_last100": round(float(np.mean(history[-100:])), 5)}


# --- vocoder -----------------------------------------------------------------------------------
@torch.no_grad()
def fan_in_init_(vocoder, seed: int) -> None:
    """Fan-in scaled weights (BigVGAN's N(0, 0.01) init shrinks the signal at every stage)."""
    rng = torch.Generator().manual_seed(seed)
    for name, p in sorted(vocoder.named_parameters()):
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "original0":
            value = torch.ones(p.shape)
        elif leaf in ("alpha", "beta"):
            value = torch.zeros(p.shape)
        elif leaf.endswith("bias") or p.ndim < 2:
            value = torch.zeros(p.shape)
        else:
            value = torch.randn(p.shape, generator=rng) / math.sqrt(math.prod(p.shape[1:]))
        p.copy_(value)


@torch.no_grad()
def data_dependent_init_(vocoder, mels: torch.Tensor, out_rms: float = 0.1) -> None:
    """Start every stage at unit RMS on ``mels``: ``conv_pre`` and each upsampler are scaled
    in turn, residual branches start small (second convs at 0.1), and ``conv_post`` gives a
    pre-tanh RMS of ``out_rms`` (unscaled, the activations grow stage after stage, the snake
    functions oscillate wildly and the tanh saturates)."""
    for name, p in vocoder.named_parameters():
        if ".convs2." in name and name.endswith("original0"):
            p.mul_(0.1)

    def unit_(conv, x):
        rms = conv(x).pow(2).mean().sqrt()
        conv.parametrizations.weight.original0.div_(rms)
        conv.bias.div_(rms)
        return conv(x)

    h = unit_(vocoder.conv_pre, mels)
    k = vocoder.num_kernels
    for i, up in enumerate(vocoder.ups):
        h = unit_(up[0], h)
        h = sum(block(h) for block in vocoder.resblocks[i * k:(i + 1) * k]) / k
    post = vocoder.conv_post
    rms = post(vocoder.activation_post(h)).pow(2).mean().sqrt()
    post.parametrizations.weight.original0.mul_(out_rms / rms)


STFT_RESOLUTIONS = ((256, 64), (512, 128), (1024, 256))
#: Floors of the log-magnitude losses, relative to a full-scale sine's peak (about 60 dB below
#: it): with a tiny floor, every near-silent bin of the (mostly silent) data weighs as much as
#: a loud one, and a silent output becomes the cheapest answer.
STFT_FLOOR_PER_SAMPLE = 1e-4  # times n_fft
MEL_FLOOR = 1e-3  # on the mel magnitude (log10 -3; the VAE's mels floor at -5)


def _log_mel(mel: MelConverter, wave: torch.Tensor) -> torch.Tensor:
    return torch.log(torch.matmul(mel.mel_basis, mel.magnitude(wave)) + MEL_FLOOR)


def vocoder_loss(pred: torch.Tensor, target: torch.Tensor, mel: MelConverter) -> torch.Tensor:
    """Log-mel L1 plus a multi-resolution STFT loss (spectral convergence + log-magnitude L1,
    averaged over resolutions), log magnitudes floored (see :data:`STFT_FLOOR_PER_SAMPLE`)."""
    total = (_log_mel(mel, pred) - _log_mel(mel, target)).abs().mean()
    stft = pred.new_zeros(())
    for n_fft, hop in STFT_RESOLUTIONS:
        window = torch.hann_window(n_fft)
        floor = STFT_FLOOR_PER_SAMPLE * n_fft
        sp = torch.stft(pred, n_fft, hop, window=window, return_complex=True).abs()
        st = torch.stft(target, n_fft, hop, window=window, return_complex=True).abs()
        sc = torch.linalg.norm(st - sp) / (torch.linalg.norm(st) + floor)
        stft = stft + sc + ((sp + floor).log() - (st + floor).log()).abs().mean()
    return total + stft / len(STFT_RESOLUTIONS)


def train_vocoder(recon_mels: torch.Tensor, audio: torch.Tensor, cfg: BaseTrainConfig, variant,
                  mel: MelConverter):
    torch.manual_seed(cfg.seed + 2)
    vocoder = build_component("vocoder", variant)
    fan_in_init_(vocoder, cfg.seed + 2)
    data_dependent_init_(vocoder, recon_mels[:8, :, :cfg.vocoder_crop_frames])
    vocoder.train()
    opt = torch.optim.AdamW(vocoder.parameters(), lr=cfg.vocoder_lr, betas=(0.8, 0.99),
                            weight_decay=0.0)
    rng = torch.Generator().manual_seed(cfg.seed + 3)
    hop, crop = variant.mel.hop_size, cfg.vocoder_crop_frames
    history = []
    bar = tqdm(range(cfg.vocoder_steps), desc="vocoder", mininterval=30, file=sys.stderr)
    for step in bar:
        idx = torch.randint(0, recon_mels.shape[0], (cfg.vocoder_batch,), generator=rng)
        start = torch.randint(0, recon_mels.shape[-1] - crop + 1, (cfg.vocoder_batch,),
                              generator=rng)
        x = torch.stack([recon_mels[i, :, s:s + crop] for i, s in zip(idx, start)])
        y = torch.stack([audio[i, s * hop:(s + crop) * hop] for i, s in zip(idx, start)])
        out = vocoder(x).squeeze(1)
        with torch.no_grad():  # the front end's own log-mel distance, for the log
            mel_l1 = (mel(out) - mel(y)).abs().mean() * math.log(10)
        loss = vocoder_loss(out, y, mel)
        set_lr(opt, lr_at(step, cfg.vocoder_steps, cfg.vocoder_lr, cfg.warmup_steps))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vocoder.parameters(), 5.0)
        opt.step()
        history.append(mel_l1.item())
        if step % 50 == 0 or step == cfg.vocoder_steps - 1:
            log.info("vocoder step %d: mel L1 %.4f loss %.4f", step, mel_l1.item(), loss.item())
    vocoder.eval()
    return vocoder, {"vocoder_mel_l1_last50": round(float(np.mean(history[-50:])), 5)}


# --- generator ---------------------------------------------------------------------------------
def extract_generator_data(cfg: BaseTrainConfig, variant, vae, mel: MelConverter):
    """Features from the tiny random encoders + VAE posterior moments of the trained classes."""
    from selva_core.pipeline import SelvaPipeline

    classes = list(BASE_CLASSES)
    seq = variant.sequence_lengths(cfg.duration)
    frames, audio, prompts, names = make_clips(classes, cfg.generator_clips_per_class, cfg,
                                               seq.audio_samples)
    pipe = SelvaPipeline.tiny(seed=ENCODER_SEED, duration=cfg.duration, **_random_kwargs())
    encoders = {"video_encoder": pipe.video_encoder, "t5": pipe.t5}
    with torch.no_grad():  # shipped as float16: extract with exactly the shipped weights
        for module in encoders.values():
            for p in module.parameters():
                p.copy_(p.half().float())
    sync, text = [], []
    for i in tqdm(range(0, len(names), 16), desc="features", mininterval=30, file=sys.stderr):
        feats = pipe.extract_features(frames[i:i + 16], prompts[i:i + 16], cfg.duration)
        sync.append(feats.sync_f.float())
        text.append(feats.text_clip_f.float())
    with forced_weight_norm(), torch.no_grad():
        post = vae.encode(mel(audio))
    return encoders, FeatureBatch(
        latent_mean=post.mean.transpose(1, 2).contiguous(),
        latent_std=post.std.transpose(1, 2).contiguous(),
        sync_f=torch.cat(sync), sync_valid=torch.ones(len(names), seq.sync, dtype=torch.bool),
        text_f=torch.cat(text), names=names,
    ), seq


def _random_kwargs() -> dict:
    """``trained=False`` where SelvaPipeline.tiny knows it (the encoders are random anyway)."""
    import inspect

    from selva_core.pipeline import SelvaPipeline

    return {"trained": False} if "trained" in inspect.signature(SelvaPipeline.tiny).parameters \
        else {}


def _rows(batch: FeatureBatch, idx: torch.Tensor) -> FeatureBatch:
    i = idx.tolist()
    return FeatureBatch(batch.latent_mean[i], batch.latent_std[i], batch.sync_f[i],
                        batch.sync_valid[i], batch.text_f[i], [batch.names[j] for j in i])


def train_generator(data: FeatureBatch, seq, cfg: BaseTrainConfig, variant):
    torch.manual_seed(cfg.seed + 4)
    generator = build_component("generator", variant)
    generator.update_seq_lengths(seq)
    with torch.no_grad():
        means = data.latent_mean.reshape(-1, data.latent_mean.shape[-1])
        generator.latent_mean.copy_(means.mean(0).view_as(generator.latent_mean))
        generator.latent_std.copy_(means.std(0).clamp_min(1e-4).view_as(generator.latent_std))
    frozen = set(generator.FROZEN_PARAMETERS)
    params = [p for n, p in generator.named_parameters() if n not in frozen]
    for n, p in generator.named_parameters():
        p.requires_grad_(n not in frozen)
    generator.train()
    opt = torch.optim.AdamW(params, lr=cfg.generator_lr, betas=(0.9, 0.95), weight_decay=0.0)
    rng = torch.Generator().manual_seed(cfg.seed + 5)
    history = []
    bar = tqdm(range(cfg.generator_steps), desc="generator", mininterval=30, file=sys.stderr)
    for step in bar:
        idx = torch.randint(0, len(data.names), (cfg.generator_batch,), generator=rng)
        batch = _rows(data, idx)
        seeds = (step * cfg.generator_batch + torch.arange(cfg.generator_batch)).tolist()
        draws = draw_examples([cfg.seed * 1_000_003 + s for s in seeds],
                              (seq.latent, variant.generator.latent_dim), "logit_normal", 0.1)
        loss = training_loss(generator, generator, batch, draws).mean()
        set_lr(opt, lr_at(step, cfg.generator_steps, cfg.generator_lr, cfg.warmup_steps))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        history.append(loss.item())
        if step % 100 == 0 or step == cfg.generator_steps - 1:
            log.info("generator step %d: flow loss %.4f", step, loss.item())
    generator.eval().requires_grad_(False)
    return generator, {"generator_loss_last100": round(float(np.mean(history[-100:])), 5)}


# --- saving ------------------------------------------------------------------------------------
KEEP_FP32 = ("latent_mean", "latent_std", "data_mean", "data_std", "learnable_gain")
METADATA_KEY = "selva_tiny_base"  # ONE key: safetensors orders several keys differently per run


def _save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> str:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp),
                  metadata={METADATA_KEY: json.dumps(metadata, sort_keys=True)})
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_weights(out: Path, generator, vae, vocoder, encoders, cfg: BaseTrainConfig
                 ) -> dict[str, str]:
    out.mkdir(parents=True, exist_ok=True)
    meta = {"variant": VARIANT, "trained_by": "scripts/train_tiny_base.py",
            "held_out_class": HELD_OUT_CLASS, "encoder_seed": str(ENCODER_SEED),
            "config": json.dumps(asdict(cfg), sort_keys=True)}
    def half(sd):
        return {k: (v if k.endswith(KEEP_FP32) else v.half()) for k, v in sd.items()}

    return {
        "generator": _save(half(generator.state_dict()), out / "generator.safetensors", meta),
        "vae": _save(half(vae.state_dict()), out / "vae.safetensors", meta),
        "vocoder": _save(dict(vocoder.state_dict()), out / "vocoder.safetensors", meta),
        **{name: _save(half(m.state_dict()), out / f"{name}.safetensors", meta)
           for name, m in encoders.items()},
    }


def load_outputs(folder: Path, variant, skip: set[str]) -> dict:
    """Every network an earlier run wrote to ``folder`` (to retrain only some stages): the
    VAE with raw MP weights (normalised in the forward), vocoder, generator and encoders."""
    from safetensors.torch import load_file

    from selva_core.pipeline import SelvaPipeline

    def read(name):
        return {k: v.float() for k, v in load_file(str(folder / f"{name}.safetensors")).items()}

    vae = build_component("vae", variant)
    vae.load_state_dict(read("vae"))
    vae._weights_normalized = True  # used under forced_weight_norm only
    vocoder = generator = None
    if "vocoder" not in skip:
        vocoder = build_component("vocoder", variant)
        vocoder.load_state_dict(read("vocoder"))
        vocoder.eval()
    if "generator" not in skip:
        generator = build_component("generator", variant)
        generator.load_state_dict(read("generator"))
        generator.eval()
    pipe = SelvaPipeline.tiny(seed=ENCODER_SEED, **_random_kwargs())
    encoders = {"video_encoder": pipe.video_encoder, "t5": pipe.t5}
    for name, module in encoders.items():
        module.load_state_dict(read(name))
    log.info("reusing the networks of %s", folder)
    return {"vae": vae.eval(), "vocoder": vocoder, "generator": generator,
            "encoders": encoders,
            "summary": json.loads((folder / "train_summary.json").read_text())}


def parse_args(argv=None) -> tuple[argparse.Namespace, BaseTrainConfig]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for the three safetensors files")
    parser.add_argument("--stages", default=",".join(STAGES),
                        help="stages to train (comma-separated); the others come from --reuse")
    parser.add_argument("--reuse", default=None,
                        help="an earlier run's --out folder holding the stages not trained")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply every step count (e.g. 0.05 for a smoke run)")
    for f in fields(BaseTrainConfig):
        parser.add_argument(f"--{f.name}", type=type(f.default), default=None)
    args = parser.parse_args(argv)
    cfg = BaseTrainConfig()
    for f in fields(BaseTrainConfig):
        if getattr(args, f.name) is not None:
            setattr(cfg, f.name, getattr(args, f.name))
    return args, cfg.scaled(args.scale) if args.scale != 1.0 else cfg


def main(argv=None) -> int:
    args, cfg = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    variant = get_variant(VARIANT)
    mel = MelConverter(variant.mel)
    stages = set(args.stages.split(","))
    if stages - set(STAGES) or (stages != set(STAGES) and not args.reuse):
        raise SystemExit(f"--stages must be a subset of {','.join(STAGES)}; the stages left "
                         "out need --reuse DIR (an earlier run's --out folder)")
    reused = load_outputs(Path(args.reuse), variant, stages) if args.reuse else {}
    summary = {k: v for k, v in reused.pop("summary", {}).items()
               if k.startswith(tuple(f"{s}_" for s in set(STAGES) - stages))}
    seconds = {}
    t0 = time.time()
    seq = variant.sequence_lengths(cfg.duration)
    _, codec_audio, _, _ = make_clips(CODEC_CLASSES, cfg.codec_clips_per_class, cfg,
                                      seq.audio_samples)
    mels = mel(codec_audio)
    log.info("codec data: %d clips, mel %s (%.0f s)", len(mels), tuple(mels.shape),
             time.time() - t0)
    if "vae" in stages:
        start = time.time()
        vae, s = train_vae(mels, cfg, variant)
        summary.update(s)
        seconds["vae"] = round(time.time() - start)
    else:
        vae = reused["vae"]
    # later stages use the VAE as shipped (float16 raw weights), so a --reuse run equals a
    # full one: the vocoder learns what the file decodes, the generator its latents
    shipped_vae = copy.deepcopy(vae)
    with torch.no_grad():
        for name, p in shipped_vae.named_parameters():
            if not name.endswith(KEEP_FP32):
                p.copy_(p.half().float())
    if "vocoder" in stages:
        start = time.time()
        with forced_weight_norm(), torch.no_grad():
            recon = shipped_vae.decode(shipped_vae.encode(mels).mean)
        vocoder, s = train_vocoder(recon, codec_audio, cfg, variant, mel)
        summary.update(s)
        seconds["vocoder"] = round(time.time() - start)
    else:
        vocoder = reused["vocoder"]
    if "generator" in stages:
        start = time.time()
        encoders, data, seq = extract_generator_data(cfg, variant, shipped_vae, mel)
        generator, s = train_generator(data, seq, cfg, variant)
        summary.update(s)
        seconds["generator"] = round(time.time() - start)
    else:
        generator, encoders = reused["generator"], reused["encoders"]
    digests = save_weights(Path(args.out), generator, vae, vocoder, encoders, cfg)
    seconds["total"] = round(time.time() - t0)
    summary.update({"seconds": seconds, "stages": sorted(stages), "sha256": digests,
                    "config": asdict(cfg)})
    write_text_atomic(Path(args.out) / "train_summary.json", json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
