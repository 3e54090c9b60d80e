"""Benchmark the evaluation grid on the tiny model (no downloads).

* ``batched_over_one_by_one``: time to render ``--clips`` clips with one ``render`` call
  (clips batched through the sampler, one seed per clip) over rendering them one call per
  clip; the same audio either way (checked). Median of ``--repeats`` interleaved pairs after
  one warm-up. Target <= 0.6.
* ``renders_per_s``: renders per second of a whole ``run_evaluation`` of the tiny grid
  (``--clips`` clips x baseline + one adapter at two strengths, ``--steps`` Euler steps,
  batched), including features, WAV/MP4 writing, metrics, DeSync and the reports.
* ``metrics_s_per_render``: mean seconds per render of the metrics (spectral, LSD, MCD, drift,
  DeSync) in that run.

Prints a table, then one JSON object as the last line.

    python benchmarks/bench_eval.py [--clips 8] [--steps 10] [--duration 1] [--repeats 5]
                                     [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def batched_vs_one_by_one(pipe, batch, singles, seeds, repeats: int, **render_kw) -> dict:
    """Times of rendering ``batch`` (one ``render`` call, one seed per clip) and of rendering
    ``singles`` one call each, in ``repeats`` pairs of alternating order after one warm-up of
    each (which also gives the largest difference between the two results)."""
    import torch

    def batched():
        return pipe.render(batch, seed=seeds, **render_kw)

    def one_by_one():
        return torch.cat([pipe.render(f, seed=s, **render_kw) for f, s in zip(singles, seeds)])

    a, b = batched(), one_by_one()  # warm-up, and the same audio either way
    out = {"max_abs_diff": float((a - b).abs().max()), "batched_s": [], "one_by_one_s": [],
           "ratios": []}
    for r in range(repeats):
        order = (batched, one_by_one) if r % 2 == 0 else (one_by_one, batched)
        times = {}
        for fn in order:
            t0 = time.perf_counter()
            fn()  # render returns CPU tensors: the device work is done when it returns
            times[fn.__name__] = time.perf_counter() - t0
        out["batched_s"].append(times["batched"])
        out["one_by_one_s"].append(times["one_by_one"])
        out["ratios"].append(times["batched"] / times["one_by_one"])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--duration", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from selva_core.data.synthetic import make_synthetic_dataset
    from selva_core.evaluation.clips import cat_features, discover_clips, extract_clip_features
    from selva_core.evaluation.runner import run_evaluation
    from selva_core.evaluation.spec import load_spec
    from selva_core.pipeline import SelvaPipeline

    torch.set_num_threads(1) if args.device == "cpu" else None
    tmp = Path(tempfile.mkdtemp(prefix="bench_eval_"))
    per_class = (args.clips + 1) // 2
    make_synthetic_dataset(tmp / "clips", clips_per_class=per_class, duration=args.duration,
                           seed=0)
    pipe = SelvaPipeline.build("tiny_16k", device=args.device, precision="fp32")

    # -- batched vs one by one --------------------------------------------------------------
    clips, _ = discover_clips(tmp / "clips")
    clips = clips[: args.clips]
    feats = [extract_clip_features(pipe, c, args.duration, tmp / "feats", "bench") for c in clips]
    batch = cat_features(feats)
    seeds = list(range(len(clips)))
    kw = dict(num_steps=args.steps, cfg_strength=4.5)

    timing = batched_vs_one_by_one(pipe, batch, feats, seeds, args.repeats, **kw)
    max_diff, t_batched, t_single, ratios = (timing["max_abs_diff"], timing["batched_s"],
                                             timing["one_by_one_s"], timing["ratios"])

    # -- a whole evaluation --------------------------------------------------------------------
    from selva_core.model.lora import LoRAConfig, attach_lora, save_adapter, trainable_parameters

    fork = pipe.fork()
    attach_lora(fork.generator, LoRAConfig(rank=4, targets=("attn",)))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in trainable_parameters(fork.generator):
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
    adapter = save_adapter(fork.generator, tmp / "a.safetensors")
    spec = load_spec(json.dumps({
        "data_dir": str(tmp / "clips"), "output_dir": str(tmp / "out"), "steps": args.steps,
        "seeds": [1], "strengths": [0.5, 1.0], "batch_size": args.clips,
        "clips": [c.name for c in clips], "duration": args.duration,
        "adapters": [{"id": "a", "path": str(adapter)}]}))
    t0 = time.perf_counter()
    result = run_evaluation(spec, pipeline=pipe, progress=False)
    wall = time.perf_counter() - t0
    records = [r for a in result.summary["adapters"] for r in a.get("clips", [])]
    metrics_s = float(np.mean([r["metrics_s"] for r in records]))

    out = {
        "clips": len(clips), "steps": args.steps, "duration_s": args.duration,
        "device": args.device,
        "batched_s": round(statistics.median(t_batched), 4),
        "one_by_one_s": round(statistics.median(t_single), 4),
        "batched_over_one_by_one": round(statistics.median(ratios), 4),
        "batched_max_abs_diff": max_diff,
        "renders": len(records), "eval_wall_s": round(wall, 3),
        "renders_per_s": round(len(records) / wall, 4),
        "metrics_s_per_render": round(metrics_s, 5),
        "desync": result.summary["desync"]["status"],
    }
    print(f"{'quantity':<28}{'value':>14}")
    print("-" * 42)
    for key in ("batched_s", "one_by_one_s", "batched_over_one_by_one", "batched_max_abs_diff",
                "renders", "eval_wall_s", "renders_per_s", "metrics_s_per_render"):
        print(f"{key:<28}{out[key]:>14.6g}")
    print(f"(target batched_over_one_by_one <= 0.6; {len(clips)} clips of {args.duration:g} s, "
          f"{args.steps} steps, tiny_16k on {args.device})")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
