"""Merging adapter files (``selva_core.model.lora.merge`` and ``python -m selva_core.merge``)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from selva_core.merge import main as merge_main
from selva_core.model.lora import (
    LoRAConfig,
    adapter_layers,
    attach_lora,
    load_adapter,
    read_adapter_file,
    save_adapter,
)
from selva_core.model.lora.merge import MergeError, merge_adapter_files
from tests.test_lora_common import make_inputs, make_model, make_twin, perturb, rel_err


def _adapter_file(tmp_path, name, seed, init="standard", kind="lora", targets=("all",),
                  rank=4, variant="tiny_test"):
    model = make_model()
    attach_lora(model, LoRAConfig(rank=rank, init=init, kind=kind, targets=targets, seed=seed),
                variant_name=variant)
    perturb(model, seed=seed)
    return save_adapter(model, tmp_path / f"{name}.safetensors", storage="float32")


def _write(tmp_path, result, name="merged.safetensors"):
    path = tmp_path / name
    save_file(result.tensors, str(path), metadata=result.metadata)
    return path


def _stacked_output(files_weights):
    model = make_model()
    for i, (path, w) in enumerate(files_weights):
        load_adapter(model, path, name=f"a{i}", strength=w)
    return model(*make_inputs())


def _dense_changes(path):
    """layer -> scale * B A (2-D) of an adapter file, float64."""
    tensors, meta = read_adapter_file(path)
    scale = float(meta["scale"])
    out = {}
    for layer in json.loads(meta["layers"]):
        A, B = tensors[f"{layer}.lora_A"].double(), tensors[f"{layer}.lora_B"].double()
        out[layer] = scale * B.reshape(B.shape[0], -1) @ A.reshape(A.shape[0], -1)
    return out


def test_linear_merge_equals_stacking_the_adapters_at_their_weights_and_ranks_add(tmp_path):
    a = _adapter_file(tmp_path, "a", 1)
    b = _adapter_file(tmp_path, "b", 2, init="pissa")  # PiSSA merges through its plain delta
    result = merge_adapter_files([(a, 0.7), (b, 0.3)], "linear")
    merged = _write(tmp_path, result)
    ra = int(read_adapter_file(a)[1]["file_rank"])
    rb = int(read_adapter_file(b)[1]["file_rank"])
    assert result.metadata["file_rank"] == str(ra + rb) and result.worst is None
    want = _stacked_output([(a, 0.7), (b, 0.3)])
    got = _stacked_output([(merged, 1.0)])
    assert rel_err(got, want) < 1e-6


def test_svd_merge_at_the_full_rank_is_exact_and_at_a_lower_rank_records_each_layer_error(
        tmp_path):
    a, b = _adapter_file(tmp_path, "a", 1), _adapter_file(tmp_path, "b", 2)
    full = merge_adapter_files([(a, 0.5), (b, 0.5)], "svd", rank=8)
    assert full.worst[1] < 1e-6
    low = merge_adapter_files([(a, 0.5), (b, 0.5)], "svd", rank=2)
    recorded = json.loads(low.metadata["merge_rel_errors"])
    assert set(recorded) == set(json.loads(low.metadata["layers"]))
    da, db = _dense_changes(a), _dense_changes(b)
    got = _dense_changes(_write(tmp_path, low))
    for layer, err in recorded.items():
        target = 0.5 * da[layer] + 0.5 * db[layer]
        assert got[layer].shape == target.shape
        assert err == pytest.approx(rel_err(got[layer], target), rel=1e-3)
    assert low.worst[1] == pytest.approx(max(recorded.values()), rel=1e-3) and low.worst[1] > 0
    assert low.metadata["file_rank"] == "2"


# -- against peft's add_weighted_adapter ---------------------------------------------------
def _peft_pair(a, b):
    """A peft model (Linear qkv layers) holding the factors of files ``a`` and ``b``."""
    peft = pytest.importorskip("peft")
    base = make_twin(make_model())
    meta_a = read_adapter_file(a)[1]
    cfg = peft.LoraConfig(target_modules=["qkv"], r=int(meta_a["rank"]),
                          lora_alpha=float(meta_a["alpha"]))
    pm = peft.get_peft_model(copy.deepcopy(base), cfg, adapter_name="one")
    pm.add_adapter("two", cfg)
    prefix = "base_model.model."
    layers = {n[len(prefix):]: m for n, m in pm.named_modules()
              if n.startswith(prefix) and hasattr(m, "lora_A") and "one" in m.lora_A}
    with torch.no_grad():
        for name, path in (("one", a), ("two", b)):
            tensors = read_adapter_file(path)[0]
            for layer, m in layers.items():
                m.lora_A[name].weight.copy_(tensors[f"{layer}.lora_A"])
                m.lora_B[name].weight.copy_(tensors[f"{layer}.lora_B"])
    return pm, layers


@pytest.mark.parametrize("method, peft_type", [("svd", "svd"), ("ties", "ties_svd"),
                                               ("dare", "dare_linear_svd")])
def test_merges_match_peft_add_weighted_adapter(tmp_path, monkeypatch, method, peft_type):
    a = _adapter_file(tmp_path, "a", 1, targets=("qkv",))
    b = _adapter_file(tmp_path, "b", 2, targets=("qkv",))
    pm, layers = _peft_pair(a, b)
    # peft draws dare's masks from the global generator, between which it initialises the new
    # adapter's factors; give its draws a generator of their own seeded as ours (same masks)
    masks = torch.Generator().manual_seed(11)
    bernoulli = torch.bernoulli
    monkeypatch.setattr(torch, "bernoulli", lambda t, *args, generator=None, **kw: bernoulli(
        t, *args, generator=generator or masks, **kw))
    pm.add_weighted_adapter(["one", "two"], [0.7, 0.3], "m", combination_type=peft_type,
                            svd_rank=3, density=0.4)
    ours = _dense_changes(_write(tmp_path, merge_adapter_files(
        [(a, 0.7), (b, 0.3)], method, rank=3, density=0.4, seed=11)))
    assert set(ours) == set(layers)
    for layer, m in layers.items():
        theirs = m.get_delta_weight("m").double()
        assert rel_err(ours[layer], theirs) < 1e-4, layer


def test_ties_elects_the_sign_of_the_sum_and_averages_agreeing_entries():
    from selva_core.model.lora.merge import ties_merge

    d1 = torch.tensor([[3.0, -1.0], [0.5, 2.0]], dtype=torch.float64)
    d2 = torch.tensor([[-1.0, -2.0], [4.0, -3.0]], dtype=torch.float64)
    # density 1: nothing trimmed; signs of the sum: [+, -; +, -]
    got = ties_merge([d1, d2], [1.0, 1.0], 1.0)
    assert torch.equal(got, torch.tensor([[3.0, -1.5], [2.25, -3.0]], dtype=torch.float64))


# -- refusals ---------------------------------------------------------------------------
def test_adapters_of_different_model_variants_are_refused_naming_the_file(tmp_path):
    a = _adapter_file(tmp_path, "a", 1)
    b = _adapter_file(tmp_path, "b", 2, variant="other_variant")
    with pytest.raises(MergeError, match=r"b\.safetensors is for model variant 'other_variant'"):
        merge_adapter_files([(a, 1.0), (b, 1.0)])


def test_dora_adapters_are_refused_with_a_pointer_to_export(tmp_path):
    a = _adapter_file(tmp_path, "a", 1)
    d = _adapter_file(tmp_path, "d", 2, kind="dora")
    with pytest.raises(MergeError, match=r"d\.safetensors: adapter kind 'dora'.*selva_core.export"):
        merge_adapter_files([(a, 1.0), (d, 1.0)])


def test_same_layer_name_with_other_shapes_is_refused_naming_the_layer(tmp_path):
    a = _adapter_file(tmp_path, "a", 1, targets=("qkv",))
    tensors, meta = read_adapter_file(_adapter_file(tmp_path, "b", 2, targets=("qkv",)))
    layer = json.loads(meta["layers"])[0]
    tensors[f"{layer}.lora_A"] = torch.zeros(4, 7)
    save_file(tensors, str(tmp_path / "b.safetensors"), metadata=meta)
    with pytest.raises(Exception, match="b.safetensors"):
        merge_adapter_files([(a, 1.0), (tmp_path / "b.safetensors", 1.0)])


def test_layers_of_only_one_source_keep_that_source_change(tmp_path):
    a = _adapter_file(tmp_path, "a", 1, targets=("qkv",))
    b = _adapter_file(tmp_path, "b", 2, targets=("ffn",))
    merged = _write(tmp_path, merge_adapter_files([(a, 0.5), (b, 2.0)], "linear"))
    assert rel_err(_stacked_output([(merged, 1.0)]),
                   _stacked_output([(a, 0.5), (b, 2.0)])) < 1e-6


# -- the command -----------------------------------------------------------------------
def test_cli_writes_the_merged_file_and_prints_the_worst_layer_error(tmp_path, capsys):
    a, b = _adapter_file(tmp_path, "a", 1), _adapter_file(tmp_path, "b", 2)
    out = tmp_path / "m.safetensors"
    assert merge_main([f"{a}:0.7", f"{b}:0.3", "--method", "svd", "--rank", "2",
                       "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "worst relative error" in printed and out.is_file()
    meta = read_adapter_file(out)[1]
    assert json.loads(meta["user"])["merge"]["sources"][0] == {"file": "a.safetensors",
                                                              "weight": 0.7}
    model = make_model()
    load_adapter(model, out)  # a valid adapter file
    assert set(adapter_layers(model, "default")) == set(json.loads(meta["layers"]))


def test_cli_refusal_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys):
    a = _adapter_file(tmp_path, "a", 1)
    b = _adapter_file(tmp_path, "b", 2, variant="other_variant")
    out = tmp_path / "m.safetensors"
    assert merge_main([str(a), str(b), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "other_variant" in err
    assert not out.exists() and not list(tmp_path.glob(".m.safetensors*"))


def test_merged_file_loads_and_keeps_float32_tensors(tmp_path):
    a, b = _adapter_file(tmp_path, "a", 1), _adapter_file(tmp_path, "b", 2)
    merged = _write(tmp_path, merge_adapter_files([(a, 1.0), (b, -1.0)], "ties", rank=4))
    assert all(t.dtype == torch.float32 for t in load_file(str(merged)).values())
