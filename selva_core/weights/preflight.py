"""Check every file a variant needs before anything is loaded; fetch them when allowed.

:func:`preflight` is what every front end calls first: all files of the variant (generator,
video encoder, VAE, vocoder, CLIP text tower, FLAN-T5) are looked up and verified together.
Missing files are either downloaded in one go (one progress bar, one quick reachability check
first) or reported in ONE :class:`~selva_core.weights.errors.MissingWeightsError` that lists
each file's URL and destination and the ``python -m selva_core.download`` command, without
retries, in the time of a single connection attempt.
"""

from __future__ import annotations

import logging
import os
import shlex
from collections.abc import Callable, Mapping
from pathlib import Path

from ..variants import ModelVariant, WeightFile, get_variant
from . import hub
from .errors import MissingFile, MissingWeightsError, WeightsError
from .hub import RemoteFile, file_url, hub_endpoint, hub_offline, part_path
from .models_dir import destinations, resolve_models_dir, verify_file

logger = logging.getLogger(__name__)

# progress(bytes_done, bytes_total or None); None -> a tqdm bar on stderr.
Progress = Callable[[int, int | None], None]


def human_size(n: int | None, approx: bool = False) -> str:
    """``1.2 GB`` style (decimal units, as the hub shows sizes); ``?`` when unknown."""
    if n is None:
        return "?"
    value, unit = float(n), "B"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            break
        value /= 1000
    text = f"{value:.0f} {unit}" if unit == "B" or value >= 100 else f"{value:.1f} {unit}"
    return ("~" if approx else "") + text


def file_size_label(file: WeightFile) -> str:
    """Exact size where published, else the approximate one (``~``), else ``?``."""
    if file.size is not None:
        return human_size(file.size)
    return human_size(file.approx_size, approx=True)


def download_command(variant: str, models_dir: str | os.PathLike | None = None) -> str:
    """The shell command that fetches every file of ``variant`` into ``models_dir``."""
    cmd = ["python", "-m", "selva_core.download", "--variant", variant]
    if models_dir is not None:
        cmd += ["--models_dir", str(models_dir)]
    return shlex.join(cmd)


def _missing_message(
    label: str,
    missing: list[MissingFile],
    total: int,
    folder: Path,
    reason: str,
    command: str | None,
    partial: str = "",
) -> str:
    n = len(missing)
    # the first line says what to do (a dialog may show nothing else); the list follows
    todo = (f" Fetch {'it' if n == 1 else 'them'} with: {command}" if command else
            " Download each file below and put it at its path.")
    lines = [
        f"{label}: {n} of {total} weight file{'s' if total != 1 else ''} "
        f"{'is' if n == 1 else 'are'} missing from {folder.absolute()} and {reason}.{todo}"
    ]
    for m in missing:
        lines.append(f"  {m.file.relative_path} ({file_size_label(m.file)})")
        lines.append(f"      from {m.url}")
        lines.append(f"      to   {m.destination.absolute()}")
    if partial:
        lines.append(partial)
    if command:
        lines.append(
            "Without internet access here: download the URLs above on another machine and put "
            f"each file at its path (`{command} --list` prints them without network access)."
        )
    return "\n".join(lines)


def _tqdm_progress(total: int | None, initial: int) -> tuple[Progress, Callable[[], None]]:
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1000,
               desc="SelVA weights")

    def update(done: int, total: int | None) -> None:
        bar.update(done - bar.n)

    return update, bar.close


