"""Benchmark the ComfyUI nodes against the library calls they wrap (no ComfyUI, no downloads).

Runs on the ComfyUI stand-ins of ``tests/comfy_stubs`` with a full-size ``small_16k``
generator, VAE decoder and vocoder built at random (the encoders are not needed for these
measurements; the features are random tensors of the variant's shapes):

* ``sampler_node_over_library``: the SelVA Sampler node's time over ``pipeline.render`` on the
  same features and settings; median of per-repeat ratios of interleaved runs, process CPU
  time on one thread by default (``--clock wall`` to change). Target <= 1.02.
* ``lora_loader_s``: the SelVA LoRA Loader node's time to apply a rank-16 ``attn`` adapter
  file (median); ``lora_loader_extra_mb``: tensor storage the adapted model holds that the
  base model does not (the adapter's tensors plus anything copied), beside
  ``adapter_file_mb`` and ``extra_target_mb`` = adapter size + 5 % of the base generator.
* ``pack_import_s``: importing the pack as ComfyUI does, in a fresh interpreter (median of
  ``--imports`` runs); ``pack_import_heavy_modules`` lists torch-heavy modules it loaded
  (should be empty).

Prints a table, then one JSON object as the last line.

    python benchmarks/bench_nodes.py [--duration 2] [--steps 4] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from tests.node_harness import STUBS, load_pack, run_node  # noqa: E402

HEAVY = ("torch", "selva_core.pipeline", "selva_core.model", "open_clip", "transformers",
         "librosa", "av", "matplotlib")


def _clock(kind: str):
    return time.process_time if kind == "cpu" else time.perf_counter


def build_small(variant_name: str = "small_16k"):
    """small_16k's generator, VAE (decoder) and vocoder at full size, random weights."""
    from selva_core.pipeline import SelvaPipeline
    from selva_core.variants import get_variant
    from selva_core.weights import build_component, skip_random_init

    v = get_variant(variant_name)
    torch.manual_seed(0)
    with skip_random_init():
        generator = build_component("generator", v)
        vae = build_component("vae", v)
        vocoder = build_component("vocoder", v)
    with torch.no_grad():
        for module in (generator, vae, vocoder):
            for p in module.parameters():
                p.normal_(0.0, 0.02)
    vae.drop_encoder()
    vocoder.remove_weight_norm()
    pipeline = SelvaPipeline(v, generator=generator, vae=vae, vocoder=vocoder, device="cpu")
    for m in pipeline.networks().values():
        m.requires_grad_(False)
        m.eval()
    return pipeline


def random_features(pipeline, duration: float):
    from selva_core.features import ConditionFeatures

    v = pipeline.variant
    seq = v.sequence_lengths(duration)
    g = torch.Generator().manual_seed(1)
    return ConditionFeatures(
        text_clip_f=torch.randn(1, seq.text, v.generator.text_dim, generator=g),
        sync_f=torch.randn(1, seq.sync, v.generator.sync_dim, generator=g),
        duration=duration, prompts=["bench"], variant=v.name)


def storage_bytes(pipeline) -> dict[int, int]:
    """data_ptr -> bytes of every parameter/buffer storage the pipeline's networks hold."""
    out: dict[int, int] = {}
    for module in pipeline.networks().values():
        for t in (*module.parameters(), *module.buffers()):
            s = t.untyped_storage()
            out[s.data_ptr()] = s.nbytes()
    return out


