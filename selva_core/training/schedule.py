"""Learning-rate schedule: linear warm-up, then cosine decay or constant, in OPTIMISER steps.

The schedule is a pure function of the optimiser-step index, so it needs no state of its own
to resume exactly, and gradient accumulation cannot stretch it (the closest existing tool
counted micro-steps, so its cosine ended ``grad_accum`` times too early).

Convention: ``step`` is the index of the optimiser step about to be taken (0-based). During
warm-up the factor is ``(step + 1) / warmup_steps`` so the very first update already moves;
cosine then falls from 1 at the end of warm-up to ``min_ratio`` at ``total_steps``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SCHEDULE_KINDS = ("cosine", "constant")


@dataclass(frozen=True)
class LRSchedule:
    """Multiplier of each parameter group's base learning rate at an optimiser step."""

    total_steps: int
    warmup_steps: int = 0
    kind: str = "cosine"
    min_ratio: float = 0.0

    def __post_init__(self):
        if self.kind not in SCHEDULE_KINDS:
            raise ValueError(f"lr schedule {self.kind!r} is not one of {SCHEDULE_KINDS}")
        if self.total_steps < 1:
            raise ValueError(f"lr schedule needs total_steps >= 1, got {self.total_steps}")
        if self.warmup_steps < 0 or self.warmup_steps >= self.total_steps > 1:
            raise ValueError(
                f"warmup_steps ({self.warmup_steps}) must be in [0, total_steps "
                f"({self.total_steps}))"
            )
        if not 0.0 <= self.min_ratio <= 1.0:
            raise ValueError(f"min_ratio must be in [0, 1], got {self.min_ratio}")

    def factor(self, step: int) -> float:
        """Multiplier for the optimiser step ``step`` (0-based)."""
        if step < 0:
            raise ValueError(f"optimiser step must be >= 0, got {step}")
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = min((step - self.warmup_steps) / span, 1.0)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_ratio + (1.0 - self.min_ratio) * cosine

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every group's ``lr`` to ``base_lr * factor(step)``; returns the factor.

        Each group must carry ``base_lr`` (set by the trainer when it builds the groups, so
        LoRA+ groups keep their ratio).
        """
        factor = self.factor(step)
        for group in optimizer.param_groups:
            if "base_lr" not in group:
                raise KeyError("optimizer param group lacks 'base_lr'; build groups with it")
            group["lr"] = group["base_lr"] * factor
        return factor
