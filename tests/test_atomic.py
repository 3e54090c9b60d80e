"""Atomic writes: the user's umask, the old file kept on failure, stale temporaries cleared."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from selva_core.atomic import (
    atomic_path,
    current_umask,
    remove_stale_temporaries,
    save_safetensors_atomic,
    write_json_atomic,
    write_text_atomic,
)


@pytest.fixture
def umask():
    """Set a umask for one test and restore the previous one."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_atomically_written_files_get_the_users_umask_not_0600(tmp_path, umask, mask):
    umask(mask)
    assert current_umask() == mask
    written = [
        write_text_atomic(tmp_path / "a.txt", "x"),
        write_json_atomic(tmp_path / "b.json", {"a": 1}),
        save_safetensors_atomic(tmp_path / "c.safetensors", {"t": torch.zeros(2)}),
    ]
    for path in written:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~mask, path.name


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = write_text_atomic(tmp_path / "keep.txt", "old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["keep.txt"]


def test_only_temporaries_named_like_atomic_writes_are_removed(tmp_path):
    stale = [tmp_path / ".manifest.json.ab12cd34.tmp.json", tmp_path / ".adapter.x_9y8z7w.tmp"]
    for p in stale:
        p.write_text("half")
    keep = [tmp_path / "manifest.json", tmp_path / ".hidden", tmp_path / "a.tmp",
            tmp_path / ".notes.txt.ab12cd34.tmp.json"]  # suffix differs from the name's
    for p in keep:
        p.write_text("mine")
    folder = tmp_path / ".dir.ab12cd34.tmp"
    folder.mkdir()
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(removed) == sorted(stale)
    assert all(p.exists() for p in keep) and folder.is_dir()
