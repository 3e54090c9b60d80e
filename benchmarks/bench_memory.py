"""Benchmark the memory of a LoRA training step: gradient checkpointing and the base dtype.

For one generator variant at the training window (8 s), rank 16 on ``attn``:

* ``activation_mb_per_clip_{plain,ckpt}``: memory one more clip in the batch adds to a
  training step (forward + backward), measured as the difference between batch 2 and
  batch 1; on CPU from the process's peak resident memory above the resident memory before
  the step (each configuration runs in a fresh process), on CUDA from
  ``max_memory_allocated``. ``activation_ckpt_over_plain`` is their ratio (target <= 0.35).
* ``saved_mb_per_clip_{plain,ckpt}``: bytes autograd keeps for the backward pass per clip
  (distinct storages, counted with saved-tensor hooks): deterministic, whatever the allocator.
* ``step_ckpt_over_plain``: median step time with checkpointing over without (target <= 1.40),
  both measured on one model in alternating pairs (process CPU time on CPU, wall on CUDA).
* on CUDA: ``peak_gb_large_44k_batch4``: peak allocated memory of a large_44k step at batch 4
  with a bf16 base and checkpointing (target <= 8).

Prints a table, then one JSON object as the last line.

    python benchmarks/bench_memory.py [--variant small_16k] [--device cpu] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from selva_core.model.generator import SelvaGenerator  # noqa: E402
from selva_core.model.lora import LoRAConfig, attach_lora, trainable_parameters  # noqa: E402
from selva_core.model.precision import cast_frozen_weights, resolve_base_dtype  # noqa: E402
from selva_core.variants import get_variant  # noqa: E402
from selva_core.weights import skip_random_init  # noqa: E402

MB = 2**20


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _build(variant: str, duration: float, device: torch.device, base_dtype: str):
    v = get_variant(variant)
    with skip_random_init():
        gen = SelvaGenerator(v.generator, v.sequence_lengths(duration))
    gen.to(device)
    for p in gen.parameters():
        p.requires_grad_(False)
    attach_lora(gen, LoRAConfig(rank=16, targets=("attn",), init="gaussian", seed=0))
    cast_frozen_weights(gen, resolve_base_dtype(base_dtype, device))
    return gen


def _inputs(gen: SelvaGenerator, batch: int, device: torch.device):
    seq, cfg = gen.seq, gen.cfg
    g = torch.Generator().manual_seed(0)
    shapes = [(seq.latent, cfg.latent_dim), (seq.clip, cfg.clip_dim), (seq.sync, cfg.sync_dim),
              (cfg.text_seq_len, cfg.text_dim)]
    tensors = [torch.randn(batch, *s, generator=g).to(device) for s in shapes]
    return (*tensors, torch.rand(batch, generator=g).to(device))


def _step(gen, inputs, autocast_dtype) -> None:
    device = inputs[0].device
    with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                        enabled=autocast_dtype is not None):
        loss = gen(*inputs).float().square().mean()
    loss.backward()
    for p in trainable_parameters(gen):
        p.grad = None


def _saved_bytes(gen, inputs, autocast_dtype) -> int:
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _step(gen, inputs, autocast_dtype)
    return sum(storages.values())


def worker(spec: dict) -> dict:
    """One configuration in this process: peak memory of one step, saved bytes, step times."""
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    gen = _build(spec["variant"], spec["duration"], device, spec["base_dtype"])
    gen.set_gradient_checkpointing(spec["checkpointing"])
    inputs = _inputs(gen, spec["batch"], device)
    autocast_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[
        spec["autocast"]]
    if device.type == "cuda":
        _step(gen, inputs, autocast_dtype)  # warm-up: cuBLAS workspaces, kernels
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        _step(gen, inputs, autocast_dtype)
        _sync(device)
        peak = torch.cuda.max_memory_allocated(device)
        step_bytes, peak_total = peak - before, peak
    else:
        before = _rss_bytes()
        _step(gen, inputs, autocast_dtype)
        peak_total = _maxrss_bytes()
        step_bytes = peak_total - before
    saved = _saved_bytes(gen, inputs, autocast_dtype)
    return {"step_bytes": step_bytes, "peak_bytes": peak_total, "saved_bytes": saved}


def timing_worker(spec: dict) -> dict:
    """Plain and checkpointed steps of one model, alternated in pairs (same load for both)."""
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    gen = _build(spec["variant"], spec["duration"], device, spec["base_dtype"])
    inputs = _inputs(gen, spec["batch"], device)
    autocast_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[
        spec["autocast"]]
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    times: dict[bool, list[float]] = {False: [], True: []}
    for i in range(spec["repeats"] + 1):
        for ckpt in (False, True) if i % 2 == 0 else (True, False):
            gen.set_gradient_checkpointing(ckpt)
            _sync(device)
            t0 = clock()
            _step(gen, inputs, autocast_dtype)
            _sync(device)
            if i > 0:  # the first pair warms up
                times[ckpt].append(clock() - t0)
    return {"step_s_plain": statistics.median(times[False]),
            "step_s_ckpt": statistics.median(times[True]),
            "clock": "wall" if device.type == "cuda" else "process cpu"}


def _run(spec: dict) -> dict:
    """Run :func:`worker` in a fresh interpreter (a clean peak-memory mark per configuration)."""
    out = subprocess.run([sys.executable, __file__, "--_worker", json.dumps(spec)],
                         capture_output=True, text=True, check=False,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    if out.returncode != 0:
        raise RuntimeError(f"worker {spec} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", default=None,
                    help="default: small_16k on CPU, large_44k on a GPU")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--repeats", type=int, default=4, help="timed (plain, ckpt) step pairs")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--_worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._worker:
        spec = json.loads(args._worker)
        print(json.dumps(timing_worker(spec) if spec.get("timing") else worker(spec)))
        return {}
    device = torch.device(args.device)
    variant = args.variant or ("large_44k" if device.type == "cuda" else "small_16k")
    base_dtype = "auto"
    autocast = "bf16" if resolve_base_dtype("auto", device) == torch.bfloat16 else "fp32"
    common = {"variant": variant, "duration": args.duration, "device": args.device,
              "threads": args.threads, "repeats": args.repeats, "base_dtype": base_dtype,
              "autocast": autocast}
    runs = {(ckpt, b): _run({**common, "checkpointing": ckpt, "batch": b})
            for ckpt in (False, True) for b in (1, 2)}
    timing = _run({**common, "timing": True, "batch": 2})

    def per_clip(ckpt: bool, key: str) -> float:
        return (runs[(ckpt, 2)][key] - runs[(ckpt, 1)][key]) / MB

    result = {
        "variant": variant, "device": args.device, "duration_s": args.duration,
        "base_dtype": str(resolve_base_dtype(base_dtype, device)).replace("torch.", ""),
        "autocast": autocast, "rank": 16, "target": "attn", "threads": args.threads,
        "activation_mb_per_clip_plain": per_clip(False, "step_bytes"),
        "activation_mb_per_clip_ckpt": per_clip(True, "step_bytes"),
        "saved_mb_per_clip_plain": per_clip(False, "saved_bytes"),
        "saved_mb_per_clip_ckpt": per_clip(True, "saved_bytes"),
        "step_s_plain_batch2": timing["step_s_plain"],
        "step_s_ckpt_batch2": timing["step_s_ckpt"], "step_clock": timing["clock"],
        "peak_mb_plain_batch2": runs[(False, 2)]["peak_bytes"] / MB,
        "peak_mb_ckpt_batch2": runs[(True, 2)]["peak_bytes"] / MB,
        "memory_method": ("cuda max_memory_allocated" if device.type == "cuda"
                          else "peak RSS above RSS before the step, fresh process each"),
    }
    result["activation_ckpt_over_plain"] = (result["activation_mb_per_clip_ckpt"]
                                            / result["activation_mb_per_clip_plain"])
    result["saved_ckpt_over_plain"] = (result["saved_mb_per_clip_ckpt"]
                                       / result["saved_mb_per_clip_plain"])
    result["step_ckpt_over_plain"] = result["step_s_ckpt_batch2"] / result["step_s_plain_batch2"]
    if device.type == "cuda":
        big = _run({**common, "variant": "large_44k", "base_dtype": "bf16", "autocast": "bf16",
                    "checkpointing": True, "batch": 4})
        result["peak_gb_large_44k_batch4"] = big["peak_bytes"] / 2**30

    print(f"LoRA training-step memory: {variant}, {args.duration:g} s, rank 16 attn, "
          f"{args.device}, base {result['base_dtype']}, autocast {autocast}")
    rows = [
        ("activation MB per clip, plain", result["activation_mb_per_clip_plain"]),
        ("activation MB per clip, checkpointing", result["activation_mb_per_clip_ckpt"]),
        ("  ratio (target <= 0.35)", result["activation_ckpt_over_plain"]),
        ("saved-for-backward MB per clip, plain", result["saved_mb_per_clip_plain"]),
        ("saved-for-backward MB per clip, checkpointing", result["saved_mb_per_clip_ckpt"]),
        ("  ratio", result["saved_ckpt_over_plain"]),
        ("step s at batch 2, plain", result["step_s_plain_batch2"]),
        ("step s at batch 2, checkpointing", result["step_s_ckpt_batch2"]),
        ("  ratio (target <= 1.40)", result["step_ckpt_over_plain"]),
        ("peak MB at batch 2, plain", result["peak_mb_plain_batch2"]),
        ("peak MB at batch 2, checkpointing", result["peak_mb_ckpt_batch2"]),
    ]
    if "peak_gb_large_44k_batch4" in result:
        rows.append(("large_44k batch 4, bf16 base + ckpt: peak GB (<= 8)",
                     result["peak_gb_large_44k_batch4"]))
    for name, value in rows:
        print(f"  {name:<52} {value:>10.3f}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
