"""``python -m tests.golden FOLDER``: run every golden case in FOLDER, report each case's max
error against its tolerance, exit non-zero on any failure."""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import torch

from tests.golden import discover_cases, load_case, run_case


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.golden",
        description="Check our networks against a folder of golden cases (seeded weights, "
        "inputs, reference outputs). Exit status 1 if any check fails.",
    )
    parser.add_argument("folder", type=pathlib.Path, help="folder holding <case>.json + "
                        "<case>.safetensors pairs (e.g. tests/reference/golden)")
    parser.add_argument("--case", action="append", default=[],
                        help="run only this case (repeatable)")
    parser.add_argument("--skip", action="append", default=[], help="skip this case (repeatable)")
    args = parser.parse_args(argv)

    if not args.folder.is_dir():
        parser.error(f"{args.folder} is not a folder")
    paths = [p for p in discover_cases(args.folder)
             if (not args.case or p.stem in args.case) and p.stem not in args.skip]
    if not paths:
        print(f"no golden cases found in {args.folder}", file=sys.stderr)
        return 1

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    failed = 0
    print(f"{'case / tensor':58s} {'max error':>11s} {'atol':>9s}  result")
    for path in paths:
        start = time.perf_counter()
        result = run_case(load_case(path))
        took = time.perf_counter() - start
        status = "ok" if result.ok else "FAIL"
        print(f"{result.case:58s} {'':>11s} {'':>9s}  {status} ({took:.1f} s)")
        if result.error:
            print(f"  error: {result.error}")
        for c in result.checks:
            print(f"  {c.name:56s} {c.max_error:11.3e} {c.atol:9.1e}  {'ok' if c.ok else 'FAIL'}")
        failed += not result.ok
        del result
    print(f"{len(paths) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
