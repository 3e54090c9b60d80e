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
manifest untouched. The temporary folders a kill leaves behind are cleared (or, for a
checkpoint caught between its two renames, put back) by :meth:`CheckpointManager.remove_stale`
when the next run starts.

Nothing is trusted blindly. The training state carries a sha256 of its tensors
(``tensors_sha256``) and the manifest the sha256 of both files of each checkpoint; a checkpoint
whose files do not match, cannot be parsed or hold NaN / infinite values is *damaged*: resuming
from it raises :class:`DamagedCheckpointError` naming it and offering the newest good earlier
checkpoint, so a run never continues from garbage into NaN. The manifest is validated row by
row: only folders inside ``checkpoints/`` named like a step (``step_000500``, matching the
row's step) are ever read or deleted; a manifest of the wrong shape is "damaged", not a
traceback.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import safe_open

from selva_core.atomic import (
    is_out_of_space,
    remove_stale_temporaries,
    save_safetensors_atomic,
    space_problem,
    write_json_atomic,
)
from selva_core.checksums import file_sha256
from selva_core.run_folder import CHECKPOINT_ADAPTER_FILE as ADAPTER_FILE
from selva_core.run_folder import CHECKPOINT_STATE_FILE as STATE_FILE
from selva_core.run_folder import MANIFEST_FILE, STEP_FOLDER, step_folder_name

log = logging.getLogger(__name__)

STATE_FORMAT = "selva-lora-training-state"
STATE_VERSION = 1
MANIFEST_FORMAT = "selva-lora-checkpoints"
MANIFEST_VERSION = 1
_STALE = re.compile(r"^\.(tmp|old)-(step_\d{6,})-\d+$")


class CheckpointError(ValueError):
    """A checkpoint cannot be used (missing, corrupt, or from an incompatible run)."""


class DamagedCheckpointError(CheckpointError):
    """A checkpoint (or the manifest) whose files fail their checks.

    ``step``: the damaged checkpoint's step (None for the manifest); ``good``: the newest
    earlier checkpoint that passed every check, offered in the message (None when none did).
    """

    def __init__(self, message: str, step: int | None = None,
                 good: CheckpointEntry | None = None):
        super().__init__(message)
        self.step = step
        self.good = good


class CheckpointWriteError(RuntimeError):
    """Writing a checkpoint failed; the previous checkpoint is intact (named in the message)."""


# --- the one seam where a checkpoint's tensors reach the disk (tests patch it to fail) -------
def _save_file(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    save_safetensors_atomic(path, tensors, metadata)


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


# --- checksums -------------------------------------------------------------------------------
def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes (sorted by name)."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _non_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    """Name of the first floating-point tensor holding NaN or inf, else None."""
    for key in sorted(tensors):
        t = tensors[key]
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return key
    return None


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
                    "state": json.dumps(body, sort_keys=True),
                    "tensors_sha256": tensors_sha256(tensors)}
        _save_file(tensors, path, metadata)

    @classmethod
    def load(cls, path: Path) -> TrainingState:
        """Read a file written by :meth:`save`; a wrong or damaged file (unreadable, tensors
        that fail their checksum, NaN / inf parameters or optimiser moments, malformed
        metadata) raises CheckpointError."""
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"training state {path} does not exist; the checkpoint is "
                                  "incomplete; resume from another step (--resume-from)")
        try:
            with safe_open(str(path), framework="pt") as fh:
                metadata = fh.metadata() or {}
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"training state {path} is unreadable ({exc}); resume from "
                                  "another step (--resume-from) or start a new run") from exc
        if metadata.get("format") != STATE_FORMAT:
            raise CheckpointError(f"{path} is not a SelVA LoRA training state (format "
                                  f"{metadata.get('format')!r}); point --resume at a run's "
                                  "output folder")
        if metadata.get("version") != str(STATE_VERSION):
            raise CheckpointError(f"{path} has training-state version {metadata.get('version')}"
                                  f"; this trainer reads version {STATE_VERSION}")
        if metadata.get("tensors_sha256") != tensors_sha256(tensors):
            raise CheckpointError(f"training state {path} is damaged: its tensors do not match "
                                  "the checksum written with them")
        bad = _non_finite({k: v for k, v in tensors.items()
                           if k.startswith(("param/", "optim/"))})
        if bad:
            raise CheckpointError(f"training state {path} is damaged: {bad} holds NaN or "
                                  "infinite values (training from it would only give NaN)")
        try:
            return cls._from_parts(metadata, tensors)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(f"training state {path} is damaged: its metadata is "
                                  f"malformed ({type(exc).__name__}: {exc})") from None

    @classmethod
    def _from_parts(cls, metadata: dict[str, str], tensors: dict[str, torch.Tensor]):
        body = json.loads(metadata["state"])
        if not isinstance(body, dict):
            raise TypeError("state is not a JSON object")
        for key in ("step", "stream_pos", "epoch"):
            if not isinstance(body[key], int) or isinstance(body[key], bool) or body[key] < 0:
                raise ValueError(f"{key}={body[key]!r} is not a count")
        for key in ("identity", "config", "optimizer", "rng"):
            if not isinstance(body[key], dict):
                raise TypeError(f"{key} is not a JSON object")
        params = {name: tensors[f"param/{name}"] for name in body["param_names"]}
        rng_tensors = {k: v for k, v in tensors.items() if k.startswith("rng/")}
        return cls(
            step=body["step"], stream_pos=body["stream_pos"], epoch=body["epoch"],
            permutation=tensors["data/permutation"].tolist(), params=params,
            optimizer=unflatten_optimizer_state(tensors, body["optimizer"]),
            identity=body["identity"], train_loss=body["train_loss"],
            val_loss=body["val_loss"], elapsed_s=body["elapsed_s"], config=body["config"],
            rng_tensors=rng_tensors, rng_meta=body["rng"], extra=body.get("extra") or {},
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
def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _is_number_or_none(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


@dataclass(frozen=True)
class CheckpointEntry:
    """One row of ``manifest.json``. ``sha256``: file name -> sha256 of each of its two
    files."""

    step: int
    folder: str
    train_loss: float | None
    val_loss: float | None
    time: str
    elapsed_s: float
    reason: str
    sha256: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = {"step": self.step, "folder": self.folder, "adapter": f"{self.folder}/"
             f"{ADAPTER_FILE}", "state": f"{self.folder}/{STATE_FILE}",
             "train_loss": self.train_loss, "val_loss": self.val_loss, "time": self.time,
             "elapsed_s": self.elapsed_s, "reason": self.reason}
        if self.sha256:
            d["sha256"] = dict(self.sha256)
        return d

    @classmethod
    def from_dict(cls, d: Any) -> CheckpointEntry:
        """A validated row; ValueError names what is wrong. The folder must be the row's own
        step folder (``step_000500`` for step 500), so a row never points anywhere else."""
        if not isinstance(d, dict):
            raise ValueError(f"a row is {type(d).__name__}, not an object")
        step, folder = d.get("step"), d.get("folder")
        if not _is_count(step):
            raise ValueError(f"step {step!r} is not a step number")
        m = STEP_FOLDER.match(folder) if isinstance(folder, str) else None
        if m is None or int(m.group(1)) != step:
            raise ValueError(f"folder {folder!r} of step {step} is not step_{step:06d}")
        for key in ("train_loss", "val_loss", "elapsed_s"):
            if not _is_number_or_none(d.get(key)):
                raise ValueError(f"{key} {d.get(key)!r} of step {step} is not a number")
        for key in ("time", "reason"):
            if not isinstance(d.get(key, ""), str):
                raise ValueError(f"{key} {d.get(key)!r} of step {step} is not text")
        sums = d.get("sha256") or {}
        if not (isinstance(sums, dict) and set(sums) == {ADAPTER_FILE, STATE_FILE}
                and all(isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v)
                        for v in sums.values())):
            raise ValueError(f"sha256 of step {step} is not a map of its two files to "
                             "checksums")
        return cls(step=step, folder=folder, train_loss=d.get("train_loss"),
                   val_loss=d.get("val_loss"), time=d.get("time", ""),
                   elapsed_s=float(d.get("elapsed_s") or 0.0), reason=d.get("reason", ""),
                   sha256=dict(sums))


class CheckpointManager:
    """Writes, lists, verifies, prunes and finds the checkpoints of one run folder."""

    def __init__(self, root: Path, keep_last: int = 0, keep_best: bool = False):
        self.root = Path(root)
        self.keep_last = keep_last
        self.keep_best = keep_best

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST_FILE

    def _damaged_manifest(self, why: str) -> DamagedCheckpointError:
        return DamagedCheckpointError(
            f"checkpoint manifest {self.manifest_path} is damaged ({why}); restore it, or "
            "delete it (the step_* folders stay) to start over with --overwrite")

    def entries(self) -> list[CheckpointEntry]:
        """Checkpoints listed in the manifest, oldest first ([] when there is none)."""
        if not self.manifest_path.exists():
            return []
        try:
            data = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise self._damaged_manifest(f"{type(exc).__name__}: {exc}") from None
        if not isinstance(data, dict):
            raise self._damaged_manifest(f"it holds a JSON {type(data).__name__}, not an object")
        if data.get("format") != MANIFEST_FORMAT:
            raise self._damaged_manifest(f"format {data.get('format')!r}")
        if not isinstance(data.get("checkpoints"), list):
            raise self._damaged_manifest("'checkpoints' is not a list")
        try:
            rows = [CheckpointEntry.from_dict(d) for d in data["checkpoints"]]
        except ValueError as exc:
            raise self._damaged_manifest(str(exc)) from None
        steps = [e.step for e in rows]
        if len(set(steps)) != len(steps):
            raise self._damaged_manifest("a step is listed twice")
        return sorted(rows, key=lambda e: e.step)

    def folder(self, entry: CheckpointEntry) -> Path:
        """The checkpoint's folder: ``root/step_XXXXXX`` (validated by the manifest reader)."""
        if not STEP_FOLDER.match(entry.folder):
            raise self._damaged_manifest(f"folder {entry.folder!r} is not a step folder")
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

    def _load_checked(self, entry: CheckpointEntry) -> TrainingState:
        """The entry's training state after every check (raises CheckpointError)."""
        folder = self.folder(entry)
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            raise CheckpointError(f"{folder} is not a checkpoint folder")
        for name, want in sorted(entry.sha256.items()):
            path = folder / name
            try:
                got = file_sha256(path)
            except OSError as exc:
                raise CheckpointError(f"{path} is unreadable ({exc.strerror or exc})") from None
            if got != want:
                raise CheckpointError(f"{path} does not match the checksum in the manifest "
                                      "(the file changed or is damaged)")
        state = TrainingState.load(folder / STATE_FILE)
        if state.step != entry.step:
            raise CheckpointError(f"{folder / STATE_FILE} holds step {state.step}, the manifest "
                                  f"says {entry.step}")
        return state

    def verify(self, entry: CheckpointEntry) -> str | None:
        """Why the checkpoint is damaged, or None when it passes every check."""
        try:
            self._load_checked(entry)
        except CheckpointError as exc:
            return str(exc)
        return None

    def newest_good(self, before: int | None = None) -> CheckpointEntry | None:
        """The newest checkpoint (older than step ``before``) that passes every check."""
        for e in reversed(self.entries()):
            if (before is None or e.step < before) and self.verify(e) is None:
                return e
        return None

    def load_state(self, entry: CheckpointEntry) -> TrainingState:
        """The checked training state; a damaged checkpoint raises DamagedCheckpointError
        naming it and offering the newest good earlier checkpoint (``--resume-from STEP``)."""
        try:
            return self._load_checked(entry)
        except CheckpointError as exc:
            good = self.newest_good(before=entry.step)
            offer = (f"the newest good checkpoint is step {good.step}: resume from it with "
                     f"--resume-from {good.step}" if good else
                     "no earlier checkpoint is intact: start over with --overwrite")
            raise DamagedCheckpointError(
                f"checkpoint of step {entry.step} ({self.root / entry.folder}) is damaged: "
                f"{exc}. {offer}", step=entry.step, good=good) from None

    def remove_stale(self) -> list[Path]:
        """Clear what a killed save left in the checkpoints folder: ``.tmp-step_*`` folders
        (never listed, removed), a ``.old-step_*`` folder whose step folder is missing (caught
        between the two renames of a save: put back) or present (removed), and the atomic
        writers' temporary files. Only names of exactly these forms, directly inside the
        folder, are touched; links are unlinked, never followed. Returns what was removed."""
        if not self.root.is_dir():
            return []
        removed: list[Path] = []
        for path in sorted(self.root.iterdir()):
            m = _STALE.match(path.name)
            if not m:
                continue
            final = self.root / m.group(2)
            try:
                if path.is_symlink() or not path.is_dir():
                    path.unlink()
                elif m.group(1) == "old" and not final.exists() and not final.is_symlink():
                    os.replace(path, final)
                    log.warning("put back checkpoint %s left aside by an interrupted save",
                                final)
                    continue
                else:
                    shutil.rmtree(path)
            except OSError as exc:
                log.warning("could not remove stale %s (%s)", path, exc.strerror or exc)
                continue
            removed.append(path)
        removed += remove_stale_temporaries(self.root)
        if removed:
            log.info("removed %d leftover(s) of an interrupted checkpoint save in %s: %s",
                     len(removed), self.root, ", ".join(p.name for p in removed))
        return removed

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
        """Write ``step_XXXXXX/`` (adapter + state) atomically, then list it in the manifest
        with the sha256 of both files.

        ``write_adapter(path)`` writes the adapter file. On any OSError the temporary folder
        is removed and :class:`CheckpointWriteError` names the intact previous checkpoint.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        name = step_folder_name(state.step)
        final = self.root / name
        tmp = self.root / f".tmp-{name}-{os.getpid()}"
        previous = self.entries()
        try:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
            write_adapter(tmp / ADAPTER_FILE)
            state.save(tmp / STATE_FILE)
            sums = {f: file_sha256(tmp / f) for f in (ADAPTER_FILE, STATE_FILE)}
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
                elapsed_s=round(state.elapsed_s, 3), reason=reason, sha256=sums,
            )
            rows = [e for e in previous if e.step != state.step] + [entry]
            self._write_manifest(sorted(rows, key=lambda e: e.step))
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            last = previous[-1] if previous else None
            kept = (f"the previous checkpoint (step {last.step}, {self.root / last.folder}) is "
                    "intact" if last else "no earlier checkpoint exists")
            if is_out_of_space(exc):
                why = exc.strerror
                hint = f"{space_problem(exc.errno)}: free some space in {self.root}"
            else:
                why, hint = exc, "check the folder is writable"
            raise CheckpointWriteError(
                f"could not write the checkpoint of step {state.step} to {final} ({why}); "
                f"{kept}. {hint[0].upper()}{hint[1:]}, then rerun with --resume"
            ) from exc
        self._prune()
        return entry

    def _write_manifest(self, rows: list[CheckpointEntry]) -> None:
        write_json_atomic(self.manifest_path, {
            "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION,
            "checkpoints": [e.to_dict() for e in rows],
        }, sort_keys=True)

    def best(self) -> CheckpointEntry | None:
        """The listed checkpoint with the lowest validation loss (the earliest on a tie), or
        None when no row has one."""
        rows = [e for e in self.entries() if e.val_loss is not None and math.isfinite(e.val_loss)]
        return min(rows, key=lambda e: (e.val_loss, e.step)) if rows else None

    def _prune(self) -> None:
        """Keep the newest ``keep_last`` checkpoints (0: all) and, with ``keep_best``, the one
        with the lowest validation loss."""
        if self.keep_last <= 0:
            return
        rows = self.entries()
        if len(rows) <= self.keep_last:
            return
        keep = rows[-self.keep_last:]
        best = self.best() if self.keep_best else None
        if best is not None and best not in keep:
            keep = [best, *keep]
        drop = [e for e in rows if e not in keep]
        if not drop:
            return
        self._write_manifest(keep)
        for e in drop:
            folder = self.folder(e)
            if folder.is_symlink() or not folder.is_dir():
                log.warning("not removing %s: not a checkpoint folder", folder)
                continue
            shutil.rmtree(folder, ignore_errors=True)
            log.info("removed old checkpoint %s (--keep_checkpoints %d)", e.folder,
                     self.keep_last)
