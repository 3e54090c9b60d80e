"""Benchmark the LoRA trainer on CPU: throughput with a cold vs warm feature cache, and the
cost of a training step over the frozen-model floor (tiny model, generated clips, no downloads).

* ``cold``: scan the dataset, extract every clip's features into an empty cache (video
  decoding, TextSynch, CLIP-text, VAE encoding), then ``--steps`` optimiser steps.
* ``warm``: the same job again; the cache is reused (files are hashed, the per-clip records
  and cache headers read, nothing decoded). ``cold_over_warm`` = cold job time / warm job
  time; ``warm_cache_over_cold_cache`` = the feature-cache step of the warm job / that of the
  cold job (the scan, which probes every file, is timed apart as ``scan_s``).
* ``clips_per_s``: training examples per second of the optimiser steps alone (warm run):
  batch assembly, per-example draws, forward, backward, clipping, AdamW, the log line.
* ``train_step_over_floor``: median trainer step / median *frozen-model floor*, the forward
  plus backward to the input latent of the same generator without any adapter on a batch of
  the same shape (the least work any training of it needs; the LoRA library's benchmark uses
  the same floor).

The dataset is the demo's (``train_lora.py --demo``: the same classes, clip count and length)
unless ``--clips N`` asks for N generated clips of the two base classes. The clock is the
process CPU time by default (other jobs on a shared machine disturb it far less than wall
time; ``--clock wall`` to change), with ``--threads`` threads (default 1). Prints a table,
then one JSON object as the last line.

    python benchmarks/bench_train.py [--clips N] [--duration 2] [--steps 20] [--batch_size 4]
"""

from __future__ import annotations

import argparse
import copy
import json
import pathlib
import shutil
import statistics
import sys
import tempfile
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from selva_core.data import scan_dataset  # noqa: E402
from selva_core.data.synthetic import make_synthetic_dataset  # noqa: E402
from selva_core.feature_cache import (  # noqa: E402
    FeatureCacheSettings,
    build_feature_cache,
)
from selva_core.pipeline import SelvaPipeline  # noqa: E402
from selva_core.training.config import TrainConfig  # noqa: E402
from selva_core.training.demo import prepare_demo  # noqa: E402
from selva_core.training.trainer import LoRATrainer  # noqa: E402

CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def _job(args, pipe, data_dir, cache_dir, out_dir, clock) -> dict[str, float]:
    """Scan + cache + ``steps`` optimiser steps; times of the whole job and of its parts."""
    gen_pipe = copy.copy(pipe)
    gen_pipe.generator = copy.deepcopy(pipe.generator)
    t0 = clock()
    clips = scan_dataset(data_dir)
    t_scan = clock() - t0
    settings = FeatureCacheSettings(variant="tiny_16k", duration=args.duration,
                                    window_policy="first", model_tag="tiny seed 0")
    examples = build_feature_cache(clips, gen_pipe, cache_dir, settings, progress=False)
    t_cache = clock() - t0 - t_scan
    cfg = TrainConfig(data_dir=str(data_dir), output_dir=str(out_dir), variant="tiny_16k",
                      duration=args.duration, steps=args.steps + 1, warmup_steps=1,
                      batch_size=args.batch_size, rank=args.rank, samples=False,
                      surgery=False, quiet=True, overwrite=True)
    trainer = LoRATrainer(cfg, gen_pipe.generator, examples)
    step_times = []
    for _ in range(args.steps):
        t = clock()
        trainer.train_step()
        step_times.append(clock() - t)
    return {"job_s": clock() - t0, "scan_s": t_scan, "cache_s": t_cache,
            "steps_s": sum(step_times),
            "step_median_s": statistics.median(step_times[1:] or step_times)}


