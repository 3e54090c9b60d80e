"""Sweeps: experiments from one file, features once, skip/resume, summary, chart, evaluation."""

from __future__ import annotations

import json

import pytest

from selva_core.data.synthetic import make_synthetic_dataset
from selva_core.sweep import (
    SKIP_FLAG,
    SweepError,
    experiment_state,
    load_sweep,
    parse_sweep,
    run_sweep,
)
from tests.eval_data import tiny_pipeline

BASE = {"variant": "tiny_16k", "duration": 1.0, "steps": 2, "warmup_steps": 0,
        "batch_size": 1, "save_every": 1, "val_every": 1, "val_clips": 1, "samples": False,
        "surgery": False, "device": "cpu", "quiet": True}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    make_synthetic_dataset(root / "clips", clips_per_class=2, duration=1.0, seed=0)
    return root, tiny_pipeline()


def _sweep(root, out, **extra):
    return parse_sweep({"name": "t", "output_dir": str(out),
                        "base": {**BASE, "data_dir": str(root / "clips")},
                        "experiments": [{"id": "r2", "overrides": {"rank": 2}},
                                        {"id": "r4", "rank": 4, "lr": 2e-4}], **extra})


def test_every_bad_setting_is_named_in_one_error(tmp_path):
    with pytest.raises(SweepError) as err:
        parse_sweep({"base": {"data_dir": "x", "colour": 1, "output_dir": "o"},
                     "experiments": [{"id": "a", "rank": 0}, {"id": "a"}, {"rank": 2},
                                     {"id": "b", "lr_typo": 1}], "extra": 1})
    text = str(err.value)
    for needle in ("'extra' is unknown", "base.colour", "base.output_dir", "--rank must be",
                   "used twice", "experiments[2].id", "lr_typo"):
        assert needle in text, needle


def test_a_sweep_trains_each_experiment_in_its_folder_with_features_extracted_once(data,
                                                                                   tmp_path):
    root, pipe = data
    sweep = _sweep(root, tmp_path / "s")
    result = run_sweep(sweep, pipeline=pipe, progress=False)
    assert result.completed
    rows = {r["id"]: r for r in result.summary["experiments"]}
    assert [r["status"] for r in rows.values()] == ["finished", "finished"]
    assert rows["r2"]["rank"] == 2 and rows["r4"]["rank"] == 4
    for ident in ("r2", "r4"):
        assert (tmp_path / "s" / ident / "adapter_final.safetensors").is_file()
    first = json.loads((tmp_path / "s" / "r2" / "summary.json").read_text())
    second = json.loads((tmp_path / "s" / "r4" / "summary.json").read_text())
    assert first["features_extracted"] > 0
    assert second["features_extracted"] == 0 and second["features_reused"] > 0
    assert (tmp_path / "s" / "val_curves.png").stat().st_size > 1000
    on_disk = json.loads((tmp_path / "s" / "sweep_summary.json").read_text())
    assert on_disk["status"] == "completed"

    # a rerun skips what is finished and changes nothing
    stamp = (tmp_path / "s" / "r4" / "adapter_final.safetensors").stat().st_mtime_ns
    again = run_sweep(_sweep(root, tmp_path / "s"), pipeline=pipe, progress=False)
    assert again.completed
    assert (tmp_path / "s" / "r4" / "adapter_final.safetensors").stat().st_mtime_ns == stamp


def test_the_skip_flag_stops_the_current_experiment_and_a_rerun_resumes_it(data, tmp_path):
    root, pipe = data
    out = tmp_path / "s"
    sweep = _sweep(root, out)

    def after_step(trainer, step):
        if step == 1 and "r2" in str(trainer.out):
            (out / SKIP_FLAG).touch()

    result = run_sweep(sweep, pipeline=pipe, progress=False, after_step=after_step)
    rows = {r["id"]: r for r in result.summary["experiments"]}
    assert rows["r2"]["status"].startswith("skipped") and rows["r2"]["steps_done"] == 1
    assert rows["r4"]["status"] == "finished"
    assert not (out / SKIP_FLAG).exists()
    assert experiment_state(out / "r2") == "resumable"
    again = run_sweep(_sweep(root, out), pipeline=pipe, progress=False)
    rows = {r["id"]: r for r in again.summary["experiments"]}
    assert rows["r2"]["status"] == "finished" and rows["r2"]["steps_done"] == 2
    log = [json.loads(line) for line in (out / "r2" / "train_log.jsonl").read_text().splitlines()]
    assert sorted({r["step"] for r in log if r.get("kind") == "train"}) == [1, 2]


def test_a_sweep_can_evaluate_every_final_adapter(data, tmp_path):
    root, pipe = data
    sweep = _sweep(root, tmp_path / "s", eval={"steps": 1, "seeds": [5], "mp4": False})
    result = run_sweep(sweep, pipeline=pipe, progress=False)
    assert result.completed and result.eval_result is not None
    ids = [a["id"] for a in result.eval_result.summary["adapters"]]
    assert ids == ["baseline", *(f"{e}@{c}" for e in ("r2", "r4")
                                 for c in ("step_000001", "step_000002", "final"))]
    assert "held-out" in result.eval_result.summary["clip_selection"]
    assert all("eval_avg_metrics" in r for r in result.summary["experiments"])
    assert (tmp_path / "s" / "eval" / "index.html").is_file()
    # the leaderboard: every run x checkpoint and the baseline, best first by lsd_db
    board = result.summary["leaderboard"]
    assert len(board) == 7 and [r["rank"] for r in board] == list(range(1, 8))
    assert all(r["metric"] == "lsd_db" for r in board)
    assert [r["mean"] for r in board] == sorted(r["mean"] for r in board)
    assert {(r["experiment"], r["checkpoint"]) for r in board} >= {
        ("r2", "step_000001"), ("r4", "final"), ("baseline", "")}
    manifest = json.loads((tmp_path / "s" / "r2" / "checkpoints" / "manifest.json").read_text())
    step1 = next(r for r in board if (r["experiment"], r["checkpoint"]) == ("r2", "step_000001"))
    assert step1["val_loss"] == manifest["checkpoints"][0]["val_loss"] is not None
    lines = (tmp_path / "s" / "leaderboard.csv").read_text().splitlines()
    assert lines[0].startswith("rank,experiment,checkpoint") and len(lines) == 8


def test_train_lora_dispatches_sweep_files(tmp_path, capsys):
    import train_lora

    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({"base": {"colour": 1}, "experiments": []}))
    assert train_lora.main(["--sweep", str(path)]) == 2
    assert "base.colour" in capsys.readouterr().err
    assert load_sweep(json.dumps({"base": {**BASE, "data_dir": str(tmp_path)},
                                  "experiments": [{"id": "x"}]})).experiments[0].id == "x"
