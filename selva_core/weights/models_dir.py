"""The models folder: where every file of a variant lives, and how each file is verified.

Every weight file is checked before it is used. A published md5 or sha256 (``variants.py``,
or the hub's own sha256 of a large file at download time) is compared once; where no checksum
is published, the sha256 is recorded at the first download (or first use of a file put there
by hand) and later loads are compared with it; an exact size is checked where it is known.
The result is remembered in a sidecar ``<file>.sha256.json`` holding the sha256, md5, size
and modification time, so an unchanged file is not hashed again while any change (size or
mtime) makes the next load hash it and compare.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from ..atomic import write_text_atomic
from ..checksums import file_digests
from ..variants import WeightFile
from .errors import WeightsError

logger = logging.getLogger(__name__)

MODELS_DIR_ENV = "SELVA_MODELS_DIR"
DEFAULT_MODELS_DIR = Path("models") / "selva"
SIDECAR_SUFFIX = ".sha256.json"
_CHUNK = 8 * 1024 * 1024

# How a file was verified (the sidecar's "checked_against" field; the download table shows it).
PUBLISHED_MD5 = "published md5"
PUBLISHED_SHA256 = "published sha256"
HUB_SHA256 = "hub sha256"
RECORDED = "sha256 recorded at first download"
_DAMAGED = ("The file is corrupt, incomplete or a different file; delete it and download it "
            "again.")
RECORDED_BY_HAND = "sha256 recorded at first use (file placed by hand)"


def resolve_models_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The folder that holds the SelVA weight files.

    Precedence: the ``explicit`` argument, then the ``SELVA_MODELS_DIR`` environment variable,
    then ``./models/selva`` (relative to the working directory, as inside ComfyUI).
    """
    if explicit is not None and str(explicit) != "":
        return Path(explicit).expanduser()
    env = os.environ.get(MODELS_DIR_ENV, "")
    if env:
        return Path(env).expanduser()
    return DEFAULT_MODELS_DIR


def destination(file: WeightFile, models_dir: str | os.PathLike | None = None) -> Path:
    """The exact path ``file`` has inside the models folder."""
    return resolve_models_dir(models_dir) / file.relative_path


def destinations(
    files: Mapping[str, WeightFile], models_dir: str | os.PathLike | None = None
) -> dict[str, Path]:
    """``{key: path}`` for a mapping of files (see :meth:`ModelVariant.required_files`)."""
    folder = resolve_models_dir(models_dir)
    return {key: folder / f.relative_path for key, f in files.items()}


# --- checksums -----------------------------------------------------------------------------------
def file_md5(path: str | os.PathLike) -> str:
    """md5 hex digest of a file."""
    return file_digests(path)["md5"]


def sidecar_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def read_sidecar(path: str | os.PathLike) -> dict | None:
    """The verification record of ``path`` (None when there is none or it is unreadable)."""
    try:
        record = json.loads(sidecar_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _write_sidecar(path: Path, digests: Mapping[str, str], checked_against: str) -> None:
    st = path.stat()
    record = {
        "sha256": digests["sha256"],
        "md5": digests["md5"],
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "checked_against": checked_against,
    }
    try:
        write_text_atomic(sidecar_path(path), json.dumps(record, indent=1) + "\n")
    except OSError as exc:  # a read-only models folder still works; it is hashed on every load
        logger.warning("could not write %s (%s); the file will be hashed again next time",
                       sidecar_path(path), exc)


def _published(file: WeightFile, hub_sha256: str | None) -> dict[str, tuple[str, str]]:
    """``{algorithm: (expected digest, where it comes from)}`` for the checks that apply."""
    out: dict[str, tuple[str, str]] = {}
    if file.md5:
        out["md5"] = (file.md5.lower(), PUBLISHED_MD5)
    if file.sha256:
        out["sha256"] = (file.sha256.lower(), PUBLISHED_SHA256)
    elif hub_sha256:
        out["sha256"] = (hub_sha256.lower(), HUB_SHA256)
    return out


def check_digests(
    path: Path,
    digests: Mapping[str, str],
    file: WeightFile,
    *,
    hub_sha256: str | None = None,
    what: str = "",
) -> str | None:
    """Compare digests with every published checksum; return what they were checked against.

    Raises :class:`WeightsError` naming ``path`` on a mismatch; ``what`` ends the message
    (what to do). Returns None when no checksum is published (the caller records one).
    """
    checks = _published(file, hub_sha256)
    for algo, (expected, source) in checks.items():
        if digests[algo] != expected:
            raise WeightsError(
                f"checksum mismatch for {path}: {algo} is {digests[algo]}, expected {expected} "
                f"({source}). {what or _DAMAGED}"
            )
    return ", ".join(source for _, source in checks.values()) or None


def verify_file(
    path: str | os.PathLike,
    file: WeightFile,
    *,
    force: bool = False,
) -> str:
    """Check ``path`` (a copy of ``file``) and return what it was checked against.

    Size first (exact size from the registry, then the size recorded in the sidecar); then,
    unless the sidecar says this unchanged file was already verified, the md5/sha256 against
    the published checksums or the sha256 recorded at its first download. A file without any
    record gets its sha256 recorded now. ``force`` re-hashes even an unchanged file.
    Raises one :class:`WeightsError` naming the file and what to do.
    """
    path = Path(path)
    st = path.stat()
    if file.size is not None and st.st_size != file.size:
        raise WeightsError(
            f"{path} is {st.st_size:,} bytes but {file.relative_path} has {file.size:,} bytes: "
            f"it is incomplete or a different file. Delete it and download it again."
        )
    record = read_sidecar(path)
    recorded_sha = record.get("sha256") if record else None
    if recorded_sha and record.get("size") != st.st_size:
        raise WeightsError(
            f"{path} is {st.st_size:,} bytes but was {record.get('size'):,} bytes when its "
            f"sha256 was recorded ({sidecar_path(path).name}): the file changed. Delete it "
            f"and download it again (or delete the sidecar if you replaced it on purpose)."
        )
    checks = _published(file, None)
    unchanged = record is not None and record.get("mtime_ns") == st.st_mtime_ns
    agrees = record is not None and all(
        record.get(algo) == expected for algo, (expected, _) in checks.items()
    )
    if unchanged and agrees and recorded_sha and not force:
        logger.debug("%s already verified (%s)", path, sidecar_path(path).name)
        return str(record.get("checked_against", RECORDED))

    logger.info("verifying %s", path)
    digests = file_digests(path)
    how = check_digests(path, digests, file)
    if recorded_sha and digests["sha256"] != recorded_sha and "sha256" not in checks:
        raise WeightsError(
            f"checksum mismatch for {path}: sha256 is {digests['sha256']} but "
            f"{recorded_sha} was recorded at its first download ({sidecar_path(path).name}): "
            f"the file changed or is damaged. Delete it and download it again (or delete the "
            f"sidecar if you replaced it on purpose)."
        )
    if how is None:
        how = str(record.get("checked_against", RECORDED)) if recorded_sha else RECORDED_BY_HAND
        if not recorded_sha:
            logger.info("no published checksum for %s: recorded its sha256 %s", path,
                        digests["sha256"])
    _write_sidecar(path, digests, how)
    return how


def record_download(path: Path, digests: Mapping[str, str], checked_against: str | None) -> str:
    """Write the sidecar of a file just downloaded (and verified) into ``path``."""
    how = checked_against or RECORDED
    with contextlib.suppress(FileNotFoundError):
        _write_sidecar(path, digests, how)
    return how
