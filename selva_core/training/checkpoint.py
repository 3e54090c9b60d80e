"""Resumable checkpoints: adapter + full training state, safetensors only, written atomically.

Layout under ``OUTPUT_DIR/checkpoints``::

    manifest.json                      every checkpoint: step, losses, time, files
    step_000500/adapter.safetensors    the adapter (LoRA library format; loads in ComfyUI)
    step_000500/training_state.safetensors

``training_state.safetensors`` holds, as tensors, the exact trainable parameters, the
optimiser state flattened to one tensor per (parameter, slot), every RNG state (torch CPU,
CUDA when present, numpy, python ``random``) and the current epoch's data permutation; the
rest (step, data position, optimiser hyper-parameters, the run's identity) is JSON in the
file metadata. Nothing is pickled, so loading never executes code.

A checkpoint is written into a temporary folder and renamed into place, then the manifest is
replaced atomically; a crash or a full disk at any moment leaves the previous checkpoint and
manifest untouched.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import safe_open, save_file

from selva_core.atomic import atomic_path, write_text_atomic

log = logging.getLogger(__name__)

STATE_FORMAT = "selva-lora-training-state"
STATE_VERSION = 1
MANIFEST_FORMAT = "selva-lora-checkpoints"
MANIFEST_VERSION = 1
ADAPTER_FILE = "adapter.safetensors"
STATE_FILE = "training_state.safetensors"
MANIFEST_FILE = "manifest.json"


class CheckpointError(ValueError):
    """A checkpoint cannot be used (missing, corrupt, or from an incompatible run)."""


class CheckpointWriteError(RuntimeError):
    """Writing a checkpoint failed; the previous checkpoint is intact (named in the message)."""


# --- low-level writers (the single place that touches the disk; tests patch _save_file) -----
def _save_file(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    save_file(tensors, str(path), metadata=metadata)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON (sorted keys) to ``path`` atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True))


def write_safetensors_atomic(tensors: dict[str, torch.Tensor], path: Path,
                             metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically (through :func:`_save_file`)."""
    with atomic_path(path) as tmp:
        _save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp,
                   metadata or {})


