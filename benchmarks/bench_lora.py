"""Benchmark the LoRA library on the SelVA generator (random weights, no downloads).

``small_16k`` shapes at ``--duration`` seconds (default 2 s to stay short on CPU), rank 16 on
``qkv+linear1`` (every stream's attention qkv + the post-attention projection, kernel-3 convs
on the latent/clip streams), in one run. Each ratio is the median of ``--repeats`` per-repeat
ratios of interleaved runs (the contenders' order rotates every repeat) after ``--warmup``
runs. On CPU the clock is the process CPU time with one thread by default, which other jobs
on a shared machine disturb far less than wall time (``--clock wall`` to change):

* ``train_step_over_floor``: one training step (zero_grad, forward, backward, AdamW step on
  the adapter) over the *frozen-model floor*: forward + backward to the input latent on the
  same network without any adapter (the least work any training of it needs). Target <= 1.10.
* ``unmerged_over_base``: inference (no_grad) with the adapter unmerged / base. <= 1.05.
* ``merged_over_base``: inference with the adapter merged / base. 1.00.
* ``ours_over_peft``: our training step / peft's training step (same rank, alpha, layers, the
  same optimizer) on the same network. <= 1.00.
* ``pissa_train_step_over_floor``: the same for a PiSSA adapter, which runs as the rank-2r
  delta ``s [B, -B0] [A; A0]`` on the untouched base weight (bit-exact removal, strength acting
  on the learned change only) instead of rewriting the base weight to W_res.
* ``adapter_mb_large_44k_r16``: file size of an r = 16 adapter on ``large_44k``'s qkv layers,
  computed from the layer shapes on the meta device (fp32 factors + safetensors header).
  PiSSA files hold the rank-2r delta; their fp32 and fp16 sizes are reported too.

Prints a table, then one JSON object as the last line.

    python benchmarks/bench_lora.py [--duration 2] [--batch 1] [--repeats 7] [--device cpu]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import pathlib
import statistics
import sys
import time

import torch
import torch.nn.functional as F

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from selva_core.model.generator import SelvaGenerator  # noqa: E402
from selva_core.model.lora import (  # noqa: E402
    LoRAConfig,
    attach_lora,
    merge_adapters,
    resolve_targets,
    trainable_parameters,
    unmerge_adapters,
)
from selva_core.variants import get_variant  # noqa: E402

TARGETS = ("qkv+linear1",)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _inputs(variant: str, duration: float, batch: int, device: torch.device):
    v = get_variant(variant)
    cfg, seq = v.generator, v.sequence_lengths(duration)
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g).to(device)

    latent = r(batch, seq.latent, cfg.latent_dim)
    feats = (r(batch, seq.clip, cfg.clip_dim), r(batch, seq.sync, cfg.sync_dim),
             r(batch, seq.text, cfg.text_dim))
    t = torch.rand(batch, generator=g).to(device)
    return latent, feats, t, r(batch, seq.latent, cfg.latent_dim)


def _interleaved(
    fns: dict, repeats: int, warmup: int, device: torch.device, clock=time.perf_counter
) -> dict[str, list[float]]:
    """Per-contender lists of times; the order of the contenders rotates every repeat."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(repeats):
        order = names[i % len(names):] + names[: i % len(names)]
        for n in order:
            _sync(device)
            t0 = clock()
            fns[n]()
            _sync(device)
            times[n].append(clock() - t0)
    return times


def _ratio(times: dict[str, list[float]], num: str, den: str) -> float:
    """Median of the per-repeat ratios (pairs measured back to back share the machine state)."""
    return statistics.median(a / b for a, b in zip(times[num], times[den]))


def _median(times: dict[str, list[float]], name: str) -> float:
    return statistics.median(times[name])


