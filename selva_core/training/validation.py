"""Held-out validation: a deterministic validation loss.

The split of examples into training and validation clips lives in :mod:`selva_core.data.split`.

Loss. Every validation example is evaluated at the same fixed grid of flow times — the
``(i + 0.5) / n`` quantiles of the training t distribution (8 by default; for logit-normal
``t_i = sigmoid(Phi^-1(q_i))``) — with noise ``x0`` and latent sample ``eps`` drawn from
generators seeded by (example index, grid index), no condition dropout. The value changes only
when the adapter does; per-t losses are reported too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from selva_core.model.generator import SelvaGenerator
from selva_core.training.data_order import mix_seed
from selva_core.training.objective import ExampleStore, flow_loss

VAL_T_POINTS = 8
_VAL_SEED = 0x7A11D


def t_grid(timestep_mode: str, points: int = VAL_T_POINTS) -> torch.Tensor:
    """Fixed validation times: quantiles (i + 0.5) / points of the training t distribution."""
    q = (torch.arange(points, dtype=torch.float64) + 0.5) / points
    if timestep_mode == "logit_normal":
        t = torch.sigmoid(math.sqrt(2.0) * torch.erfinv(2 * q - 1))
    elif timestep_mode == "uniform":
        t = q
    else:
        raise ValueError(f"timestep mode {timestep_mode!r} is not logit_normal or uniform")
    return t.float()


@dataclass
class ValidationResult:
    """Mean validation loss, and the loss at each grid time (averaged over examples)."""

    loss: float
    per_t: list[float]
    t: list[float]
    examples: int
    per_example: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"val_loss": self.loss, "per_t": self.per_t, "t_grid": self.t,
                "val_examples": self.examples}


class Validator:
    """Deterministic validation loss of a generator on a fixed set of examples."""

    def __init__(self, store: ExampleStore, timestep_mode: str, points: int = VAL_T_POINTS,
                 autocast_dtype: torch.dtype | None = None):
        self.store = store
        self.t = t_grid(timestep_mode, points)
        self.autocast_dtype = autocast_dtype
        gen_shape = store.tensors[0]["latent_mean"].shape if len(store) else (0, 0)
        self._noise = []
        for i in range(len(store)):
            rows_eps, rows_x0 = [], []
            for j in range(points):
                g = torch.Generator().manual_seed(mix_seed(_VAL_SEED, i, j))
                rows_eps.append(torch.randn(gen_shape, generator=g))
                rows_x0.append(torch.randn(gen_shape, generator=g))
            self._noise.append((torch.stack(rows_eps), torch.stack(rows_x0)))

    def __len__(self) -> int:
        return len(self.store)

    def losses(self, model: nn.Module, generator: SelvaGenerator, device: torch.device
               ) -> torch.Tensor:
        """(examples, points) matrix of losses, differentiable if grad is enabled."""
        rows = []
        points = self.t.numel()
        for i in range(len(self.store)):
            batch = self.store.batch([i] * points).to(device)
            eps, x0 = (x.to(device) for x in self._noise[i])
            with torch.autocast(device.type, dtype=self.autocast_dtype or torch.float32,
                                enabled=self.autocast_dtype is not None):
                rows.append(flow_loss(model, generator, batch, x0, self.t.to(device), eps))
        return torch.stack(rows)

    def mean_loss(self, model: nn.Module, generator: SelvaGenerator,
                  device: torch.device) -> torch.Tensor:
        """The scalar validation loss (a tensor; differentiable if grad is enabled)."""
        return self.losses(model, generator, device).mean()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, generator: SelvaGenerator,
                 device: torch.device) -> ValidationResult:
        if not len(self.store):
            raise ValueError("no validation examples: nothing to evaluate")
        was_training = model.training
        model.eval()
        try:
            m = self.losses(model, generator, device).double().cpu()
        finally:
            model.train(was_training)
        return ValidationResult(loss=float(m.mean()), per_t=m.mean(0).tolist(),
                                t=self.t.tolist(), examples=m.shape[0],
                                per_example=m.mean(1).tolist())
