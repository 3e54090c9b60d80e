"""Adapter files: round trips, PiSSA conversion, metadata, strict and safe loading."""

from __future__ import annotations

import json
import logging
import pickle

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from selva_core.model.lora import (
    LoRAConfig,
    LoRALayer,
    adapter_layers,
    attach_lora,
    iter_lora_layers,
    load_adapter,
    load_training_state_dict,
    save_adapter,
    set_strength,
    training_state_dict,
)
from tests.test_lora_common import (
    make_inputs,
    make_model,
    perturb,
    rel_err,
    same_state,
    state_bits,
)


def _trained(init="standard", variant="lora", targets=("attn",), **kw):
    model = make_model()
    attach_lora(model, LoRAConfig(rank=4, init=init, variant=variant, targets=targets, **kw),
                variant_name="tiny_test")
    perturb(model)
    return model


@pytest.mark.parametrize("variant", ["lora", "dora"])
def test_save_then_load_on_a_fresh_model_reproduces_the_adapter_exactly(tmp_path, variant):
    model = _trained(variant=variant, targets=("all",))
    x, t = make_inputs()
    y = model(x, t)
    path = save_adapter(model, tmp_path / "a.safetensors")
    fresh = make_model()
    load_adapter(fresh, path)
    assert torch.equal(fresh(x, t), y)


def test_pissa_file_is_a_rank_2r_delta_that_reproduces_training_on_a_clean_base(tmp_path):
    model = _trained(init="pissa", targets=("all",))
    x, t = make_inputs()
    y = model(x, t)
    path = save_adapter(model, tmp_path / "p.safetensors")
    tensors = load_file(path)
    assert all(k.endswith((".lora_A", ".lora_B")) for k in tensors)  # no base weights
    assert tensors["fused_blocks.0.linear1.lora_A"].shape == (8, 16, 3)
    assert tensors["fused_blocks.0.linear1.lora_B"].shape == (16, 8, 1)
    fresh = make_model()
    load_adapter(fresh, path)
    assert rel_err(fresh(x, t), y) <= 1e-5
    set_strength(fresh, "default", 0.0)
    assert torch.equal(fresh(x, t), make_model()(x, t))


def test_file_metadata_records_scale_variant_targets_layers_and_base_identity(tmp_path):
    model = _trained(init="pissa", variant="dora", use_rslora=True, alpha=6.0)
    path = save_adapter(model, tmp_path / "m.safetensors", metadata={"steps": 120})
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "selva-lora" and meta["format_version"] == "1"
    assert meta["variant"] == "dora" and meta["init"] == "pissa"
    assert meta["converted"] == "pissa->delta"
    assert meta["rank"] == "4" and meta["file_rank"] == "8"
    assert float(meta["alpha"]) == 6.0 and float(meta["scale"]) == 3.0
    assert json.loads(meta["use_rslora"]) is True
    assert json.loads(meta["targets"]) == ["attn"]
    assert "joint_blocks.0.latent_block.linear1" in json.loads(meta["layers"])
    assert meta["base_variant"] == "tiny_test" and len(meta["base_fingerprint"]) == 16
    assert json.loads(meta["user"]) == {"steps": 120}


def test_training_state_round_trip_keeps_pissa_init_factors(tmp_path):
    model = _trained(init="pissa")
    state = training_state_dict(model)
    assert any(k.endswith(".lora_A0") for k in state)
    x, t = make_inputs()
    y = model(x, t)
    other = make_model()
    attach_lora(other, LoRAConfig(rank=4, init="pissa", targets=("attn",)))
    load_training_state_dict(other, state)
    assert torch.equal(other(x, t), y)
    del state["fused_blocks.0.linear1.lora_B0"]
    with pytest.raises(ValueError, match="missing keys: fused_blocks.0.linear1.lora_B0"):
        load_training_state_dict(other, state)


# -- bad files: one clear error each, model unchanged -----------------------------------------
@pytest.fixture
def good_file(tmp_path):
    path = save_adapter(_trained(), tmp_path / "good.safetensors")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    return path, load_file(path), meta


def _rewrite(tmp_path, tensors, meta, name="bad.safetensors"):
    path = tmp_path / name
    save_file(tensors, str(path), metadata=meta)
    return path


def _assert_load_fails_and_model_unchanged(path, match, **kw):
    model = make_model()
    before = state_bits(model)
    with pytest.raises(ValueError, match=match):
        load_adapter(model, path, **kw)
    assert not list(iter_lora_layers(model))
    assert same_state(state_bits(model), before)
    assert all(p.requires_grad for p in model.parameters())


def test_missing_key_is_named(tmp_path, good_file):
    _, tensors, meta = good_file
    del tensors["fused_blocks.0.attn.qkv.lora_B"]
    path = _rewrite(tmp_path, tensors, meta)
    _assert_load_fails_and_model_unchanged(
        path, r"missing keys: fused_blocks\.0\.attn\.qkv\.lora_B"
    )


