"""GPU acceptance in one prepared run: the figures only a GPU can give (seeded weights, no files).

Every network is the real-size one of ``large_44k`` built with seeded random weights (the
golden tests' recipe, ``tests/reference/golden/seeded_weights.py``, drawn on the device), so
nothing is downloaded. Sections (``--sections`` picks some; each fails soft: an exception is
reported as that section's error and the others still run):

* ``memory``: peak ``torch.cuda.max_memory_allocated`` of one LoRA training step (rank 16 on
  ``attn``, batch 4, 8 s, bf16 base, bf16 autocast) with the shipped selective gradient
  checkpointing (``peak_gb_large_44k_batch4``, target <= 8) and without it; each in a fresh
  process (``bench_memory``'s worker). ``device_gb_..._with_context``: device memory in use
  after the step (``torch.cuda.mem_get_info``: the CUDA context and the allocator's cache
  included); ``cuda_context_gb``: in use before the worker's first tensor.
* ``speed``: a training step (zero_grad, forward, backward, AdamW on the adapter; bf16 base,
  bf16 autocast, batch 4) over the frozen floor (forward + backward to the input latent of the
  same network without an adapter, ``bench_lora``'s definition; target <= 1.10), clips per
  second, and the step with checkpointing over the step without (target <= 1.40).
* ``precision``: the same 8 s render (features, seed) in fp32 and in bf16: largest absolute
  difference of the latent and of the waveform (and of the waveform decoded from the fp32
  latent by the bf16 decoder alone).
* ``render``: real-time factor (render seconds per audio second, < 1 is faster than real time)
  of an 8 s render at 25 Euler steps with CFG, and of a 30 s render in crossfaded 8 s windows.
* ``residency``: as ComfyUI uses the pipeline: networks offloaded to the CPU, loaded onto the
  GPU, one render, offloaded to the CPU, cache emptied: the memory left behind over the memory
  the load took (target <= 0.05); the same for the library's own ``offload='cpu'``; an
  adapted branch (``with_adapters``) adds only its adapter's bytes (target <= 1.05 of them).
* ``eval``: the evaluator's batched render of 4 clips over rendering them one by one
  (``bench_eval``'s measurement; target <= 0.6).

Timing synchronises the device around each timed call, after warm-ups. ``--dry-run`` runs the
same code on the CPU with ``tiny_16k`` and short settings (under a minute; a test runs it).
Prints progress as it goes, a table, then one JSON object as the last line.

    python benchmarks/gpu_acceptance.py [--sections memory,speed] [--out FILE] [--dry-run]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import importlib.util
import json
import logging
import pathlib
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from selva_core.atomic import write_json_atomic  # noqa: E402
from selva_core.features import ConditionFeatures  # noqa: E402
from selva_core.model.lora import LoRAConfig, attach_lora, trainable_parameters  # noqa: E402
from selva_core.model.precision import cast_frozen_weights, resolve_weight_dtype  # noqa: E402
from selva_core.pipeline import SelvaPipeline  # noqa: E402
from selva_core.variants import get_variant  # noqa: E402
from selva_core.weights import build_component, skip_random_init  # noqa: E402

GB = 2**30
SECTIONS = ("memory", "speed", "precision", "render", "residency", "eval")
RECIPE = ROOT / "tests" / "reference" / "golden" / "seeded_weights.py"
TARGETS = ("attn",)  # the trainer's default layers
CFG = 4.5


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes of one run: the GPU's (real variant) or the dry run's (tiny, short, CPU)."""

    device: torch.device
    variant: str = "large_44k"
    duration: float = 8.0  # training window and one-window render
    batch: int = 4  # training batch
    rank: int = 16
    steps: int = 25  # Euler steps of the timed renders
    long_s: float = 30.0  # the windowed render
    window_s: float | None = None  # None: the variant's training window
    speed_repeats: int = 5
    speed_warmup: int = 2
    render_repeats: int = 2
    residency_steps: int = 5
    eval_clips: int = 4
    eval_steps: int = 10
    eval_repeats: int = 2
    threads: int = 4  # CPU threads of the memory workers
    # Training (memory, speed): bf16 base under bf16 autocast, the GPU's configuration; the
    # dry run keeps it, so the CPU exercises the same dtype path.
    train_dtype: torch.dtype = torch.bfloat16

    @classmethod
    def dry(cls) -> Plan:
        return cls(device=torch.device("cpu"), variant="tiny_16k", duration=2.0, steps=3,
                   long_s=5.0, window_s=2.0, speed_repeats=2, speed_warmup=1,
                   render_repeats=1, residency_steps=2, eval_clips=2, eval_steps=2,
                   eval_repeats=1, threads=1)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self) -> torch.autocast:
        """A fresh autocast context for one training forward in ``train_dtype``."""
        return torch.autocast(self.device.type, dtype=self.train_dtype,
                              enabled=self.train_dtype != torch.float32)

    @property
    def tag(self) -> str:
        return f"{self.variant}_batch{self.batch}"


