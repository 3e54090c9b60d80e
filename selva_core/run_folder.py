"""A training run's folder: the one place that names what a run writes.

``train_lora.py --output_dir OUT`` (and the trainer node) fills one folder::

    config.json                       the TrainConfig that produced the run (written first)
    train_log.jsonl                   one JSON object per event (train / val / sample / ...)
    train.log                         the console log (train_lora.py)
    loss_curve.png                    the curves
    samples/<tag>.wav, .png           checkpoint samples of a validation clip
    checkpoints/manifest.json         every checkpoint: step, losses, time, files
    checkpoints/step_000500/          adapter.safetensors + training_state.safetensors
    surgery.json, intruders.json/png  the end of a completed run
    adapter_final.safetensors         the trained adapter (embedding_final.safetensors: the
                                      token vectors of a textual-inversion run)
    summary.json                      what the run says about itself at its end
    listen/                           the demo's listening comparison
    feature_cache/                    the clips' features (unless --cache_dir names another)

:class:`RunFolder` gives each of these a name and reads the small ones back (config, summary,
the checkpoints' adapters in step order, what an evaluation takes from a run). Writing stays
with the code that produces each file. This module imports nothing of the trainer or the
evaluator, so training, evaluation, sweeps, nodes and the LoRA loader all use it.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selva_core.variants import TRAIN_DURATION_S

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
LOG_FILE = "train_log.jsonl"
CONSOLE_LOG_FILE = "train.log"
CURVE_FILE = "loss_curve.png"
SAMPLES_DIR = "samples"
CHECKPOINTS_DIR = "checkpoints"
MANIFEST_FILE = "manifest.json"
CHECKPOINT_ADAPTER_FILE = "adapter.safetensors"
CHECKPOINT_STATE_FILE = "training_state.safetensors"
#: A checkpoint's folder inside ``checkpoints/``: ``step_`` and the step in six or more digits.
STEP_FOLDER = re.compile(r"^step_(\d{6,})$")
FINAL_ADAPTER_FILE = "adapter_final.safetensors"
FINAL_EMBEDDING_FILE = "embedding_final.safetensors"  # a textual-inversion run's
SUMMARY_FILE = "summary.json"
SURGERY_FILE = "surgery.json"
INTRUDERS_JSON = "intruders.json"
INTRUDERS_PNG = "intruders.png"
LISTEN_DIR = "listen"
FEATURE_CACHE_DIR = "feature_cache"

#: What a run writes in its folder (--overwrite removes these but train.log; the feature cache
#: is kept). The first six are the names that mark a folder as holding run-like files.
RUN_ARTEFACTS = (CHECKPOINTS_DIR, SAMPLES_DIR, LOG_FILE, CURVE_FILE, SUMMARY_FILE,
                 FINAL_ADAPTER_FILE, FINAL_EMBEDDING_FILE, INTRUDERS_JSON, INTRUDERS_PNG,
                 SURGERY_FILE, CONFIG_FILE, CONSOLE_LOG_FILE, LISTEN_DIR)
# What a run leaves that marks a folder as a run's even when no run of ours started there.
RUN_MARKERS = RUN_ARTEFACTS[:7]


def step_folder_name(step: int) -> str:
    """``step_000500`` for step 500: the folder name of a checkpoint."""
    return f"step_{step:06d}"


@dataclass(frozen=True)
class RunInfo:
    """What an evaluation takes from a training run's folder: its clips folder, the held-out
    (validation) clips, the feature cache it used and the settings of its windows."""

    run_dir: Path
    clips_dir: Path
    held_out: tuple[str, ...] | None
    cache_dir: Path | None
    variant: str | None
    duration: float
    window: str


@dataclass(frozen=True)
class RunFolder:
    """The folder of one training run (``path`` need not exist yet: a new run's folder)."""

    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    # --- the artefacts ---------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def log_path(self) -> Path:
        return self.path / LOG_FILE

    @property
    def console_log_path(self) -> Path:
        return self.path / CONSOLE_LOG_FILE

    @property
    def curve_path(self) -> Path:
        return self.path / CURVE_FILE

    @property
    def samples_dir(self) -> Path:
        return self.path / SAMPLES_DIR

    def sample_wav(self, tag: str) -> Path:
        """``samples/<tag>.wav`` (its spectrogram sits next to it as ``.png``)."""
        return self.samples_dir / f"{tag}.wav"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    @property
    def manifest_path(self) -> Path:
        return self.checkpoints_dir / MANIFEST_FILE

    @property
    def final_adapter(self) -> Path:
        return self.path / FINAL_ADAPTER_FILE

    @property
    def final_embedding(self) -> Path:
        return self.path / FINAL_EMBEDDING_FILE

    @property
    def summary_path(self) -> Path:
        return self.path / SUMMARY_FILE

    @property
    def surgery_path(self) -> Path:
        return self.path / SURGERY_FILE

    @property
    def intruders_json(self) -> Path:
        return self.path / INTRUDERS_JSON

    @property
    def intruders_png(self) -> Path:
        return self.path / INTRUDERS_PNG

    @property
    def listen_dir(self) -> Path:
        return self.path / LISTEN_DIR

    @property
    def default_cache_dir(self) -> Path:
        """The feature cache a run uses when ``--cache_dir`` names none."""
        return self.path / FEATURE_CACHE_DIR

    # --- recognising a run -----------------------------------------------------------------
    @property
    def started(self) -> bool:
        """A run of ours started here (its config or its log was written)."""
        return self.log_path.is_file() or self.config_path.is_file()

    def is_run(self) -> bool:
        """The folder holds a training run: its config, log, checkpoints or final adapter (or
        a textual-inversion run's final embedding)."""
        return self.path.is_dir() and (self.started or self.manifest_path.is_file()
                                       or self.final_adapter.is_file()
                                       or self.final_embedding.is_file()
                                       or bool(self.checkpoint_adapters()))

    # --- checkpoints -----------------------------------------------------------------------
    def step_folder(self, step: int) -> Path:
        return self.checkpoints_dir / step_folder_name(step)

    def checkpoint_adapters(self) -> list[tuple[int, Path]]:
        """(step, adapter file) of every checkpoint folder that holds its adapter, in step
        order (read from the folders, so a run whose manifest is gone still lists them)."""
        if not self.checkpoints_dir.is_dir():
            return []
        found = []
        for sub in self.checkpoints_dir.iterdir():
            m = STEP_FOLDER.match(sub.name)
            if m and (sub / CHECKPOINT_ADAPTER_FILE).is_file():
                found.append((int(m.group(1)), sub / CHECKPOINT_ADAPTER_FILE))
        return sorted(found)

    def adapters(self) -> list[tuple[str, int | None, Path]]:
        """(label, step, adapter file) of every checkpoint, oldest first, then the final
        adapter (label ``final``, step None); ``[]`` when the folder holds none."""
        found: list[tuple[str, int | None, Path]] = [
            (path.parent.name, step, path) for step, path in self.checkpoint_adapters()]
        if self.final_adapter.is_file():
            found.append(("final", None, self.final_adapter))
        return found

    # --- small readers ---------------------------------------------------------------------
    def read_config(self) -> dict[str, Any] | None:
        """``config.json`` as a dict; None when missing, unreadable (logged) or not an object."""
        return _read_object(self.config_path)

    def read_summary(self) -> dict[str, Any] | None:
        """``summary.json`` as a dict; None when missing, unreadable (logged) or not an object."""
        return _read_object(self.summary_path)

    def is_finished(self) -> bool:
        """The run completed: its summary says so and its final adapter is there."""
        summary = self.read_summary()
        return bool(summary and summary.get("completed")) and self.final_adapter.is_file()

    def info(self) -> RunInfo | None:
        """What an evaluation takes from this run (:class:`RunInfo`); None when the folder is
        not a run that names its clips folder in ``config.json`` (a plain clip folder)."""
        if not self.config_path.is_file():
            return None
        config = _read_object(self.config_path, "treating it as a clip folder")
        if not config or not config.get("data_dir"):
            return None
        clips_dir = Path(config["data_dir"]).expanduser()
        if not clips_dir.is_absolute() and not clips_dir.is_dir():
            for base in (self.path, self.path.parent):
                if (base / clips_dir).is_dir():
                    clips_dir = base / clips_dir
                    break
        held_out = None
        if self.summary_path.is_file():
            from selva_core.data.split import clip_of

            summary = _read_object(self.summary_path, "evaluating every clip") or {}
            names = summary.get("val_clip_names")
            if isinstance(names, list):
                held_out = tuple(sorted({clip_of(str(n)) for n in names}))
        cache = config.get("cache_dir")
        cache_dir = Path(cache) if cache else self.default_cache_dir
        return RunInfo(self.path, clips_dir, held_out, cache_dir if cache_dir.is_dir() else None,
                       config.get("variant"), float(config.get("duration", TRAIN_DURATION_S)),
                       str(config.get("window", "first")))


def _read_object(path: Path, fallback: str = "") -> dict[str, Any] | None:
    """A JSON object from ``path``; None when it is missing or not an object, and None with a
    warning (naming ``fallback``, what the caller does instead) when it cannot be read."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("%s is unreadable (%s)%s", path, exc, f"; {fallback}" if fallback else "")
        return None
    return data if isinstance(data, dict) else None


__all__ = ["RunFolder", "RunInfo", "RUN_ARTEFACTS", "RUN_MARKERS",
           "step_folder_name",
           "CONFIG_FILE", "LOG_FILE", "CURVE_FILE", "SUMMARY_FILE", "FINAL_ADAPTER_FILE",
           "FINAL_EMBEDDING_FILE",
           "CHECKPOINT_ADAPTER_FILE", "CHECKPOINT_STATE_FILE", "MANIFEST_FILE", "STEP_FOLDER"]
