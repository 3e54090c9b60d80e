"""Checkpoints are never trusted blindly: checksums, damaged ones named with the previous good
one offered, NaN refused, stale temporaries of a kill cleared, the manifest validated."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from selva_core.atomic import save_safetensors_atomic
from selva_core.training import checkpoint as ckpt


def _state(step: int, value: float = 1.0) -> ckpt.TrainingState:
    p = torch.nn.Parameter(torch.full((2, 3), value))
    opt = torch.optim.AdamW([p], lr=1e-3)
    p.grad = torch.ones_like(p)
    opt.step()
    rng_t, rng_m = ckpt.capture_rng_state()
    return ckpt.TrainingState(
        step=step, stream_pos=step * 4, epoch=0, permutation=[2, 0, 1],
        params={"blocks.0.lora_A": p.detach().clone()}, optimizer=opt.state_dict(),
        identity={"variant": "tiny_16k", "rank": 2}, train_loss=0.5, val_loss=0.4,
        rng_tensors=rng_t, rng_meta=rng_m,
    )


def _write_adapter(path: Path) -> None:
    save_safetensors_atomic(path, {"w": torch.ones(4)})


def _saved(root: Path, steps=(2, 4), keep_last: int = 0) -> ckpt.CheckpointManager:
    mgr = ckpt.CheckpointManager(root, keep_last=keep_last)
    for step in steps:
        mgr.save(_state(step, value=float(step)), _write_adapter)
    return mgr


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # inside the last tensor's bytes
    path.write_bytes(bytes(data))


def _manifest(root: Path) -> dict:
    return json.loads((root / ckpt.MANIFEST_FILE).read_text())


# -- checksums and damage ------------------------------------------------------------------------
def test_checkpoints_carry_checksums_of_their_tensors_and_files(tmp_path):
    mgr = _saved(tmp_path)
    folder = mgr.folder(mgr.find())
    from safetensors import safe_open

    with safe_open(str(folder / ckpt.STATE_FILE), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert meta["tensors_sha256"] == ckpt.tensors_sha256(tensors)
    row = _manifest(tmp_path)["checkpoints"][-1]
    assert row["sha256"] == {name: ckpt.file_sha256(folder / name)
                             for name in (ckpt.ADAPTER_FILE, ckpt.STATE_FILE)}
    assert mgr.verify(mgr.find()) is None


@pytest.mark.parametrize("damaged_file", [ckpt.STATE_FILE, ckpt.ADAPTER_FILE])
def test_a_damaged_newest_checkpoint_is_named_and_the_previous_good_one_offered(
        tmp_path, damaged_file):
    mgr = _saved(tmp_path, steps=(2, 4, 6))
    _flip_last_byte(tmp_path / "step_000006" / damaged_file)
    with pytest.raises(ckpt.DamagedCheckpointError) as err:
        mgr.load_state(mgr.find())
    msg = str(err.value)
    assert "step 6" in msg and "damaged" in msg and damaged_file in msg
    assert "--resume-from 4" in msg and err.value.good.step == 4 and err.value.step == 6
    assert mgr.load_state(mgr.find(4)).step == 4  # the offered one really loads


def test_a_state_whose_tensors_fail_their_checksum_is_damaged_even_without_the_manifest(
        tmp_path):
    _saved(tmp_path, steps=(2,))
    path = tmp_path / "step_000002" / ckpt.STATE_FILE
    _flip_last_byte(path)
    with pytest.raises(ckpt.CheckpointError, match="do not match the checksum"):
        ckpt.TrainingState.load(path)


def test_nan_parameters_or_moments_are_refused_even_with_valid_checksums(tmp_path):
    mgr = ckpt.CheckpointManager(tmp_path)
    state = _state(2)
    state.params["blocks.0.lora_A"][0, 0] = float("nan")
    mgr.save(state, _write_adapter)
    with pytest.raises(ckpt.DamagedCheckpointError,
                       match=r"param/blocks\.0\.lora_A holds NaN.*start over with --overwrite"):
        mgr.load_state(mgr.find())
    moments = _state(4)
    moments.optimizer["state"][0]["exp_avg_sq"][0, 1] = float("inf")
    mgr.save(moments, _write_adapter)
    with pytest.raises(ckpt.DamagedCheckpointError, match=r"optim/0/exp_avg_sq holds NaN"):
        mgr.load_state(mgr.find(4))


@pytest.mark.parametrize("damage", ["truncate", "missing", "metadata"])
def test_unreadable_missing_or_malformed_states_are_damaged_not_tracebacks(tmp_path, damage):
    mgr = _saved(tmp_path, steps=(2, 4))
    path = tmp_path / "step_000004" / ckpt.STATE_FILE
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "missing":
        path.unlink()
    else:  # a well-formed file whose JSON body is not what the trainer wrote
        from safetensors.torch import load_file, save_file

        tensors = load_file(str(path))
        meta = {"format": ckpt.STATE_FORMAT, "version": str(ckpt.STATE_VERSION),
                "state": json.dumps([1, 2]), "tensors_sha256": ckpt.tensors_sha256(tensors)}
        save_file(tensors, str(path), metadata=meta)
        rows = _manifest(tmp_path)
        rows["checkpoints"][-1]["sha256"][ckpt.STATE_FILE] = ckpt.file_sha256(path)
        (tmp_path / ckpt.MANIFEST_FILE).write_text(json.dumps(rows))
    with pytest.raises(ckpt.DamagedCheckpointError, match=r"step 4 .* damaged.*--resume-from 2"):
        mgr.load_state(mgr.find())


def test_a_manifest_row_without_the_checksums_of_both_files_is_a_damaged_manifest(tmp_path):
    mgr = _saved(tmp_path, steps=(2,))
    rows = _manifest(tmp_path)
    del rows["checkpoints"][0]["sha256"][ckpt.ADAPTER_FILE]
    (tmp_path / ckpt.MANIFEST_FILE).write_text(json.dumps(rows))
    with pytest.raises(ckpt.DamagedCheckpointError, match=r"manifest .* is damaged.*sha256 of "
                                                          r"step 2 is not a map of its two files"):
        mgr.entries()


def test_resume_names_a_damaged_checkpoint_before_anything_is_trained(tmp_path):
    from selva_core.training.config import TrainConfig
    from selva_core.training.run import check_resume

    _saved(tmp_path / "run" / "checkpoints", steps=(2, 4))
    _flip_last_byte(tmp_path / "run" / "checkpoints" / "step_000004" / ckpt.STATE_FILE)
    before = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), variant="tiny_16k", resume=True)
    with pytest.raises(ckpt.CheckpointError, match=r"step 4 .*damaged.*--resume-from 2"):
        check_resume(cfg)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == before


# -- stale temporaries of a kill ------------------------------------------------------------------
def test_stale_temporary_folders_and_files_of_a_kill_are_removed(tmp_path):
    mgr = _saved(tmp_path, steps=(2,))
    stale = tmp_path / ".tmp-step_000004-4242"
    stale.mkdir()
    (stale / ckpt.ADAPTER_FILE).write_bytes(b"half")
    (tmp_path / ".manifest.json.ab12cd34.tmp.json").write_text("{")
    keep = [tmp_path / ".tmp-notes", tmp_path / "notes.txt", tmp_path / "step_000002"]
    keep[0].mkdir()
    keep[1].write_text("mine")
    removed = mgr.remove_stale()
    assert sorted(p.name for p in removed) == [".manifest.json.ab12cd34.tmp.json",
                                               ".tmp-step_000004-4242"]
    assert all(p.exists() for p in keep) and not stale.exists()
    assert mgr.load_state(mgr.find()).step == 2


def test_a_checkpoint_caught_between_its_two_renames_is_put_back(tmp_path):
    mgr = _saved(tmp_path, steps=(2,))
    os.replace(tmp_path / "step_000002", tmp_path / ".old-step_000002-77")
    mgr.remove_stale()
    assert (tmp_path / "step_000002").is_dir() and mgr.load_state(mgr.find()).step == 2


def test_a_stale_link_is_unlinked_never_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep")
    root = tmp_path / "checkpoints"
    mgr = _saved(root, steps=(2,))
    (root / ".tmp-step_000004-1").symlink_to(outside, target_is_directory=True)
    mgr.remove_stale()
    assert (outside / "precious.txt").read_text() == "keep"
    assert not (root / ".tmp-step_000004-1").exists()


# -- the manifest is validated -------------------------------------------------------------------
def _row(step: int, folder: str) -> dict:
    return {"step": step, "folder": folder, "train_loss": None, "val_loss": None, "time": "",
            "elapsed_s": 0.0, "reason": "periodic"}


@pytest.mark.parametrize("folder", ["../victim", "/abs/victim", "step_000002/../../victim",
                                    "step_000007", "victim"])
def test_a_crafted_manifest_row_never_reads_or_deletes_outside_its_step_folder(tmp_path, folder):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep")
    root = tmp_path / "checkpoints"
    mgr = _saved(root, steps=(2,), keep_last=1)
    rows = _manifest(root)
    rows["checkpoints"].insert(0, _row(1, folder))
    (root / ckpt.MANIFEST_FILE).write_text(json.dumps(rows))
    with pytest.raises(ckpt.DamagedCheckpointError, match="manifest .* is damaged"):
        mgr.save(_state(4), _write_adapter)  # would prune the crafted row
    with pytest.raises(ckpt.DamagedCheckpointError, match="is not step_000001"):
        mgr.find()
    assert (victim / "precious.txt").read_text() == "keep"


@pytest.mark.parametrize("content", [
    "[]", '"checkpoints"', "3", "null", "{not json",
    json.dumps({"format": ckpt.MANIFEST_FORMAT, "checkpoints": {}}),
    json.dumps({"format": ckpt.MANIFEST_FORMAT, "checkpoints": [1]}),
    json.dumps({"format": ckpt.MANIFEST_FORMAT, "checkpoints": [_row(2, "step_000002") | {
        "step": "2"}]}),
    json.dumps({"format": ckpt.MANIFEST_FORMAT, "checkpoints": [_row(2, "step_000002"),
                                                                _row(2, "step_000002")]}),
    json.dumps({"format": ckpt.MANIFEST_FORMAT, "checkpoints": [_row(2, "step_000002") | {
        "sha256": {"../x": "0" * 64}}]}),
])
def test_a_manifest_of_the_wrong_shape_is_damaged_not_a_traceback(tmp_path, content):
    (tmp_path / ckpt.MANIFEST_FILE).write_text(content)
    with pytest.raises(ckpt.DamagedCheckpointError, match="checkpoint manifest .* is damaged"):
        ckpt.CheckpointManager(tmp_path).find()


def test_pruning_skips_a_step_folder_that_is_a_link(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep")
    root = tmp_path / "checkpoints"
    mgr = _saved(root, steps=(2,), keep_last=1)
    import shutil

    shutil.rmtree(root / "step_000002")
    (root / "step_000002").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ckpt.DamagedCheckpointError, match="not a checkpoint folder"):
        mgr.load_state(mgr.find())
    mgr.save(_state(4), _write_adapter)  # prunes step 2
    assert (outside / "precious.txt").read_text() == "keep"


# -- keep_best ------------------------------------------------------------------------------------
def _saved_with_val(root: Path, vals: dict[int, float | None], keep_last: int,
                    keep_best: bool) -> ckpt.CheckpointManager:
    import dataclasses

    mgr = ckpt.CheckpointManager(root, keep_last=keep_last, keep_best=keep_best)
    for step, val in vals.items():
        mgr.save(dataclasses.replace(_state(step), val_loss=val), _write_adapter)
    return mgr


def test_manifest_rows_carry_each_checkpoints_validation_loss(tmp_path):
    mgr = _saved_with_val(tmp_path, {2: 0.5, 4: None, 6: 0.3}, keep_last=0, keep_best=False)
    assert [r["val_loss"] for r in _manifest(tmp_path)["checkpoints"]] == [0.5, None, 0.3]
    assert mgr.best().step == 6


def test_keep_best_keeps_the_lowest_validation_loss_besides_the_newest(tmp_path):
    vals = {2: 0.5, 4: 0.2, 6: 0.4, 8: 0.3, 10: None}
    mgr = _saved_with_val(tmp_path, vals, keep_last=2, keep_best=True)
    assert [e.step for e in mgr.entries()] == [4, 8, 10]
    assert sorted(p.name for p in tmp_path.glob("step_*")) == [
        "step_000004", "step_000008", "step_000010"]


def test_without_keep_best_only_the_newest_stay(tmp_path):
    mgr = _saved_with_val(tmp_path, {2: 0.5, 4: 0.2, 6: 0.4}, keep_last=1, keep_best=False)
    assert [e.step for e in mgr.entries()] == [6]
