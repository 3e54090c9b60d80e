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


def test_help_lists_every_training_flag(cli, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--data_dir", "--output_dir", "--variant", "--models_dir", "--rank", "--alpha",
                 "--target", "--lr", "--steps", "--warmup_steps", "--batch_size",
                 "--grad_accum", "--save_every", "--precision", "--seed", "--timestep_mode",
                 "--resume", "--resume-from", "--demo", "--val_every", "--val_clips",
                 "--val_fraction", "--lr_schedule", "--lora_plus_ratio", "--init", "--rsLoRA",
                 "--window", "--on-bad-clip", "--surgery", "--no-surgery", "--duration",
                 "--lora_dropout", "--gradient_checkpointing", "--base_dtype"):
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
    from selva_core.training.demo import DEMO_CLASSES, DEMO_CLIPS_PER_CLASS, DEMO_SETTINGS

    clips = len(DEMO_CLASSES) * DEMO_CLIPS_PER_CLASS
    held_out = DEMO_SETTINGS["val_clips"]
    assert summary["val_examples"] == held_out and summary["train_examples"] == clips - held_out
    assert summary["surgery"]["decision"] in ("kept", "reverted")
    config = json.loads((out / "config.json").read_text())
    assert config["steps"] == 3 and config["lr"] == 2e-3  # user flag wins, demo fills the rest


def test_a_missing_data_folder_exits_with_status_2_and_names_it(cli, tmp_path, capsys):
    missing = tmp_path / "no_such_folder"
    code = cli.main(["--data_dir", str(missing), "--output_dir", str(tmp_path / "out"),
                     "--variant", "tiny_16k", "--quiet"])
    assert code == 2
    assert str(missing) in capsys.readouterr().err


# --- folders: one line (status 2) and nothing changed; interrupted extraction ---------------
@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    from selva_core.data.synthetic import make_synthetic_dataset

    data = tmp_path_factory.mktemp("cli_clips") / "clips"
    make_synthetic_dataset(data, clips_per_class=2, duration=1.0, seed=0)
    return data


def _args(clips, out, *extra):
    return ["--data_dir", str(clips), "--output_dir", str(out), "--variant", "tiny_16k",
            "--duration", "1.0", "--steps", "2", "--save_every", "2", "--val_every", "2",
            "--batch_size", "2", "--rank", "4", "--sample_steps", "2", "--no-samples",
            "--no-surgery", "--quiet", *extra]


