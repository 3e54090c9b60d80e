"""Benchmark the SelVA generator: forward time, CFG sampling batched vs two-pass, peak memory.

Random weights (no downloads), ``small_16k`` shapes by default (8 s: N=250, clip 64, sync 192).

* forward: ``model(latent, clip_f, sync_f, text_f, t)`` at ``--batch`` (median of repeats
  after one warm-up), and ``predict_flow`` alone (conditions preprocessed once).
* sampling: ``--steps`` Euler steps with CFG at ``--sample-batch``; batched (one forward of
  2B per step, conditions preprocessed once) vs the two-pass reference (two forwards of B).
  Also reports the largest difference between the two results.
  ``--budget-s`` caps the wall time: when the measured forward time predicts that the two
  sampling runs would not fit, fewer steps are run (``steps_run`` says how many; the ratio
  and the per-step times do not depend on the step count).
* memory: process peak RSS (``resource.getrusage(...).ru_maxrss``) above the RSS measured
  right after building the model, i.e. activations and workspaces on top of the weights
  (CPU only; on CUDA ``torch.cuda.max_memory_allocated`` is reported instead).

Prints a table, then one JSON object as the last line.

    python benchmarks/bench_model.py [--variant small_16k] [--steps 25] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import resource
import statistics
import sys
import time
from contextlib import nullcontext

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from selva_core.flow_matching import euler_sample, euler_sample_two_pass  # noqa: E402
from selva_core.model.generator import SelvaGenerator  # noqa: E402


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variant", default="small_16k")
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--batch", type=int, default=2, help="forward batch")
    ap.add_argument("--sample-batch", type=int, default=1, help="sampling batch (per branch)")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--cfg", type=float, default=4.5)
    ap.add_argument("--repeats", type=int, default=2, help="timed forward repeats")
    ap.add_argument("--budget-s", type=float, default=120.0,
                    help="wall-time budget; sampling steps are reduced to fit (0: no limit)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: default)")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else nullcontext()
    )
    torch.manual_seed(0)

    started = time.perf_counter()
    rss_start = _rss_mb()
    t0 = time.perf_counter()
    model = SelvaGenerator.from_variant(args.variant, args.duration).to(device).eval()
    build_s = time.perf_counter() - t0
    params = sum(p.numel() for p in model.parameters())
    rss_model = _rss_mb()
    maxrss_base = max(_maxrss_mb(), rss_model)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    cfg, seq = model.cfg, model.seq
    g = torch.Generator().manual_seed(1)

    def feats(b):
        return [
            torch.randn(b, seq.latent, cfg.latent_dim, generator=g).to(device),
            torch.randn(b, seq.clip, cfg.clip_dim, generator=g).to(device),
            torch.randn(b, seq.sync, cfg.sync_dim, generator=g).to(device),
            torch.randn(b, 77, cfg.text_dim, generator=g).to(device),
        ]

    latent, clip_f, sync_f, text_f = feats(args.batch)
    t = torch.rand(args.batch, generator=g).to(device)
    with torch.inference_mode(), autocast:
        model(latent, clip_f, sync_f, text_f, t)  # warm-up
        forward_s, _ = _timed(lambda: model(latent, clip_f, sync_f, text_f, t), device,
                              args.repeats)
        cond = model.preprocess_conditions(clip_f, sync_f, text_f)
        predict_s, _ = _timed(lambda: model.predict_flow(latent, t, cond), device, args.repeats)

        x0, clip_s, sync_s, text_s = feats(args.sample_batch)
        steps = args.steps
        if args.budget_s > 0:
            # per step: batched ~ one forward of 2B, two-pass ~ two forwards of B (a bit
            # slower than one of 2B): x1.2 margin
            per_step = 1.2 * 2 * predict_s * (2 * args.sample_batch) / args.batch
            left = args.budget_s - (time.perf_counter() - started)
            steps = max(2, min(args.steps, int(left / per_step)))
            if steps < args.steps:
                print(f"note: budget {args.budget_s:.0f} s allows {steps} of {args.steps} "
                      f"sampling steps (measured predict_flow {predict_s:.2f} s)")
        kw = dict(num_steps=steps, cfg_strength=args.cfg)
        batched_s, x_batched = _timed(
            lambda: euler_sample(model, x0, clip_s, sync_s, text_s, **kw), device, 1
        )
        two_pass_s, x_two = _timed(
            lambda: euler_sample_two_pass(model, x0, clip_s, sync_s, text_s, **kw), device, 1
        )
    max_diff = (x_batched.float() - x_two.float()).abs().max().item()

    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
        peak_method = "torch.cuda.max_memory_allocated (weights included)"
    else:
        peak_mb = max(0.0, _maxrss_mb() - maxrss_base)
        peak_method = "ru_maxrss delta over RSS after model build (activations/workspace)"

    result = {
        "variant": args.variant,
        "total_s": round(time.perf_counter() - started, 1),
        "duration_s": args.duration,
        "device": str(device),
        "bf16_autocast": args.bf16,
        "threads": torch.get_num_threads(),
        "params": params,
        "build_s": round(build_s, 3),
        "forward_batch": args.batch,
        "forward_s": round(forward_s, 4),
        "predict_flow_s": round(predict_s, 4),
        "sample_batch": args.sample_batch,
        "steps_requested": args.steps,
        "steps_run": steps,
        "sample_batched_per_step_s": round(batched_s / steps, 4),
        "sample_two_pass_per_step_s": round(two_pass_s / steps, 4),
        "sample_batched_s": round(batched_s, 3),
        "sample_two_pass_s": round(two_pass_s, 3),
        "cfg_batched_over_two_pass": round(batched_s / two_pass_s, 4),
        "batched_vs_two_pass_max_abs": max_diff,
        "model_rss_mb": round(rss_model - rss_start, 1),
        "peak_mb": round(peak_mb, 1),
        "peak_mb_method": peak_method,
    }
    rows = [
        ("variant / device", f"{args.variant} / {device} ({result['threads']} threads)"),
        ("parameters", f"{params:,}"),
        ("tokens latent/clip/sync/text", f"{seq.latent}/{seq.clip}/{seq.sync}/{seq.text}"),
        (f"forward, batch {args.batch}", f"{forward_s:.3f} s"),
        (f"predict_flow only, batch {args.batch}", f"{predict_s:.3f} s"),
        (f"{steps}-step CFG, batched (B={args.sample_batch})",
         f"{batched_s:.2f} s ({batched_s / steps:.3f} s/step)"),
        (f"{steps}-step CFG, two-pass (B={args.sample_batch})",
         f"{two_pass_s:.2f} s ({two_pass_s / steps:.3f} s/step)"),
        ("batched / two-pass", f"{batched_s / two_pass_s:.3f}"),
        ("max |batched - two-pass|", f"{max_diff:.2e}"),
        ("model RSS", f"{result['model_rss_mb']:.0f} MB"),
        ("peak extra memory", f"{peak_mb:.0f} MB ({peak_method})"),
    ]
    width = max(len(r[0]) for r in rows)
    print("SelVA generator benchmark")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