# --- shared pieces ----------------------------------------------------------------------------
_T0 = time.perf_counter()


def say(msg: str) -> None:
    print(f"[gpu_acceptance {time.perf_counter() - _T0:6.1f} s] {msg}", flush=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _recipe():
    spec = importlib.util.spec_from_file_location("golden_seeded_weights", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@torch.no_grad()
def seeded_network(component: str, variant: str, device: torch.device, seed: int = 0
                   ) -> nn.Module:
    """A full-size network of ``variant`` built on ``device`` with the golden recipe's seeded
    weights (no value zero, so outputs are not trivially zero), finished as ``from_pretrained``
    finishes a loaded one (VAE renormalised, decoder only; vocoder weight norm folded)."""
    sw = _recipe()
    v = get_variant(variant)
    with torch.device(device), skip_random_init():
        net = build_component(component, v)
    if component == "vae":
        net.drop_encoder()
    g = torch.Generator(device)
    with torch.device(device):
        for i, (key, t) in enumerate(sorted(net.state_dict().items())):
            if not t.is_floating_point():
                continue
            g.manual_seed(seed * sw.SEED_STRIDE + i)
            shape = list(t.shape)
            t.copy_(sw.seeded_tensor(sw.key_role(key, shape), shape, g))
    if component == "vae":
        net.normalize_weights_()
    if component == "vocoder":
        net.remove_weight_norm()
    return net.requires_grad_(False).eval()


def random_features(variant: str, duration: float, batch: int, seed: int = 0
                    ) -> ConditionFeatures:
    """Conditioning features of ``batch`` clips (random CLIP-text and sync tokens)."""
    v = get_variant(variant)
    cfg, seq = v.generator, v.sequence_lengths(duration)
    g = torch.Generator().manual_seed(seed)
    return ConditionFeatures(
        text_clip_f=torch.randn(batch, cfg.text_seq_len, cfg.text_dim, generator=g),
        sync_f=torch.randn(batch, seq.sync, cfg.sync_dim, generator=g),
        duration=duration, prompts=[f"clip {i}" for i in range(batch)], variant=v.name)


def one_clip(features: ConditionFeatures, i: int) -> ConditionFeatures:
    return dataclasses.replace(features, text_clip_f=features.text_clip_f[i:i + 1],
                               sync_f=features.sync_f[i:i + 1], prompts=[features.prompts[i]])


class Context:
    """What sections share: the plan and one seeded pipeline (built on first use)."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self._pipe: SelvaPipeline | None = None

    def pipeline(self, dtype: torch.dtype) -> SelvaPipeline:
        """The seeded pipeline in ``dtype``: built in fp32, cast down when asked (the
        precision section renders in fp32 first, the GPU sections after it in bf16)."""
        p = self.plan
        if self._pipe is not None and self._pipe.dtype not in (dtype, torch.float32):
            self.release()  # cast down already (the CPU renders in fp32): build it again
        if self._pipe is None:
            say(f"building the seeded {p.variant} pipeline on {p.device} (generator, VAE "
                "decoder, vocoder)")
            nets = {c: seeded_network(c, p.variant, p.device) for c in ("generator", "vae",
                                                                      "vocoder")}
            self._pipe = SelvaPipeline(p.variant, **nets, device=p.device, dtype=torch.float32)
        if self._pipe.dtype != dtype:
            self._pipe.to(dtype=dtype)
        return self._pipe

    def release(self) -> None:
        self._pipe = None
        _free(self.plan.device)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t0, out


def _allocated(device: torch.device) -> int | None:
    """Bytes the caching allocator holds for tensors now (after collecting and emptying the
    cache); None on the CPU, where there is no device memory to account for."""
    _free(device)
    if device.type != "cuda":
        return None
    _sync(device)
    return torch.cuda.memory_allocated(device)


# --- sections ---------------------------------------------------------------------------------
def section_memory(ctx: Context) -> dict:
    from benchmarks.bench_memory import _run

    p = ctx.plan
    # Only strings here: this process touches no CUDA before the workers have measured.
    half = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[p.train_dtype]
    common = {"variant": p.variant, "duration": p.duration, "device": str(p.device),
              "threads": p.threads, "base_dtype": half, "autocast": half, "batch": p.batch,
              "tracked_only": True}
    out: dict = {}
    for mode, suffix in (("ckpt", ""), ("plain", "_no_ckpt")):
        say(f"memory: one training step in a fresh process, {mode}")
        r = _run({**common, "mode": mode})
        # CUDA: max_memory_allocated (weights, inputs, step); CPU: weights + the step's
        # tracked tensor peak, its counterpart.
        peak = r["peak_bytes"] if p.cuda else r["weights_bytes"] + r["step_bytes"]
        out[f"peak_gb_{p.tag}{suffix}"] = peak / GB
        if "device_used_after_bytes" in r:
            out[f"device_gb_{p.tag}{suffix}_with_context"] = r["device_used_after_bytes"] / GB
            out[f"reserved_peak_gb_{p.tag}{suffix}"] = r["reserved_peak_bytes"] / GB
            out["cuda_context_gb"] = r["device_used_before_bytes"] / GB
        say(f"memory: {mode} peak {peak / GB:.3f} GB")
    out["memory_base_dtype"] = half
    return out


def section_speed(ctx: Context) -> dict:
    from benchmarks.bench_lora import _inputs, _interleaved, _median, _ratio

    p = ctx.plan
    v = get_variant(p.variant)
    say(f"speed: seeded {p.variant} generator, rank {p.rank} on {TARGETS[0]}, batch {p.batch}")
    base = seeded_network("generator", p.variant, p.device)
    base.update_seq_lengths(v.sequence_lengths(p.duration))
    ours = copy.deepcopy(base)
    attach_lora(ours, LoRAConfig(rank=p.rank, targets=TARGETS), variant_name=p.variant)
    for model in (base, ours):
        cast_frozen_weights(model, p.train_dtype)
    _free(p.device)
    opt = torch.optim.AdamW(trainable_parameters(ours), lr=1e-4)
    latent, feats, t, target = _inputs(p.variant, p.duration, p.batch, p.device)
    def floor():
        x = latent.detach().requires_grad_(True)
        with p.autocast():
            loss = F.mse_loss(base(x, *feats, t).float(), target)
        loss.backward()

    def step(checkpointing: bool, selective: bool = True):
        def run():
            ours.set_gradient_checkpointing(checkpointing, selective=selective)
            opt.zero_grad(set_to_none=True)
            with p.autocast():
                loss = F.mse_loss(ours(latent, *feats, t).float(), target)
            loss.backward()
            opt.step()

        return run

    times = _interleaved({"floor": floor, "step": step(False), "step_ckpt": step(True),
                          "step_full_ckpt": step(True, selective=False)},
                         p.speed_repeats, p.speed_warmup, p.device)
    out = {
        "step_over_floor": _ratio(times, "step", "floor"),
        "step_ckpt_over_step": _ratio(times, "step_ckpt", "step"),
        # full recomputation (keeps only block inputs): the selective policy's own cost shows
        "step_full_ckpt_over_step": _ratio(times, "step_full_ckpt", "step"),
        "speed_batch": p.batch,
        "clips_per_s": p.batch / _median(times, "step"),
        "clips_per_s_ckpt": p.batch / _median(times, "step_ckpt"),
        "floor_s": _median(times, "floor"), "step_s": _median(times, "step"),
        "step_ckpt_s": _median(times, "step_ckpt"),
        "speed_dtype": str(p.train_dtype).removeprefix("torch."),
    }
    say(f"speed: step / floor {out['step_over_floor']:.3f}, {out['clips_per_s']:.2f} clips/s")
    return out


def section_precision(ctx: Context) -> dict:
    p = ctx.plan
    feats = random_features(p.variant, p.duration, 1, seed=1)
    kw = {"seed": 0, "num_steps": p.steps, "cfg_strength": CFG}
    pipe = ctx.pipeline(torch.float32)
    say(f"precision: fp32 render ({p.duration:g} s, {p.steps} steps)")
    lat32 = pipe.sample(feats, **kw).float().cpu()
    wav32 = pipe.decode(lat32).cpu()
    half = torch.bfloat16
    pipe = ctx.pipeline(half)
    say("precision: bf16 render of the same inputs")
    lat16 = pipe.sample(feats, **kw).float().cpu()
    wav16 = pipe.decode(lat16).cpu()
    wav16_same_latent = pipe.decode(lat32).cpu()

    def diff(a, b):
        return float((a - b).abs().max())

    out = {
        "precision_latent_max_abs_diff": diff(lat16, lat32),
        "precision_latent_max_abs": float(lat32.abs().max()),
        "precision_wave_max_abs_diff": diff(wav16, wav32),
        "precision_wave_max_abs": float(wav32.abs().max()),
        "precision_wave_rms_diff": float((wav16 - wav32).square().mean().sqrt()),
        "precision_wave_decode_only_max_abs_diff": diff(wav16_same_latent, wav32),
    }
    say(f"precision: latent {out['precision_latent_max_abs_diff']:.3g}, waveform "
        f"{out['precision_wave_max_abs_diff']:.3g}")
    return out


def section_render(ctx: Context) -> dict:
    p = ctx.plan
    pipe = ctx.pipeline(resolve_weight_dtype("auto", p.device))
    kw = {"num_steps": p.steps, "cfg_strength": CFG, "window_s": p.window_s}
    short = random_features(p.variant, p.duration, 1, seed=2)
    long = random_features(p.variant, p.long_s, 1, seed=3)
    say(f"render: warm-up, then {p.render_repeats} x {p.duration:g} s and 1 x {p.long_s:g} s "
        f"({pipe.dtype})")
    pipe.render(short, seed=0, **kw)
    if p.cuda:
        torch.cuda.reset_peak_memory_stats(p.device)
    times = [_timed(lambda: pipe.render(short, seed=0, **kw), p.device)[0]
             for _ in range(p.render_repeats)]
    peak = torch.cuda.max_memory_allocated(p.device) / GB if p.cuda else None
    t_long, wave = _timed(lambda: pipe.render(long, seed=0, **kw), p.device)
    windows = len(pipe.plan_render(p.long_s, seed=0, window_s=p.window_s))
    out = {
        f"rtf_{p.duration:g}s": statistics.median(times) / p.duration,
        f"rtf_{p.long_s:g}s_windowed": t_long / p.long_s,
        "render_s": statistics.median(times), "render_long_s": t_long,
        "render_long_windows": windows, "render_peak_gb": peak,
        "render_dtype": str(pipe.dtype).removeprefix("torch."), "render_steps": p.steps,
        "render_long_finite": bool(torch.isfinite(wave).all()),
    }
    say(f"render: RTF {out[f'rtf_{p.duration:g}s']:.4f} ({p.duration:g} s), "
        f"{out[f'rtf_{p.long_s:g}s_windowed']:.4f} ({p.long_s:g} s, {windows} windows)")
    return out


def section_residency(ctx: Context) -> dict:
    from benchmarks.bench_pipeline import _adapter_file, _storage_bytes, _tensors

    p = ctx.plan
    pipe = ctx.pipeline(resolve_weight_dtype("auto", p.device))
    feats = random_features(p.variant, p.duration, 1, seed=4)
    kw = {"seed": 0, "num_steps": p.residency_steps, "cfg_strength": CFG}
    # ComfyUI's ModelPatcher loads and unloads one module holding every network.
    networks = nn.ModuleDict(dict(pipe.networks()))
    out: dict = {}

    def over(left, took):
        return None if left is None or not took else left / took

    say("residency: offloaded -> load -> render -> offload -> free (ComfyUI's way)")
    networks.to("cpu")
    before = _allocated(p.device)
    networks.to(p.device)
    loaded = _allocated(p.device)
    pipe.render(feats, **kw)
    networks.to("cpu")
    after = _allocated(p.device)
    if before is not None:
        out.update(residency_loaded_gb=(loaded - before) / GB,
                   residency_left_gb=(after - before) / GB,
                   residency_left_over_loaded=over(after - before, loaded - before))

    say("residency: the library's offload='cpu' (moved in per run, back after)")
    pipe.offload = "cpu"
    try:
        before = _allocated(p.device)
        pipe.render(feats, **kw)
        after = _allocated(p.device)
    finally:
        pipe.offload = "gpu"
    if before is not None:
        out["offload_cpu_left_gb"] = (after - before) / GB

    say("residency: an adapted branch over the resident base")
    networks.to(p.device)
    with tempfile.TemporaryDirectory() as tmp:
        path = _adapter_file(pipe, pathlib.Path(tmp), p.rank)
        base_storages = _storage_bytes(_tensors(pipe.generator))
        m0 = _allocated(p.device)
        adapted = pipe.with_adapters([(path, 1.0)])
        m1 = _allocated(p.device)
        adapter_bytes = sum(_storage_bytes(
            t for n, t in [*adapted.generator.named_parameters(),
                           *adapted.generator.named_buffers()] if ".adapters." in f".{n}"
        ).values())
        extra_bytes = sum(n for ptr, n in _storage_bytes(_tensors(adapted.generator)).items()
                          if ptr not in base_storages)
        adapted.render(feats, **kw)  # (a run at another length leaves it its own RoPE tables)
        m2 = _allocated(p.device)
        del adapted
        m3 = _allocated(p.device)
    out.update(adapter_mb=adapter_bytes / 2**20, adapter_extra_tensor_mb=extra_bytes / 2**20,
               adapter_extra_tensor_over_adapter=extra_bytes / adapter_bytes)
    if m0 is not None:
        out.update(adapter_extra_device_mb=(m1 - m0) / 2**20,
                   adapter_extra_device_over_adapter=(m1 - m0) / adapter_bytes,
                   adapter_extra_device_after_render_mb=(m2 - m0) / 2**20,
                   adapter_left_after_del_mb=(m3 - m0) / 2**20)
    say("residency: " + ", ".join(f"{k} {v:.4g}" for k, v in out.items() if v is not None))
    return out


def section_eval(ctx: Context) -> dict:
    from benchmarks.bench_eval import batched_vs_one_by_one

    p = ctx.plan
    pipe = ctx.pipeline(resolve_weight_dtype("auto", p.device))
    batch = random_features(p.variant, p.duration, p.eval_clips, seed=5)
    singles = [one_clip(batch, i) for i in range(p.eval_clips)]
    say(f"eval: {p.eval_clips} clips of {p.duration:g} s, {p.eval_steps} steps, batched vs "
        "one by one")
    r = batched_vs_one_by_one(pipe, batch, singles, list(range(p.eval_clips)), p.eval_repeats,
                              num_steps=p.eval_steps, cfg_strength=CFG)
    out = {"eval_batched_over_one_by_one": statistics.median(r["ratios"]),
           "eval_batched_s": statistics.median(r["batched_s"]),
           "eval_one_by_one_s": statistics.median(r["one_by_one_s"]),
           "eval_batched_max_abs_diff": r["max_abs_diff"], "eval_clips": p.eval_clips}
    say(f"eval: batched / one by one {out['eval_batched_over_one_by_one']:.3f}")
    return out


RUNNERS = {"memory": section_memory, "speed": section_speed, "precision": section_precision,
           "render": section_render, "residency": section_residency, "eval": section_eval}


# --- report -----------------------------------------------------------------------------------
def _rows(plan: Plan) -> list[tuple[str, str, str]]:
    """(label, JSON key, target) of the table."""
    t, d, lg = plan.tag, f"{plan.duration:g}", f"{plan.long_s:g}"
    return [
        (f"training peak GB, {t}, checkpointing", f"peak_gb_{t}", "<= 8"),
        (f"training peak GB, {t}, no checkpointing", f"peak_gb_{t}_no_ckpt", "-"),
        ("  device GB in use incl. CUDA context, ckpt", f"device_gb_{t}_with_context", "-"),
        ("  device GB in use incl. context, no ckpt", f"device_gb_{t}_no_ckpt_with_context",
         "-"),
        ("  CUDA context GB", "cuda_context_gb", "-"),
        ("training step / frozen floor", "step_over_floor", "<= 1.10"),
        ("training clips/s", "clips_per_s", "-"),
        ("step with checkpointing / without", "step_ckpt_over_step", "<= 1.40"),
        ("  full recomputation / without", "step_full_ckpt_over_step", "-"),
        ("training clips/s with checkpointing", "clips_per_s_ckpt", "-"),
        ("bf16 - fp32 render: latent max |diff|", "precision_latent_max_abs_diff", "-"),
        ("  fp32 latent max |value|", "precision_latent_max_abs", "-"),
        ("bf16 - fp32 render: waveform max |diff|", "precision_wave_max_abs_diff", "-"),
        ("  waveform RMS diff", "precision_wave_rms_diff", "-"),
        ("  same latent, bf16 decoders: max |diff|", "precision_wave_decode_only_max_abs_diff",
         "-"),
        (f"render RTF, {d} s, {plan.steps} steps, CFG", f"rtf_{d}s", "< 1"),
        (f"render RTF, {lg} s windowed", f"rtf_{lg}s_windowed", "< 1"),
        ("render peak GB", "render_peak_gb", "-"),
        ("residency: left after offload / loaded", "residency_left_over_loaded", "<= 0.05"),
        ("residency: loaded GB", "residency_loaded_gb", "-"),
        ("offload='cpu': GB left after a render", "offload_cpu_left_gb", "~0"),
        ("adapted branch: device bytes / adapter's", "adapter_extra_device_over_adapter",
         "<= 1.05"),
        ("adapted branch: tensor bytes / adapter's", "adapter_extra_tensor_over_adapter",
         "<= 1.05"),
        ("evaluator batched / one by one", "eval_batched_over_one_by_one", "<= 0.6"),
    ]


def _show(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help=f"comma-separated subset of {','.join(SECTIONS)} (default: all)")
    ap.add_argument("--out", help="also write the JSON object to this file")
    ap.add_argument("--dry-run", action="store_true",
                    help="the same code on the CPU with tiny_16k and short settings")
    ap.add_argument("--budget-s", type=float, default=480.0,
                    help="sections not started within this many seconds are skipped")
    ap.add_argument("--train-batch", type=int, default=None,
                    help="training batch of the memory and speed sections (default 4; a larger "
                         "one shows whether a step is bound by kernel launches)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        ap.error(f"unknown section(s) {unknown}; choose from {','.join(SECTIONS)}")
    if args.dry_run:
        plan = Plan.dry()
        torch.set_num_threads(1)
    elif torch.cuda.is_available():
        plan = Plan(device=torch.device("cuda"))
    else:
        ap.error("no CUDA device here; run with --dry-run for the CPU check of the script")
    if args.train_batch is not None:
        if args.train_batch < 1:
            ap.error(f"--train-batch must be >= 1, got {args.train_batch}")
        plan = dataclasses.replace(plan, batch=args.train_batch)
    ctx = Context(plan)
    result: dict = {"dry_run": args.dry_run, "variant": plan.variant,
                    "device": str(plan.device), "torch": torch.__version__,
                    "cuda_initialized_before_memory": torch.cuda.is_initialized()}
    errors: dict[str, str] = {}
    seconds: dict[str, float] = {}
    # The memory workers run first, before this process holds any device memory.
    for name in [s for s in SECTIONS if s in chosen]:
        start = time.perf_counter()
        if start - _T0 > args.budget_s:
            errors[name] = f"skipped: {args.budget_s:g} s budget spent"
            say(f"{name}: {errors[name]}")
            continue
        say(f"section {name}")
        try:
            result.update(RUNNERS[name](ctx))
        except Exception as exc:  # fail soft: report it, run the others
            errors[name] = f"{type(exc).__name__}: {exc}"[:500]
            traceback.print_exc()
            sys.stderr.flush()
            traceback.clear_frames(exc.__traceback__)
            ctx.release()  # it may be half cast or half moved: the next section builds anew
            say(f"{name} FAILED: {errors[name]}")
        finally:
            _free(plan.device)
        seconds[name] = round(time.perf_counter() - start, 2)
    if plan.cuda:
        result["gpu"] = torch.cuda.get_device_name(plan.device)
        result["gpu_total_gb"] = torch.cuda.get_device_properties(plan.device).total_memory / GB
    result.update(errors=errors, section_s=seconds, total_s=round(time.perf_counter() - _T0, 2))

    print(f"\nGPU acceptance: {plan.variant} on {result.get('gpu', plan.device)}, torch "
          f"{torch.__version__}{' (dry run)' if args.dry_run else ''}")
    print(f"  {'figure':<52} {'value':>12}   target")
    for label, key, target in _rows(plan):
        if key in result:
            print(f"  {label:<52} {_show(result[key]):>12}   {target}")
    for name, msg in errors.items():
        print(f"  ERROR in {name}: {msg}")
    print("  seconds per section: " + ", ".join(f"{k} {v:g}" for k, v in seconds.items()))
    if args.out:
        write_json_atomic(args.out, result)
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    sys.exit(1 if main()["errors"] else 0)
