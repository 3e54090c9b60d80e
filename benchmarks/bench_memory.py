"""Benchmark the memory of a LoRA training step: gradient checkpointing and the base dtype.

For one generator variant at the training window (8 s), rank 16 on ``attn``:

Three modes: ``plain`` (no checkpointing), ``ckpt`` (the shipped selective checkpointing,
which keeps a few dear-to-recompute outputs per block) and ``full`` (plain checkpointing: only
block inputs kept; the baseline the selective policy improves on).

* ``activation_mb_per_clip_{plain,ckpt,full}``: memory one more clip in the batch adds to a
  training step (forward + backward), measured as the difference between batch 2 and
  batch 1. On CUDA from ``max_memory_allocated``; on CPU from the same quantity tracked
  exactly: the peak of live tensor storage created during the step (every op's outputs are
  followed by a dispatch mode until freed; weights and inputs not counted), which, unlike
  resident memory, does not depend on the C allocator. ``activation_ckpt_over_plain`` is the
  ratio (target <= 0.35).
* ``saved_mb_per_clip_{plain,ckpt,full}``: bytes autograd keeps for the backward pass per clip
  (distinct storages, counted with saved-tensor hooks): deterministic, whatever the allocator.
* ``peak_mb_{mode}_batch2``: the process's whole peak (resident memory on CPU, each
  configuration in a fresh process; allocated memory on CUDA). The benchmark never writes
  the generator's weights, so on CPU they stay out of resident memory.
* ``step_ckpt_over_plain``: median step time with checkpointing over without (target <= 1.40),
  and ``step_full_over_plain``, all measured on one model in rotating order (process CPU time
  on CPU, wall on CUDA).
* with ``--large-batch4-on-cpu`` on CPU: ``tensor_peak_gb_large_44k_batch4_cpu``, the same
  configuration's weights plus its step's tracked tensor peak (the CPU counterpart of the GPU
  figure: no CUDA kernels' workspaces, CPU attention kernels).
* each CUDA worker also reports the device memory in use (``torch.cuda.mem_get_info``) before
  its first tensor (the CUDA context) and after its step (context + the allocator's cache).
* on CUDA: ``peak_gb_large_44k_batch4``: peak allocated memory of a large_44k step at batch 4
  with a bf16 base and checkpointing (target <= 8); ``peak_gb_large_44k_batch4_full`` with
  full checkpointing.

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

from torch.multiprocessing.reductions import StorageWeakRef  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_leaves  # noqa: E402

from selva_core.model.generator import SelvaGenerator  # noqa: E402
from selva_core.model.lora import LoRAConfig, attach_lora, trainable_parameters  # noqa: E402
from selva_core.model.precision import cast_frozen_weights, resolve_base_dtype  # noqa: E402
from selva_core.variants import get_variant  # noqa: E402
from selva_core.weights import skip_random_init  # noqa: E402

MB = 2**20


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class TensorPeak(TorchDispatchMode):
    """Peak bytes of live tensor storage that ops create while the mode is active.

    Follows every op's outputs (forward, backward and recomputation) until their storage is
    freed; storages that existed before (weights, inputs) are passed as ``existing``.
    """

    def __init__(self, existing: list[torch.Tensor]):
        super().__init__()
        self.existing = {t.untyped_storage()._cdata for t in existing}
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.now = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            self.now -= self.live.pop(key)[1]
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                key = storage._cdata
                if key not in self.live and key not in self.existing:
                    self.live[key] = (StorageWeakRef(storage), storage.nbytes())
                    self.now += storage.nbytes()
        self.peak = max(self.peak, self.now)
        return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _build(variant: str, duration: float, device: torch.device, base_dtype: str):
    v = get_variant(variant)
    with skip_random_init():
        gen = SelvaGenerator(v.generator, v.sequence_lengths(duration))
    for p in gen.parameters():
        p.requires_grad_(False)
    attach_lora(gen, LoRAConfig(rank=16, targets=("attn",), init="gaussian", seed=0))
    # Cast, then move, as the trainer does: the fp32 weights never reach the device (its
    # allocator would keep their blocks cached).
    cast_frozen_weights(gen, resolve_base_dtype(base_dtype, device))
    return gen.to(device)


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
    device_used = {}
    if device.type == "cuda":  # device memory in use before any tensor: context (+ others')
        free, total = torch.cuda.mem_get_info(device)
        device_used["device_used_before_bytes"] = total - free
    gen = _build(spec["variant"], spec["duration"], device, spec["base_dtype"])
    _set_mode(gen, spec["mode"])
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
        free, total = torch.cuda.mem_get_info(device)  # the allocator keeps its peak cache
        device_used.update(device_used_after_bytes=total - free,
                           reserved_peak_bytes=torch.cuda.max_memory_reserved(device))
    else:
        if not spec.get("tracked_only"):
            _step(gen, inputs, autocast_dtype)
        peak_total = _maxrss_bytes()
        tracker = TensorPeak([*gen.parameters(), *gen.buffers(), *inputs])
        with tracker:
            _step(gen, inputs, autocast_dtype)
        step_bytes = tracker.peak
    weights = {t.untyped_storage()._cdata: t.untyped_storage().nbytes()
               for t in [*gen.parameters(), *gen.buffers()]}
    out = {"step_bytes": step_bytes, "peak_bytes": peak_total,
           "weights_bytes": sum(weights.values()), **device_used}
    if not spec.get("tracked_only"):
        out["saved_bytes"] = _saved_bytes(gen, inputs, autocast_dtype)
    return out


MODES = ("plain", "ckpt", "full")


def _set_mode(gen: SelvaGenerator, mode: str) -> None:
    gen.set_gradient_checkpointing(mode != "plain", selective=mode == "ckpt")


def timing_worker(spec: dict) -> dict:
    """Steps of one model in every mode, in rotating order (the same load for each)."""
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    gen = _build(spec["variant"], spec["duration"], device, spec["base_dtype"])
    inputs = _inputs(gen, spec["batch"], device)
    autocast_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[
        spec["autocast"]]
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    times: dict[str, list[float]] = {m: [] for m in MODES}
    for i in range(spec["repeats"] + 1):
        for mode in MODES[i % 3:] + MODES[:i % 3]:
            _set_mode(gen, mode)
            _sync(device)
            t0 = clock()
            _step(gen, inputs, autocast_dtype)
            _sync(device)
            if i > 0:  # the first round warms up
                times[mode].append(clock() - t0)
    return {**{f"step_s_{m}": statistics.median(t) for m, t in times.items()},
            "clock": "wall" if device.type == "cuda" else "process cpu"}


def _run(spec: dict) -> dict:
    """Run :func:`worker` in a fresh interpreter (a clean peak-memory mark per configuration)."""
    out = subprocess.run([sys.executable, __file__, "--_worker", json.dumps(spec)],
                         capture_output=True, text=True, check=False,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(
                             p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)})
    if out.returncode != 0:
        raise RuntimeError(f"worker {spec} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", default=None,
                    help="default: small_16k on CPU, large_44k on a GPU")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--repeats", type=int, default=4, help="timed rounds of one step per mode")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--large-batch4-on-cpu", action="store_true",
                    help="also run the GPU figure's configuration (large_44k, batch 4, bf16 base, "
                         "bf16 autocast, checkpointing) on the CPU and report its tensor peak "
                         "(weights + the step's tracked peak); slow: one step takes minutes")
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
    runs = {(mode, b): _run({**common, "mode": mode, "batch": b})
            for mode in MODES for b in (1, 2)}
    timing = _run({**common, "timing": True, "batch": 2})

    def per_clip(mode: str, key: str) -> float:
        return (runs[(mode, 2)][key] - runs[(mode, 1)][key]) / MB

    result = {
        "variant": variant, "device": args.device, "duration_s": args.duration,
        "base_dtype": str(resolve_base_dtype(base_dtype, device)).replace("torch.", ""),
        "autocast": autocast, "rank": 16, "target": "attn", "threads": args.threads,
        **{f"activation_mb_per_clip_{m}": per_clip(m, "step_bytes") for m in MODES},
        **{f"saved_mb_per_clip_{m}": per_clip(m, "saved_bytes") for m in MODES},
        **{f"step_s_{m}_batch2": timing[f"step_s_{m}"] for m in MODES},
        "step_clock": timing["clock"],
        **{f"peak_mb_{m}_batch2": runs[(m, 2)]["peak_bytes"] / MB for m in MODES},
        "memory_method": ("cuda max_memory_allocated" if device.type == "cuda"
                          else "peak live tensor storage of the step (dispatch-mode tracked)"),
    }
    for m in ("ckpt", "full"):
        result[f"activation_{m}_over_plain"] = (result[f"activation_mb_per_clip_{m}"]
                                                / result["activation_mb_per_clip_plain"])
        result[f"saved_{m}_over_plain"] = (result[f"saved_mb_per_clip_{m}"]
                                           / result["saved_mb_per_clip_plain"])
        result[f"step_{m}_over_plain"] = (result[f"step_s_{m}_batch2"]
                                          / result["step_s_plain_batch2"])
    if device.type == "cuda":
        for m, key in (("ckpt", "peak_gb_large_44k_batch4"),
                       ("full", "peak_gb_large_44k_batch4_full")):
            big = _run({**common, "variant": "large_44k", "base_dtype": "bf16",
                        "autocast": "bf16", "mode": m, "batch": 4})
            result[key] = big["peak_bytes"] / 2**30
    elif args.large_batch4_on_cpu:
        big = _run({**common, "variant": "large_44k", "base_dtype": "bf16", "autocast": "bf16",
                    "mode": "ckpt", "batch": 4, "tracked_only": True})
        result["tensor_peak_gb_large_44k_batch4_cpu"] = (
            (big["weights_bytes"] + big["step_bytes"]) / 2**30)

    print(f"LoRA training-step memory: {variant}, {args.duration:g} s, rank 16 attn, "
          f"{args.device}, base {result['base_dtype']}, autocast {autocast}")
    print(f"  {'':<40} {'plain':>9} {'ckpt':>9} {'full':>9}")
    table = [
        ("activation MB per clip", "activation_mb_per_clip_{}", None),
        ("  over plain (ckpt target <= 0.35)", "activation_{}_over_plain", 1.0),
        ("saved-for-backward MB per clip", "saved_mb_per_clip_{}", None),
        ("  over plain", "saved_{}_over_plain", 1.0),
        ("step s at batch 2", "step_s_{}_batch2", None),
        ("  over plain (ckpt target <= 1.40)", "step_{}_over_plain", 1.0),
        ("peak MB at batch 2", "peak_mb_{}_batch2", None),
    ]
    for name, key, plain_value in table:
        cells = [plain_value if m == "plain" and plain_value is not None
                 else result[key.format(m)] for m in MODES]
        print(f"  {name:<40} " + " ".join(f"{c:>9.3f}" for c in cells))
    for key, name in (("peak_gb_large_44k_batch4", "ckpt"), ("peak_gb_large_44k_batch4_full",
                                                             "full")):
        if key in result:
            print(f"  large_44k batch 4, bf16 base + {name}: peak GB (<= 8) {result[key]:>9.3f}")
    if "tensor_peak_gb_large_44k_batch4_cpu" in result:
        print("  large_44k batch 4, bf16 base + ckpt, on CPU: weights + step tensor peak GB "
              f"{result['tensor_peak_gb_large_44k_batch4_cpu']:>9.3f}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
