"""Is the demo's result a lucky draw? The whole demo, once per seed, and its figures per clip.

Runs ``python train_lora.py --demo --quiet --seed S`` (exactly what ``scripts/demo.sh`` runs,
one fresh process each; the seed draws the demo's clips and the adapter's initialisation) for
every ``--seeds`` value, reads each run's ``listen/demo_report.json`` and prints, per
validation clip, the log-spectral distance to the true audio (timbre) and the envelope
correlation at lag 0 (timing, :func:`selva_core.audio.sync.envelope_sync`) of the base and the
adapted render.

* ``in_sync_rate``: share of validation clips where the adapted render is in sync (correlation
  at lag 0 at least :data:`selva_core.training.demo.IN_SYNC_CORR` and above the base render's);
* ``closer_rate``: share where the adapted render is closer in timbre (lower LSD);
* means of the four figures over all clips.

The seed the README's demo uses (42, the trainer's default) is the first of the default seeds.
Prints a table, then one JSON object as the last line.

    python benchmarks/bench_demo.py [--seeds 42 1 2 3] [--keep DIR] [-- TRAIN_LORA_FLAGS ...]

Flags after ``--`` go to every ``train_lora.py`` run (e.g. ``-- --steps 480``), to measure
other settings the same way.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_demo(output_dir: Path, seed: int, train_args: list[str] = ()) -> dict:
    """One demo run in a fresh process (``train_args`` added to its command line); its
    ``demo_report.json``."""
    cmd = [sys.executable, str(ROOT / "train_lora.py"), "--demo", "--quiet",
           "--output_dir", str(output_dir), "--seed", str(seed), *train_args]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the demo with --seed {seed} failed (exit {done.returncode}):\n"
                         f"{done.stderr[-2000:]}")
    return json.loads((output_dir / "listen" / "demo_report.json").read_text())


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]  # None: a flat envelope, no figure
    return round(sum(values) / len(values), 4) if values else None


def _fmt(corr: float | None) -> str:
    return "n/a" if corr is None else f"{corr:.2f}"  # None: a flat envelope


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2, 3])
    parser.add_argument("--keep", default=None,
                        help="keep each run's output folder under this folder (default: deleted)")
    parser.add_argument("train_args", nargs=argparse.REMAINDER,
                        help="after --: flags added to every train_lora.py run")
    args = parser.parse_args(argv)
    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.keep) if args.keep else Path(tmp)
        for seed in args.seeds:
            report = run_demo(base / f"seed_{seed}", seed, train_args)
            rows += [dict(clip, seed=seed) for clip in report["clips"]]
    print(f"{'seed':>5} {'clip':<10} {'LSD base':>9} {'adapted':>8} {'sync base':>10} "
          f"{'adapted':>8}  in sync")
    for r in rows:
        print(f"{r['seed']:>5} {r['clip']:<10} {r['lsd_base_db']:>9.1f} {r['lsd_adapted_db']:>8.1f}"
              f" {_fmt(r['sync_base_corr_lag0']):>10} {_fmt(r['sync_adapted_corr_lag0']):>8}  "
              f"{'yes' if r['adapted_in_sync'] else 'NO'}")
    figures = {
        "benchmark": "demo", "seeds": args.seeds, "train_args": train_args, "clips": len(rows),
        "in_sync_rate": round(sum(r["adapted_in_sync"] for r in rows) / len(rows), 4),
        "closer_rate": round(sum(r["adapted_closer"] for r in rows) / len(rows), 4),
        "lsd_base_db": _mean(r["lsd_base_db"] for r in rows),
        "lsd_adapted_db": _mean(r["lsd_adapted_db"] for r in rows),
        "sync_base": _mean(r["sync_base_corr_lag0"] for r in rows),
        "sync_adapted": _mean(r["sync_adapted_corr_lag0"] for r in rows),
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