def ensure_files(
    files: Mapping[str, WeightFile],
    models_dir: str | os.PathLike | None = None,
    *,
    download: bool = False,
    verify: bool = True,
    label: str = "SelVA",
    command: str | None = None,
    progress: Progress | None = None,
) -> dict[str, Path]:
    """Make sure every file of ``files`` is in the models folder and verified; ``{key: path}``.

    Present files are verified first (all of them; damaged ones are listed together). Missing
    files are downloaded when ``download`` and the hub is reachable (one probe decides),
    else one :class:`MissingWeightsError` lists them all.
    """
    folder = resolve_models_dir(models_dir)
    paths = destinations(files, folder)
    present = [k for k, p in paths.items() if p.is_file()]
    if verify:
        problems = []
        for key in present:
            try:
                verify_file(paths[key], files[key])
            except WeightsError as exc:
                problems.append(f"  {exc}")
        if problems:
            raise WeightsError(
                f"{label}: {len(problems)} weight file(s) in {folder.absolute()} failed "
                f"verification:\n" + "\n".join(problems)
            )
    missing = [
        MissingFile(k, files[k], file_url(files[k]), paths[k]) for k in files if k not in present
    ]
    if not missing:
        return paths

    def fail(reason: str, partial: str = "", cause: BaseException | None = None):
        message = _missing_message(label, missing, len(files), folder, reason, command, partial)
        raise MissingWeightsError(message, missing) from cause

    if not download:
        fail("downloads are not allowed here (download=False)")
    if hub_offline():
        fail("HF_HUB_OFFLINE is set, so nothing is downloaded")

    # One quick reachability check: the probe of the first missing file.
    remotes: dict[str, RemoteFile] = {}
    try:
        remotes[missing[0].key] = hub.probe(missing[0].file)
    except Exception as exc:  # offline, DNS, proxy, timeout, HTTP error: one message
        fail(f"the hub {hub_endpoint()} cannot be reached ({type(exc).__name__}: {exc})",
             cause=exc)
    try:
        for m in missing[1:]:
            remotes[m.key] = hub.probe(m.file)
    except Exception as exc:
        fail(f"the hub did not answer for {m.file.relative_path} ({type(exc).__name__}: {exc})",
             cause=exc)

    sizes = [r.size for r in remotes.values()]
    total = sum(sizes) if all(s is not None for s in sizes) else None
    done = sum(
        part_path(m.destination).stat().st_size
        for m in missing
        if part_path(m.destination).is_file()
    )
    close = None
    if progress is None:
        progress, close = _tqdm_progress(total, done)
    state = {"done": done}

    def on_bytes(n: int) -> None:
        state["done"] += n
        progress(state["done"], total)

    progress(done, total)
    try:
        for i, m in enumerate(missing):
            try:
                hub.download_file(m.file, m.destination, remotes[m.key], on_bytes)
            except Exception as exc:
                part = part_path(m.destination)
                kept = part.stat().st_size if part.is_file() else 0
                note = ""
                if kept:
                    size = remotes[m.key].size
                    of = f" of {size:,}" if size is not None else ""
                    note = (f"A partial download of {m.file.relative_path} ({kept:,}{of} bytes) "
                            f"is kept in {part.absolute()}; the same command resumes it.")
                missing = missing[i:]
                fail(f"the download of {m.file.relative_path} failed "
                     f"({type(exc).__name__}: {exc})", note, cause=exc)
    finally:
        if close is not None:
            close()
    return paths


def preflight(
    variant: str | ModelVariant,
    models_dir: str | os.PathLike | None = None,
    *,
    download: bool = False,
    verify: bool = True,
    text_encoders: bool = True,
    progress: Progress | None = None,
) -> dict[str, Path]:
    """Check (and with ``download`` fetch) every file ``variant`` needs; ``{role: path}``.

    Roles: ``generator``, ``video_encoder``, ``vae``, ``vocoder`` (files) and ``clip_text``,
    ``t5`` (the text encoders' folders), plus every individual file key of
    :meth:`~selva_core.variants.ModelVariant.required_files`. A tiny variant needs nothing
    and returns ``{}``. ``text_encoders=False`` leaves the text encoders' folders out (for a
    caller that loads them from elsewhere). Raises one :class:`MissingWeightsError` listing
    every missing file with its URL and destination, or one :class:`WeightsError` listing
    damaged files.
    """
    v = get_variant(variant) if isinstance(variant, str) else variant
    files = v.required_files() if text_encoders else v.checkpoint_files()
    if not files:
        return {}
    paths = ensure_files(
        files,
        models_dir,
        download=download,
        verify=verify,
        label=f"SelVA {v.name}",
        command=download_command(v.name, models_dir),
        progress=progress,
    )
    out = dict(paths)
    if "clip_text.config" in paths:
        out["clip_text"] = paths["clip_text.config"].parent
    if "t5.config" in paths:
        out["t5"] = paths["t5.config"].parent
    return out


def ensure_checkpoint(
    file: WeightFile,
    models_dir: str | os.PathLike | None = None,
    download: bool = True,
    verify: bool = True,
) -> Path:
    """Path of one ``file`` inside the models folder, downloading it first when allowed."""
    return ensure_files(
        {file.relative_path: file}, models_dir, download=download, verify=verify,
        label=f"SelVA ({file.local_name})",
    )[file.relative_path]