def module_bytes(module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def write_adapter(pipeline, path: Path) -> Path:
    from selva_core.model.lora import LoRAConfig, attach_lora, save_adapter, trainable_parameters

    fork = pipeline.fork()
    attach_lora(fork.generator, LoRAConfig(rank=16, targets=("attn",), seed=0),
                variant_name=pipeline.variant.name)
    with torch.no_grad():
        for p in trainable_parameters(fork.generator):
            p.normal_(0.0, 0.01)
    return save_adapter(fork.generator, path, metadata={"prompt": "bench"})


def pack_import(repeats: int) -> tuple[float, list[str]]:
    code = (
        "import sys, time, importlib.util\n"
        f"sys.path.insert(0, {str(STUBS)!r})\n"
        "import comfy_api.latest, folder_paths\n"  # ComfyUI has these loaded already
        "t = time.perf_counter()\n"
        f"spec = importlib.util.spec_from_file_location('selva_pack', "
        f"{str(ROOT / '__init__.py')!r}, submodule_search_locations=[{str(ROOT)!r}])\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['selva_pack'] = m\n"
        "spec.loader.exec_module(m)\n"
        "dt = time.perf_counter() - t\n"
        f"heavy = [n for n in {HEAVY!r} if n in sys.modules]\n"
        "print(dt, ','.join(heavy))\n"
    )
    times, heavy = [], []
    for _ in range(repeats):
        proc = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True,
                              text=True, check=True)
        dt, found = proc.stdout.strip().split(" ", 1) if " " in proc.stdout.strip() else (
            proc.stdout.strip(), "")
        times.append(float(dt))
        heavy = [h for h in found.split(",") if h]
    return statistics.median(times), heavy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--imports", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = _clock(args.clock)

    import_s, heavy = pack_import(args.imports)
    pack = load_pack()
    common = sys.modules[f"{pack.__name__}.nodes.common"]
    pipeline = build_small()
    model = common.SelvaModel(pipeline=pipeline, label="small_16k (random)")
    features = random_features(pipeline, args.duration)
    settings = dict(seed=0, num_steps=args.steps, cfg_strength=4.5)

    def library():
        return pipeline.render(features, window_s=8.0, **settings)

    def node():
        return run_node("SelVASampler", model=model, features=features, steps=args.steps,
                        seed=0, cfg=4.5, window_s=8.0)[0]["waveform"]

    assert torch.equal(library(), node()[:, 0])  # warm-up, and the same work
    ratios, lib_times, node_times = [], [], []
    for i in range(args.repeats):
        order = (library, node) if i % 2 == 0 else (node, library)
        spent = {}
        for fn in order:
            t0 = clock()
            fn()
            spent[fn] = clock() - t0
        lib_times.append(spent[library])
        node_times.append(spent[node])
        ratios.append(spent[node] / spent[library])

    with tempfile.TemporaryDirectory() as tmp:
        adapter = write_adapter(pipeline, Path(tmp) / "bench_adapter.safetensors")
        adapter_mb = adapter.stat().st_size / 2**20
        base = storage_bytes(pipeline)
        loader_times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            adapted = run_node("SelVALoraLoader", model=model, lora_name="(none)",
                               strength=1.0, lora_path=str(adapter))[0]
            loader_times.append(time.perf_counter() - t0)
        extra = {p: n for p, n in storage_bytes(adapted.pipeline).items() if p not in base}
        extra_mb = sum(extra.values()) / 2**20
        del adapted

    generator_mb = module_bytes(pipeline.generator) / 2**20
    result = {
        "sampler_node_over_library": round(statistics.median(ratios), 4),
        "sampler_library_s": round(statistics.median(lib_times), 4),
        "sampler_node_s": round(statistics.median(node_times), 4),
        "lora_loader_s": round(statistics.median(loader_times), 4),
        "lora_loader_extra_mb": round(extra_mb, 3),
        "adapter_file_mb": round(adapter_mb, 3),
        "extra_target_mb": round(adapter_mb + 0.05 * generator_mb, 3),
        "base_generator_mb": round(generator_mb, 1),
        "pack_import_s": round(import_s, 4),
        "pack_import_heavy_modules": heavy,
        "variant": "small_16k", "duration_s": args.duration, "steps": args.steps,
        "repeats": args.repeats, "clock": args.clock, "threads": args.threads,
    }
    print("SelVA nodes benchmark (small_16k at random, ComfyUI stand-ins)")
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"  {key:<{width}}  {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
