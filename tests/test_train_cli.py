"""train_lora.py as a user runs it: --help, a shortened --demo end to end, bad input."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cli():
    spec = importlib.util.spec_from_file_location("train_lora_cli", ROOT / "train_lora.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _restore_logging():
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in root.handlers[:]:
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    root.setLevel(level)


def test_help_lists_every_flag_of_the_issue(cli, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--data_dir", "--output_dir", "--variant", "--models_dir", "--rank", "--alpha",
                 "--target", "--lr", "--steps", "--warmup_steps", "--batch_size",
                 "--grad_accum", "--save_every", "--precision", "--seed", "--timestep_mode",
                 "--resume", "--resume-from", "--demo", "--val_every", "--val_clips",
                 "--val_fraction", "--lr_schedule", "--lora_plus_ratio", "--init", "--rsLoRA",
                 "--window", "--on-bad-clip", "--surgery", "--no-surgery", "--duration"):
        assert flag in text, flag


def test_short_demo_runs_end_to_end_and_prints_the_summary(cli, tmp_path, capsys):
    out = tmp_path / "demo_output"
    code = cli.main(["--demo", "--output_dir", str(out), "--steps", "3", "--warmup_steps", "1",
                     "--save_every", "3", "--val_every", "3", "--sample_steps", "2", "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "SelVA LoRA training finished: completed" in printed
    assert str(out / "adapter_final.safetensors") in printed
    for name in ("adapter_final.safetensors", "train_log.jsonl", "loss_curve.png",
                 "intruders.json", "intruders.png", "summary.json", "config.json",
                 "checkpoints/manifest.json", "samples/step_000003.wav",
                 "samples/step_000003.png", "samples/final.wav", "demo_data/prompts.txt"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["variant"] == "tiny_16k" and summary["steps_done"] == 3
    assert summary["val_examples"] == 2 and summary["train_examples"] == 10
    assert summary["surgery"]["decision"] in ("kept", "reverted")
    config = json.loads((out / "config.json").read_text())
    assert config["steps"] == 3 and config["lr"] == 2e-3  # user flag wins, demo fills the rest


def test_a_missing_data_folder_exits_with_status_2_and_names_it(cli, tmp_path, capsys):
    missing = tmp_path / "no_such_folder"
    code = cli.main(["--data_dir", str(missing), "--output_dir", str(tmp_path / "out"),
                     "--variant", "tiny_16k", "--quiet"])
    assert code == 2
    assert str(missing) in capsys.readouterr().err
