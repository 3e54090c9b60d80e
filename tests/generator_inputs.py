"""Seeded random inputs for a generator's current sequence lengths (shared by tests)."""

from __future__ import annotations

import torch

from selva_core.model.generator import SelvaGenerator
from selva_core.variants import GeneratorConfig, SequenceLengths


def random_inputs(cfg: GeneratorConfig, seq: SequenceLengths, batch: int, seed: int = 0):
    """(latent, clip_f, sync_f, text_f, t) for ``cfg`` at ``seq``, from one seeded generator."""
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, seq.latent, cfg.latent_dim, generator=g),
        torch.randn(batch, seq.clip, cfg.clip_dim, generator=g),
        torch.randn(batch, seq.sync, cfg.sync_dim, generator=g),
        torch.randn(batch, seq.text, cfg.text_dim, generator=g),
        torch.rand(batch, generator=g),
    )


def random_generator_inputs(model: SelvaGenerator, batch: int, seed: int = 0):
    """:func:`random_inputs` for a built generator's config and current sequence lengths."""
    return random_inputs(model.cfg, model.seq, batch, seed)
