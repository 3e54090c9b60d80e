"""The training objective on cached features: batches, per-example draws, the loss.

A cached example (``selva_core.feature_cache.CachedExample``) holds the RAW VAE posterior
moments of its audio, the TextSynch features with a validity mask and the CLIP-text features
of its prompt.
For one optimiser step the trainer

1. stacks the examples of a micro-batch (:class:`FeatureBatch`), putting the generator's
   learned ``empty_sync_feat`` wherever ``sync_valid`` is False (short clips; never zeros);
2. draws everything random *per example* from a generator seeded by the example's stream
   position (:class:`ExampleDraws`): ``eps`` of the latent sample, the noise ``x0``, the flow
   time ``t`` (logit-normal or uniform) and the two condition-dropout coins;
3. computes ``x1 = (mean + std * eps - latent_mean) / latent_std`` and hands everything to
   :func:`selva_core.flow_matching.flow_matching_loss`, the one objective of the project
   (path, target, MSE and the null-condition dropout: video and text independently replaced by
   the model's empty conditions where the coins fall below ``p``; SelVA never uses
   CLIP-visual features, so the clip stream is always the learned empty token).

The forward goes through ``model(...)`` (not ``predict_flow``) so a DistributedDataParallel
wrapper sees it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from selva_core.flow_matching import (
    apply_condition_dropout,
    dropout_masks,
    flow_matching_loss,
    sample_t,
)
from selva_core.model.generator import SelvaGenerator

REQUIRED_KEYS = ("latent_mean", "latent_std", "sync_f", "sync_valid", "text_clip_f")


@dataclass
class FeatureBatch:
    """Stacked tensors of B cached examples (on one device)."""

    latent_mean: torch.Tensor  # (B, N, C) raw VAE posterior mean
    latent_std: torch.Tensor  # (B, N, C)
    sync_f: torch.Tensor  # (B, S, sync_dim)
    sync_valid: torch.Tensor  # (B, S) bool
    text_f: torch.Tensor  # (B, 77, text_dim)
    names: list[str]

    @property
    def size(self) -> int:
        return self.latent_mean.shape[0]

    def to(self, device: torch.device) -> FeatureBatch:
        def move(t):
            return t.to(device, non_blocking=True)

        return FeatureBatch(move(self.latent_mean), move(self.latent_std), move(self.sync_f),
                            move(self.sync_valid), move(self.text_f), list(self.names))


class ExampleStore:
    """All examples' tensors, loaded once into (CPU) memory and checked against the model.

    ``examples`` are objects with ``name``, ``path`` and ``load() -> dict`` (the feature cache
    contract). Every file must have the generator's token counts for the training duration;
    a mismatch names the file and what to do.
    """

    def __init__(self, examples: Sequence, generator: SelvaGenerator):
        self.examples = list(examples)
        seq, cfg = generator.seq, generator.cfg
        expect = {
            "latent_mean": (seq.latent, cfg.latent_dim),
            "latent_std": (seq.latent, cfg.latent_dim),
            "sync_f": (seq.sync, cfg.sync_dim),
            "sync_valid": (seq.sync,),
            "text_clip_f": (cfg.text_seq_len, cfg.text_dim),
        }
        self.tensors: list[dict[str, torch.Tensor]] = []
        for ex in self.examples:
            data = ex.load()
            missing = [k for k in REQUIRED_KEYS if k not in data]
            if missing:
                raise ValueError(f"cached features {ex.path} lack {missing}; delete the cache "
                                 "folder and run again to re-extract")
            for key, shape in expect.items():
                if tuple(data[key].shape) != shape:
                    raise ValueError(
                        f"cached features {ex.path}: {key} has shape {tuple(data[key].shape)}, "
                        f"the model expects {shape} for {seq.duration:g} s windows; the cache "
                        "was built for another duration or variant: use a fresh --cache_dir"
                    )
            self.tensors.append({
                "latent_mean": data["latent_mean"].float(),
                "latent_std": data["latent_std"].float(),
                "sync_f": data["sync_f"].float(),
                "sync_valid": data["sync_valid"].bool(),
                "text_clip_f": data["text_clip_f"].float(),
            })

    def __len__(self) -> int:
        return len(self.examples)

    def name(self, index: int) -> str:
        return self.examples[index].name

    def path(self, index: int) -> Path:
        return Path(self.examples[index].path)

    def batch(self, indices: Sequence[int]) -> FeatureBatch:
        rows = [self.tensors[i] for i in indices]
        return FeatureBatch(
            latent_mean=torch.stack([r["latent_mean"] for r in rows]),
            latent_std=torch.stack([r["latent_std"] for r in rows]),
            sync_f=torch.stack([r["sync_f"] for r in rows]),
            sync_valid=torch.stack([r["sync_valid"] for r in rows]),
            text_f=torch.stack([r["text_clip_f"] for r in rows]),
            names=[self.name(i) for i in indices],
        )


@dataclass
class ExampleDraws:
    """Random draws of a batch: one row per example, each from its own seeded generator."""

    eps: torch.Tensor  # (B, N, C) latent posterior sample
    x0: torch.Tensor  # (B, N, C) flow noise
    t: torch.Tensor  # (B,)
    drop_video: torch.Tensor  # (B,) bool
    drop_text: torch.Tensor  # (B,) bool

    def to(self, device: torch.device) -> ExampleDraws:
        return ExampleDraws(*(x.to(device, non_blocking=True) for x in
                              (self.eps, self.x0, self.t, self.drop_video, self.drop_text)))


def draw_examples(seeds: Sequence[int], latent_shape: tuple[int, int], timestep_mode: str,
                  drop_probability: float) -> ExampleDraws:
    """Draws for examples with the given seeds (CPU generators: identical on any device)."""
    eps, x0, t, coins = [], [], [], []
    for seed in seeds:
        g = torch.Generator().manual_seed(int(seed))
        if timestep_mode == "logit_normal":
            t.append(sample_t(1, g))
        elif timestep_mode == "uniform":
            t.append(torch.rand(1, generator=g))
        else:
            raise ValueError(f"timestep mode {timestep_mode!r} is not logit_normal or uniform")
        coins.append(torch.rand(2, generator=g))
        eps.append(torch.randn(latent_shape, generator=g))
        x0.append(torch.randn(latent_shape, generator=g))
    drop_video, drop_text = dropout_masks(torch.stack(coins).T, drop_probability)
    return ExampleDraws(eps=torch.stack(eps), x0=torch.stack(x0), t=torch.cat(t),
                        drop_video=drop_video, drop_text=drop_text)


def target_latent(generator: SelvaGenerator, batch: FeatureBatch,
                  eps: torch.Tensor | None) -> torch.Tensor:
    """Normalised x1 = (mean + std * eps - latent_mean) / latent_std (eps None: the mean)."""
    raw = batch.latent_mean if eps is None else batch.latent_mean + batch.latent_std * eps
    return generator.normalize(raw)


def sync_features(generator: SelvaGenerator, batch: FeatureBatch) -> torch.Tensor:
    """The batch's sync features with the learned empty sync token where a clip has no
    picture (``sync_valid`` False; never zeros)."""
    _, sync0, _ = generator.empty_conditions(batch.size)
    return torch.where(batch.sync_valid.unsqueeze(-1), batch.sync_f, sync0.to(batch.sync_f))


def conditions(generator: SelvaGenerator, batch: FeatureBatch,
               drop_video: torch.Tensor | None = None, drop_text: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Raw (clip, sync, text) features: :func:`sync_features`, then the null-condition
    dropout where asked."""
    return apply_condition_dropout(generator, None, sync_features(generator, batch),
                                   batch.text_f, drop_video, drop_text)


def flow_loss(model: nn.Module, generator: SelvaGenerator, batch: FeatureBatch,
              x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor | None,
              drop_video: torch.Tensor | None = None,
              drop_text: torch.Tensor | None = None) -> torch.Tensor:
    """Per-example flow-matching MSE (B,), computed through ``model`` (the generator or its
    DDP wrapper); ``generator`` is the unwrapped module (statistics, empty conditions)."""
    x1 = target_latent(generator, batch, eps)
    sync = sync_features(generator, batch)
    return flow_matching_loss(generator, x1, None, sync, batch.text_f, t=t, x0=x0,
                              reduction="none", video_drop=drop_video, text_drop=drop_text,
                              network=model).per_sample


def training_loss(model: nn.Module, generator: SelvaGenerator, batch: FeatureBatch,
                  draws: ExampleDraws) -> torch.Tensor:
    """Per-example training loss (B,) with the batch's draws (latent sample, t, dropout)."""
    return flow_loss(model, generator, batch, draws.x0, draws.t, draws.eps,
                     draws.drop_video, draws.drop_text)
