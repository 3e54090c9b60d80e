"""Tools to check that training *learns*: full fine-tuning of a base, generation, class metrics.

Test tooling (the learning test), kept out of the library: evidence that training moves the model.

* :func:`full_finetune` trains every trainable generator weight on a set of cached examples
  (the same objective as the LoRA trainer). It turns the tiny random generator into a base
  that knows one sound class, so a LoRA on another class has something to move away from.
* :func:`generate_latents` samples VAE-space latents for cached examples (Euler + CFG, fixed
  noise seeds), with whatever adapter is attached.
* :func:`latent_signature` summarises latents (B, N, C) as the per-channel mean and standard
  deviation over time: a coarse spectral-envelope statistic that separates sound classes
  (a click train and a steady tone differ in both), and :func:`class_distances` measures how
  far each sample's signature is from each class centroid of the real data.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from selva_core.flow_matching import euler_sample
from selva_core.model.generator import SelvaGenerator
from selva_core.training.data_order import DataOrder, example_seed, mix_seed
from selva_core.training.objective import (
    ExampleStore,
    conditions,
    draw_examples,
    training_loss,
)


@torch.no_grad()
def fit_latent_statistics(generator: SelvaGenerator, store: ExampleStore) -> None:
    """Set the generator's ``latent_mean`` / ``latent_std`` to the per-channel statistics of
    the examples' posterior means (how MMAudio computed them over its training set)."""
    means = torch.cat([t["latent_mean"] for t in store.tensors])  # (sum N, C)
    generator.latent_mean.copy_(means.mean(dim=0).view_as(generator.latent_mean))
    generator.latent_std.copy_(means.std(dim=0).clamp_min(1e-4).view_as(generator.latent_std))


def full_finetune(generator: SelvaGenerator, store: ExampleStore, *, steps: int, lr: float,
                  batch_size: int = 4, seed: int = 0, timestep_mode: str = "logit_normal",
                  cond_dropout: float = 0.1, grad_clip: float = 1.0) -> list[float]:
    """Train all trainable weights of ``generator`` in place; returns the loss per step.

    The frozen statistics (``FROZEN_PARAMETERS``: latent mean/std, empty-string features)
    stay fixed. Seeded and deterministic like the LoRA trainer.
    """
    frozen = set(getattr(generator, "FROZEN_PARAMETERS", ()))
    params = [p for n, p in generator.named_parameters() if n not in frozen]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    order = DataOrder(len(store), mix_seed(seed, 7))
    shape = (generator.seq.latent, generator.cfg.latent_dim)
    generator.train()
    losses = []
    for step in range(steps):
        pairs = order.micro_batch(step * batch_size, 0, batch_size)
        batch = store.batch([i for _, i in pairs])
        draws = draw_examples([example_seed(seed, k) for k, _ in pairs], shape, timestep_mode,
                              cond_dropout)
        loss = training_loss(generator, generator, batch, draws).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    generator.eval()
    for p in generator.parameters():
        p.requires_grad_(False)
    return losses


@torch.no_grad()
def generate_latents(generator: SelvaGenerator, store: ExampleStore, indices: Sequence[int],
                     *, seed: int = 0, num_steps: int = 10, cfg_strength: float = 4.5
                     ) -> torch.Tensor:
    """VAE-space latents (B, N, C) generated for the examples ``indices`` (fixed noise)."""
    batch = store.batch(list(indices))
    _, sync, text = conditions(generator, batch)
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn((batch.size, generator.seq.latent, generator.cfg.latent_dim), generator=g)
    was_training = generator.training
    generator.eval()
    try:
        x1 = euler_sample(generator, x0, None, sync, text, num_steps=num_steps,
                          cfg_strength=cfg_strength)
    finally:
        generator.train(was_training)
    return generator.unnormalize(x1)


def latent_signature(latents: torch.Tensor) -> torch.Tensor:
    """(B, N, C) -> (B, 2C): per-channel mean and standard deviation over the N frames."""
    return torch.cat([latents.mean(dim=1), latents.std(dim=1)], dim=-1)


def class_centroid(store: ExampleStore, indices: Sequence[int]) -> torch.Tensor:
    """Mean signature (2C,) of the real data (posterior means) of the given examples."""
    batch = store.batch(list(indices))
    return latent_signature(batch.latent_mean).mean(dim=0)


def class_distances(signatures: torch.Tensor, centroids: dict[str, torch.Tensor]
                    ) -> dict[str, float]:
    """Mean Euclidean distance of the signatures (B, 2C) to each named centroid (2C,)."""
    return {name: float((signatures - c).norm(dim=-1).mean()) for name, c in centroids.items()}
