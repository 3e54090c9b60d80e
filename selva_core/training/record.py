"""The run record: one builder for everything a run says about itself.

A training run describes itself in four places: the metadata of every adapter file it writes,
the extra fields of each checkpoint's training state, the ``start`` line of the JSON-lines log
and ``summary.json``. All four are views of one :class:`RunRecord` (what was trained, on what,
how) plus the run's progress (:class:`Progress`), so a field has one name and one value
everywhere.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from selva_core.model.lora import LoRAConfig
from selva_core.training.config import ADAPTER_IDENTITY_FIELDS, TrainConfig


def lora_config(cfg: TrainConfig) -> LoRAConfig:
    """The adapter a run trains, from its configuration."""
    return LoRAConfig(kind=cfg.lora_kind, rank=cfg.rank, alpha=cfg.alpha, use_rslora=cfg.rslora,
                      init=cfg.init, targets=tuple(cfg.target), seed=cfg.seed,
                      dropout=cfg.lora_dropout)


def adapter_identity(cfg: TrainConfig) -> dict[str, Any]:
    """The fields a checkpoint must share with a run to be resumed by it."""
    lora = lora_config(cfg)
    identity = {k: getattr(cfg, k) for k in ADAPTER_IDENTITY_FIELDS}
    identity["alpha"] = lora.effective_alpha
    identity["scale"] = lora.scale
    if cfg.method != "lora":  # (LoRA identities keep their fields: older checkpoints resume)
        identity.update(method=cfg.method, token=cfg.token, init_word=cfg.init_word,
                        num_vectors=cfg.num_vectors)
    return identity


def dataset_fingerprint(examples: Sequence) -> str:
    """Hash of the training examples' names and cache keys (a changed dataset is detected)."""
    h = hashlib.sha256()
    for e in examples:
        h.update(f"{e.name}|{getattr(e, 'cache_key', '')}\n".encode())
    return h.hexdigest()[:16]


#: Most distinct training prompts an adapter file lists (a node shows them; a run over hundreds
#: of differently prompted clips keeps the most frequent ones).
MAX_RECORDED_PROMPTS = 16


def training_prompts(examples: Sequence) -> list[str]:
    """The training examples' distinct prompts, most frequent first (ties alphabetically)."""
    counts: dict[str, int] = {}
    for e in examples:
        prompt = getattr(e, "prompt", None)
        if prompt:
            counts[prompt] = counts.get(prompt, 0) + 1
    ranked = sorted(counts, key=lambda p: (-counts[p], p))
    return ranked[:MAX_RECORDED_PROMPTS]


@dataclass
class Progress:
    """Where a run stands: optimiser steps, training time and the validation losses."""

    step: int = 0
    elapsed_s: float = 0.0
    val_loss: float | None = None
    val_loss_base: float | None = None


@dataclass
class RunRecord:
    """What a run trains, on which data and how (fixed for the run)."""

    cfg: TrainConfig
    lora: LoRAConfig
    world_size: int
    effective_batch: int
    precision: str
    base_dtype: str
    train_examples: int
    val_examples: int
    train_set: str
    adapted_layers: int
    trainable_params: int
    data_info: dict[str, Any] = field(default_factory=dict)
    train_prompts: list[str] = field(default_factory=list)

    def _training(self) -> dict[str, Any]:
        cfg = self.cfg
        return {
            "lr": cfg.lr, "lr_schedule": cfg.lr_schedule, "warmup_steps": cfg.warmup,
            "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum,
            "world_size": self.world_size, "effective_batch": self.effective_batch,
            "lora_plus_ratio": cfg.lora_plus_ratio, "weight_decay": cfg.weight_decay,
            "lora_dropout": cfg.lora_dropout, "timestep_mode": cfg.timestep_mode,
            "base_dtype": self.base_dtype, "gradient_checkpointing": cfg.gradient_checkpointing,
            "cond_dropout": cfg.cond_dropout, "duration": cfg.duration, "window": cfg.window,
            "seed": cfg.seed, "precision": self.precision,
            "train_examples": self.train_examples, "val_examples": self.val_examples,
            "train_set": self.train_set,
        }

    def _adapter(self) -> dict[str, Any]:
        cfg = self.cfg
        return {"variant": cfg.variant, "lora_kind": cfg.lora_kind, "rank": cfg.rank,
                "alpha": self.lora.effective_alpha,
                "scale": self.lora.scale, "init": cfg.init, "target": list(cfg.target),
                "adapted_layers": self.adapted_layers,
                "trainable_params": self.trainable_params}

    def adapter_metadata(self, progress: Progress, **extra: Any) -> dict[str, Any]:
        """Caller metadata stored in every adapter file (how it was trained)."""
        return {"trainer": "selva_core.training (train_lora.py)", "steps": progress.step,
                "target_steps": self.cfg.steps, "prompts": list(self.train_prompts),
                **self._training(),
                "val_loss": progress.val_loss, "val_loss_base": progress.val_loss_base,
                **extra}

    def state_extra(self, progress: Progress) -> dict[str, Any]:
        """Fields of a checkpoint's training state that resume checks against this run."""
        return {"train_set": self.train_set, "world_size": self.world_size,
                "step_size": self.effective_batch, "val_base": progress.val_loss_base,
                "train_examples": self.train_examples}

    def start_line(self, progress: Progress) -> dict[str, Any]:
        """The ``start`` record of the JSON-lines log."""
        return {"kind": "start", "step": progress.step, "world_size": self.world_size,
                "train_examples": self.train_examples, "val_examples": self.val_examples,
                "trainable_params": self.trainable_params,
                "adapted_layers": self.adapted_layers}

    def summary(self, status: str, progress: Progress, train_losses: Sequence[float],
                last_train_loss: float | None, **end: Any) -> dict[str, Any]:
        """``summary.json``: the record, the progress and what the end of the run produced
        (``end``: surgery, intruders, adapter_path, adapter_storage, adapter_mb,
        val_loss_final; absent ones are None)."""
        cfg = self.cfg
        clips_per_s = (progress.step * self.effective_batch / progress.elapsed_s
                       if progress.elapsed_s else None)
        summary = {
            "status": status if status != "interrupted"
            else f"interrupted at step {progress.step}; continue with --resume",
            "completed": status == "completed", **self._adapter(),
            "train_examples": self.train_examples, "val_examples": self.val_examples,
            "steps_done": progress.step, "steps": cfg.steps,
            "effective_batch": self.effective_batch, "world_size": self.world_size,
            "lora_dropout": cfg.lora_dropout, "precision": self.precision,
            "base_dtype": self.base_dtype, "gradient_checkpointing": cfg.gradient_checkpointing,
            "train_time_s": progress.elapsed_s,
            "clips_per_s": clips_per_s,
            "first_train_loss": train_losses[0] if train_losses else None,
            "last_train_loss": last_train_loss,
            "val_loss_base": progress.val_loss_base,
            "val_loss_final": end.pop("val_loss_final", progress.val_loss),
        }
        for key in ("surgery", "intruders", "adapter_path", "adapter_storage", "adapter_mb"):
            summary[key] = end.pop(key, None)
        summary.update(end)
        summary["output_dir"] = str(cfg.output_path)
        summary.update(self.data_info)
        return summary
