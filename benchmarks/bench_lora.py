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
  same optimizer) on the same network. <= 1.00. The two differ by about 1 %, less than the
  repeat-to-repeat noise of a shared CPU, so this ratio also uses ``--peft-pairs`` extra
  back-to-back pairs; ``ours_over_peft_ci95`` is a 95 % bootstrap interval of its median, so
  one run tells "faster" from "equal within noise". ``layer_adapter_cost_ours_over_peft_*``:
  the adapter's own cost (step - floor) on one qkv Linear and one kernel-3 conv in isolation,
  ours / peft's, where the difference is not drowned by the frozen network's time.
* ``pissa_train_step_over_floor``: the same for a PiSSA adapter, which runs as the rank-2r
  delta ``s [B, -B0] [A; A0]`` on the untouched base weight (bit-exact removal, strength acting
  on the learned change only) instead of rewriting the base weight to W_res.
* ``adapter_mb_large_44k_r16``: size of real files written by ``save_adapter`` (default
  ``auto`` storage) for r = 16 adapters on ``large_44k``'s qkv layers (random weights; only
  those layers are built), the larger of the standard and the PiSSA one. PiSSA files hold the
  rank-2r delta in q16; its exact-fp32 size and the q16 file's error after loading onto a
  clean base (dW and layer output, worst layer; ``pissa_dw_over_w`` is the largest
  ||dW|| / ||W|| of that stand-in training, which the output error scales with).
