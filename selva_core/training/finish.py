"""The end of a completed run: surgery decision, intruder report and final adapter.

1. spectral surgery on the trained adapter, kept only when the validation loss does not get
   worse (``surgery.json``); skipped with --no-surgery or without a validation split;
2. the intruder-dimension report of the final adapter (``intruders.json`` / ``.png``);
3. ``adapter_final.safetensors`` in the storage ``--adapter_dtype`` asks for, with the run
   record as metadata.

The trainer (:meth:`~.trainer.LoRATrainer.finish`) orders these steps, then writes the last
sample, the curves and ``summary.json``; the functions here take what they need as arguments,
so that this module does not depend on the trainer.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch

from selva_core.atomic import write_json_atomic
from selva_core.model.lora import (
    SurgeryConfig,
    adapter_storage,
    intruder_report,
    save_adapter,
    surgery_with_validation,
)
from selva_core.run_folder import RunFolder
from selva_core.training.config import TrainConfig
from selva_core.training.data_order import mix_seed
from selva_core.training.objective import ExampleStore, draw_examples, training_loss
from selva_core.training.validation import Validator

log = logging.getLogger(__name__)

SURGERY_BATCHES = 8
_SURGERY_SEED = 0x5C6E


def surgery_decision(gen: torch.nn.Module, adapter_name: str, cfg: TrainConfig,
                     store: ExampleStore, validator: Validator, device: torch.device,
                     latent_shape: tuple[int, int],
                     autocast: Callable[[], AbstractContextManager],
                     out: Path | None) -> dict[str, Any]:
    """Spectral surgery kept only when the validation loss does not get worse.

    ``autocast`` opens the run's autocast context; ``out`` (None on processes other than the
    first) receives ``surgery.json``."""
    if not cfg.surgery:
        return {"decision": "skipped", "reason": "(--no-surgery)"}
    if not len(validator):
        return {"decision": "skipped", "reason": "(no validation split to judge it)"}
    n = min(SURGERY_BATCHES, max(1, math.ceil(len(store) / cfg.batch_size)))
    perm = torch.randperm(len(store), generator=torch.Generator().manual_seed(
        mix_seed(cfg.seed, _SURGERY_SEED))).tolist()

    def calib_loss(i: int) -> torch.Tensor:
        idx = [perm[(i * cfg.batch_size + j) % len(perm)] for j in range(cfg.batch_size)]
        batch = store.batch(idx).to(device)
        seeds = [mix_seed(cfg.seed, _SURGERY_SEED, i, j) for j in range(len(idx))]
        draws = draw_examples(seeds, latent_shape, cfg.timestep_mode,
                              cfg.cond_dropout).to(device)
        with autocast():
            return training_loss(gen, gen, batch, draws).mean()

    def val_loss() -> float:
        return float(validator.evaluate(gen, gen, device).loss)

    try:
        outcome = surgery_with_validation(gen, calib_loss, val_loss, adapter_name,
                                          num_batches=n, config=SurgeryConfig())
    except ValueError as exc:
        log.warning("spectral surgery skipped: %s", exc)
        return {"decision": "skipped", "reason": f"({exc})"}
    info = {"decision": "kept" if outcome.kept else "reverted",
            "val_loss_before": outcome.val_before, "val_loss_after": outcome.val_after,
            "policy": outcome.result.config.policy, "calibration_batches": n,
            "reason": "(validation loss not worse)" if outcome.kept
            else "(validation loss got worse)"}
    if out is not None:
        write_json_atomic(RunFolder(out).surgery_path,
                          {**info, "layers": outcome.result.summary()["layers"]}, sort_keys=True)
    return info


def intruder_summary(gen: torch.nn.Module, adapter_name: str, out: Path) -> dict[str, Any]:
    """The final adapter's intruder-dimension report (written to ``out``) in brief."""
    run = RunFolder(out)
    intruders = intruder_report(gen, adapter_name, json_path=run.intruders_json,
                                png_path=run.intruders_png)
    total = intruders.total()
    return {"total": total, "threshold": intruders.threshold, "layers": len(intruders.layers),
            "summary": f"{total} intruder dimension(s) (cos < {intruders.threshold:g}, top-"
                       f"{intruders.top_k}) over {len(intruders.layers)} layers; "
                       "see intruders.json/png"}


def save_final_adapter(gen: torch.nn.Module, adapter_name: str, out: Path, adapter_dtype: str,
                       metadata: dict[str, Any]) -> tuple[Path, str]:
    """``adapter_final.safetensors`` in the storage ``adapter_dtype`` asks for: (path, storage)."""
    path = RunFolder(out).final_adapter
    storage = adapter_storage(gen, adapter_name, adapter_dtype)
    save_adapter(gen, path, adapter_name, metadata=metadata, storage=storage)
    return path, storage
