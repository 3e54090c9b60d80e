"""Fetch every weight file a SelVA variant needs into the models folder.

    python -m selva_core.download --variant small_16k            # or medium_44k, ..., all
    python -m selva_core.download --variant all --list           # URLs and paths, no network
    python -m selva_core.download --variant small_16k --models_dir /data/models/selva

Downloads the generator, video encoder, VAE, vocoder, CLIP text tower and FLAN-T5 files with one
progress bar; an interrupted run resumes where it stopped; every file is checked (published
md5/sha256, the hub's sha256, else its sha256 is recorded for later loads) before it gets its
real name. Ends with a table of what is where. ``--list`` prints one line per file (URL, size
where known, destination) without touching the network, to fetch them on another machine.
Exit status: 0 done, 1 bad arguments, 2 files missing or damaged (the message says which).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from .atomic import UnusableFolderError, check_writable_folder
from .console import say
from .variants import DEFAULT_VARIANT, OFFICIAL_VARIANTS, VARIANTS, WeightFile
from .weights import (
    WeightsError,
    destinations,
    ensure_files,
    file_url,
    read_sidecar,
    resolve_models_dir,
    verify_file,
)
from .weights.hub import part_path
from .weights.preflight import file_size_label, human_size

log = logging.getLogger("selva_core.download")



def _variants(names: Sequence[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        for part in name.split(","):
            part = part.strip()
            if part == "all":
                out.extend(OFFICIAL_VARIANTS)
            elif part:
                out.append(part)
    return list(dict.fromkeys(out))


def files_for(variants: Sequence[str]) -> dict[str, WeightFile]:
    """Every file the variants need, once each, keyed by its path inside the models folder."""
    files: dict[str, WeightFile] = {}
    for name in variants:
        for file in VARIANTS[name].required_files().values():
            files.setdefault(file.relative_path, file)
    return files


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m selva_core.download",
        description="Download (or list) every weight file of a SelVA variant into the models "
        "folder: generator, video encoder, VAE, vocoder, CLIP text tower and FLAN-T5.",
    )
    parser.add_argument(
        "--variant", action="append", default=None, metavar="NAME",
        help=f"model variant ({', '.join(OFFICIAL_VARIANTS)}) or 'all'; repeatable or "
        f"comma-separated (default {DEFAULT_VARIANT})",
    )
    parser.add_argument(
        "--models_dir", "--models-dir", default=None, metavar="DIR",
        help="models folder (default: $SELVA_MODELS_DIR, else ./models/selva, which is "
        "ComfyUI's models/selva when run from the ComfyUI folder)",
    )
    parser.add_argument(
        "--list", action="store_true",
        help="print URL, size and destination of every file (tab-separated) without any "
        "network access, and exit",
    )
    parser.add_argument(
        "--verify", action="store_true",
        help="re-hash every file already present, even unchanged ones",
    )
    return parser


def _command(variants: Sequence[str], models_dir: str | None) -> str:
    cmd = ["python", "-m", "selva_core.download", "--variant", ",".join(variants)]
    if models_dir is not None:
        cmd += ["--models_dir", models_dir]
    return shlex.join(cmd)


def print_listing(files: dict[str, WeightFile], folder: Path, out=None) -> None:
    """``URL<TAB>size<TAB>destination`` per file, after a ``#`` header line."""
    out = out or sys.stdout
    paths = destinations(files, folder)
    say("# url\tsize\tdestination", file=out)
    for key, file in files.items():
        say(f"{file_url(file)}\t{file_size_label(file)}\t{paths[key].absolute()}", file=out)


def print_table(
    files: dict[str, WeightFile], paths: dict[str, Path], fetched: set[str], out=None
) -> None:
    """What is where: file, status, size on disk, what it was checked against, path."""
    out = out or sys.stdout
    rows = [("file", "status", "size", "checked against", "path")]
    for key in files:
        path = paths[key]
        record = read_sidecar(path) or {}
        rows.append((
            key,
            "downloaded" if key in fetched else "present",
            human_size(path.stat().st_size),
            str(record.get("checked_against", "not checked")),
            str(path.absolute()),
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [c.ljust(w) for c, w in zip(row[:-1], widths)]
        say("  ".join([*cells, row[-1]]).rstrip(), file=out)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    variants = _variants(args.variant or [DEFAULT_VARIANT])
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        say(f"error: unknown variant {', '.join(unknown)}; choose from "
              f"{', '.join(OFFICIAL_VARIANTS)} or all", file=sys.stderr)
        return 1
    files = files_for(variants)
    folder = resolve_models_dir(args.models_dir)
    try:
        check_writable_folder(folder, "--models_dir", probe=bool(files) and not args.list)
    except UnusableFolderError as exc:
        say(f"error: {exc}", file=sys.stderr)
        return 2
    if not files:
        say(f"{', '.join(variants)} needs no weight files (a tiny random test model).")
        return 0
    if args.list:
        print_listing(files, folder)
        return 0

    paths = destinations(files, folder)
    before = {k for k, p in paths.items() if p.is_file()}
    try:
        if args.verify:
            for key in before:
                verify_file(paths[key], files[key], force=True)
        paths = ensure_files(
            files, folder, download=True, verify=True,
            label=f"SelVA {', '.join(variants)}",
            command=_command(variants, args.models_dir),
        )
    except WeightsError as exc:
        say(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        kept = [p for p in map(part_path, paths.values()) if p.is_file() and p.stat().st_size]
        say("\ninterrupted." + (
            " Partial downloads kept: " + ", ".join(str(p) for p in kept)
            + "; run the same command to resume." if kept else ""
        ), file=sys.stderr)
        return 130
    print_table(files, paths, set(files) - before)
    return 0


if __name__ == "__main__":
    sys.exit(main())