* ``kinds``: one row per registered adapter kind (lora, dora, loraxs...) at the same rank and
  targets: trainable parameters, the size of its ``auto``-storage file for ``large_44k``'s qkv
  layers, its training step over the frozen floor (its own interleaved run) and memory: on
  CUDA the peak of one step (``max_memory_allocated``, reset before it), on CPU the bytes the
  adapter holds while training (its tensors, the gradients and AdamW's two moments of the
  trained ones; a process's resident peak cannot be split by kind).

Prints a table, then one JSON object as the last line.

    python benchmarks/bench_lora.py [--duration 2] [--batch 1] [--repeats 15] [--device cpu]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import pathlib
import random
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from torch import nn

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from selva_core.model.generator import SelvaGenerator  # noqa: E402
from selva_core.model.lora import (  # noqa: E402
    LoRAConfig,
    adapter_layers,
    attach_lora,
    load_adapter,
    merge_adapters,
    resolve_targets,
    save_adapter,
    trainable_parameters,
    unmerge_adapters,
)
from selva_core.model.lora.kind import kind_names  # noqa: E402
from selva_core.model.lora.runtime import get_layer  # noqa: E402
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


def _qkv_stand_in(variant: str, seed: int = 0) -> nn.Module:
    """The ``qkv`` layers of ``variant`` under their generator paths, random weights, nothing
    else (a full large_44k generator would need ~4 GB for layers the adapter never touches)."""
    v = get_variant(variant)
    with torch.device("meta"):
        gen = SelvaGenerator(v.generator, v.sequence_lengths(8.0))
    g = torch.Generator().manual_seed(seed)
    root = nn.Module()
    for path in resolve_targets(gen, ("qkv",)):
        w = gen.get_submodule(path).weight
        parent = root
        *parents, leaf = path.split(".")
        for part in parents:
            if not hasattr(parent, part):
                parent.add_module(part, nn.Module())
            parent = getattr(parent, part)
        layer = nn.Linear(w.shape[1], w.shape[0], bias=False)
        with torch.no_grad():
            layer.weight.copy_(torch.randn(w.shape, generator=g) / math.sqrt(w.shape[1]))
        parent.add_module(leaf, layer.requires_grad_(False))
    return root


@torch.no_grad()
def _q16_errors(model: nn.Module, variant: str, path: pathlib.Path, g) -> dict[str, float]:
    """Worst-layer errors of the file at ``path`` loaded onto a clean stand-in vs ``model``."""
    clean = _qkv_stand_in(variant)
    load_adapter(clean, path)
    ours, theirs = adapter_layers(model, "default"), adapter_layers(clean, "default")
    dw_err, out_err, rel = 0.0, 0.0, 0.0
    for p, st in ours.items():
        layer, loaded = get_layer(model, p), get_layer(clean, p)
        dw = st.impl.delta_weight(layer, st)
        dq = theirs[p].impl.delta_weight(loaded, theirs[p])
        w = layer.weight2d()
        rel = max(rel, float(dw.norm() / w.norm()))
        dw_err = max(dw_err, float((dq - dw).norm() / dw.norm()))
        x = torch.randn(64, dw.shape[1], generator=g)
        out_err = max(out_err, float((x @ (dq - dw).T).norm() / (x @ (w + dw).T).norm()))
    return {"pissa_auto_dw_rel_err": dw_err, "pissa_auto_output_rel_err": out_err,
            "pissa_dw_over_w": rel}


def adapter_files(variant: str, rank: int, out_dir: pathlib.Path) -> dict[str, float]:
    """Real files written by ``save_adapter`` for rank-``rank`` adapters on ``variant``'s qkv.

    Standard and PiSSA adapters (PiSSA factors moved by ~1 % as a stand-in for training), in
    the default ``auto`` storage and, for PiSSA, exact float32 too. Also the error of the
    default PiSSA file (q16) after loading onto a clean copy: relative Frobenius error of each
    layer's dW and of its output change / output on random inputs (worst layer).
    """
    sizes: dict[str, float] = {}
    for init in ("standard", "pissa"):
        model = _qkv_stand_in(variant)
        attach_lora(model, LoRAConfig(rank=rank, targets=("qkv",), init=init),
                    variant_name=variant)
        g = torch.Generator().manual_seed(1)
        for st in adapter_layers(model, "default").values():
            for t in (st.lora_A, st.lora_B):
                t.data.add_(torch.randn(t.shape, generator=g) * 0.01 * t.std())
        storages = ("auto", "float32") if init == "pissa" else ("auto",)
        for storage in storages:
            path = save_adapter(model, out_dir / f"{init}_{storage}.safetensors",
                                storage=storage)
            sizes[f"{init}_{storage}"] = path.stat().st_size / 1e6
        if init == "pissa":
            sizes.update(_q16_errors(model, variant, out_dir / "pissa_auto.safetensors", g))
    return sizes


def _kind_file_mb(kind: str, variant: str, rank: int, out_dir: pathlib.Path) -> float:
    """Size of the ``auto``-storage file of a rank-``rank`` ``kind`` adapter on the qkv layers."""
    model = _qkv_stand_in(variant)
    attach_lora(model, LoRAConfig(rank=rank, targets=("qkv",), kind=kind), variant_name=variant)
    return save_adapter(model, out_dir / f"kind_{kind}.safetensors").stat().st_size / 1e6


def kind_table(base: nn.Module, args, device: torch.device, clock, floor, batch_step,
               out_dir: pathlib.Path) -> dict[str, dict]:
    """Per adapter kind: trainable parameters, file MB (large_44k qkv), step / floor, memory."""
    rows: dict[str, dict] = {}
    models = {}
    fns = {"floor": floor}
    for kind in kind_names():
        model = copy.deepcopy(base)
        attach_lora(model, LoRAConfig(rank=args.rank, targets=TARGETS, kind=kind),
                    variant_name=args.variant)
        params = trainable_parameters(model)
        opt = torch.optim.AdamW(params, lr=1e-4)
        models[kind] = (model, params)
        fns[kind] = batch_step(model, opt)
    times = _interleaved(fns, args.repeats, args.warmup, device, clock)
    for kind, (model, params) in models.items():
        n_train = sum(p.numel() for p in params)
        held = sum(t.numel() * t.element_size() for k, t in model.state_dict().items()
                   if ".adapters." in k)
        memory = {"adapter_train_state_mb": (held + 3 * 4 * n_train) / 1e6}
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            fns[kind]()
            torch.cuda.synchronize(device)
            memory["peak_step_mb"] = torch.cuda.max_memory_allocated(device) / 1e6
        rows[kind] = {
            "trainable_params": n_train,
            "adapter_mb_large_44k_qkv": _kind_file_mb(kind, "large_44k", args.rank, out_dir),
            "step_over_floor": _ratio(times, kind, "floor"),
            **memory,
        }
    return rows


def _bootstrap_ci(times: dict[str, list[float]], num: str, den: str, n: int = 2000):
    """95 % bootstrap interval of the median per-repeat ratio (resampled repeats)."""
    ratios = [a / b for a, b in zip(times[num], times[den])]
    rng = random.Random(0)
    meds = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(n))
    return [meds[int(0.025 * n)], meds[int(0.975 * n) - 1]]


