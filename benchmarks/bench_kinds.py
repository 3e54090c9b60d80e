"""Shoot-out of the adapter kinds on the demo's synthetic class: same data, same step budget.

One command::

    python benchmarks/bench_kinds.py                 # every kind, 60 steps each
    python benchmarks/bench_kinds.py --steps 60 --kinds lora ia3

It writes the demo's synthetic ``burst`` clips (the class the tiny base model never heard),
then runs one sweep (``selva_core.sweep``) with one experiment per adapter kind, all
with the demo's settings (tiny_16k, rank 8, lr 2e-3, batch 4) and the same number of steps,
and evaluates every final adapter (``eval_adapters``' runner) on the first run's held-out
clips over two seeds. The table gives per
kind: trainable parameters, validation loss (base -> final), the held-out log-spectral
distance to the true audio (mean over clips and seeds; spread = range of the per-seed means)
and the envelope correlation with the true audio at lag 0 (``env_corr_lag0``; 1 = loud at
the same moments). The last line is one JSON object. Everything runs on the CPU without
downloads; the folder (default ``kind_shootout_output``) keeps the sweep's runs, its
``leaderboard.csv`` and the evaluation's listening page.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from selva_core.data.synthetic import make_synthetic_dataset  # noqa: E402
from selva_core.evaluation.runner import run_evaluation  # noqa: E402
from selva_core.evaluation.spec import EvalSpec  # noqa: E402
from selva_core.model.lora.kind import kind_names  # noqa: E402
from selva_core.run_folder import RunFolder  # noqa: E402
from selva_core.sweep import parse_sweep, run_sweep  # noqa: E402
from selva_core.training.demo import (  # noqa: E402
    DEMO_CLASSES,
    DEMO_CLIP_SECONDS,
    DEMO_CLIPS_PER_CLASS,
    DEMO_SETTINGS,
)

SYNC_KEY = "env_corr_lag0"


def _args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="kind_shootout_output", help="working folder (replaced)")
    ap.add_argument("--steps", type=int, default=60, help="optimiser steps per kind")
    ap.add_argument("--kinds", nargs="+", default=None,
                    help=f"kinds to compare (default: all, {', '.join(kind_names())})")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2],
                    help="evaluation seeds (the spread is over these)")
    ap.add_argument("--eval_steps", type=int, default=10, help="Euler steps per render")
    ap.add_argument("--threads", type=int, default=2)
    return ap.parse_args(argv)


def _trainable(run_dir: str) -> int | None:
    """Trainable parameters the run recorded in its ``summary.json``."""
    path = pathlib.Path(run_dir) / "summary.json"
    return json.loads(path.read_text()).get("trainable_params") if path.is_file() else None


def main(argv=None) -> int:
    args = _args(argv)
    torch.set_num_threads(args.threads)
    kinds = args.kinds or kind_names()
    out = pathlib.Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    data = out / "data"
    make_synthetic_dataset(data, classes=DEMO_CLASSES, clips_per_class=DEMO_CLIPS_PER_CLASS,
                           duration=DEMO_CLIP_SECONDS, seed=0, sample_rate=16000,
                           write_wav=True)
    base = {k: v for k, v in DEMO_SETTINGS.items() if k != "overwrite"}
    base.update(data_dir=str(data), steps=args.steps, save_every=args.steps,
                val_every=args.steps, warmup_steps=min(20, args.steps // 6), samples=False,
                surgery=False, device="cpu", quiet=True, seed=0)
    sweep = parse_sweep({
        "name": "kinds", "output_dir": str(out / "sweep"), "base": base,
        "experiments": [{"id": k, "lora_kind": k} for k in kinds],
    })
    t0 = time.perf_counter()
    result = run_sweep(sweep, progress=False)
    # the final adapters only (a sweep's own evaluation also renders every checkpoint)
    finals = [{"id": e["id"], "path": str(RunFolder(e["output_dir"]).final_adapter)}
              for e in result.summary["experiments"]]
    spec = EvalSpec.from_dict({
        "name": "kinds", "data_dir": result.summary["experiments"][0]["output_dir"],
        "output_dir": str(out / "eval"), "adapters": finals, "steps": args.eval_steps,
        "seeds": args.seeds, "mp4": False, "desync": False, "rank_by": "lsd_db",
        "variant": base["variant"], "device": "cpu"})
    ev = run_evaluation(spec, progress=False).summary
    seconds = time.perf_counter() - t0
    ranking = {r["adapter"]: (i + 1, r) for i, r in enumerate(ev["verdict"].get("ranking", []))}
    by_id = {a["id"]: a for a in ev["adapters"]}

    def sync(ident):
        return (by_id.get(ident, {}).get("avg_metrics") or {}).get(SYNC_KEY)

    rows = {}
    for exp in result.summary["experiments"]:
        k = exp["id"]
        place, lsd = ranking.get(k, (None, {}))
        rows[k] = {"trainable_params": _trainable(exp["output_dir"]),
                   "val_loss_base": exp.get("val_loss_base"),
                   "val_loss_final": exp.get("val_loss_final"),
                   "lsd_db": lsd.get("mean"), "lsd_spread_db": lsd.get("spread"),
                   "lsd_rank": place, SYNC_KEY: sync(k)}
    _, b = ranking.get("baseline", (None, {}))
    baseline = {"lsd_db": b.get("mean"), "lsd_spread_db": b.get("spread"),
                SYNC_KEY: sync("baseline")}

    def f(x, spec=".3f"):
        return format(x, spec) if isinstance(x, (int, float)) else "n/a"

    print(f"Adapter kinds on the demo's '{DEMO_CLASSES[0]}' clips: tiny_16k, rank "
          f"{base['rank']}, {args.steps} steps each, lr {base['lr']:g}, eval seeds "
          f"{args.seeds} ({seconds:.0f} s)")
    print(f"  {'kind':<9}{'trainable':>10}{'val loss base->final':>24}{'LSD dB':>9}"
          f"{'spread':>8}{SYNC_KEY:>15}")
    print(f"  {'baseline':<9}{'':>10}{'':>24}{f(baseline['lsd_db'], '.2f'):>9}"
          f"{f(baseline['lsd_spread_db'], '.2f'):>8}{f(baseline[SYNC_KEY]):>15}")
    for k, r in sorted(rows.items(), key=lambda kv: kv[1]["lsd_rank"] or 99):
        vl = f"{f(r['val_loss_base'], '.4f')} -> {f(r['val_loss_final'], '.4f')}"
        print(f"  {k:<9}{f(r['trainable_params'], ','):>10}{vl:>24}{f(r['lsd_db'], '.2f'):>9}"
              f"{f(r['lsd_spread_db'], '.2f'):>8}{f(r[SYNC_KEY]):>15}")
    print(f"  verdict: {ev['verdict']['text']}")
    print(json.dumps({"steps": args.steps, "rank": base["rank"], "seeds": args.seeds,
                      "seconds": round(seconds, 1), "baseline": baseline, "kinds": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
