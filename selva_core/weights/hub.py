"""Fetching weight files from the Hugging Face hub: one quick probe, resumable downloads.

* :func:`probe` asks the hub once, without retries, for a file's size and (for large files)
  sha256: it doubles as the reachability check, so an offline machine learns it in one
  connection attempt instead of retries per file.
* :func:`fetch` is the single place bytes come from (tests stub it or point ``HF_ENDPOINT`` at a
  local server). It appends to ``.<name>.part`` beside the destination with an HTTP ``Range``
  request from the part's current size, so an interrupted download resumes on the next run
  (huggingface_hub's own ``hf_hub_download`` discards its partial file on failure).
* :func:`download_file` fetches, checks size and checksums *before* the file appears under its
  real name, then renames it into place and records its sidecar.

``HF_HUB_OFFLINE=1`` (read at call time) means no network access at all.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from ..checksums import file_digests
from ..variants import HUB_URL, WeightFile
from .errors import WeightsError
from .models_dir import check_digests, record_download

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 5.0  # the one reachability check
READ_TIMEOUT_S = 30.0  # a stalled download gives up after this long without data
_SHA256 = re.compile(r"[0-9a-f]{64}")


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``, read now (not only at import time)."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on"):
            return True
    return False


def hub_endpoint() -> str:
    """The hub, or the mirror named by ``HF_ENDPOINT``."""
    return (os.environ.get("HF_ENDPOINT") or HUB_URL).rstrip("/")


def file_url(file: WeightFile) -> str:
    """Download URL of ``file`` on the current endpoint."""
    return file.url(hub_endpoint())


def part_path(dest: str | os.PathLike) -> Path:
    """Where a download of ``dest`` collects its bytes until it is complete and verified."""
    dest = Path(dest)
    return dest.with_name(f".{dest.name}.part")


@dataclass(frozen=True)
class RemoteFile:
    """What the hub says about one file: where to GET it, its size and sha256 when known."""

    url: str
    location: str
    size: int | None
    sha256: str | None


def probe(file: WeightFile, *, timeout: float = PROBE_TIMEOUT_S) -> RemoteFile:
    """One HEAD request (no retries): the file's size, sha256 (LFS files) and download location.

    Raises whatever the connection raises (unreachable host, timeout, 404, gated repository).
    """
    from huggingface_hub import get_hf_file_metadata

    url = file_url(file)
    meta = get_hf_file_metadata(url, timeout=timeout, retry_on_errors=False)
    etag = (meta.etag or "").lower()
    return RemoteFile(
        url=url,
        location=meta.location or url,
        size=meta.size,
        sha256=etag if _SHA256.fullmatch(etag) else None,
    )


def fetch(remote: RemoteFile, part: Path, on_bytes: Callable[[int], None]) -> None:
    """Append the rest of ``remote`` to ``part`` (resuming from its current size).

    ``on_bytes(n)`` is called per chunk written (negative when a server ignoring the range
    forces a restart from zero). Network errors propagate; the bytes written so far stay in
    ``part`` for the next attempt.
    """
    from huggingface_hub import get_session
    from huggingface_hub.utils import build_hf_headers, hf_raise_for_status

    start = part.stat().st_size if part.is_file() else 0
    if remote.size is not None and start >= remote.size:
        if start == remote.size:
            return
        part.unlink()  # longer than the file: not a prefix of it
        on_bytes(-start)
        start = 0
    headers = build_hf_headers()
    if urlparse(remote.location).netloc != urlparse(remote.url).netloc:
        headers.pop("authorization", None)  # signed CDN URLs carry their own access
    if start:
        headers["Range"] = f"bytes={start}-"
    import httpx2

    timeout = httpx2.Timeout(READ_TIMEOUT_S, connect=PROBE_TIMEOUT_S)
    with get_session().stream(
        "GET", remote.location, headers=headers, timeout=timeout, follow_redirects=True
    ) as response:
        if response.status_code >= 400:
            response.read()
            hf_raise_for_status(response)
        mode = "ab"
        if start and response.status_code != 206:  # the server ignored the range
            mode = "wb"
            on_bytes(-start)
        with open(part, mode) as f:
            for chunk in response.iter_bytes():  # as data arrives: little is lost to a drop
                f.write(chunk)
                on_bytes(len(chunk))


def download_file(
    file: WeightFile,
    dest: Path,
    remote: RemoteFile,
    on_bytes: Callable[[int], None] = lambda n: None,
) -> str:
    """Download ``file`` to ``dest`` (resumable, verified before the rename); return the check.

    A complete download whose size or checksum is wrong is deleted (it cannot be resumed into
    anything useful) and reported; an interrupted one keeps its part file.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    fetch(remote, part, on_bytes)
    size = part.stat().st_size
    expected = file.size if file.size is not None else remote.size
    again = (f"The download was discarded; run the same command again to fetch "
             f"{file.local_name} anew.")
    if expected is not None and size != expected:
        part.unlink()
        raise WeightsError(
            f"downloaded {size:,} bytes of {file.relative_path} from {remote.url} but the file "
            f"has {expected:,} bytes. {again}"
        )
    digests = file_digests(part)
    try:
        how = check_digests(
            dest, digests, file, hub_sha256=remote.sha256, what=again
        )
    except WeightsError:
        part.unlink()
        raise
    os.replace(part, dest)
    how = record_download(dest, digests, how)
    logger.info("downloaded %s (%s bytes, %s)", dest, f"{size:,}", how)
    return how
