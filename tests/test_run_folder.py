"""RunFolder: the names of a training run's files, recognising a run, its checkpoints in step
order and what an evaluation reads from it."""

from __future__ import annotations

import json
import logging

import pytest

from selva_core.run_folder import (
    RUN_ARTEFACTS,
    RunFolder,
    step_folder_name,
)


def _checkpoint(run: RunFolder, step: int, adapter: bool = True) -> None:
    folder = run.step_folder(step)
    folder.mkdir(parents=True)
    if adapter:
        (folder / "adapter.safetensors").write_bytes(b"x")


def test_every_artefact_lies_in_the_run_folder_under_its_documented_name(tmp_path):
    run = RunFolder(tmp_path)
    assert run.final_adapter == tmp_path / "adapter_final.safetensors"
    assert run.summary_path == tmp_path / "summary.json"
    assert run.config_path == tmp_path / "config.json"
    assert run.manifest_path == tmp_path / "checkpoints" / "manifest.json"
    assert run.step_folder(500) == tmp_path / "checkpoints" / "step_000500"
    assert run.sample_wav("final") == tmp_path / "samples" / "final.wav"
    assert run.default_cache_dir == tmp_path / "feature_cache"
    named = {p.relative_to(tmp_path).parts[0] for p in (
        run.final_adapter, run.final_embedding, run.summary_path, run.config_path, run.log_path,
        run.curve_path, run.samples_dir, run.checkpoints_dir, run.surgery_path, run.intruders_json,
        run.intruders_png, run.console_log_path, run.listen_dir)}
    assert named == set(RUN_ARTEFACTS)  # --overwrite removes exactly what a run writes
    assert run.default_cache_dir.name not in RUN_ARTEFACTS  # the features outlive a run


def test_a_folder_is_a_run_once_it_holds_a_config_log_checkpoint_or_final_adapter(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert not RunFolder(empty).is_run()
    for name, make in [("config", lambda r: r.config_path.write_text("{}")),
                       ("log", lambda r: r.log_path.write_text("")),
                       ("final", lambda r: r.final_adapter.write_bytes(b"x")),
                       ("ckpt", lambda r: _checkpoint(r, 3))]:
        run = RunFolder(tmp_path / name)
        run.path.mkdir()
        make(run)
        assert run.is_run(), name


def test_checkpoints_are_listed_in_step_order_and_then_the_final_adapter(tmp_path):
    run = RunFolder(tmp_path)
    for step in (1000, 20, 300):
        _checkpoint(run, step)
    _checkpoint(run, 40, adapter=False)  # no adapter file: not a checkpoint
    (run.checkpoints_dir / "step_7").mkdir()  # not a step folder the trainer writes
    (run.checkpoints_dir / "step_7" / "adapter.safetensors").write_bytes(b"x")
    (run.checkpoints_dir / "notes").mkdir()
    assert [s for s, _ in run.checkpoint_adapters()] == [20, 300, 1000]
    assert [label for label, _, _ in run.adapters()] == [
        "step_000020", "step_000300", "step_001000"]
    run.final_adapter.write_bytes(b"x")
    found = run.adapters()
    assert [(label, step) for label, step, _ in found] == [
        ("step_000020", 20), ("step_000300", 300), ("step_001000", 1000), ("final", None)]
    assert found[1][2] == run.step_folder(300) / "adapter.safetensors"
    assert step_folder_name(300) == "step_000300"


def test_a_run_without_checkpoints_lists_nothing(tmp_path):
    assert RunFolder(tmp_path / "nowhere").adapters() == []
    assert RunFolder(tmp_path).checkpoint_adapters() == []


def test_summary_and_config_readers_return_none_for_missing_or_bad_files(tmp_path, caplog):
    run = RunFolder(tmp_path)
    assert run.read_summary() is None and run.read_config() is None
    assert not run.is_finished()
    run.summary_path.write_text("[1, 2]")
    assert run.read_summary() is None  # not an object
    run.summary_path.write_text("{broken")
    with caplog.at_level(logging.WARNING, logger="selva_core.run_folder"):
        assert run.read_summary() is None
    assert str(run.summary_path) in caplog.text and "unreadable" in caplog.text


def test_a_run_is_finished_only_with_a_completed_summary_and_its_final_adapter(tmp_path):
    run = RunFolder(tmp_path)
    run.summary_path.write_text(json.dumps({"completed": True}))
    assert not run.is_finished()
    run.final_adapter.write_bytes(b"x")
    assert run.is_finished()
    run.summary_path.write_text(json.dumps({"completed": False}))
    assert not run.is_finished()


def test_info_gives_the_clips_folder_held_out_clips_and_feature_cache(tmp_path):
    clips = tmp_path / "clips"
    clips.mkdir()
    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    run.default_cache_dir.mkdir()
    run.config_path.write_text(json.dumps({"data_dir": "clips", "variant": "tiny_16k",
                                           "duration": 2.0, "window": "all"}))
    run.summary_path.write_text(json.dumps({"val_clip_names": ["dog#w1", "cat", "dog#w0"]}))
    info = run.info()
    assert info.clips_dir == clips  # relative to the run's parent
    assert info.held_out == ("cat", "dog")
    assert info.cache_dir == run.default_cache_dir
    assert (info.variant, info.duration, info.window) == ("tiny_16k", 2.0, "all")


def test_info_of_a_plain_clip_folder_or_an_unreadable_config_is_none(tmp_path, caplog):
    assert RunFolder(tmp_path).info() is None
    RunFolder(tmp_path).config_path.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="selva_core.run_folder"):
        assert RunFolder(tmp_path).info() is None
    assert "treating it as a clip folder" in caplog.text
    RunFolder(tmp_path).config_path.write_text(json.dumps({"variant": "tiny_16k"}))
    assert RunFolder(tmp_path).info() is None  # names no clips folder


def test_a_textual_inversion_run_is_refused_without_overwrite_and_cleared_with_it(tmp_path):
    """Its final embedding marks the folder as a run's: a new run neither trains over it
    silently nor leaves the old embedding beside its own files after --overwrite."""
    from selva_core.training.config import TrainConfig
    from selva_core.training.run import check_folders, holds_a_run

    out = tmp_path / "ti_run"
    out.mkdir()
    RunFolder(out).final_embedding.write_bytes(b"previous embedding")
    assert RunFolder(out).is_run()
    assert holds_a_run(out) == ["embedding_final.safetensors"]
    data = tmp_path / "clips"
    data.mkdir()
    cfg = TrainConfig(data_dir=str(data), output_dir=str(out), variant="tiny_16k")
    with pytest.raises(FileExistsError, match="embedding_final.safetensors.*--overwrite"):
        check_folders(cfg)
    assert RunFolder(out).final_embedding.is_file()  # refused: nothing removed
    check_folders(TrainConfig(data_dir=str(data), output_dir=str(out), variant="tiny_16k",
                              overwrite=True))
    assert not RunFolder(out).final_embedding.exists()
