"""Benchmark what one adapted pipeline costs on top of the cached base pipeline.

``SelvaPipeline.with_adapters`` gives a pipeline whose generator is a structural copy of the
base's (module objects copied, every frozen tensor shared) carrying the adapter; the other
networks are shared by reference. For each variant (the full-size generator, built on the CPU
without random init so untouched weight pages cost nothing) and a rank-16 ``attn`` adapter:

* ``base_mb``: bytes of the base generator's parameters and buffers (fp32);
* ``adapter_mb``: bytes of the adapter's tensors in memory; ``file_mb`` its file;
* ``extra_mb``: bytes of every tensor of the adapted generator whose storage the base does not
  hold (the adapter plus anything copied); ``overhead_mb = extra_mb - adapter_mb``;
* ``overhead_over_base``: ``overhead_mb / base_mb`` (target <= 0.05: extra <= adapter + 5 %);
* ``python_mb``: Python objects the copy allocates (module objects, dicts; tracemalloc);
* ``fork_ms`` / ``with_adapters_ms``: median wall time of ``fork()`` / ``with_adapters([...])``.

Other networks (TextSynch, text encoders, VAE, vocoder) are shared by reference and add no
bytes; the benchmark checks that too. Prints a table, then one JSON object as the last line.

    python benchmarks/bench_pipeline.py [--variants small_16k large_44k] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import tempfile
import time
import tracemalloc

import torch
from torch import nn

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from selva_core.model.lora import LoRAConfig, attach_lora, save_adapter  # noqa: E402
from selva_core.pipeline import SelvaPipeline  # noqa: E402
from selva_core.variants import get_variant  # noqa: E402
from selva_core.weights import build_component, skip_random_init  # noqa: E402

MB = 1e6
TARGET_OVERHEAD = 0.05


def _tensors(module: nn.Module):
    yield from module.parameters()
    yield from module.buffers()


def _storage_bytes(tensors) -> dict[int, int]:
    """data pointer -> bytes of each distinct storage."""
    out: dict[int, int] = {}
    for t in tensors:
        s = t.untyped_storage()
        out[s.data_ptr()] = s.nbytes()
    return out


def _base_pipeline(variant: str) -> SelvaPipeline:
    v = get_variant(variant)
    with skip_random_init():
        generator = build_component("generator", v)
    generator.requires_grad_(False).eval()
    # The other networks are shared by reference by construction; small stand-ins keep the
    # benchmark about the generator, which is the only network a fork copies.
    return SelvaPipeline(v, generator=generator, vae=nn.Linear(1, 1), vocoder=nn.Linear(1, 1),
                         video_encoder=nn.Linear(1, 1), device="cpu")


def _adapter_file(base: SelvaPipeline, folder: pathlib.Path, rank: int) -> pathlib.Path:
    scratch = base.fork()
    handle = attach_lora(scratch.generator, LoRAConfig(rank=rank, targets=("attn",)), name="a",
                         variant_name=base.variant.name, freeze_base=False)
    with torch.no_grad():
        for p in handle.parameters():
            if p.abs().max() == 0:
                p.normal_(0, 0.01)  # a trained-looking, non-zero B
    return save_adapter(scratch.generator, folder / f"{base.variant.name}.safetensors", name="a",
                        storage="float32")


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def measure(variant: str, rank: int, repeats: int, folder: pathlib.Path) -> dict:
    base = _base_pipeline(variant)
    path = _adapter_file(base, folder, rank)
    base_storages = _storage_bytes(_tensors(base.generator))
    base_bytes = sum(base_storages.values())

    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    adapted = base.with_adapters([(path, 1.0)])
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    python_bytes = sum(s.size_diff for s in after.compare_to(before, "filename"))

    extra = {ptr: n for ptr, n in _storage_bytes(_tensors(adapted.generator)).items()
             if ptr not in base_storages}
    adapter_tensors = [p for n, p in adapted.generator.named_parameters()
                       if ".adapters." in f".{n}"]
    adapter_tensors += [b for n, b in adapted.generator.named_buffers() if ".adapters." in f".{n}"]
    adapter_bytes = sum(_storage_bytes(adapter_tensors).values())
    extra_bytes = sum(extra.values())
    shared_refs = all(getattr(adapted, n) is getattr(base, n)
                      for n in ("vae", "vocoder", "video_encoder"))
    fork_ms = _median_ms(base.fork, repeats)
    adapters_ms = _median_ms(lambda: base.with_adapters([(path, 1.0)]), repeats)
    overhead = extra_bytes - adapter_bytes
    return {
        "variant": variant,
        "rank": rank,
        "base_mb": base_bytes / MB,
        "adapter_mb": adapter_bytes / MB,
        "file_mb": path.stat().st_size / MB,
        "extra_mb": extra_bytes / MB,
        "overhead_mb": overhead / MB,
        "overhead_over_base": overhead / base_bytes,
        "python_mb": python_bytes / MB,
        "fork_ms": fork_ms,
        "with_adapters_ms": adapters_ms,
        "other_networks_shared": shared_refs,
        "meets_target": overhead <= TARGET_OVERHEAD * base_bytes and shared_refs,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", nargs="+", default=["small_16k", "large_44k"])
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants:
            rows.append(measure(variant, args.rank, args.repeats, pathlib.Path(tmp)))
    header = (f"{'variant':<12}{'base MB':>10}{'adapter MB':>12}{'file MB':>9}{'extra MB':>10}"
              f"{'overhead MB':>13}{'ovh/base':>10}{'python MB':>11}{'fork ms':>9}"
              f"{'adapt ms':>10}  target")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['variant']:<12}{r['base_mb']:>10.1f}{r['adapter_mb']:>12.2f}"
              f"{r['file_mb']:>9.2f}{r['extra_mb']:>10.2f}{r['overhead_mb']:>13.3f}"
              f"{r['overhead_over_base']:>10.5f}{r['python_mb']:>11.2f}{r['fork_ms']:>9.1f}"
              f"{r['with_adapters_ms']:>10.1f}  {'ok' if r['meets_target'] else 'MISSED'}")
    print(f"target: extra <= adapter + {TARGET_OVERHEAD:.0%} of the base generator "
          "(tensor bytes not shared with the base)")
    result = {"bench": "pipeline", "target_overhead_over_base": TARGET_OVERHEAD}
    for r in rows:
        v = r["variant"]
        for key in ("base_mb", "adapter_mb", "file_mb", "extra_mb", "overhead_mb",
                    "overhead_over_base", "python_mb", "fork_ms", "with_adapters_ms"):
            result[f"{key}_{v}"] = round(r[key], 6 if key == "overhead_over_base" else 3)
    result["meets_target"] = all(r["meets_target"] for r in rows)
    print(json.dumps(result))
    return 0 if result["meets_target"] else 1


if __name__ == "__main__":
    sys.exit(main())