def test_extra_key_is_named(tmp_path, good_file):
    _, tensors, meta = good_file
    tensors["final.lora_A"] = torch.zeros(4, 16, 3)
    path = _rewrite(tmp_path, tensors, meta)
    _assert_load_fails_and_model_unchanged(path, r"unexpected keys: final\.lora_A")


def test_another_base_variant_is_refused(tmp_path, good_file):
    path, _, _ = good_file
    _assert_load_fails_and_model_unchanged(
        path, "trained for base variant 'tiny_test'.*'large_44k'", expected_variant="large_44k"
    )


def test_wrong_shapes_are_named(tmp_path, good_file):
    _, tensors, meta = good_file
    tensors["fused_blocks.0.linear1.lora_A"] = torch.zeros(4, 16, 5)
    path = _rewrite(tmp_path, tensors, meta)
    _assert_load_fails_and_model_unchanged(
        path, r"fused_blocks\.0\.linear1.*do not fit the layer"
    )


def test_a_layer_missing_from_the_model_is_named(tmp_path, good_file):
    _, tensors, meta = good_file
    tensors["nowhere.lora_A"] = torch.zeros(4, 16)
    tensors["nowhere.lora_B"] = torch.zeros(16, 4)
    meta["layers"] = json.dumps([*json.loads(meta["layers"]), "nowhere"])
    path = _rewrite(tmp_path, tensors, meta)
    _assert_load_fails_and_model_unchanged(path, "'nowhere' does not exist")


def test_pickle_files_are_refused_without_unpickling(tmp_path):
    path = tmp_path / "adapter.pt"
    torch.save({"state_dict": {}}, path)
    _assert_load_fails_and_model_unchanged(path, "pickle")
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps({"a": 1}))
    _assert_load_fails_and_model_unchanged(raw, "pickle")


def test_a_foreign_safetensors_file_is_refused(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    _assert_load_fails_and_model_unchanged(path, "not a selva-lora adapter")


def test_other_base_weights_only_warn(tmp_path, good_file, caplog):
    path, _, _ = good_file
    other = make_model(seed=7)
    with caplog.at_level(logging.WARNING):
        load_adapter(other, path)
    assert "different base weights" in caplog.text


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path):
    model = _trained()
    save_adapter(model, tmp_path / "a.safetensors")
    save_adapter(model, tmp_path / "a.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]


def test_loaded_adapter_is_trainable_and_uses_clean_wrappers(tmp_path, good_file):
    path, _, _ = good_file
    model = make_model()
    h = load_adapter(model, path, name="style", strength=0.5)
    assert h.name == "style" and len(h.layers) == 9  # 5 qkv + 4 linear1
    states = adapter_layers(model, "style")
    assert all(st.strength == 0.5 and st.lora_A.requires_grad for st in states.values())
    assert all(isinstance(model.get_submodule(p), LoRALayer) for p in states)


def test_half_precision_pissa_file_is_half_the_size_and_keeps_the_change(tmp_path):
    model = _trained(init="pissa", targets=("all",))
    x, t = make_inputs()
    y0, y = make_model()(x, t), model(x, t)
    full = save_adapter(model, tmp_path / "full.safetensors")
    half = save_adapter(model, tmp_path / "half.safetensors", dtype=torch.float16)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    fresh = make_model()
    load_adapter(fresh, half)
    assert rel_err(fresh(x, t) - y0, y - y0) <= 2e-3
    with safe_open(str(half), "pt") as f:
        assert f.metadata()["storage_dtype"] == "float16"


def test_missing_metadata_fields_are_named(tmp_path, good_file):
    _, tensors, meta = good_file
    del meta["scale"]
    path = _rewrite(tmp_path, tensors, meta)
    _assert_load_fails_and_model_unchanged(path, r"lacks the required fields \['scale'\]")


def test_a_file_claiming_another_adapter_variant_is_refused_by_its_key_set(tmp_path, good_file):
    _, tensors, meta = good_file
    meta["variant"] = "dora"  # a plain LoRA file relabelled: no magnitudes
    path = _rewrite(tmp_path, tensors, meta)
    _assert_load_fails_and_model_unchanged(
        path, r"bad\.safetensors does not match: missing keys: .*lora_magnitude"
    )
    meta["variant"] = "vera"
    path = _rewrite(tmp_path, tensors, meta, name="unknown.safetensors")
    _assert_load_fails_and_model_unchanged(path, r"unknown\.safetensors: unknown LoRA variant")


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("scale", "two", r"metadata scale='two' is not a positive number"),
        ("alpha", "-1", r"metadata alpha='-1' is not a positive number"),
        ("format_version", "v1", r"format_version 'v1' is not an integer"),
        ("rank", "four", r"metadata rank 'four' is not an integer"),
        ("use_rslora", "yes please", r"'use_rslora' is missing or not JSON"),
    ],
)
def test_malformed_metadata_names_the_file_and_field(tmp_path, good_file, field, value, match):
    _, tensors, meta = good_file
    meta[field] = value
    path = _rewrite(tmp_path, tensors, meta)
    _assert_load_fails_and_model_unchanged(path, r"bad\.safetensors.*" + match)
