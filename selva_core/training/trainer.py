"""The LoRA training loop: one visible loop, exact resume, validation, samples.

:class:`LoRATrainer` trains an adapter on a generator from cached examples. One optimiser step
(:meth:`LoRATrainer.train_step`):

* ``lr = base_lr x schedule(step)`` (warm-up then cosine/constant, in optimiser steps);
* ``grad_accum`` micro-batches taken from the seeded data stream (:mod:`.data_order`),
  each example with its own seeded draws and the one objective (:mod:`.objective`); under DDP
  every process takes its shard of the same global batch and gradients are averaged (no sync
  until the last micro-batch);
* a NaN/Inf loss or gradient norm stops the run (the last good checkpoint stays the newest);
  under fp16 autocast the loss is scaled, and overflowing gradients first skip the update and
  halve the scale;
* gradient clipping, AdamW step (weight decay 0 by default; LoRA+ groups optional).

The loop (:meth:`LoRATrainer.run`): every ``val_every`` steps the deterministic validation
loss is logged; every ``save_every`` steps (and at the end) a checkpoint is written with a
sample of a validation clip (WAV + spectrogram) and the curves. Ctrl-C / SIGTERM, or
``TrainHooks.should_stop`` returning True, finishes the current step and writes a resumable
checkpoint (status ``interrupted``); a ``KeyboardInterrupt`` raised anywhere else in the loop
saves the state of the last completed step. A completed run ends in :mod:`.finish` (surgery
decision, intruder report, final adapter, summary); what the run says about itself comes from
one :class:`~.record.RunRecord`.

Only process 0 writes files. Randomness never comes from global RNG streams except the
adapter-input dropout's, which a run seeds from ``--seed`` (in a fork of the caller's RNG) and
saves at each step boundary, so an interrupted and resumed run reproduces the uninterrupted one
bit for bit on the same machine.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from selva_core.atomic import write_json_atomic
from selva_core.model.generator import SelvaGenerator
from selva_core.model.lora import (
    attach_lora,
    base_fingerprint,
    load_training_state_dict,
    lora_plus_param_groups,
    save_adapter,
    trainable_parameters,
    training_state_dict,
)
from selva_core.model.lora.targets import resolve_targets
from selva_core.model.precision import (
    OUT_OF_MEMORY_ERROR,
    cast_frozen_weights,
    is_out_of_memory,
    peak_memory_bytes,
    resolve_autocast_dtype,
    resolve_base_dtype,
)
from selva_core.run_folder import RunFolder
from selva_core.training import checkpoint as ckpt
from selva_core.training.config import TrainConfig
from selva_core.training.data_order import DataOrder, example_seed, mix_seed
from selva_core.training.distributed import (
    DistContext,
    all_reduce_mean,
    all_true,
    barrier,
    wrap_model,
)
from selva_core.training.finish import intruder_summary, save_final_adapter, surgery_decision
from selva_core.training.loop_console import ProgressBar, StopSignals
from selva_core.training.objective import ExampleStore, draw_examples, training_loss
from selva_core.training.record import (
    Progress,
    RunRecord,
    adapter_identity,
    dataset_fingerprint,
    lora_config,
    training_prompts,
)
from selva_core.training.report import JsonlLog, plot_curves, smooth
from selva_core.training.samples import SampleClip, sample_clip, sample_sync, write_sample
from selva_core.training.schedule import LRSchedule
from selva_core.training.validation import ValidationResult, Validator

log = logging.getLogger(__name__)

ADAPTER_NAME = "default"
_GLOBAL_RNG_SEED = 0xD20F
# fp16 autocast (``--base_dtype fp16``): ``torch.amp.GradScaler`` multiplies the loss by a power
# of two before the backward pass so that small gradients do not underflow fp16, and divides
# the gradients by it (exactly) before clipping. Gradients that overflow skip the update and
# halve the scale; it doubles after LOSS_SCALE_GROWTH_STEPS clean steps. bf16 and fp32 have
# fp32's range and need none of this (the scaler is disabled).
LOSS_SCALE_INIT = 2.0**16
LOSS_SCALE_GROWTH_STEPS = 2000


class TrainingDivergedError(RuntimeError):
    """The loss or the gradient became NaN/Inf; the message names the step and the remedy."""


class TrainingOutOfMemoryError(OUT_OF_MEMORY_ERROR):
    """A training step did not fit in memory; the message names the step and what to change.

    An out-of-memory error itself, so that hosts which free memory on one (ComfyUI unloads its
    cached models) still recognise it.
    """


@dataclass
class TrainHooks:
    """Optional callbacks (tests, progress UIs, the ComfyUI node). ``after_*`` may raise to
    stop the run; ``should_stop`` is polled after every optimiser step and, when it returns
    True, the run saves a resumable checkpoint and ends with status ``interrupted``."""

    # (trainer, index of the step in progress, micro-batch index)
    after_micro_step: Callable[[LoRATrainer, int, int], None] | None = None
    # (trainer, optimiser steps completed)
    after_step: Callable[[LoRATrainer, int], None] | None = None
    should_stop: Callable[[], bool] | None = None


@dataclass
class TrainResult:
    """What a run produced; ``summary`` is also written as ``summary.json``."""

    status: str  # "completed", "interrupted"
    steps_done: int
    output_dir: Path
    adapter_path: Path | None
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def completed(self) -> bool:
        return self.status == "completed"


def resolve_run_dtypes(cfg: TrainConfig, device: torch.device
                      ) -> tuple[torch.dtype | None, torch.dtype]:
    """(autocast dtype or None for fp32, frozen base weight dtype) of a run on ``device``.

    A half-precision base needs every forward under autocast in its own dtype: ``--precision
    auto`` follows the base dtype, ``--base_dtype auto`` is fp32 under ``--precision fp32``,
    and a contradicting pair is one clear error (:meth:`TrainConfig.validate` names it)."""
    autocast = resolve_autocast_dtype(cfg.precision, device)
    if cfg.base_dtype == "auto" and cfg.precision == "fp32":
        return None, torch.float32
    base = resolve_base_dtype(cfg.base_dtype, device)
    if base == torch.float32:
        return autocast, base
    if cfg.precision == "auto":
        return base, base
    if autocast != base:
        names = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}
        raise ValueError(
            f"--base_dtype {names[base]} needs every forward under {names[base]} autocast, but "
            f"--precision is {cfg.precision}; use --precision auto with it (or --base_dtype "
            "fp32 to keep the frozen weights in fp32)")
    return autocast, base


def check_rank(generator: torch.nn.Module, cfg: TrainConfig) -> None:
    """Refuse a ``--rank`` above the narrowest adapted layer's width (such an adapter is no
    longer low-rank: files and checkpoints as large as the layers themselves)."""
    widths = {}
    for path in resolve_targets(generator, cfg.target):
        module = generator.get_submodule(path)
        w = getattr(module, "base_layer", module).weight
        widths[path] = min(w.shape[0], w[0].numel())
    path, width = min(widths.items(), key=lambda kv: kv[1])
    if cfg.rank > width:
        raise ValueError(
            f"--rank {cfg.rank} is larger than the narrowest adapted layer ({path}: {width} "
            f"wide on {cfg.variant}); use --rank {width} or less"
        )


class LoRATrainer:
    """Trains one LoRA adapter on ``generator`` (see the module docstring).

    ``pipeline`` (optional) decodes checkpoint samples to audio; it must hold the same
    generator object. ``data_info`` is merged into the summary (e.g. skipped clips).
    """

    adapter_name = ADAPTER_NAME

    def __init__(self, cfg: TrainConfig, generator: SelvaGenerator, train_examples: Sequence,
                 val_examples: Sequence = (), *, pipeline=None,
                 dist: DistContext | None = None, hooks: TrainHooks | None = None,
                 data_info: dict[str, Any] | None = None):
        cfg.validate(require_data=False)
        from selva_core.variants import get_variant

        self.cfg, self.pipeline = cfg, pipeline
        self.dist = dist or DistContext()
        self.hooks = hooks or TrainHooks()
        self.device, self.is_main, self.out = self.dist.device, self.dist.is_main, cfg.output_path
        self.run_folder = RunFolder(self.out)
        self.autocast_dtype, self.base_dtype = resolve_run_dtypes(cfg, self.device)
        self.variant = get_variant(cfg.variant)
        self.gen = generator
        self.gen.update_seq_lengths(self.variant.sequence_lengths(cfg.duration))
        groups = self._setup_trainable()
        self.gen.set_gradient_checkpointing(cfg.gradient_checkpointing)
        self.train_store = ExampleStore(train_examples, self.gen)
        self.val_store = ExampleStore(val_examples, self.gen)
        self.validator = Validator(self.val_store, cfg.timestep_mode,
                                   autocast_dtype=self.autocast_dtype)
        self.order = DataOrder(len(self.train_store), cfg.seed)
        self.step_size = DataOrder.step_size(cfg.batch_size, cfg.grad_accum,
                                             self.dist.world_size)
        self.latent_shape = (self.gen.seq.latent, self.gen.cfg.latent_dim)

        for g in groups:
            g["base_lr"] = g["lr"]
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scaler = torch.amp.GradScaler(
            self.device.type, init_scale=LOSS_SCALE_INIT,
            growth_interval=LOSS_SCALE_GROWTH_STEPS,
            enabled=self.autocast_dtype == torch.float16)
        self.schedule = LRSchedule(cfg.steps, cfg.warmup, cfg.lr_schedule)
        self.model = wrap_model(self.gen, self.dist)
        self.ckpt = ckpt.CheckpointManager(self.run_folder.checkpoints_dir, cfg.keep_checkpoints,
                                           keep_best=cfg.keep_best)
        if self.is_main:
            self.ckpt.remove_stale()  # what a killed save left behind
        self.log = JsonlLog(self.run_folder.log_path, enabled=self.is_main)
        self.identity = self._identity()
        self.record = RunRecord(
            cfg=cfg, lora=lora_config(cfg), world_size=self.dist.world_size,
            effective_batch=self.step_size, precision=str(self.autocast_dtype or torch.float32),
            base_dtype=str(self.base_dtype),
            train_examples=len(self.train_store), val_examples=len(self.val_store),
            train_set=dataset_fingerprint(self.train_store.examples),
            train_prompts=training_prompts(self.train_store.examples),
            adapted_layers=self.adapted_layers,
            trainable_params=sum(p.numel() for p in self.params), data_info=dict(data_info or {}))

        self.step = 0
        self.stream_pos = 0
        self.elapsed = 0.0  # seconds spent in training steps (over all sessions)
        self.last_val: ValidationResult | None = None
        self._val_step: int | None = None  # the step last_val was measured at
        self.val_base: float | None = None
        self.recent_losses: list[float] = []
        self._boundary_rng = ckpt.capture_rng_state()
        self._in_update = False

    # --- what is trained (textual inversion overrides these) --------------------------------
    def _setup_trainable(self) -> list[dict[str, Any]]:
        """Attach the adapter, cast the frozen base, move to the device; the optimiser groups."""
        cfg = self.cfg
        check_rank(self.gen, cfg)
        self.handle = attach_lora(self.gen, lora_config(cfg), ADAPTER_NAME,
                                  variant_name=cfg.variant)
        self.params = trainable_parameters(self.gen, ADAPTER_NAME)
        for p in self.params:
            if p.dtype != torch.float32:
                p.data = p.data.float()
        # Files record the fingerprint of the weights as loaded, whatever dtype they train in.
        self.handle.spec.base_fingerprint = base_fingerprint(self.gen, self.handle.layers)
        cast_frozen_weights(self.gen, self.base_dtype)  # new parameters: shared tensors untouched
        # After the cast: a generator resting in host memory reaches the GPU already in
        # --base_dtype (half the bytes of fp32 for bf16 / fp16).
        self.gen.to(self.device)
        self.params = trainable_parameters(self.gen, ADAPTER_NAME)
        self.adapted_layers = len(self.handle.layers)
        return lora_plus_param_groups(self.gen, cfg.lr, cfg.lora_plus_ratio, ADAPTER_NAME,
                                      weight_decay=cfg.weight_decay)

    def _identity(self) -> dict[str, Any]:
        return adapter_identity(self.cfg)

    def batch_loss(self, batch, draws) -> torch.Tensor:
        """Per-example training loss (B,) of a micro-batch."""
        return training_loss(self.model, self.gen, batch, draws)

    def trained_state(self) -> dict[str, torch.Tensor]:
        """The trained tensors a checkpoint stores."""
        return training_state_dict(self.gen, ADAPTER_NAME)

    def load_trained_state(self, params: dict[str, torch.Tensor]) -> None:
        load_training_state_dict(self.gen, {k: v.to(self.device) for k, v in params.items()},
                                 ADAPTER_NAME)

    def write_trained(self, path: Path, metadata: dict[str, Any]) -> None:
        """The loadable file of a checkpoint (the adapter)."""
        save_adapter(self.gen, path, ADAPTER_NAME, metadata=metadata)

    def finish(self) -> TrainResult:
        """Surgery, intruder report, final adapter, last sample and summary (process 0)."""
        cfg, out = self.cfg, self.out
        if self.last_val is None or self.val_base is None:
            self.validate()
        surgery = surgery_decision(self.gen, self.adapter_name, cfg, self.train_store,
                                   self.validator, self.device, self.latent_shape,
                                   self.autocast, out if self.is_main else None)
        # The loop validated this very step; only a kept surgery changed the adapter since, and
        # it measured the loss after itself: no second validation of the same step.
        if surgery.get("decision") == "kept":
            val_loss_final = surgery["val_loss_after"]
        else:
            val_loss_final = self.last_val.loss if self.last_val else None
        intr = intruder_summary(self.gen, self.adapter_name, out)
        metadata = self.record.adapter_metadata(
            self.progress, surgery=surgery,
            intruders={k: intr[k] for k in ("total", "threshold")},
            val_loss_final=val_loss_final, config=cfg.to_dict())
        adapter_path, storage = save_final_adapter(self.gen, self.adapter_name, out,
                                                   cfg.adapter_dtype, metadata)
        self.write_sample("final")
        self.write_curves()
        self.log.write({"kind": "end", "step": self.step, "time": time.time(),
                        "surgery": surgery.get("decision"), "intruders": intr["total"]})
        return self.result("completed", surgery=surgery, intruders=intr,
                           adapter_path=str(adapter_path), adapter_storage=storage,
                           adapter_mb=adapter_path.stat().st_size / 1e6,
                           val_loss_final=val_loss_final)

    # --- the run ----------------------------------------------------------------------------
    def run(self) -> TrainResult:
        """Train to ``cfg.steps`` (resuming first if asked), then finish the adapter."""
        # The global RNG (the adapter-input dropout's) is seeded from --seed for a fresh run and
        # restored from the checkpoint on resume, inside a fork: the caller's RNG is left alone.
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            return self._run()

    def _run(self) -> TrainResult:
        cfg = self.cfg
        if cfg.resume or cfg.resume_from is not None:
            self.resume(cfg.resume_from)
        else:
            torch.manual_seed(mix_seed(cfg.seed, _GLOBAL_RNG_SEED, self.dist.rank))
            self._boundary_rng = ckpt.capture_rng_state()
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.run_folder.config_path, json.loads(cfg.to_json()))
        self.log.write({**self.record.start_line(self.progress), "time": time.time()})
        if self.step == 0 and self.val_base is None:
            base = self.validate()
            self.val_base = base.loss if base else None
            self.write_sample("step_000000_base")
        status = self._loop()
        if status != "completed":
            return self.result(status)
        barrier(self.dist)
        if not self.is_main:
            return self.result("completed")
        return self.finish()

    def _loop(self) -> str:
        cfg = self.cfg
        self.gen.train()
        progress = ProgressBar(self.step, cfg.steps, enabled=self.is_main and not cfg.quiet)
        try:
            with StopSignals() as signals:
                while self.step < cfg.steps:
                    progress.update(self.train_step())
                    if not all_true(not self._stop_requested(signals), self.dist):
                        self._on_interrupt()
                        return "interrupted"
                    at_save = self.step % cfg.save_every == 0 or self.step == cfg.steps
                    if self.step % cfg.val_every == 0 or at_save:
                        self.validate()
                    if at_save:
                        self.save_checkpoint("final" if self.step == cfg.steps else "periodic")
                        self.write_sample(f"step_{self.step:06d}")
                        self.write_curves()
        except KeyboardInterrupt:
            if self._in_update:
                log.error("interrupted inside an optimiser update: not saving a possibly torn "
                          "state; the newest checkpoint on disk remains the resume point")
                raise
            self.optimizer.zero_grad(set_to_none=True)
            self._on_interrupt()
            return "interrupted"
        finally:
            progress.close()
        return "completed"

    # --- one optimiser step ------------------------------------------------------------------
    def train_step(self) -> dict[str, Any]:
        """One optimiser step; returns the logged record."""
        cfg = self.cfg
        factor = self.schedule.apply(self.optimizer, self.step)
        t0 = time.perf_counter()
        losses, names = [], []
        for micro in range(cfg.grad_accum):
            batch, draws = self._micro_batch(micro)
            names += batch.names
            out_of_memory = False
            try:
                with self._grad_sync(micro == cfg.grad_accum - 1):
                    with self.autocast():
                        loss = self.batch_loss(batch, draws).mean()
                    scaled = self.scaler.scale(loss / cfg.grad_accum)
                    scaled.backward()
            except (RuntimeError, MemoryError) as exc:
                if not is_out_of_memory(exc):
                    raise
                out_of_memory = True  # handled outside: the traceback holds the step's tensors
            if out_of_memory:
                loss = scaled = batch = draws = None  # the error's traceback keeps this frame
                self._out_of_memory(names)
            losses.append(loss.detach())
            if self.hooks.after_micro_step:
                self.hooks.after_micro_step(self, self.step, micro)
        mean_loss = float(all_reduce_mean(torch.stack(losses).mean(), self.dist))
        if not math.isfinite(mean_loss):
            self._diverged("loss", mean_loss, names)
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.scaler.unscale_(self.optimizer)
        clip = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, clip))
        # fp16: a non-finite norm is an overflow the scaler skips (and then backs off from)
        overflow = scale is not None and not math.isfinite(grad_norm)
        if overflow and scale <= 1.0:
            self._diverged("gradient norm", float("inf"), names)
        if overflow:
            grad_norm = None
        elif not math.isfinite(grad_norm):
            self._diverged("gradient norm", grad_norm, names)
        self._update(overflow)
        dt = time.perf_counter() - t0
        self.elapsed += dt
        self.recent_losses.append(mean_loss)
        record = {"kind": "train", "step": self.step, "loss": mean_loss,
                  "lr": cfg.lr * factor, "lr_factor": factor, "grad_norm": grad_norm,
                  "epoch": self.order.epoch_of(self.stream_pos - 1),
                  "clips_per_s": self.step_size / dt if dt > 0 else None,
                  "elapsed_s": round(self.elapsed, 4)}
        if scale is not None:
            record.update(loss_scale=scale, skipped=overflow)
        self.log.write(record)
        if self.hooks.after_step:
            self.hooks.after_step(self, self.step)
        return record

    def _micro_batch(self, micro: int):
        pairs = self.order.micro_batch(self.stream_pos, micro, self.cfg.batch_size,
                                       self.dist.world_size, self.dist.rank)
        batch = self.train_store.batch([i for _, i in pairs]).to(self.device)
        draws = draw_examples([example_seed(self.cfg.seed, k) for k, _ in pairs],
                              self.latent_shape, self.cfg.timestep_mode, self.cfg.cond_dropout)
        return batch, draws.to(self.device)

    def _grad_sync(self, last: bool):
        """DDP: accumulate without an all-reduce except on the last micro-batch."""
        no_sync = getattr(self.model, "no_sync", None)
        return no_sync() if (no_sync is not None and not last) else contextlib.nullcontext()

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                              enabled=self.autocast_dtype is not None)

    def _update(self, overflow: bool = False) -> None:
        """AdamW step (skipped, with the fp16 loss scale halved, on overflow) and the step
        boundary (the state a checkpoint captures)."""
        self._in_update = True
        if self.scaler.is_enabled():
            self.scaler.step(self.optimizer)  # skips the update when the gradients overflowed
            self.scaler.update()
            if overflow:
                log.warning("step %d: fp16 gradients overflowed; update skipped, loss scale "
                            "now %g", self.step + 1, self.scaler.get_scale())
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.stream_pos += self.step_size
        self._boundary_rng = ckpt.capture_rng_state()
        self._in_update = False

    def _stop_requested(self, signals: StopSignals) -> bool:
        return signals.requested or bool(self.hooks.should_stop and self.hooks.should_stop())

    def _resume_point(self) -> str:
        entries = self.ckpt.entries() if self.ckpt.manifest_path.exists() else []
        return (f"the last good checkpoint is step {entries[-1].step} "
                f"({self.ckpt.folder(entries[-1])}); resume from it with --resume"
                if entries else "no checkpoint was written yet")

    def _diverged(self, what: str, value: float, names: list[str]) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        kept = self._resume_point()
        self.log.write({"kind": "error", "step": self.step + 1, "error": f"{what} {value}",
                        "clips": names, "time": time.time()})
        raise TrainingDivergedError(
            f"training stopped at optimiser step {self.step + 1}: the {what} is {value} "
            f"(clips in the batch: {', '.join(sorted(set(names)))}). The adapter was not "
            f"updated by this step and {kept}. Lower --lr (or raise --warmup_steps), check "
            "these clips' audio, or use --precision fp32 --base_dtype fp32"
        )

    def _out_of_memory(self, names: list[str]) -> None:
        """Free what the failed step held and raise one message with the settings to change."""
        cfg = self.cfg
        self.optimizer.zero_grad(set_to_none=True)
        where = "the GPU" if self.device.type == "cuda" else "memory"
        peak, _ = peak_memory_bytes(self.device)
        size = f"peak {peak / 2**30:.2f} GB"
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            total = torch.cuda.get_device_properties(self.device).total_memory
            size += f" of {total / 2**30:.1f} GB"
        remedies = []
        if not cfg.gradient_checkpointing:
            remedies.append("--gradient_checkpointing (about a fifth of the activation memory "
                            "per clip)")
        if self.base_dtype == torch.float32 and self.device.type == "cuda":
            remedies.append("--base_dtype bf16 (fp16 on GPUs without bf16): half the weight "
                            "memory")
        if cfg.batch_size > 1:
            remedies.append(f"--batch_size {cfg.batch_size // 2} --grad_accum "
                            f"{cfg.grad_accum * 2} (about the same clips per step)")
        remedies.append(f"a shorter --duration (now {cfg.duration:g} s)")
        self.log.write({"kind": "error", "step": self.step + 1, "error": "out of memory",
                        "clips": names, "time": time.time()})
        raise TrainingOutOfMemoryError(
            f"{where} ran out during optimiser step {self.step + 1} ({cfg.variant}, batch "
            f"{cfg.batch_size} of {cfg.duration:g} s clips, {size}). The adapter was not "
            f"updated by this step and {self._resume_point()}. To fit, use "
            + "; or ".join(remedies)
        )

    # --- progress and the run record ---------------------------------------------------------
    @property
    def progress(self) -> Progress:
        return Progress(step=self.step, elapsed_s=self.elapsed,
                        val_loss=self.last_val.loss if self.last_val else None,
                        val_loss_base=self.val_base)

    def adapter_metadata(self, **extra: Any) -> dict[str, Any]:
        """Caller metadata stored in every adapter file (how it was trained)."""
        return self.record.adapter_metadata(self.progress, **extra)

    def result(self, status: str, **end: Any) -> TrainResult:
        """The run's :class:`TrainResult`; process 0 writes ``summary.json``."""
        records = self.log.read() if self.is_main else []
        losses = [r["loss"] for r in records if r.get("kind") == "train"]
        peak, method = peak_memory_bytes(self.device)
        summary = self.record.summary(status, self.progress, losses,
                                      smooth(losses)[-1] if losses else None,
                                      peak_memory_mb=round(peak / 2**20, 1),
                                      peak_memory_method=method,
                                      sample_sync=sample_sync(records), **end)
        if self.is_main:
            write_json_atomic(self.run_folder.summary_path, summary, sort_keys=True)
        adapter = summary.get("adapter_path")
        return TrainResult(status, self.step, self.out, Path(adapter) if adapter else None,
                           summary)

    # --- resume -----------------------------------------------------------------------------
    def resume(self, step: int | None = None) -> None:
        """Load the newest checkpoint (or that of ``step``) into the model and optimiser.

        Every check runs before anything on disk changes: a rejected checkpoint leaves the
        output folder as it was."""
        entry = self.ckpt.find(step)
        source = self.ckpt.folder(entry)
        state = self.ckpt.load_state(entry)
        ckpt.check_identity(state.identity, self.identity, source)
        if state.extra.get("train_set") != self.record.train_set:
            raise ckpt.CheckpointError(
                f"cannot resume from {source}: the training set changed since it was written "
                f"({state.extra.get('train_examples')} examples then, "
                f"{len(self.train_store)} now, or different files/prompts/settings). Train "
                "into a new --output_dir instead"
            )
        if state.permutation != self.order.permutation(state.epoch):
            raise ckpt.CheckpointError(
                f"cannot resume from {source}: its data order differs from this run's (another "
                "--seed or dataset). Use the original --seed or a new --output_dir"
            )
        try:
            self.load_trained_state(state.params)
            self.optimizer.load_state_dict(state.optimizer)
        except (ValueError, KeyError) as exc:
            raise ckpt.CheckpointError(f"cannot resume from {source}: {exc}") from exc
        if state.extra.get("step_size") != self.step_size:
            log.warning("the effective batch changed (%s -> %d clips per step): the resumed "
                        "run will not match an uninterrupted one", state.extra.get("step_size"),
                        self.step_size)
        old_steps = state.config.get("steps")
        if old_steps is not None and old_steps != self.cfg.steps:
            log.warning("--steps changed from %s to %d: the schedule differs from the "
                        "checkpoint's run", old_steps, self.cfg.steps)
        ckpt.restore_rng_state(state.rng_tensors, state.rng_meta)
        self._boundary_rng = (state.rng_tensors, state.rng_meta)
        self.step, self.stream_pos, self.elapsed = state.step, state.stream_pos, state.elapsed_s
        self.val_base = state.extra.get("val_base")
        if self.scaler.is_enabled() and state.extra.get("loss_scale") is not None:
            self.scaler.load_state_dict({
                **self.scaler.state_dict(), "scale": float(state.extra["loss_scale"]),
                "_growth_tracker": int(state.extra.get("loss_scale_clean_steps", 0))})
        if self.is_main:
            self.ckpt.forget_after(self.step)
            self.log.truncate_after(self.step)
            records = self.log.read()
            self.recent_losses = [r["loss"] for r in records
                                  if r.get("kind") == "train" and r.get("loss") is not None]
            vals = [r for r in records if r.get("kind") == "val"]
            if vals:
                last = vals[-1]
                self.last_val = ValidationResult(last["val_loss"], last.get("per_t", []),
                                                 last.get("t_grid", []),
                                                 last.get("val_examples", 0))
                self._val_step = last.get("step")
        log.info("resumed from %s (step %d, %d examples seen)", source, self.step,
                 self.stream_pos)
        self.log.write({"kind": "resume", "step": self.step, "from": str(source),
                        "time": time.time()})

    def _state(self) -> ckpt.TrainingState:
        epoch = self.order.epoch_of(self.stream_pos)
        rng_t, rng_m = self._boundary_rng
        return ckpt.TrainingState(
            step=self.step, stream_pos=self.stream_pos, epoch=epoch,
            permutation=self.order.permutation(epoch),
            params=self.trained_state(),
            optimizer=self.optimizer.state_dict(), identity=self.identity,
            train_loss=smooth(self.recent_losses)[-1] if self.recent_losses else None,
            # a checkpoint's own validation loss (None when it was not validated at its step)
            val_loss=self.last_val.loss if self.last_val and self._val_step == self.step
            else None,
            elapsed_s=self.elapsed, config=self.cfg.to_dict(), rng_tensors=rng_t,
            rng_meta=rng_m,
            extra={**self.record.state_extra(self.progress), **self._scaler_extra()},
        )

    def _scaler_extra(self) -> dict[str, Any]:
        """fp16: the loss scale and the clean steps since it last changed (resume restores them)."""
        if not self.scaler.is_enabled():
            return {}
        state = self.scaler.state_dict()
        return {"loss_scale": state["scale"], "loss_scale_clean_steps": state["_growth_tracker"]}

    # --- validation / samples / checkpoints -------------------------------------------------
    def validate(self) -> ValidationResult | None:
        """Deterministic validation loss (process 0 only: the others have nothing to log)."""
        if not len(self.validator) or not self.is_main:
            return None
        result = self.validator.evaluate(self.gen, self.gen, self.device)
        self.last_val, self._val_step = result, self.step
        self.log.write({"kind": "val", "step": self.step, **result.to_dict()})
        log.info("step %d: validation loss %.5f", self.step, result.loss)
        return result

    def _sample_features(self) -> SampleClip | None:
        """The sample clip: the first validation clip, else the first training clip."""
        store = self.val_store if len(self.val_store) else self.train_store
        return sample_clip(self.gen, store, self.cfg, self.device)

    def write_sample(self, tag: str) -> Path | None:
        """A validation clip generated with CFG and a fixed seed -> samples/<tag>.wav + .png."""
        if (not self.cfg.samples or not self.is_main or self.pipeline is None
                or not hasattr(self.pipeline, "decode")):
            return None
        found = self._sample_features()
        if found is None:
            return None
        return write_sample(found, tag, self.step, pipeline=self.pipeline, generator=self.gen,
                            cfg=self.cfg, sample_rate=self.variant.sample_rate,
                            train_lengths=self.variant.sequence_lengths(self.cfg.duration),
                            autocast=self.autocast, run=self.run_folder, train_log=self.log)

    def save_checkpoint(self, reason: str) -> ckpt.CheckpointEntry | None:
        if not self.is_main:
            return None
        state = self._state()
        meta = self.adapter_metadata(checkpoint_reason=reason)
        entry = self.ckpt.save(
            state, lambda path: self.write_trained(path, meta),
            reason=reason,
        )
        self.log.write({"kind": "checkpoint", "step": self.step, "reason": reason,
                        "folder": entry.folder, "time": time.time()})
        log.info("step %d: checkpoint %s (%s)", self.step, self.ckpt.folder(entry), reason)
        return entry

    def write_curves(self) -> None:
        if self.is_main:
            plot_curves(self.log.read(), self.run_folder.curve_path,
                        title=f"LoRA r{self.cfg.rank} on {self.cfg.variant}")

    def _on_interrupt(self) -> None:
        entries = self.ckpt.entries() if self.is_main else []
        if not (entries and entries[-1].step == self.step):
            self.save_checkpoint("interrupt")
        self.write_curves()
        log.warning("training interrupted at step %d; resume with --resume", self.step)
