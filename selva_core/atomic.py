"""Atomic file writes: a temporary file in the same folder, then ``os.replace``.

A crash, Ctrl-C or a full disk never leaves a half-written adapter, checkpoint, cache entry,
report or chart under the final name: readers see either the old file or the complete new one.
Every writer in the project goes through :func:`atomic_path`. Files get the permissions any
newly created file would get (0666 minus the user's umask), not the temporary file's 0600.
A kill can leave a temporary file behind (``.<name>.<random>.tmp<suffix>``);
:func:`remove_stale_temporaries` clears them from a folder at the next start.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

_UMASK_LOCK = threading.Lock()
# errno values that mean "no room for this write": a full disk, a quota, a file-size limit
SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")  # how safetensors reports an OS error
# mkstemp's names: "." + final name + "." + 8 random [a-z0-9_] + ".tmp" + final suffix
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp(?P<suffix>\.[^./]*)?$")


class OutOfSpaceError(OSError):
    """A write failed for want of space (full disk, quota or ``ulimit -f``); nothing was
    written under the final name. ``str()`` names the file, its folder and the problem."""

    def __init__(self, path: str | os.PathLike, code: int, strerror: str | None = None):
        super().__init__(code, strerror or os.strerror(code), str(path))
        self.path = Path(path)

    def __str__(self) -> str:
        return (f"could not write {self.path.name} in {self.path.parent}: "
                f"{space_problem(self.errno)} ({self.strerror}); free some space there")


class UnusableFolderError(ValueError):
    """An output folder that cannot be written into; the message names it and the fix."""


def check_writable_folder(path: str | os.PathLike, flag: str, *, probe: bool = True) -> None:
    """``path`` is (or can become) a folder this process can write into; else one
    :class:`UnusableFolderError` naming ``flag`` and the path (a file where the folder or
    one of its parents belongs, or no write permission). Nothing is left behind.
    ``probe=False``: only the file-versus-folder checks (a folder that is only read)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UnusableFolderError(f"{flag} {path} is a file, not a folder; choose another "
                                  f"{flag}")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UnusableFolderError(f"{flag} {path}: {existing} is a file, not a folder; choose "
                                  f"another {flag}")
    if not probe:
        return
    try:
        fd, name = tempfile.mkstemp(prefix=".selva_write_check.", dir=existing)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise UnusableFolderError(f"{flag} {path}: cannot write into {existing} "
                                  f"({exc.strerror or exc}); make it writable or choose "
                                  f"another {flag}") from None


def space_problem(code: int | None) -> str:
    """What an out-of-space errno means, in words."""
    if code == errno.EFBIG:
        return "the file-size limit was reached (ulimit -f, or the file system's largest file)"
    if code == errno.EDQUOT:
        return "the disk quota is used up"
    return "the disk is full"


def is_out_of_space(exc: BaseException) -> bool:
    """Did ``exc`` fail a write for want of space?"""
    return isinstance(exc, OSError) and exc.errno in SPACE_ERRNOS


def save_safetensors_file(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                          metadata: dict[str, str] | None = None) -> None:
    """safetensors' ``save_file``, with its I/O failures raised as ``OSError`` (it raises its
    own exception type, carrying the errno only in the text)."""
    try:
        save_file(tensors, str(path), metadata=metadata)
    except OSError:
        raise
    except Exception as exc:
        found = _RUST_OS_ERROR.search(str(exc))
        if found is None:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), str(path)) from exc


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:  # elsewhere: set and restore (briefly process-wide)
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def new_file_mode() -> int:
    """Permission bits of a newly created regular file: 0666 minus the umask."""
    return 0o666 & ~current_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` when the block succeeds.

    The temporary name keeps ``path``'s suffix so format-sniffing writers (PyAV, soundfile)
    still work. On any exception the temporary file is removed and the old file is untouched;
    a write that failed for want of space raises :class:`OutOfSpaceError` naming ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}",
                                   dir=path.parent)
    except OSError as exc:
        if is_out_of_space(exc) and not isinstance(exc, OutOfSpaceError):
            raise OutOfSpaceError(path, exc.errno, exc.strerror) from exc
        raise
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, new_file_mode())  # mkstemp made it 0600
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if is_out_of_space(exc) and not isinstance(exc, OutOfSpaceError):
            raise OutOfSpaceError(path, exc.errno, exc.strerror) from exc
        raise


def is_stale_temporary(path: Path) -> bool:
    """Is ``path`` named like a temporary file of :func:`atomic_path`?"""
    m = _TEMP_NAME.match(path.name)
    return bool(m) and (m.group("suffix") or "") == Path(m.group("name")).suffix


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files a killed writer left directly in ``folder`` (regular files
    or links named like :func:`atomic_path`'s, nothing else); returns them. Call it at a
    start, before anything writes into the folder."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for path in sorted(folder.iterdir()):
        if not is_stale_temporary(path) or (path.is_dir() and not path.is_symlink()):
            continue
        with contextlib.suppress(OSError):
            path.unlink()
            removed.append(path)
    return removed


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 text (flushed to disk before the rename)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def json_safe(obj: Any) -> Any:
    """``obj`` with NaN / inf floats as None (nested dicts, lists, tuples), so it is strict
    JSON (browsers and jq read it) and an undefined figure reads as null, never as a number."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_json_atomic(path: str | os.PathLike, obj: Any, *, sort_keys: bool = False) -> Path:
    """Write ``obj`` as indented UTF-8 JSON."""
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=sort_keys,
                                              ensure_ascii=False) + "\n")


def save_safetensors_atomic(
    path: str | os.PathLike,
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write ``tensors`` (detached, contiguous, on the CPU) as safetensors with ``metadata``."""
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_safetensors_file(clean, tmp, metadata)
    return Path(path)


def savefig_atomic(path: str | os.PathLike, fig, **kwargs) -> Path:
    """Save a matplotlib figure as PNG."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", **kwargs)
    return Path(path)
