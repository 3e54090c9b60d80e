"""The end of a completed run: surgery decision, intruder report, final adapter, summary.

1. spectral surgery on the trained adapter, kept only when the validation loss does not get
   worse (``surgery.json``); skipped with --no-surgery or without a validation split;
2. the intruder-dimension report of the final adapter (``intruders.json`` / ``.png``);
3. ``adapter_final.safetensors`` in the storage ``--adapter_dtype`` asks for, with the run
   record as metadata; a last sample and the curves;
4. ``summary.json`` (written by the trainer's :meth:`~.trainer.LoRATrainer.result`).
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any

import torch

from selva_core.model.lora import (
    FINAL_ADAPTER_FILE,
    SurgeryConfig,
    adapter_storage,
    intruder_report,
    save_adapter,
    surgery_with_validation,
)
from selva_core.training import checkpoint as ckpt
from selva_core.training.data_order import mix_seed
from selva_core.training.objective import draw_examples, training_loss

if TYPE_CHECKING:
    from selva_core.training.trainer import LoRATrainer, TrainResult

log = logging.getLogger(__name__)

FINAL_ADAPTER = FINAL_ADAPTER_FILE
SURGERY_FILE = "surgery.json"
SURGERY_BATCHES = 8
_SURGERY_SEED = 0x5C6E


def surgery_decision(trainer: LoRATrainer) -> dict[str, Any]:
    """Spectral surgery kept only when the validation loss does not get worse."""
    cfg, store = trainer.cfg, trainer.train_store
    if not cfg.surgery:
        return {"decision": "skipped", "reason": "(--no-surgery)"}
    if not len(trainer.validator):
        return {"decision": "skipped", "reason": "(no validation split to judge it)"}
    n = min(SURGERY_BATCHES, max(1, math.ceil(len(store) / cfg.batch_size)))
    perm = torch.randperm(len(store), generator=torch.Generator().manual_seed(
        mix_seed(cfg.seed, _SURGERY_SEED))).tolist()

    def calib_loss(i: int) -> torch.Tensor:
        idx = [perm[(i * cfg.batch_size + j) % len(perm)] for j in range(cfg.batch_size)]
        batch = store.batch(idx).to(trainer.device)
        seeds = [mix_seed(cfg.seed, _SURGERY_SEED, i, j) for j in range(len(idx))]
        draws = draw_examples(seeds, trainer.latent_shape, cfg.timestep_mode,
                              cfg.cond_dropout).to(trainer.device)
        with trainer.autocast():
            return training_loss(trainer.gen, trainer.gen, batch, draws).mean()

    def val_loss() -> float:
        return float(trainer.validator.evaluate(trainer.gen, trainer.gen, trainer.device).loss)

    try:
        outcome = surgery_with_validation(trainer.gen, calib_loss, val_loss,
                                          trainer.adapter_name, num_batches=n,
                                          config=SurgeryConfig())
    except ValueError as exc:
        log.warning("spectral surgery skipped: %s", exc)
        return {"decision": "skipped", "reason": f"({exc})"}
    info = {"decision": "kept" if outcome.kept else "reverted",
            "val_loss_before": outcome.val_before, "val_loss_after": outcome.val_after,
            "policy": outcome.result.config.policy, "calibration_batches": n,
            "reason": "(validation loss not worse)" if outcome.kept
            else "(validation loss got worse)"}
    if trainer.is_main:
        ckpt.write_json_atomic(trainer.out / SURGERY_FILE,
                               {**info, "layers": outcome.result.summary()["layers"]})
    return info


def finish_run(trainer: LoRATrainer) -> TrainResult:
    """Surgery, intruder report, final adapter, last sample and summary (process 0)."""
    cfg, out = trainer.cfg, trainer.out
    if trainer.last_val is None or trainer.val_base is None:
        trainer.validate()
    surgery = surgery_decision(trainer)
    # The loop validated this very step; only a kept surgery changed the adapter since, and
    # it measured the loss after itself: no second validation of the same step.
    if surgery.get("decision") == "kept":
        val_loss_final = surgery["val_loss_after"]
    else:
        val_loss_final = trainer.last_val.loss if trainer.last_val else None
    intruders = intruder_report(trainer.gen, trainer.adapter_name,
                                json_path=out / "intruders.json",
                                png_path=out / "intruders.png")
    total = intruders.total()
    intr = {"total": total, "threshold": intruders.threshold, "layers": len(intruders.layers),
            "summary": f"{total} intruder dimension(s) (cos < {intruders.threshold:g}, top-"
                       f"{intruders.top_k}) over {len(intruders.layers)} layers; "
                       "see intruders.json/png"}
    adapter_path = out / FINAL_ADAPTER
    metadata = trainer.record.adapter_metadata(
        trainer.progress, surgery=surgery,
        intruders={k: intr[k] for k in ("total", "threshold")},
        val_loss_final=val_loss_final, config=cfg.to_dict())
    storage = adapter_storage(trainer.gen, trainer.adapter_name, cfg.adapter_dtype)
    save_adapter(trainer.gen, adapter_path, trainer.adapter_name, metadata=metadata,
                 storage=storage)
    trainer.write_sample("final")
    trainer.write_curves()
    trainer.log.write({"kind": "end", "step": trainer.step, "time": time.time(),
                       "surgery": surgery.get("decision"), "intruders": total})
    return trainer.result("completed", surgery=surgery, intruders=intr,
                          adapter_path=str(adapter_path), adapter_storage=storage,
                          adapter_mb=adapter_path.stat().st_size / 1e6,
                          val_loss_final=val_loss_final)