class _One(nn.Module):
    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x)


def layer_overheads(base: nn.Module, paths: dict[str, str], tokens: int, rank: int, alpha: float,
                    repeats: int, device: torch.device, clock) -> dict[str, float]:
    """Adapter cost of single layers in isolation, ours / peft's: (step - floor) ratios.

    Forward + backward (input and adapter gradients) of one layer of the generator, with our
    adapter, with peft's and without one (the floor), interleaved ``repeats`` times. Far less
    noisy than whole steps, where the adapters are a few per cent of the time.
    """
    import peft

    out = {}
    for kind, path in paths.items():
        layer = copy.deepcopy(base.get_submodule(path))
        ref = _One(layer).to(device).requires_grad_(False)
        ours = copy.deepcopy(ref)
        attach_lora(ours, LoRAConfig(rank=rank, alpha=alpha, targets=("layer",)))
        theirs = peft.get_peft_model(copy.deepcopy(ref), peft.LoraConfig(
            r=rank, lora_alpha=alpha, target_modules=["layer"]))
        g = torch.Generator().manual_seed(0)
        for m in (ours, theirs):  # trained-like B != 0 (B = 0 changes no cost, but be fair)
            for n, prm in m.named_parameters():
                if prm.requires_grad and "lora_B" in n:
                    prm.data.normal_(0, 0.01, generator=g)
        width = layer.in_channels if isinstance(layer, nn.Conv1d) else layer.in_features
        x = torch.randn(1, tokens, width, generator=g).to(device).requires_grad_(True)
        gy = torch.randn(ref(x).shape, generator=g).to(device)

        def run(m, x=x, gy=gy):
            def f():
                m.zero_grad(set_to_none=True)
                x.grad = None
                m(x).backward(gy)

            return f

        times = _interleaved({"floor": run(ref), "ours": run(ours), "peft": run(theirs)},
                             repeats, 5, device, clock)
        floor = statistics.median(times["floor"])
        ours_cost = statistics.median(times["ours"]) - floor
        peft_cost = statistics.median(times["peft"]) - floor
        out[kind] = ours_cost / peft_cost
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", default="small_16k")
    ap.add_argument("--duration", type=float, default=2.0)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (0: leave as is); 1 is steadiest on a shared CPU")
    ap.add_argument("--clock", choices=("auto", "wall", "cpu"), default="auto",
                    help="cpu: process CPU time (robust to other load on a shared machine); "
                         "auto: cpu time on CPU, wall time on CUDA")
    ap.add_argument("--no-peft", action="store_true", help="skip the peft comparison")
    ap.add_argument("--peft-pairs", type=int, default=45,
                    help="extra back-to-back (ours, peft) step pairs for ours_over_peft")
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
    per_layer = {}
    if pm is not None:
        per_layer = layer_overheads(
            base, {"linear": "joint_blocks.0.latent_block.attn.qkv",
                   "conv": "joint_blocks.0.latent_block.linear1"},
            latent.shape[1], args.rank, cfg.effective_alpha, 10 * args.repeats, device, clock)

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
    vs_peft = None
    if pm is not None:
        # The two steps differ by ~1 %, less than this machine's repeat-to-repeat noise: more
        # back-to-back pairs (order alternating) for that one ratio.
        extra = _interleaved({"ours": train_fns["ours"], "peft": train_fns["peft"]},
                             args.peft_pairs, 0, device, clock)
        vs_peft = {n: train[n] + extra[n] for n in ("ours", "peft")}

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

    with tempfile.TemporaryDirectory() as tmp:
        sizes = adapter_files("large_44k", args.rank, pathlib.Path(tmp))
        kinds = kind_table(base, args, device, clock, floor, step, pathlib.Path(tmp))
    n_train = sum(p.numel() for p in trainable_parameters(ours))
    result = {
        "train_step_over_floor": _ratio(train, "ours", "floor"),
        "unmerged_over_base": _ratio(inf, "unmerged", "base"),
        "merged_over_base": _ratio(direct, "merged", "base"),
        "ours_over_peft": _ratio(vs_peft, "ours", "peft") if vs_peft else None,
        "pissa_train_step_over_floor": _ratio(train, "pissa", "floor"),
        "ours_over_peft_ci95": _bootstrap_ci(vs_peft, "ours", "peft") if vs_peft else None,
        "ours_over_peft_pairs": len(vs_peft["ours"]) if vs_peft else 0,
        "layer_adapter_cost_ours_over_peft_linear": per_layer.get("linear"),
        "layer_adapter_cost_ours_over_peft_conv": per_layer.get("conv"),
        "adapter_mb_large_44k_r16": max(sizes["standard_auto"], sizes["pissa_auto"]),
        "adapter_mb_large_44k_r16_standard": sizes["standard_auto"],
        "adapter_mb_large_44k_r16_pissa": sizes["pissa_auto"],
        "adapter_mb_large_44k_r16_pissa_fp32": sizes["pissa_float32"],
        "pissa_q16_dw_rel_err": sizes["pissa_auto_dw_rel_err"],
        "pissa_q16_output_rel_err": sizes["pissa_auto_output_rel_err"],
        "pissa_dw_over_w": sizes["pissa_dw_over_w"],
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
        "kinds": kinds,
    }
    rows = [
        ("training step / frozen floor", result["train_step_over_floor"], "<= 1.10"),
        ("unmerged inference / base", result["unmerged_over_base"], "<= 1.05"),
        ("merged inference / base", result["merged_over_base"], "1.00"),
        ("our step / peft step", result["ours_over_peft"], "<= 1.00"),
        ("PiSSA training step / frozen floor", result["pissa_train_step_over_floor"], "-"),
        ("adapter MB, large_44k qkv r16, standard", sizes["standard_auto"], "<= 12"),
        ("adapter MB, same, PiSSA (rank-2r delta, q16)", sizes["pissa_auto"], "<= 12"),
        ("adapter MB, same, PiSSA stored exact fp32", sizes["pissa_float32"], "-"),
        ("PiSSA q16 file: dW relative error", sizes["pissa_auto_dw_rel_err"], "-"),
        ("PiSSA q16 file: output relative error", sizes["pissa_auto_output_rel_err"], "<= 1e-5"),
    ]
    print(f"LoRA benchmark: {args.variant} {args.duration:g} s batch {args.batch}, r={args.rank} "
          f"on {TARGETS[0]} ({len(layers)} layers, {n_train / 1e6:.2f} M params), {device}, "
          f"{torch.get_num_threads()} threads, median {clock_name} time of {args.repeats}")
    ms = {k: (v or float("nan")) * 1e3 for k, v in result.items() if k.endswith("_s")}
    print(f"  medians: floor {ms['floor_s']:.1f} ms | ours {ms['ours_step_s']:.1f} ms | peft "
          f"{ms['peft_step_s']:.1f} ms | base inference {ms['base_infer_s']:.1f} ms | unmerged "
          f"{ms['unmerged_infer_s']:.1f} ms | merged {ms['merged_infer_s']:.1f} ms")
    for name, value, target in rows:
        shown = "n/a" if value is None else f"{value:.3g}" if value < 0.01 else f"{value:.3f}"
        print(f"  {name:<42} {shown:>8}   target {target}")
    if per_layer:
        print(f"  adapter cost of one layer (step - floor), ours / peft: qkv Linear "
              f"{per_layer['linear']:.2f}, linear1 kernel-3 conv {per_layer['conv']:.2f}")
    if result["ours_over_peft_ci95"]:
        lo, hi = result["ours_over_peft_ci95"]
        print(f"  our step / peft step: 95 % interval of the median [{lo:.3f}, {hi:.3f}] over "
              f"{result['ours_over_peft_pairs']} pairs")
    mem_key = "peak_step_mb" if device.type == "cuda" else "adapter_train_state_mb"
    print(f"  per kind (rank {args.rank}, {TARGETS[0]}):")
    print(f"    {'kind':<8} {'trainable':>11} {'file MB l44k qkv':>17} {'step/floor':>11} "
          f"{mem_key:>23}")
    for kind, row in kinds.items():
        print(f"    {kind:<8} {row['trainable_params']:>11,} "
              f"{row['adapter_mb_large_44k_qkv']:>17.2f} {row['step_over_floor']:>11.3f} "
              f"{row[mem_key]:>23.2f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
