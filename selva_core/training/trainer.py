"""The LoRA training loop: one visible loop, exact resume, validation, samples, surgery.

:class:`LoRATrainer` trains an adapter on a generator from cached examples. One optimiser step:

* ``lr = base_lr x schedule(step)`` (warm-up then cosine/constant, in optimiser steps);
* ``grad_accum`` micro-batches taken from the seeded data stream (:mod:`.data_order`),
  each example with its own seeded draws (:mod:`.objective`); under DDP every process takes
  its shard of the same global batch and gradients are averaged (no sync until the last
  micro-batch);
* a NaN/Inf loss or gradient norm stops the run (the last good checkpoint stays the newest);
* gradient clipping, AdamW step (weight decay 0 by default; LoRA+ groups optional).

Every ``val_every`` steps the deterministic validation loss is logged; every ``save_every``
steps (and at the end) a checkpoint is written with a sample of a validation clip (WAV +
spectrogram) and the curves. Ctrl-C / SIGTERM finishes the current step and writes a
resumable checkpoint; a ``KeyboardInterrupt`` raised anywhere else in the loop saves the state
of the last completed step. At the end: spectral surgery kept only if the validation loss does
not get worse, the intruder report, ``adapter_final.safetensors`` and ``summary.json``.

Only process 0 writes files. Randomness never comes from global RNG streams, so an
interrupted and resumed run reproduces the uninterrupted one bit for bit on the same machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from selva_core.features import ConditionFeatures
from selva_core.model.generator import SelvaGenerator
from selva_core.model.lora import (
    LoRAConfig,
    SurgeryConfig,
    adapter_storage,
    attach_lora,
    intruder_report,
    load_training_state_dict,
    lora_plus_param_groups,
    save_adapter,
    surgery_with_validation,
    trainable_parameters,
    training_state_dict,
)
from selva_core.training import checkpoint as ckpt
from selva_core.training.config import ADAPTER_IDENTITY_FIELDS, TrainConfig
from selva_core.training.data_order import DataOrder, example_seed, mix_seed
from selva_core.training.distributed import (
    DistContext,
    all_reduce_mean,
    all_true,
    barrier,
    wrap_model,
)
from selva_core.training.objective import (
    ExampleStore,
    conditions,
    draw_examples,
    training_loss,
)
from selva_core.training.report import (
    CURVE_FILE,
    LOG_FILE,
    JsonlLog,
    plot_curves,
    save_spectrogram_png,
    smooth,
    write_wav,
)
from selva_core.training.schedule import LRSchedule
from selva_core.training.validation import ValidationResult, Validator

log = logging.getLogger(__name__)

ADAPTER_NAME = "default"
FINAL_ADAPTER = "adapter_final.safetensors"
SUMMARY_FILE = "summary.json"
SURGERY_BATCHES = 8
_SURGERY_SEED = 0x5C6E


class TrainingDivergedError(RuntimeError):
    """The loss or the gradient became NaN/Inf; the message names the step and the remedy."""


@dataclass
class TrainHooks:
    """Optional callbacks (tests, progress UIs). They may raise to stop the run."""

    # (trainer, index of the step in progress, micro-batch index)
    after_micro_step: Callable[[LoRATrainer, int, int], None] | None = None
    # (trainer, optimiser steps completed)
    after_step: Callable[[LoRATrainer, int], None] | None = None


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


class _StopSignals:
    """SIGINT/SIGTERM set a flag (the loop saves and stops after the current step); a second
    SIGINT raises KeyboardInterrupt at once. Only installable from the main thread."""

    def __init__(self):
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handler(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("%s received: finishing this step, then saving a resumable checkpoint "
                    "(press Ctrl-C again to stop at once)", signal.Signals(signum).name)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        return False


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on a capable GPU under 'auto'; fp32 (None) on CPU unless forced."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def dataset_fingerprint(examples: Sequence) -> str:
    """Hash of the training examples' names and cache keys (a changed dataset is detected)."""
    h = hashlib.sha256()
    for e in examples:
        h.update(f"{e.name}|{getattr(e, 'cache_key', '')}\n".encode())
    return h.hexdigest()[:16]