def adapter_file_mb(variant: str, rank: int, targets: tuple[str, ...]) -> dict[str, float]:
    """Sizes (MB) of adapter files from layer shapes on the meta device (no weights)."""
    v = get_variant(variant)
    with torch.device("meta"):
        gen = SelvaGenerator(v.generator, v.sequence_lengths(8.0))
    paths = resolve_targets(gen, targets)
    per_rank = 0
    for p in paths:
        w = gen.get_submodule(p).weight
        per_rank += math.prod(w.shape[1:]) + w.shape[0]  # A row + B column per rank
    # safetensors header: ~ (key + dtype + shape + offsets) per tensor, plus our metadata
    header = 2 * len(paths) * 120 + 200 * len(paths) + 2048

    def mb(r: int, bytes_per: int) -> float:
        return (per_rank * r * bytes_per + header) / 1e6

    return {
        "layers": len(paths),
        "standard_fp32": mb(rank, 4),
        "pissa_fp32": mb(2 * rank, 4),
        "pissa_fp16": mb(2 * rank, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", default="small_16k")
    ap.add_argument("--duration", type=float, default=2.0)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (0: leave as is); 1 is steadiest on a shared CPU")
    ap.add_argument("--clock", choices=("auto", "wall", "cpu"), default="auto",
                    help="cpu: process CPU time (robust to other load on a shared machine); "
                         "auto: cpu time on CPU, wall time on CUDA")
    ap.add_argument("--no-peft", action="store_true", help="skip the peft comparison")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    clock_name = args.clock
    if clock_name == "auto":
        clock_name = "wall" if device.type == "cuda" else "cpu"
    clock = time.process_time if clock_name == "cpu" else time.perf_counter
    torch.manual_seed(0)

    base = SelvaGenerator.from_variant(args.variant, duration=args.duration).to(device)
    base.requires_grad_(False)
    ours = copy.deepcopy(base)
    cfg = LoRAConfig(rank=args.rank, targets=TARGETS)
    attach_lora(ours, cfg, variant_name=args.variant)
    layers = resolve_targets(base, TARGETS)
    opt_ours = torch.optim.AdamW(trainable_parameters(ours), lr=1e-4)
    # PiSSA runs as the rank-2r delta s([B, -B0][A; A0]) on the untouched base weight
    pissa = copy.deepcopy(base)
    attach_lora(pissa, LoRAConfig(rank=args.rank, targets=TARGETS, init="pissa"))
    opt_pissa = torch.optim.AdamW(trainable_parameters(pissa), lr=1e-4)

    pm = None
    if not args.no_peft:
        import peft

        pm = peft.get_peft_model(
            copy.deepcopy(base),
            peft.LoraConfig(r=args.rank, lora_alpha=cfg.effective_alpha, target_modules=layers),
        )
        opt_peft = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-4)

    latent, feats, t, target = _inputs(args.variant, args.duration, args.batch, device)

    def floor():
        x = latent.detach().requires_grad_(True)
        F.mse_loss(base(x, *feats, t), target).backward()

    def step(model, opt):
        def run():
            opt.zero_grad(set_to_none=True)
            F.mse_loss(model(latent, *feats, t), target).backward()
            opt.step()

        return run

    train_fns = {"floor": floor, "ours": step(ours, opt_ours), "pissa": step(pissa, opt_pissa)}
    if pm is not None:
        train_fns["peft"] = step(pm, opt_peft)
    train = _interleaved(train_fns, args.repeats, args.warmup, device, clock)

    def infer(model):
        def run():
            with torch.no_grad():
                model(latent, *feats, t)

        return run

    inf = _interleaved({"base": infer(base), "unmerged": infer(ours)}, args.repeats,
                       args.warmup, device, clock)
    merge_adapters(ours)  # merged: the plain base forward on merged weights
    direct = _interleaved({"base": infer(base), "merged": infer(ours)}, args.repeats,
                          args.warmup, device, clock)
    unmerge_adapters(ours)

    sizes = adapter_file_mb("large_44k", args.rank, ("qkv",))
    n_train = sum(p.numel() for p in trainable_parameters(ours))
    result = {
        "train_step_over_floor": _ratio(train, "ours", "floor"),
        "unmerged_over_base": _ratio(inf, "unmerged", "base"),
        "merged_over_base": _ratio(direct, "merged", "base"),
        "ours_over_peft": _ratio(train, "ours", "peft") if "peft" in train else None,
        "pissa_train_step_over_floor": _ratio(train, "pissa", "floor"),
        "adapter_mb_large_44k_r16": sizes["standard_fp32"],
        "adapter_mb_large_44k_r16_pissa_fp32": sizes["pissa_fp32"],
        "adapter_mb_large_44k_r16_pissa_fp16": sizes["pissa_fp16"],
        "floor_s": _median(train, "floor"),
        "ours_step_s": _median(train, "ours"),
        "peft_step_s": _median(train, "peft") if "peft" in train else None,
        "base_infer_s": _median(inf, "base"),
        "unmerged_infer_s": _median(inf, "unmerged"),
        "merged_infer_s": _median(direct, "merged"),
        "variant": args.variant,
        "duration_s": args.duration,
        "batch": args.batch,
        "rank": args.rank,
        "adapted_layers": len(layers),
        "trainable_params": n_train,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "clock": clock_name,
        "repeats": args.repeats,
    }
    rows = [
        ("training step / frozen floor", result["train_step_over_floor"], "<= 1.10"),
        ("unmerged inference / base", result["unmerged_over_base"], "<= 1.05"),
        ("merged inference / base", result["merged_over_base"], "1.00"),
        ("our step / peft step", result["ours_over_peft"], "<= 1.00"),
        ("PiSSA training step / frozen floor", result["pissa_train_step_over_floor"], "-"),
        ("adapter MB, large_44k qkv r16 (std fp32)", sizes["standard_fp32"], "<= 12"),
        ("adapter MB, same, PiSSA fp32 (rank 2r)", sizes["pissa_fp32"], "<= 12"),
        ("adapter MB, same, PiSSA fp16 (rank 2r)", sizes["pissa_fp16"], "<= 12"),
    ]
    print(f"LoRA benchmark: {args.variant} {args.duration:g} s batch {args.batch}, r={args.rank} "
          f"on {TARGETS[0]} ({len(layers)} layers, {n_train / 1e6:.2f} M params), {device}, "
          f"{torch.get_num_threads()} threads, median {clock_name} time of {args.repeats}")
    ms = {k: (v or float("nan")) * 1e3 for k, v in result.items() if k.endswith("_s")}
    print(f"  medians: floor {ms['floor_s']:.1f} ms | ours {ms['ours_step_s']:.1f} ms | peft "
          f"{ms['peft_step_s']:.1f} ms | base inference {ms['base_infer_s']:.1f} ms | unmerged "
          f"{ms['unmerged_infer_s']:.1f} ms | merged {ms['merged_infer_s']:.1f} ms")
    for name, value, target in rows:
        shown = "n/a" if value is None else f"{value:.3f}"
        print(f"  {name:<42} {shown:>8}   target {target}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