def _dataset(args, root: pathlib.Path) -> pathlib.Path:
    """The demo's dataset (default) or ``--clips`` generated clips of the base classes."""
    if args.clips:
        data_dir = root / "clips"
        make_synthetic_dataset(data_dir, clips_per_class=max(1, args.clips // 2),
                               duration=args.duration, seed=0)
        return data_dir
    cfg = prepare_demo(TrainConfig(demo=True, output_dir=str(root / "demo")))
    return pathlib.Path(cfg.data_dir)


def _floor(args, pipe, clock) -> float:
    """Median time of forward + backward to the input latent of the adapter-free generator."""
    gen = copy.deepcopy(pipe.generator)
    for p in gen.parameters():
        p.requires_grad_(False)
    seq, cfg, b = gen.seq, gen.cfg, args.batch_size
    g = torch.Generator().manual_seed(0)
    latent = torch.randn(b, seq.latent, cfg.latent_dim, generator=g)
    clip = torch.randn(b, seq.clip, cfg.clip_dim, generator=g)
    sync = torch.randn(b, seq.sync, cfg.sync_dim, generator=g)
    text = torch.randn(b, cfg.text_seq_len, cfg.text_dim, generator=g)
    t = torch.rand(b, generator=g)
    times = []
    for i in range(args.floor_repeats + 2):
        x = latent.clone().requires_grad_(True)
        start = clock()
        gen(x, clip, sync, text, t).square().mean().backward()
        if i >= 2:
            times.append(clock() - start)
    return statistics.median(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=0,
                        help="generated clips of the two base classes instead of the demo set")
    parser.add_argument("--duration", type=float, default=2.0, help="window seconds")
    parser.add_argument("--steps", type=int, default=20, help="optimiser steps per job")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--floor_repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    clock = CLOCKS[args.clock]

    root = pathlib.Path(tempfile.mkdtemp(prefix="bench_train_"))
    try:
        data_dir = _dataset(args, root)
        clip_count = len(scan_dataset(data_dir))
        pipe = SelvaPipeline.tiny(seed=0, duration=args.duration, trained=False)
        cold = _job(args, pipe, data_dir, root / "cache", root / "out_cold", clock)
        warm = _job(args, pipe, data_dir, root / "cache", root / "out_warm", clock)
        floor = _floor(args, pipe, clock)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    examples = args.steps * args.batch_size
    result = {
        "cold_over_warm": cold["job_s"] / warm["job_s"],
        "warm_cache_over_cold_cache": warm["cache_s"] / cold["cache_s"],
        "train_step_over_floor": warm["step_median_s"] / floor,
        "clips_per_s": examples / warm["steps_s"],
        "cold_job_s": cold["job_s"], "warm_job_s": warm["job_s"],
        "cold_cache_s": cold["cache_s"], "warm_cache_s": warm["cache_s"],
        "scan_s": warm["scan_s"], "dataset": "generated" if args.clips else "demo",
        "cold_clips_per_s_end_to_end": examples / cold["job_s"],
        "warm_clips_per_s_end_to_end": examples / warm["job_s"],
        "step_median_s": warm["step_median_s"], "floor_s": floor,
        "variant": "tiny_16k", "clips": clip_count, "duration": args.duration,
        "steps": args.steps, "batch_size": args.batch_size, "rank": args.rank,
        "threads": torch.get_num_threads(), "clock": args.clock,
    }
    print(f"LoRA trainer benchmark: tiny_16k, {clip_count} clips "
          f"({'generated' if args.clips else 'demo set'}), {args.duration:g} s windows, "
          f"{args.steps} steps of batch {args.batch_size}, rank {args.rank} (attn), "
          f"{torch.get_num_threads()} thread(s), {args.clock} clock")
    rows = [
        ("job, cold cache (s)", cold["job_s"]), ("  of which feature extraction (s)",
                                                 cold["cache_s"]),
        ("job, warm cache (s)", warm["job_s"]), ("  of which cache check (s)", warm["cache_s"]),
        ("  of which dataset scan (s)", warm["scan_s"]),
        ("cold / warm", result["cold_over_warm"]),
        ("warm cache / cold cache", result["warm_cache_over_cold_cache"]),
        ("end-to-end clips/s, cold", result["cold_clips_per_s_end_to_end"]),
        ("end-to-end clips/s, warm", result["warm_clips_per_s_end_to_end"]),
        ("training clips/s (optimiser steps only)", result["clips_per_s"]),
        ("median training step (ms)", warm["step_median_s"] * 1e3),
        ("frozen-model floor: fwd + bwd to input (ms)", floor * 1e3),
        ("training step / floor", result["train_step_over_floor"]),
    ]
    for name, value in rows:
        print(f"  {name:<46} {value:>10.3f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