# --- RNG state -------------------------------------------------------------------------------
def capture_rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every global RNG (torch CPU, CUDA, numpy, python) as tensors plus JSON-able extras."""
    tensors: dict[str, torch.Tensor] = {"rng/torch_cpu": torch.get_rng_state().clone()}
    meta: dict[str, Any] = {"cuda_devices": 0}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states = torch.cuda.get_rng_state_all()
        for i, s in enumerate(states):
            tensors[f"rng/cuda/{i}"] = s.clone()
        meta["cuda_devices"] = len(states)
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng/numpy_keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64).copy())
    meta["numpy"] = {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss),
                     "cached_gaussian": float(cached)}
    version, internal, gauss_next = random.getstate()
    tensors["rng/python_state"] = torch.tensor(internal, dtype=torch.int64)
    meta["python"] = {"version": version, "gauss_next": gauss_next}
    return tensors, meta


def restore_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(tensors["rng/torch_cpu"])
    n_cuda = int(meta.get("cuda_devices", 0))
    if n_cuda and torch.cuda.is_available():
        states = [tensors[f"rng/cuda/{i}"] for i in range(n_cuda)]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
        else:
            log.warning("checkpoint holds %d CUDA RNG states but %d GPUs are visible; CUDA RNG "
                        "not restored", n_cuda, torch.cuda.device_count())
    np_meta = meta["numpy"]
    keys = tensors["rng/numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state((np_meta["kind"], keys, np_meta["pos"], np_meta["has_gauss"],
                         np_meta["cached_gaussian"]))
    py = meta["python"]
    internal = tuple(int(x) for x in tensors["rng/python_state"].tolist())
    random.setstate((py["version"], internal, py["gauss_next"]))


# --- optimiser state ---------------------------------------------------------------------------
def flatten_optimizer_state(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor],
                                                                  dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors ``optim/<idx>/<slot>`` and JSON metadata."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, slots in state_dict["state"].items():
        for slot, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{idx}/{slot}"] = value.detach().clone().cpu()
            else:
                scalars.setdefault(str(idx), {})[slot] = value
    groups = []
    for group in state_dict["param_groups"]:
        groups.append({k: (list(v) if isinstance(v, tuple) else v) for k, v in group.items()})
    return tensors, {"param_groups": groups, "scalars": scalars}


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor],
                              meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten_optimizer_state` (a dict for ``optimizer.load_state_dict``)."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if not key.startswith("optim/"):
            continue
        _, idx, slot = key.split("/", 2)
        state.setdefault(int(idx), {})[slot] = value
    for idx, slots in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(slots)
    groups = []
    for group in meta["param_groups"]:
        g = dict(group)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


# --- the training state ------------------------------------------------------------------------
@dataclass
class TrainingState:
    """Everything needed to continue a run bit-identically from an optimiser-step boundary."""

    step: int  # optimiser steps completed
    stream_pos: int  # training examples consumed (global, over all processes)
    epoch: int
    permutation: list[int]  # data order of the current epoch (checked on resume)
    params: dict[str, torch.Tensor]  # exact trainable parameters, by module path
    optimizer: dict[str, Any]  # optimizer.state_dict()
    identity: dict[str, Any]  # what the adapter is (variant, rank, ...): must match on resume
    train_loss: float | None = None
    val_loss: float | None = None
    elapsed_s: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)
    rng_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    rng_meta: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        """Write as one safetensors file (atomic)."""
        tensors: dict[str, torch.Tensor] = {}
        for name, p in self.params.items():
            tensors[f"param/{name}"] = p.detach().clone().cpu()
        opt_tensors, opt_meta = flatten_optimizer_state(self.optimizer)
        tensors.update(opt_tensors)
        tensors.update(self.rng_tensors)
        tensors["data/permutation"] = torch.tensor(self.permutation, dtype=torch.int64)
        body = {
            "step": self.step, "stream_pos": self.stream_pos, "epoch": self.epoch,
            "train_loss": self.train_loss, "val_loss": self.val_loss,
            "elapsed_s": self.elapsed_s, "identity": self.identity, "config": self.config,
            "optimizer": opt_meta, "rng": self.rng_meta, "param_names": list(self.params),
            "extra": self.extra,
        }
        metadata = {"format": STATE_FORMAT, "version": str(STATE_VERSION),
                    "state": json.dumps(body, sort_keys=True)}
        write_safetensors_atomic(tensors, path, metadata)

    @classmethod
    def load(cls, path: Path) -> TrainingState:
        """Read a file written by :meth:`save`; a wrong or damaged file raises CheckpointError."""
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"training state {path} does not exist; the checkpoint is "
                                  "incomplete; resume from another step (--resume-from)")
        try:
            with safe_open(str(path), framework="pt") as fh:
                metadata = fh.metadata() or {}
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"training state {path} is unreadable ({exc}); resume from "
                                  "another step (--resume-from) or start a new run") from exc
        if metadata.get("format") != STATE_FORMAT:
            raise CheckpointError(f"{path} is not a SelVA LoRA training state (format "
                                  f"{metadata.get('format')!r}); point --resume at a run's "
                                  "output folder")
        if int(metadata.get("version", -1)) != STATE_VERSION:
            raise CheckpointError(f"{path} has training-state version {metadata.get('version')}"
                                  f"; this trainer reads version {STATE_VERSION}")
        body = json.loads(metadata["state"])
        params = {name: tensors[f"param/{name}"] for name in body["param_names"]}
        rng_tensors = {k: v for k, v in tensors.items() if k.startswith("rng/")}
        return cls(
            step=body["step"], stream_pos=body["stream_pos"], epoch=body["epoch"],
            permutation=tensors["data/permutation"].tolist(), params=params,
            optimizer=unflatten_optimizer_state(tensors, body["optimizer"]),
            identity=body["identity"], train_loss=body["train_loss"],
            val_loss=body["val_loss"], elapsed_s=body["elapsed_s"], config=body["config"],
            rng_tensors=rng_tensors, rng_meta=body["rng"], extra=body.get("extra", {}),
        )


def check_identity(saved: dict[str, Any], current: dict[str, Any], source: Path) -> None:
    """Raise one CheckpointError listing every field where the checkpoint differs from the run."""
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs this run {current.get(k)!r}"
             for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]
    if diffs:
        raise CheckpointError(
            f"cannot resume from {source}: it belongs to a different adapter ("
            + "; ".join(diffs) + "). Rerun with the checkpoint's settings, or train into a new "
            "--output_dir without --resume"
        )


# --- manifest + checkpoint folders ---------------------------------------------------------
@dataclass(frozen=True)
class CheckpointEntry:
    """One row of ``manifest.json``."""

    step: int
    folder: str
    train_loss: float | None
    val_loss: float | None
    time: str
    elapsed_s: float
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "folder": self.folder, "adapter": f"{self.folder}/"
                f"{ADAPTER_FILE}", "state": f"{self.folder}/{STATE_FILE}",
                "train_loss": self.train_loss, "val_loss": self.val_loss, "time": self.time,
                "elapsed_s": self.elapsed_s, "reason": self.reason}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CheckpointEntry:
        return cls(step=int(d["step"]), folder=d["folder"], train_loss=d.get("train_loss"),
                   val_loss=d.get("val_loss"), time=d.get("time", ""),
                   elapsed_s=float(d.get("elapsed_s", 0.0)), reason=d.get("reason", ""))


class CheckpointManager:
    """Writes, lists, prunes and finds the checkpoints of one run folder."""

    def __init__(self, root: Path, keep_last: int = 0):
        self.root = Path(root)
        self.keep_last = keep_last

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST_FILE

    def entries(self) -> list[CheckpointEntry]:
        """Checkpoints listed in the manifest, oldest first ([] when there is none)."""
        if not self.manifest_path.exists():
            return []
        try:
            data = json.loads(self.manifest_path.read_text(encoding="utf-8"))
            if data.get("format") != MANIFEST_FORMAT:
                raise ValueError(f"format {data.get('format')!r}")
            rows = [CheckpointEntry.from_dict(d) for d in data["checkpoints"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"checkpoint manifest {self.manifest_path} is damaged "
                                  f"({exc}); delete it to start over or restore it") from exc
        return sorted(rows, key=lambda e: e.step)

    def folder(self, entry: CheckpointEntry) -> Path:
        return self.root / entry.folder

    def find(self, step: int | None = None) -> CheckpointEntry:
        """The newest checkpoint, or the one of ``step``; a clear error when there is none."""
        rows = self.entries()
        if not rows:
            raise CheckpointError(f"no checkpoint to resume from in {self.root} (no "
                                  f"{MANIFEST_FILE}); run without --resume to start training")
        if step is None:
            return rows[-1]
        for e in rows:
            if e.step == step:
                return e
        raise CheckpointError(f"no checkpoint of step {step} in {self.root}; available steps: "
                              f"{', '.join(str(e.step) for e in rows)}")

    def load_state(self, entry: CheckpointEntry) -> TrainingState:
        return TrainingState.load(self.folder(entry) / STATE_FILE)

    def forget_after(self, step: int) -> list[CheckpointEntry]:
        """Drop manifest rows newer than ``step`` (resuming an earlier branch); returns them."""
        rows = self.entries()
        dropped = [e for e in rows if e.step > step]
        if dropped:
            self._write_manifest([e for e in rows if e.step <= step])
            log.warning("resuming from step %d: later checkpoints %s leave the manifest and "
                        "will be overwritten", step, [e.step for e in dropped])
        return dropped

    def save(self, state: TrainingState, write_adapter: Callable[[Path], None],
             reason: str = "periodic") -> CheckpointEntry:
        """Write ``step_XXXXXX/`` (adapter + state) atomically, then list it in the manifest.

        ``write_adapter(path)`` writes the adapter file. On any OSError the temporary folder
        is removed and :class:`CheckpointWriteError` names the intact previous checkpoint.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"step_{state.step:06d}"
        final = self.root / name
        tmp = self.root / f".tmp-{name}-{os.getpid()}"
        previous = self.entries()
        try:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
            write_adapter(tmp / ADAPTER_FILE)
            state.save(tmp / STATE_FILE)
            if final.exists():
                trash = self.root / f".old-{name}-{os.getpid()}"
                os.replace(final, trash)
                os.replace(tmp, final)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.replace(tmp, final)
            entry = CheckpointEntry(
                step=state.step, folder=name, train_loss=state.train_loss,
                val_loss=state.val_loss,
                time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                elapsed_s=round(state.elapsed_s, 3), reason=reason,
            )
            rows = [e for e in previous if e.step != state.step] + [entry]
            self._write_manifest(sorted(rows, key=lambda e: e.step))
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            last = previous[-1] if previous else None
            kept = (f"the previous checkpoint (step {last.step}, {self.root / last.folder}) is "
                    "intact" if last else "no earlier checkpoint exists")
            hint = ("the disk is full: free some space" if exc.errno == errno.ENOSPC
                    else "check the folder is writable")
            raise CheckpointWriteError(
                f"could not write the checkpoint of step {state.step} to {final} ({exc}); "
                f"{kept}. {hint.capitalize()}, then rerun with --resume"
            ) from exc
        self._prune()
        return entry

    def _write_manifest(self, rows: list[CheckpointEntry]) -> None:
        write_json_atomic(self.manifest_path, {
            "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION,
            "checkpoints": [e.to_dict() for e in rows],
        })

    def _prune(self) -> None:
        if self.keep_last <= 0:
            return
        rows = self.entries()
        if len(rows) <= self.keep_last:
            return
        drop, keep = rows[: -self.keep_last], rows[-self.keep_last:]
        self._write_manifest(keep)
        for e in drop:
            shutil.rmtree(self.folder(e), ignore_errors=True)
            log.info("removed old checkpoint %s (--keep_checkpoints %d)", e.folder,
                     self.keep_last)
