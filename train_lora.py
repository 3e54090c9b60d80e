#!/usr/bin/env python
"""Train a LoRA adapter for SelVA on a folder of clips (``python train_lora.py --help``).

    python train_lora.py --data_dir my_clips --output_dir lora_output
    python train_lora.py --demo --output_dir demo_output          # no downloads, CPU is fine
    torchrun --nproc_per_node 4 train_lora.py --data_dir my_clips # several GPUs
    python train_lora.py --data_dir my_clips --output_dir lora_output --resume
    python train_lora.py --sweep sweep.json   # several experiments (selva_core.sweep)

The adapter lands in ``OUTPUT_DIR/adapter_final.safetensors`` (load it in ComfyUI with the
SelVA LoRA loader); everything else the run writes is listed in the final summary. Exit status:
0 trained, 130 interrupted (Ctrl-C: resumable with --resume, or during feature extraction a
rerun continues), 2 bad input or a stopped run (one line naming the file, folder or flag).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from selva_core.atomic import is_out_of_space  # noqa: E402
from selva_core.data import BadClipError  # noqa: E402
from selva_core.run_folder import RunFolder  # noqa: E402
from selva_core.training.checkpoint import CheckpointError, CheckpointWriteError  # noqa: E402
from selva_core.training.config import TrainConfig, config_from_args  # noqa: E402
from selva_core.training.report import format_summary  # noqa: E402
from selva_core.training.trainer import (  # noqa: E402
    TrainingDivergedError,
    TrainingOutOfMemoryError,
)
from selva_core.weights import WeightsError  # noqa: E402

log = logging.getLogger("train_lora")

EXPECTED_ERRORS = (BadClipError, CheckpointError, CheckpointWriteError, TrainingDivergedError,
                   TrainingOutOfMemoryError,
                   FileExistsError, FileNotFoundError, NotADirectoryError, PermissionError,
                   ValueError, WeightsError)


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def setup_logging(cfg: TrainConfig) -> None:
    """Console logging (process 0 only, INFO unless --quiet) plus OUTPUT_DIR/train.log."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(fmt)
    console.setLevel(logging.WARNING if (cfg.quiet or _rank() != 0) else logging.INFO)
    console.addFilter(lambda record: record.name != log.name)  # printed as "error: ..." lines
    root.addHandler(console)
    if _rank() == 0:
        out = Path(cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(RunFolder(out).console_log_path, encoding="utf-8")
        handler.setFormatter(fmt)
        root.addHandler(handler)


def _fail(exc: BaseException | str) -> int:
    log.error("%s", exc)
    print(f"\nerror: {exc}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if any(a == "--sweep" or a.startswith("--sweep=") for a in args):
        from selva_core.sweep import main_sweep  # several experiments from one file

        return main_sweep(args)
    cfg = config_from_args(argv)
    from selva_core.training.run import refuse_folder, resume_advice, run_training

    try:
        # Before the log file is opened: a refused folder keeps every byte (train.log too).
        refuse_folder(cfg)
    except EXPECTED_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    setup_logging(cfg)
    try:
        if cfg.demo:
            from selva_core.training.demo import prepare_demo

            cfg = prepare_demo(cfg)
        result = run_training(cfg)
    except EXPECTED_ERRORS as exc:
        return _fail(exc)
    except OSError as exc:
        if not is_out_of_space(exc):
            raise
        return _fail(f"{exc}; then {resume_advice(cfg)}")  # nothing written before is lost
    except KeyboardInterrupt:
        print("\ninterrupted; the newest checkpoint (if any) is the resume point "
              "(--resume)", file=sys.stderr)
        return 130
    if _rank() == 0:
        if result.summary.get("stage") != "features":  # (an interrupted extraction is logged)
            print(format_summary(result.summary))
        if cfg.demo and result.completed and result.adapter_path is not None:
            from selva_core.training.demo import format_listening, write_listening_comparison

            try:
                print(format_listening(write_listening_comparison(cfg, result.adapter_path)))
            except EXPECTED_ERRORS as exc:
                return _fail(exc)
    return 0 if result.completed else 130


if __name__ == "__main__":
    sys.exit(main())