def _tree(folder):
    """Every file and folder under ``folder`` with its bytes (files) and mode."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None,
                                         p.stat().st_mode)
            for p in sorted(folder.rglob("*"))}


def _unwritable(monkeypatch, folder):
    """Make ``folder`` refuse new files: chmod for a normal user; root ignores permissions,
    so there the write probe is refused the way the kernel would."""
    import os
    import tempfile

    folder.chmod(0o555)
    if os.geteuid() != 0:
        return
    real = tempfile.mkstemp

    def refuse(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).resolve() == folder.resolve():
            raise PermissionError(13, "Permission denied", str(dir))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", refuse)


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_an_output_folder_that_is_a_file_is_one_line_and_untouched(cli, clips, tmp_path,
                                                                     capsys):
    out = tmp_path / "out"
    out.write_text("my notes")
    assert cli.main(_args(clips, out)) == 2
    _one_line_error(capsys, str(out), "is a file, not a folder", "--output_dir")
    assert out.read_text() == "my notes"


@pytest.mark.parametrize("which", ["output", "samples", "cache"])
def test_an_unwritable_folder_is_one_line_and_nothing_changes(cli, clips, tmp_path, capsys,
                                                              monkeypatch, which):
    out = tmp_path / "out"
    (out / "samples").mkdir(parents=True)
    (out / "notes.txt").write_text("keep me")
    cache = tmp_path / "cache"
    cache.mkdir()
    folder = {"output": out, "samples": out / "samples", "cache": cache}[which]
    before = _tree(tmp_path)
    _unwritable(monkeypatch, folder)
    before[str(folder.relative_to(tmp_path))] = (None, folder.stat().st_mode)
    try:
        code = cli.main(_args(clips, out, "--cache_dir", str(cache)))
    finally:
        folder.chmod(0o755)
    assert code == 2
    _one_line_error(capsys, str(folder), "cannot write into")
    after = _tree(tmp_path)
    after[str(folder.relative_to(tmp_path))] = before[str(folder.relative_to(tmp_path))]
    assert after == before


def test_a_run_that_failed_before_its_first_step_does_not_block_its_folder(clips, tmp_path):
    from selva_core.training.config import config_from_args
    from selva_core.training.run import run_training
    from selva_core.training.trainer import TrainHooks

    cfg = config_from_args(_args(clips, tmp_path / "out"))

    def crash(trainer, step, micro):
        raise RuntimeError("out of memory (simulated)")

    with pytest.raises(RuntimeError, match="simulated"):
        run_training(cfg, hooks=TrainHooks(after_micro_step=crash))
    assert (tmp_path / "out" / "train_log.jsonl").exists()  # it had started
    result = run_training(cfg)  # the same flags, no --overwrite
    assert result.completed and result.steps_done == 2


def test_run_like_files_that_no_run_of_ours_left_are_never_cleared(cli, clips, tmp_path,
                                                                   capsys):
    out = tmp_path / "out"
    (out / "samples").mkdir(parents=True)
    (out / "samples" / "mine.wav").write_bytes(b"my own recording")
    assert cli.main(_args(clips, out)) == 2
    _one_line_error(capsys, "already holds a training run (samples)", "--overwrite")
    assert (out / "samples" / "mine.wav").read_bytes() == b"my own recording"


def test_a_rejected_resume_leaves_the_folder_as_it_was(cli, clips, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(_args(clips, out)) == 0
    capsys.readouterr()
    before = _tree(out)
    assert cli.main(_args(clips, out, "--resume", "--rank", "8")) == 2
    _one_line_error(capsys, "rank: checkpoint 4 vs this run 8")
    assert cli.main(_args(clips, out, "--resume", "--seed", "7")) == 2
    _one_line_error(capsys, "--seed 42", "--seed 7")
    assert cli.main(_args(clips, out)) == 2  # another run's folder without --resume
    _one_line_error(capsys, "already holds a training run", "--resume")
    # Every byte as it was: config.json, checkpoints, adapter, summary, and train.log too.
    assert _tree(out) == before


def test_ctrl_c_during_feature_extraction_exits_130_and_keeps_the_features_so_far(
        cli, clips, tmp_path, capsys, monkeypatch):
    import selva_core.feature_cache as fc

    real, calls = fc._extract_window, []

    def interrupt_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(fc, "_extract_window", interrupt_third)
    out, cache = tmp_path / "out", tmp_path / "cache"
    assert cli.main(_args(clips, out, "--cache_dir", str(cache))) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "interrupted during feature extraction" in err
    assert len(list(cache.glob("*.safetensors"))) == 2
    assert not list(cache.glob(".*tmp*"))  # no half-written cache file
    monkeypatch.setattr(fc, "_extract_window", real)
    assert cli.main(_args(clips, out, "--cache_dir", str(cache))) == 0  # the rerun continues
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["features_reused"], summary["features_extracted"]) == (2, 2)


def test_running_out_of_memory_is_one_line_naming_the_step_and_the_flags_to_change(
        cli, clips, tmp_path, capsys, monkeypatch):
    import selva_core.training.trainer as trainer_module
    from selva_core.model.precision import OUT_OF_MEMORY_ERROR

    real, calls = trainer_module.training_loss, []

    def second_step_does_not_fit(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OUT_OF_MEMORY_ERROR("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "training_loss", second_step_does_not_fit)
    out = tmp_path / "out"
    args = _args(clips, out, "--steps", "3", "--save_every", "1")
    assert cli.main(args) == 2
    _one_line_error(capsys, "ran out during optimiser step 2", "--gradient_checkpointing",
                    "--batch_size 1 --grad_accum 2", "last good checkpoint is step 1",
                    "--resume")
    assert (out / "checkpoints" / "step_000001" / "adapter.safetensors").is_file()


# --- issue 20: devices, data folder, first checkpoint, full disk ----------------------------
def test_device_cuda_without_cuda_is_one_line_naming_the_fix(cli, clips, tmp_path, capsys,
                                                             monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.main(_args(clips, tmp_path / "out", "--device", "cuda")) == 2
    _one_line_error(capsys, "--device cuda", "CUDA is not available", "--device cpu")


def test_an_output_folder_that_is_the_data_folder_is_refused_and_nothing_changes(
        cli, clips, tmp_path, capsys):
    data = tmp_path / "data"
    import shutil

    shutil.copytree(clips, data)
    before = _tree(data)
    assert cli.main(_args(data, data)) == 2
    _one_line_error(capsys, f"--output_dir {data} is the data folder", "outside it")
    assert _tree(data) == before


def test_a_run_killed_while_writing_its_first_checkpoint_resumes_from_step_0(
        cli, clips, tmp_path, capsys, monkeypatch):
    import selva_core.training.checkpoint as ckpt

    class Killed(BaseException):
        """Stands for the process dying mid-write."""

    def die(tensors, path, metadata):
        raise Killed

    monkeypatch.setattr(ckpt, "_save_file", die)
    out = tmp_path / "out"
    with pytest.raises(Killed):
        cli.main(_args(clips, out))
    monkeypatch.undo()
    assert list((out / "checkpoints").glob(".tmp-step_*"))  # what the kill left
    capsys.readouterr()
    assert cli.main(_args(clips, out, "--resume")) == 0
    err = capsys.readouterr().err
    assert "holds no checkpoint yet" in err and "starting again from step 0" in err
    manifest = json.loads((out / "checkpoints" / "manifest.json").read_text())
    assert [c["step"] for c in manifest["checkpoints"]] == [2]
    assert (out / "adapter_final.safetensors").is_file()


def _file_too_large_on(monkeypatch, needle):
    """The safetensors writer fails the way it does under ``ulimit -f`` for paths holding
    ``needle``."""
    from safetensors import SafetensorError

    import selva_core.atomic as atomic

    real = atomic.save_file

    def write(tensors, path, metadata=None):
        if needle in str(path):
            raise SafetensorError("Error while serializing: I/O error: File too large "
                                  "(os error 27)")
        return real(tensors, path, metadata=metadata)

    monkeypatch.setattr(atomic, "save_file", write)


def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_earlier_checkpoint(
        cli, clips, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    calls = []
    import selva_core.atomic as atomic

    real = atomic.save_file

    def second_state_too_large(tensors, path, metadata=None):
        if "training_state" in str(path):
            calls.append(path)
            if len(calls) == 2:
                from safetensors import SafetensorError

                raise SafetensorError("Error while serializing: I/O error: File too large "
                                      "(os error 27)")
        return real(tensors, path, metadata=metadata)

    monkeypatch.setattr(atomic, "save_file", second_state_too_large)
    assert cli.main(_args(clips, out, "--save_every", "1")) == 2
    _one_line_error(capsys, "checkpoint of step 2", "file-size limit",
                    f"free some space in {out / 'checkpoints'}", "(step 1", "intact",
                    "--resume")
    manifest = json.loads((out / "checkpoints" / "manifest.json").read_text())
    assert [c["step"] for c in manifest["checkpoints"]] == [1]
    monkeypatch.undo()
    assert cli.main(_args(clips, out, "--save_every", "1", "--resume")) == 0


def test_a_full_disk_writing_the_final_adapter_names_the_folder_and_the_resume_point(
        cli, clips, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    _file_too_large_on(monkeypatch, "adapter_final")
    assert cli.main(_args(clips, out)) == 2
    _one_line_error(capsys, f"could not write adapter_final.safetensors in {out}",
                    "file-size limit", "newest checkpoint (step 2) is intact", "--resume")
    assert not (out / "adapter_final.safetensors").exists()
    monkeypatch.undo()
    assert cli.main(_args(clips, out, "--resume")) == 0
    assert (out / "adapter_final.safetensors").is_file()


def test_a_full_disk_in_the_feature_cache_names_the_cache_folder_and_keeps_what_it_has(
        cli, clips, tmp_path, capsys, monkeypatch):
    out, cache = tmp_path / "out", tmp_path / "cache"
    _file_too_large_on(monkeypatch, str(cache))
    assert cli.main(_args(clips, out, "--cache_dir", str(cache))) == 2
    _one_line_error(capsys, f"in {cache}", "file-size limit", "rerun with the same flags")
    assert not list(cache.glob(".*tmp*"))
    monkeypatch.undo()
    assert cli.main(_args(clips, out, "--cache_dir", str(cache))) == 0
