"""Checksums of whole files, streamed in chunks (a multi-GB checkpoint is never read at once).

One place for the file hashing that the weights folder (published md5 / sha256, sidecars), the
feature cache (its keys), checkpoints (their manifest), the shipped tiny weights and the
evaluator (changed adapters) all rely on.
"""

from __future__ import annotations

import hashlib
import os

CHUNK_BYTES = 8 * 1024 * 1024


def file_sha256(path: str | os.PathLike, chunk_size: int = CHUNK_BYTES) -> str:
    """sha256 hex digest of a file's whole content."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            sha.update(block)
    return sha.hexdigest()


def file_digests(path: str | os.PathLike, chunk_size: int = CHUNK_BYTES) -> dict[str, str]:
    """``{"md5": ..., "sha256": ...}`` of a file in one chunked pass."""
    md5 = hashlib.md5(usedforsecurity=False)
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            md5.update(block)
            sha.update(block)
    return {"md5": md5.hexdigest(), "sha256": sha.hexdigest()}
