"""``train_lora.py --demo``: the whole job on a synthetic dataset, no downloads, a CPU is enough.

The demo writes a small dataset of generated clips (two sound classes: wall-bounce clicks and
a hum following the shape's height, :func:`selva_core.data.synthetic.make_synthetic_dataset`)
into ``OUTPUT_DIR/demo_data``, then trains on the ``tiny_16k`` variant (the real model classes
at toy width, random weights) with settings sized for a couple of minutes on two CPU cores.
Every artefact of a real run is produced: checkpoints, validation curve, samples, surgery
decision, intruder report, ``adapter_final.safetensors`` and the summary.

Flags the user gave explicitly (anything not at its default) win over the demo's settings.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from selva_core.data.synthetic import make_synthetic_dataset
from selva_core.training.config import TrainConfig

log = logging.getLogger(__name__)

DEMO_DATA = "demo_data"
DEMO_CLASSES = ("bounce", "hum")
DEMO_CLIPS_PER_CLASS = 6
DEMO_CLIP_SECONDS = 2.0
# Sized for ~1-2 minutes on a 2-core CPU; the tiny random model needs a larger lr than 1e-4.
DEMO_SETTINGS = {
    "variant": "tiny_16k",
    "duration": 2.0,
    "steps": 240,
    "warmup_steps": 20,
    "lr": 2e-3,
    "rank": 8,
    "batch_size": 4,
    "save_every": 80,
    "val_every": 20,
    "val_clips": 2,
    "sample_steps": 10,
    "overwrite": True,
}


def demo_config(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the demo's settings wherever the user left the default."""
    defaults = TrainConfig()
    changes = {k: v for k, v in DEMO_SETTINGS.items()
               if getattr(cfg, k) == getattr(defaults, k)}
    data_dir = Path(cfg.output_dir) / DEMO_DATA
    if cfg.data_dir and Path(cfg.data_dir) != data_dir:
        log.warning("--demo makes its own dataset in %s; --data_dir %s is ignored", data_dir,
                    cfg.data_dir)
    return dataclasses.replace(cfg, data_dir=str(data_dir), **changes).validate()


def prepare_demo(cfg: TrainConfig) -> TrainConfig:
    """Write the synthetic dataset (once; reused when present) and return the demo config."""
    cfg = demo_config(cfg)
    data_dir = Path(cfg.data_dir)
    if not (data_dir / "prompts.txt").exists():
        log.info("writing the synthetic demo dataset to %s", data_dir)
        make_synthetic_dataset(data_dir, classes=DEMO_CLASSES,
                               clips_per_class=DEMO_CLIPS_PER_CLASS,
                               duration=DEMO_CLIP_SECONDS, seed=cfg.seed,
                               sample_rate=16000)
    else:
        log.info("reusing the demo dataset in %s", data_dir)
    return cfg
