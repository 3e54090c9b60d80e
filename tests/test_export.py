"""Exporting a generator with adapters merged (``python -m selva_core.export``)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from selva_core.export import main as export_main
from selva_core.model.lora import LoRAConfig, attach_lora, merged_state_dict, save_adapter
from selva_core.pipeline import SelvaPipeline
from selva_core.weights.export import load_generator
from selva_core.weights.loading import build_component, load_checked, skip_random_init
from tests.generator_inputs import random_generator_inputs

VARIANT = "tiny_16k"


@pytest.fixture(scope="module")
def pipe():
    return SelvaPipeline.tiny()


def _adapter(pipe, path, *, kind="lora", init="standard", targets=("attn",), seed=1):
    fork = pipe.fork()
    attach_lora(fork.generator, LoRAConfig(rank=4, kind=kind, init=init, targets=targets,
                                           seed=seed), variant_name=VARIANT)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in fork.generator.named_parameters():
            if ".adapters." in n:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return save_adapter(fork.generator, path)


def _fresh_generator(state):
    with skip_random_init():
        gen = build_component("generator", __import__("selva_core.variants").variants
                              .get_variant(VARIANT))
    load_checked(gen, state, component="generator", variant=VARIANT)  # strict: every key
    return gen.eval()


@torch.no_grad()
def test_export_loads_into_a_fresh_generator_and_matches_the_adapted_pipeline(pipe, tmp_path):
    a = _adapter(pipe, tmp_path / "a.safetensors", targets=("qkv+linear1",))
    d = _adapter(pipe, tmp_path / "d.safetensors", kind="dora", targets=("ffn",), seed=2)
    p = _adapter(pipe, tmp_path / "p.safetensors", init="pissa", targets=("qkv",), seed=3)
    out = tmp_path / "generator_merged.safetensors"
    assert export_main(["--adapter", f"{a}:0.8", "--adapter", f"{d}:1.2", "--adapter", str(p),
                        "-o", str(out)]) == 0
    adapted = pipe.with_adapters([(a, 0.8), (d, 1.2), (p, 1.0)]).generator
    exported = _fresh_generator(load_file(str(out)))
    exported.update_seq_lengths(adapted.seq)
    inputs = random_generator_inputs(adapted, batch=2, seed=5)
    want, got = adapted(*inputs), exported(*inputs)
    diff = float((got - want).abs().max())
    print(f"max abs diff of the exported generator's flow: {diff:.3e}")
    assert diff < 1e-4
    assert not torch.equal(got, pipe.generator(*inputs))  # the adapters did change it
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert meta["model_variant"] == VARIANT
    assert [x["strength"] for x in json.loads(meta["adapters"])] == [0.8, 1.2, 1.0]


@torch.no_grad()
def test_ia3_and_hra_export_match_the_adapted_pipeline_biases_included(pipe, tmp_path):
    i = _adapter(pipe, tmp_path / "i.safetensors", kind="ia3", targets=("attn+ffn",))
    h = _adapter(pipe, tmp_path / "h.safetensors", kind="hra", targets=("qkv",), seed=2)
    out = tmp_path / "generator_merged.safetensors"
    assert export_main(["--adapter", f"{i}:0.7", "--adapter", str(h), "-o", str(out)]) == 0
    adapted = pipe.with_adapters([(i, 0.7), (h, 1.0)]).generator
    state = load_file(str(out))
    qkv_bias = "joint_blocks.0.latent_block.attn.qkv.bias"
    assert not torch.equal(state[qkv_bias], pipe.generator.state_dict()[qkv_bias])  # IA3
    exported = _fresh_generator(state)
    exported.update_seq_lengths(adapted.seq)
    inputs = random_generator_inputs(adapted, batch=2, seed=5)
    assert float((exported(*inputs) - adapted(*inputs)).abs().max()) < 1e-4


def test_pth_export_is_a_plain_tensor_dict_equal_to_the_safetensors_one(pipe, tmp_path):
    a = _adapter(pipe, tmp_path / "a.safetensors")
    assert export_main(["--adapter", str(a), "-o", str(tmp_path / "g.safetensors")]) == 0
    assert export_main(["--adapter", str(a), "-o", str(tmp_path / "g.pth")]) == 0
    plain = torch.load(tmp_path / "g.pth", weights_only=True)
    ref = load_file(str(tmp_path / "g.safetensors"))
    assert type(plain) is dict and plain.keys() == ref.keys()
    assert all(torch.equal(plain[k], ref[k]) for k in ref)


def test_export_leaves_the_base_generator_unchanged_when_given_one(pipe, tmp_path):
    from selva_core.weights.export import export_merged_generator

    a = _adapter(pipe, tmp_path / "a.safetensors")
    gen = load_generator(VARIANT)
    before = {k: v.clone() for k, v in gen.state_dict().items()}
    export_merged_generator([(a, 1.0)], tmp_path / "g.safetensors", generator=gen)
    after = gen.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k])
                                                 for k in before)


def _claim_variant(path, variant):
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    meta["model_variant"] = variant
    save_file(tensors, str(path), metadata=meta)
    return path


def test_exporting_onto_another_variant_is_one_line_exit_2_and_writes_nothing(pipe, tmp_path,
                                                                              capsys):
    a = _claim_variant(_adapter(pipe, tmp_path / "a.safetensors"), "small_16k")
    out = tmp_path / "g.safetensors"
    assert export_main(["--adapter", str(a), "--variant", VARIANT, "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "a.safetensors" in err and "small_16k" in err
    assert not out.exists()


def test_adapters_of_different_variants_are_refused(pipe, tmp_path, capsys):
    a = _adapter(pipe, tmp_path / "a.safetensors")
    b = _claim_variant(_adapter(pipe, tmp_path / "b.safetensors", seed=2), "small_16k")
    out = tmp_path / "g.safetensors"
    assert export_main(["--adapter", str(a), "--adapter", str(b), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "b.safetensors" in err
    assert not out.exists()


@pytest.mark.slow
def test_merged_state_of_an_official_generator_has_the_reference_key_layout():
    from selva_core.variants import get_variant
    from tests.test_generator import REFERENCE_DIR, manifest_shapes

    with skip_random_init():  # shapes and keys only: the values are never looked at
        gen = build_component("generator", get_variant("small_16k"))
    attach_lora(gen, LoRAConfig(rank=2, targets=("all",)))
    state = merged_state_dict(gen)
    want = manifest_shapes(REFERENCE_DIR / "generator_small_16k.json")
    assert {k: list(t.shape) for k, t in state.items()} == want