class LoRATrainer:
    """Trains one LoRA adapter on ``generator`` (see the module docstring).

    ``pipeline`` (optional) decodes checkpoint samples to audio; it must hold the same
    generator object. ``data_info`` is merged into the summary (e.g. skipped clips).
    """

    def __init__(self, cfg: TrainConfig, generator: SelvaGenerator, train_examples: Sequence,
                 val_examples: Sequence = (), *, pipeline=None,
                 dist: DistContext | None = None, hooks: TrainHooks | None = None,
                 data_info: dict[str, Any] | None = None):
        cfg.validate(require_data=False)
        self.cfg = cfg
        self.dist = dist or DistContext()
        self.hooks = hooks or TrainHooks()
        self.pipeline = pipeline
        self.data_info = dict(data_info or {})
        self.device = self.dist.device
        self.autocast_dtype = _autocast_dtype(cfg.precision, self.device)
        self.out = cfg.output_path
        self.is_main = self.dist.is_main
        if self.is_main:
            (self.out / "samples").mkdir(parents=True, exist_ok=True)

        from selva_core.variants import get_variant

        self.variant = get_variant(cfg.variant)
        self.gen = generator
        self.gen.update_seq_lengths(self.variant.sequence_lengths(cfg.duration))
        self.gen.to(self.device)
        self.lora_config = LoRAConfig(
            rank=cfg.rank, alpha=cfg.alpha, use_rslora=cfg.rslora, init=cfg.init,
            targets=tuple(cfg.target), seed=cfg.seed,
        )
        self.handle = attach_lora(self.gen, self.lora_config, ADAPTER_NAME,
                                  variant_name=cfg.variant)
        self.params = trainable_parameters(self.gen, ADAPTER_NAME)
        for p in self.params:
            if p.dtype != torch.float32:
                p.data = p.data.float()
        self.train_store = ExampleStore(train_examples, self.gen)
        self.val_store = ExampleStore(val_examples, self.gen)
        self.validator = Validator(self.val_store, cfg.timestep_mode,
                                   autocast_dtype=self.autocast_dtype)
        self.order = DataOrder(len(self.train_store), cfg.seed)
        self.step_size = DataOrder.step_size(cfg.batch_size, cfg.grad_accum,
                                             self.dist.world_size)
        self.latent_shape = (self.gen.seq.latent, self.gen.cfg.latent_dim)

        groups = lora_plus_param_groups(self.gen, cfg.lr, cfg.lora_plus_ratio, ADAPTER_NAME,
                                        weight_decay=cfg.weight_decay)
        for g in groups:
            g["base_lr"] = g["lr"]
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.schedule = LRSchedule(cfg.steps, cfg.warmup_steps, cfg.lr_schedule)
        self.model = wrap_model(self.gen, self.dist)
        self.ckpt = ckpt.CheckpointManager(self.out / "checkpoints", cfg.keep_checkpoints)
        self.log = JsonlLog(self.out / LOG_FILE, enabled=self.is_main)

        self.identity = {k: getattr(cfg, k) for k in ADAPTER_IDENTITY_FIELDS}
        self.identity["alpha"] = self.lora_config.effective_alpha
        self.identity["scale"] = self.lora_config.scale
        self.train_fingerprint = dataset_fingerprint(self.train_store.examples)

        self.step = 0
        self.stream_pos = 0
        self.elapsed = 0.0  # seconds spent in training steps (over all sessions)
        self.last_val: ValidationResult | None = None
        self.val_base: float | None = None
        self.recent_losses: list[float] = []
        self._boundary_rng = ckpt.capture_rng_state()
        self._in_update = False

    # --- bookkeeping ------------------------------------------------------------------------
    @property
    def trainable_count(self) -> int:
        return sum(p.numel() for p in self.params)

    def _state(self) -> ckpt.TrainingState:
        epoch = self.order.epoch_of(self.stream_pos)
        rng_t, rng_m = self._boundary_rng
        return ckpt.TrainingState(
            step=self.step, stream_pos=self.stream_pos, epoch=epoch,
            permutation=self.order.permutation(epoch),
            params=training_state_dict(self.gen, ADAPTER_NAME),
            optimizer=self.optimizer.state_dict(), identity=self.identity,
            train_loss=self._smoothed_loss(),
            val_loss=self.last_val.loss if self.last_val else None,
            elapsed_s=self.elapsed, config=self.cfg.to_dict(), rng_tensors=rng_t,
            rng_meta=rng_m,
            extra={"train_set": self.train_fingerprint, "world_size": self.dist.world_size,
                   "step_size": self.step_size, "val_base": self.val_base,
                   "train_examples": len(self.train_store)},
        )

    def _smoothed_loss(self) -> float | None:
        return smooth(self.recent_losses)[-1] if self.recent_losses else None

    def adapter_metadata(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Caller metadata stored in every adapter file (how it was trained)."""
        cfg = self.cfg
        meta = {
            "trainer": "selva_core.training (train_lora.py)",
            "steps": self.step, "target_steps": cfg.steps, "lr": cfg.lr,
            "lr_schedule": cfg.lr_schedule, "warmup_steps": cfg.warmup_steps,
            "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum,
            "world_size": self.dist.world_size, "effective_batch": self.step_size,
            "lora_plus_ratio": cfg.lora_plus_ratio, "weight_decay": cfg.weight_decay,
            "timestep_mode": cfg.timestep_mode, "cond_dropout": cfg.cond_dropout,
            "duration": cfg.duration, "window": cfg.window, "seed": cfg.seed,
            "precision": str(self.autocast_dtype or torch.float32),
            "train_examples": len(self.train_store), "val_examples": len(self.val_store),
            "train_set": self.train_fingerprint,
            "val_loss": self.last_val.loss if self.last_val else None,
            "val_loss_base": self.val_base,
        }
        meta.update(extra or {})
        return meta

    # --- resume -----------------------------------------------------------------------------
    def resume(self, step: int | None = None) -> None:
        """Load the newest checkpoint (or that of ``step``) into the model and optimiser."""
        entry = self.ckpt.find(step)
        source = self.ckpt.folder(entry)
        state = self.ckpt.load_state(entry)
        ckpt.check_identity(state.identity, self.identity, source)
        if state.extra.get("train_set") != self.train_fingerprint:
            raise ckpt.CheckpointError(
                f"cannot resume from {source}: the training set changed since it was written "
                f"({state.extra.get('train_examples')} examples then, "
                f"{len(self.train_store)} now, or different files/prompts/settings). Train "
                "into a new --output_dir instead"
            )
        if state.extra.get("step_size") != self.step_size:
            log.warning("the effective batch changed (%s -> %d clips per step): the resumed "
                        "run will not match an uninterrupted one", state.extra.get("step_size"),
                        self.step_size)
        if state.permutation != self.order.permutation(state.epoch):
            raise ckpt.CheckpointError(
                f"cannot resume from {source}: its data order differs from this run's (another "
                "--seed or dataset). Use the original --seed or a new --output_dir"
            )
        old_steps = state.config.get("steps")
        if old_steps is not None and old_steps != self.cfg.steps:
            log.warning("--steps changed from %s to %d: the schedule differs from the "
                        "checkpoint's run", old_steps, self.cfg.steps)
        try:
            load_training_state_dict(self.gen, {k: v.to(self.device)
                                                for k, v in state.params.items()}, ADAPTER_NAME)
            self.optimizer.load_state_dict(state.optimizer)
        except (ValueError, KeyError) as exc:
            raise ckpt.CheckpointError(f"cannot resume from {source}: {exc}") from exc
        ckpt.restore_rng_state(state.rng_tensors, state.rng_meta)
        self._boundary_rng = (state.rng_tensors, state.rng_meta)
        self.step, self.stream_pos, self.elapsed = state.step, state.stream_pos, state.elapsed_s
        self.val_base = state.extra.get("val_base")
        if self.is_main:
            self.ckpt.forget_after(self.step)
            self.log.truncate_after(self.step)
            self.recent_losses = [r["loss"] for r in self.log.read()
                                  if r.get("kind") == "train" and r.get("loss") is not None]
            vals = [r for r in self.log.read() if r.get("kind") == "val"]
            if vals:
                last = vals[-1]
                self.last_val = ValidationResult(last["val_loss"], last.get("per_t", []),
                                                 last.get("t_grid", []),
                                                 last.get("val_examples", 0))
        log.info("resumed from %s (step %d, %d examples seen)", source, self.step,
                 self.stream_pos)
        self.log.write({"kind": "resume", "step": self.step, "from": str(source),
                        "time": time.time()})

    # --- one optimiser step ------------------------------------------------------------------
    def _micro_batch(self, micro: int):
        pairs = self.order.micro_batch(self.stream_pos, micro, self.cfg.batch_size,
                                       self.dist.world_size, self.dist.rank)
        batch = self.train_store.batch([i for _, i in pairs]).to(self.device)
        draws = draw_examples([example_seed(self.cfg.seed, k) for k, _ in pairs],
                              self.latent_shape, self.cfg.timestep_mode, self.cfg.cond_dropout)
        return batch, draws.to(self.device)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                              enabled=self.autocast_dtype is not None)

    def train_step(self) -> dict[str, Any]:
        """One optimiser step; returns the logged record."""
        cfg = self.cfg
        factor = self.schedule.apply(self.optimizer, self.step)
        t0 = time.perf_counter()
        losses = []
        names: list[str] = []
        for micro in range(cfg.grad_accum):
            batch, draws = self._micro_batch(micro)
            names.extend(batch.names)
            last = micro == cfg.grad_accum - 1
            no_sync = getattr(self.model, "no_sync", None)
            sync_ctx = no_sync() if (no_sync is not None and not last) else contextlib.nullcontext()
            with sync_ctx:
                with self._autocast():
                    loss = training_loss(self.model, self.gen, batch, draws).mean()
                (loss / cfg.grad_accum).backward()
            losses.append(loss.detach())
            if self.hooks.after_micro_step:
                self.hooks.after_micro_step(self, self.step, micro)
        mean_loss = float(all_reduce_mean(torch.stack(losses).mean(), self.dist))
        if not math.isfinite(mean_loss):
            self._diverged("loss", mean_loss, names)
        clip = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, clip))
        if not math.isfinite(grad_norm):
            self._diverged("gradient norm", grad_norm, names)
        self._in_update = True
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.stream_pos += self.step_size
        self._boundary_rng = ckpt.capture_rng_state()
        self._in_update = False
        dt = time.perf_counter() - t0
        self.elapsed += dt
        self.recent_losses.append(mean_loss)
        record = {"kind": "train", "step": self.step, "loss": mean_loss,
                  "lr": cfg.lr * factor, "lr_factor": factor, "grad_norm": grad_norm,
                  "epoch": self.order.epoch_of(self.stream_pos - 1),
                  "clips_per_s": self.step_size / dt if dt > 0 else None,
                  "elapsed_s": round(self.elapsed, 4)}
        self.log.write(record)
        if self.hooks.after_step:
            self.hooks.after_step(self, self.step)
        return record

    def _diverged(self, what: str, value: float, names: list[str]) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        entries = self.ckpt.entries() if self.ckpt.manifest_path.exists() else []
        kept = (f"the last good checkpoint is step {entries[-1].step} "
                f"({self.ckpt.folder(entries[-1])}); resume from it with --resume"
                if entries else "no checkpoint was written yet")
        self.log.write({"kind": "error", "step": self.step + 1, "error": f"{what} {value}",
                        "clips": names, "time": time.time()})
        raise TrainingDivergedError(
            f"training stopped at optimiser step {self.step + 1}: the {what} is {value} "
            f"(clips in the batch: {', '.join(sorted(set(names)))}). The adapter was not "
            f"updated by this step and {kept}. Lower --lr (or raise --warmup_steps), check "
            "these clips' audio, or use --precision fp32"
        )

    # --- validation / samples / checkpoints -------------------------------------------------
    def validate(self) -> ValidationResult | None:
        """Deterministic validation loss (process 0 only: the others have nothing to log)."""
        if not len(self.validator) or not self.is_main:
            return None
        result = self.validator.evaluate(self.gen, self.gen, self.device)
        self.last_val = result
        self.log.write({"kind": "val", "step": self.step, **result.to_dict()})
        log.info("step %d: validation loss %.5f", self.step, result.loss)
        return result

    def _sample_features(self) -> tuple[ConditionFeatures, str] | None:
        store = self.val_store if len(self.val_store) else self.train_store
        if not len(store):
            return None
        batch = store.batch([0]).to(self.device)
        _, sync, text = conditions(self.gen, batch)
        prompt = getattr(store.examples[0], "prompt", "") or ""
        return (ConditionFeatures(text_clip_f=text, sync_f=sync, duration=self.cfg.duration,
                                  prompts=[prompt], variant=self.cfg.variant),
                store.name(0))

    def write_sample(self, tag: str) -> Path | None:
        """A validation clip generated with CFG and a fixed seed -> samples/<tag>.wav + .png."""
        if (not self.cfg.samples or not self.is_main or self.pipeline is None
                or not hasattr(self.pipeline, "decode")):
            return None
        found = self._sample_features()
        if found is None:
            return None
        features, name = found
        was_training = self.gen.training
        self.gen.eval()
        try:
            latent = self.pipeline.sample(features, seed=self.cfg.seed,
                                          num_steps=self.cfg.sample_steps,
                                          cfg_strength=self.cfg.cfg_strength)
            wave = self.pipeline.decode(latent)[0].float().cpu()
        finally:
            self.gen.train(was_training)
            # Sampling may have set other sequence lengths (the clip's duration): restore the
            # training lengths (a no-op when they did not change).
            self.gen.update_seq_lengths(self.variant.sequence_lengths(self.cfg.duration))
        wav_path = self.out / "samples" / f"{tag}.wav"
        sr = self.variant.sample_rate
        write_wav(wave.numpy(), sr, wav_path)
        save_spectrogram_png(wave.numpy(), sr, wav_path.with_suffix(".png"),
                             title=f"{name}: {tag} (cfg {self.cfg.cfg_strength:g}, seed "
                                   f"{self.cfg.seed})")
        return wav_path

    def save_checkpoint(self, reason: str) -> ckpt.CheckpointEntry | None:
        if not self.is_main:
            return None
        state = self._state()
        meta = self.adapter_metadata({"checkpoint_reason": reason})
        entry = self.ckpt.save(
            state, lambda path: save_adapter(self.gen, path, ADAPTER_NAME, metadata=meta),
            reason=reason,
        )
        self.log.write({"kind": "checkpoint", "step": self.step, "reason": reason,
                        "folder": entry.folder, "time": time.time()})
        log.info("step %d: checkpoint %s (%s)", self.step, self.ckpt.folder(entry), reason)
        return entry

    def write_curves(self) -> None:
        if self.is_main:
            plot_curves(self.log.read(), self.out / CURVE_FILE,
                        title=f"LoRA r{self.cfg.rank} on {self.cfg.variant}")

    # --- the run ----------------------------------------------------------------------------
    def run(self) -> TrainResult:
        """Train to ``cfg.steps`` (resuming first if asked), then finish the adapter."""
        cfg = self.cfg
        if cfg.resume or cfg.resume_from is not None:
            self.resume(cfg.resume_from)
        self.log.write({"kind": "start", "step": self.step, "time": time.time(),
                        "world_size": self.dist.world_size,
                        "train_examples": len(self.train_store),
                        "val_examples": len(self.val_store),
                        "trainable_params": self.trainable_count,
                        "adapted_layers": len(self.handle.layers)})
        if self.step == 0 and self.val_base is None:
            base = self.validate()
            self.val_base = base.loss if base else None
            self.write_sample("step_000000_base")
        status = self._loop()
        if status != "completed":
            return self._result(status, None)
        barrier(self.dist)
        if not self.is_main:
            return self._result("completed", None)
        return self._finish()

    def _loop(self) -> str:
        cfg = self.cfg
        self.gen.train()
        progress = _Progress(self.step, cfg.steps, enabled=self.is_main and not cfg.quiet)
        try:
            with _StopSignals() as stop:
                while self.step < cfg.steps:
                    record = self.train_step()
                    progress.update(record)
                    if not all_true(not stop.requested, self.dist):
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

    def _on_interrupt(self) -> None:
        entries = self.ckpt.entries() if self.is_main else []
        if not (entries and entries[-1].step == self.step):
            self.save_checkpoint("interrupt")
        self.write_curves()
        log.warning("training interrupted at step %d; resume with --resume", self.step)

    # --- the end of a run --------------------------------------------------------------------
    def _surgery(self) -> dict[str, Any]:
        """Spectral surgery kept only when the validation loss does not get worse."""
        if not self.cfg.surgery:
            return {"decision": "skipped", "reason": "(--no-surgery)"}
        if not len(self.validator):
            return {"decision": "skipped", "reason": "(no validation split to judge it)"}
        n = min(SURGERY_BATCHES, max(1, math.ceil(len(self.train_store) / self.cfg.batch_size)))
        perm = torch.randperm(len(self.train_store),
                              generator=torch.Generator().manual_seed(
                                  mix_seed(self.cfg.seed, _SURGERY_SEED))).tolist()

        def calib_loss(i: int) -> torch.Tensor:
            idx = [perm[(i * self.cfg.batch_size + j) % len(perm)]
                   for j in range(self.cfg.batch_size)]
            batch = self.train_store.batch(idx).to(self.device)
            seeds = [mix_seed(self.cfg.seed, _SURGERY_SEED, i, j) for j in range(len(idx))]
            draws = draw_examples(seeds, self.latent_shape, self.cfg.timestep_mode,
                                  self.cfg.cond_dropout).to(self.device)
            with self._autocast():
                return training_loss(self.gen, self.gen, batch, draws).mean()

        def val_loss() -> float:
            return float(self.validator.evaluate(self.gen, self.gen, self.device).loss)

        try:
            outcome = surgery_with_validation(self.gen, calib_loss, val_loss, ADAPTER_NAME,
                                              num_batches=n, config=SurgeryConfig())
        except ValueError as exc:
            log.warning("spectral surgery skipped: %s", exc)
            return {"decision": "skipped", "reason": f"({exc})"}
        info = {"decision": "kept" if outcome.kept else "reverted",
                "val_loss_before": outcome.val_before, "val_loss_after": outcome.val_after,
                "policy": outcome.result.config.policy, "calibration_batches": n,
                "reason": "(validation loss not worse)" if outcome.kept
                else "(validation loss got worse)"}
        if self.is_main:
            ckpt.write_json_atomic(self.out / "surgery.json", {**info,
                                   "layers": outcome.result.summary()["layers"]})
        return info

    def _finish(self) -> TrainResult:
        if self.last_val is None or self.val_base is None:
            self.validate()
        surgery = self._surgery()
        val_final = self.validate()
        intruders = intruder_report(self.gen, ADAPTER_NAME,
                                    json_path=self.out / "intruders.json",
                                    png_path=self.out / "intruders.png")
        total = intruders.total()
        intr = {"total": total, "threshold": intruders.threshold, "layers": len(intruders.layers),
                "summary": f"{total} intruder dimension(s) (cos < {intruders.threshold:g}, top-"
                           f"{intruders.top_k}) over {len(intruders.layers)} layers; "
                           "see intruders.json/png"}
        adapter_path = self.out / FINAL_ADAPTER
        metadata = self.adapter_metadata({
            "surgery": surgery, "intruders": {k: intr[k] for k in ("total", "threshold")},
            "val_loss_final": val_final.loss if val_final else None,
            "config": self.cfg.to_dict(),
        })
        storage = adapter_storage(self.gen, ADAPTER_NAME, self.cfg.adapter_dtype)
        save_adapter(self.gen, adapter_path, ADAPTER_NAME, metadata=metadata, storage=storage)
        self.write_sample("final")
        self.write_curves()
        self.log.write({"kind": "end", "step": self.step, "time": time.time(),
                        "surgery": surgery.get("decision"), "intruders": total})
        return self._result("completed", adapter_path, surgery=surgery, intruders=intr,
                            adapter_storage=storage,
                            adapter_mb=adapter_path.stat().st_size / 1e6,
                            val_final=val_final.loss if val_final else None)

    def _result(self, status: str, adapter_path: Path | None, **extra) -> TrainResult:
        cfg = self.cfg
        train = [r for r in self.log.read() if r.get("kind") == "train"] if self.is_main else []
        losses = [r["loss"] for r in train]
        summary = {
            "status": status if status != "interrupted"
            else f"interrupted at step {self.step}; continue with --resume",
            "completed": status == "completed", "variant": cfg.variant, "rank": cfg.rank,
            "alpha": self.lora_config.effective_alpha, "scale": self.lora_config.scale,
            "init": cfg.init, "target": list(cfg.target),
            "adapted_layers": len(self.handle.layers), "trainable_params": self.trainable_count,
            "train_examples": len(self.train_store), "val_examples": len(self.val_store),
            "steps_done": self.step, "steps": cfg.steps, "effective_batch": self.step_size,
            "world_size": self.dist.world_size, "train_time_s": self.elapsed,
            "clips_per_s": (self.step * self.step_size / self.elapsed) if self.elapsed else None,
            "first_train_loss": losses[0] if losses else None,
            "last_train_loss": smooth(losses)[-1] if losses else None,
            "val_loss_base": self.val_base,
            "val_loss_final": extra.get("val_final",
                                        self.last_val.loss if self.last_val else None),
            "surgery": extra.get("surgery"), "intruders": extra.get("intruders"),
            "adapter_path": str(adapter_path) if adapter_path else None,
            "adapter_storage": extra.get("adapter_storage"), "adapter_mb": extra.get("adapter_mb"),
            "output_dir": str(self.out),
            **self.data_info,
        }
        if self.is_main:
            ckpt.write_json_atomic(self.out / SUMMARY_FILE, summary)
        return TrainResult(status, self.step, self.out, adapter_path, summary)


class _Progress:
    """A tqdm bar over optimiser steps (rank 0, not --quiet) showing loss and lr."""

    def __init__(self, start: int, total: int, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=start, desc="train", unit="step",
                            dynamic_ncols=True)

    def update(self, record: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def save_config(cfg: TrainConfig, out: Path) -> None:
    """config.json in the output folder (what produced this run)."""
    out.mkdir(parents=True, exist_ok=True)
    ckpt.write_json_atomic(out / "config.json", json.loads(cfg.to_json()))
