"""Adapter files: round trips, PiSSA conversion, metadata, strict and safe loading."""

from __future__ import annotations

import copy
import json
import logging
import pickle

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from selva_core.model.lora import (
    AdapterLoadError,
    LoRAConfig,
    LoRALayer,
    adapter_layers,
    attach_lora,
    iter_lora_layers,
    load_adapter,
    load_training_state_dict,
    reduce_intruders,
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


def _trained(init="standard", kind="lora", targets=("attn",), **kw):
    model = make_model()
    attach_lora(model, LoRAConfig(rank=4, init=init, kind=kind, targets=targets, **kw),
                variant_name="tiny_test")
    perturb(model)
    return model


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_save_then_load_on_a_fresh_model_reproduces_the_adapter_exactly(tmp_path, kind):
    model = _trained(kind=kind, targets=("all",))
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
    path = save_adapter(model, tmp_path / "p.safetensors", storage="float32")
    tensors = load_file(path)
    assert all(k.endswith((".lora_A", ".lora_B")) for k in tensors)  # no base weights
    assert tensors["fused_blocks.0.linear1.lora_A"].shape == (8, 16, 3)
    assert tensors["fused_blocks.0.linear1.lora_B"].shape == (16, 8, 1)
    fresh = make_model()
    load_adapter(fresh, path)
    assert rel_err(fresh(x, t), y) <= 1e-5
    set_strength(fresh, "default", 0.0)
    assert torch.equal(fresh(x, t), make_model()(x, t))


def test_pissa_file_is_q16_by_default_and_still_reproduces_training_within_1e_5(tmp_path):
    model = _trained(init="pissa", targets=("all",))
    x, t = make_inputs()
    y0, y = make_model()(x, t), model(x, t)
    assert rel_err(y, y0) > 0.05  # the adapter changes the output by several per cent
    path = save_adapter(model, tmp_path / "p.safetensors")
    exact = save_adapter(model, tmp_path / "exact.safetensors", storage="float32")
    tensors = load_file(path)
    A, B = (tensors[f"fused_blocks.0.linear1.{k}"] for k in ("lora_A", "lora_B"))
    assert A.dtype == B.dtype == torch.int16 and A.shape == (8, 16, 3) and B.shape == (16, 8, 1)
    assert tensors["fused_blocks.0.linear1.lora_A_qscale"].shape == (8,)
    assert all(k.endswith((".lora_A", ".lora_B", "_qscale")) for k in tensors)
    data = sum(t.numel() * t.element_size() for t in tensors.values())
    exact_data = sum(t.numel() * t.element_size() for t in load_file(exact).values())
    assert data < 0.55 * exact_data
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["storage_dtype"] == "q16" and meta["format_version"] == "3"
    fresh = make_model()
    load_adapter(fresh, path)
    assert rel_err(fresh(x, t), y) <= 1e-5


@pytest.mark.parametrize("storage, bound", [("q16", 1e-4), ("float16", 2e-3)])
def test_compact_storages_keep_the_learned_change(tmp_path, storage, bound):
    model = _trained(init="pissa", targets=("all",))
    x, t = make_inputs()
    y0, y = make_model()(x, t), model(x, t)
    path = save_adapter(model, tmp_path / "c.safetensors", storage=storage)
    fresh = make_model()
    load_adapter(fresh, path)
    err = rel_err(fresh(x, t) - y0, y - y0)
    assert 0 < err <= bound


def test_q16_is_more_precise_than_float16_at_the_same_size(tmp_path):
    model = _trained(init="pissa", targets=("all",))
    x, t = make_inputs()
    y0, y = make_model()(x, t), model(x, t)
    errors = {}
    for storage in ("q16", "float16"):
        fresh = make_model()
        load_adapter(fresh, save_adapter(model, tmp_path / f"{storage}.st", storage=storage))
        errors[storage] = rel_err(fresh(x, t) - y0, y - y0)
    assert errors["q16"] < errors["float16"] / 4


def test_untrained_pissa_saved_as_q16_loads_as_the_exact_base_model(tmp_path):
    model = make_model()
    attach_lora(model, LoRAConfig(rank=4, init="pissa", targets=("all",)))
    path = save_adapter(model, tmp_path / "zero.safetensors")
    fresh = make_model()
    load_adapter(fresh, path)
    x, t = make_inputs()
    assert torch.equal(fresh(x, t), make_model()(x, t))


def test_standard_adapters_are_stored_exactly_in_float32_by_default(tmp_path):
    path = save_adapter(_trained(), tmp_path / "s.safetensors")
    assert all(t.dtype == torch.float32 for t in load_file(path).values())
    with safe_open(str(path), "pt") as f:
        assert f.metadata()["storage_dtype"] == "float32"
        assert "storage_rel_error" not in f.metadata()


def test_unknown_storage_names_the_choices(tmp_path):
    with pytest.raises(ValueError, match=r"unknown adapter storage 'int4'.*q16"):
        save_adapter(_trained(), tmp_path / "x.safetensors", storage="int4")
    assert not (tmp_path / "x.safetensors").exists()


def test_file_metadata_records_scale_kind_targets_layers_and_model_identity(tmp_path):
    model = _trained(init="pissa", kind="dora", use_rslora=True, alpha=6.0)
    path = save_adapter(model, tmp_path / "m.safetensors", metadata={"steps": 120})
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "selva-lora" and meta["format_version"] == "3"
    assert meta["storage_dtype"] == "q16"  # auto: PiSSA's rank-2r delta
    assert meta["lora_kind"] == "dora" and meta["init"] == "pissa" and "variant" not in meta
    assert meta["converted"] == "pissa->delta"
    assert meta["rank"] == "4" and meta["file_rank"] == "8"
    assert float(meta["alpha"]) == 6.0 and float(meta["scale"]) == 3.0
    assert json.loads(meta["use_rslora"]) is True
    assert json.loads(meta["targets"]) == ["attn"]
    assert "joint_blocks.0.latent_block.linear1" in json.loads(meta["layers"])
    assert meta["model_variant"] == "tiny_test" and meta["base_fingerprint"].startswith("stats1:")
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
    with pytest.raises(AdapterLoadError, match=match):
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


def test_another_model_variant_is_refused(tmp_path, good_file):
    path, _, _ = good_file
    _assert_load_fails_and_model_unchanged(
        path, "trained for model variant 'tiny_test'.*'large_44k'", expected_variant="large_44k"
    )


def test_wrong_shapes_are_named(tmp_path, good_file):
    _, tensors, meta = good_file
    tensors["fused_blocks.0.linear1.lora_A"] = torch.zeros(4, 16, 5)
    path = _rewrite(tmp_path, tensors, meta)
    _assert_load_fails_and_model_unchanged(
        path, r"fused_blocks\.0\.linear1.*do not fit the layer"
    )


@pytest.fixture
def q16_file(tmp_path):
    path = save_adapter(_trained(init="pissa"), tmp_path / "q16.safetensors")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    return path, load_file(path), meta


_QKV = "fused_blocks.0.attn.qkv"


def _float_factor(tensors):
    tensors[f"{_QKV}.lora_B"] = tensors[f"{_QKV}.lora_B"].float()


def _short_steps(tensors):
    tensors[f"{_QKV}.lora_A_qscale"] = torch.ones(3)


def _no_steps(tensors):
    del tensors[f"{_QKV}.lora_B_qscale"]


def _flat_factor(tensors):
    tensors[f"{_QKV}.lora_B"] = tensors[f"{_QKV}.lora_B"].reshape(-1)


@pytest.mark.parametrize("damage, match", [
    (_float_factor,
     r"fused_blocks\.0\.attn\.qkv\.lora_B is torch\.float32, but storage q16 stores int16"),
    (_short_steps,
     r"lora_A_qscale must be a float vector of length 8 .* got torch\.float32 \(3,\)"),
    (_no_steps, r"missing keys: .*lora_B_qscale"),
    (_flat_factor, r"layer fused_blocks\.0\.attn\.qkv has factor shapes .* not a LoRA pair"),
])
def test_damaged_q16_files_are_refused_with_one_clear_error(tmp_path, q16_file, damage, match):
    _, tensors, meta = q16_file
    damage(tensors)
    _assert_load_fails_and_model_unchanged(_rewrite(tmp_path, tensors, meta), match)


def test_unknown_storage_in_a_file_is_named(tmp_path, good_file):
    _, tensors, meta = good_file
    meta["storage_dtype"] = "int4"
    path = _rewrite(tmp_path, tensors, meta)
    _assert_load_fails_and_model_unchanged(path, r"storage_dtype='int4' is not one of")


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


def test_the_same_base_in_half_precision_is_recognised_without_a_warning(good_file, caplog):
    path, _, _ = good_file
    for dtype in (torch.bfloat16, torch.float16):
        half = make_model().to(dtype)
        with caplog.at_level(logging.WARNING):
            load_adapter(half, path)
        assert "different base weights" not in caplog.text, dtype


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


def test_missing_metadata_fields_are_named(tmp_path, good_file):
    _, tensors, meta = good_file
    del meta["scale"]
    path = _rewrite(tmp_path, tensors, meta)
    _assert_load_fails_and_model_unchanged(path, r"lacks the required fields \['scale'\]")


def test_a_file_claiming_another_lora_kind_is_refused_by_its_key_set(tmp_path, good_file):
    _, tensors, meta = good_file
    meta["lora_kind"] = "dora"  # a plain LoRA file relabelled: no magnitudes
    path = _rewrite(tmp_path, tensors, meta)
    _assert_load_fails_and_model_unchanged(
        path, r"bad\.safetensors does not match: missing keys: .*lora_magnitude"
    )
    meta["lora_kind"] = "vera"
    path = _rewrite(tmp_path, tensors, meta, name="unknown.safetensors")
    _assert_load_fails_and_model_unchanged(
        path, r"unknown\.safetensors: metadata lora_kind='vera' is not a known LoRA kind"
    )


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("scale", "two", r"metadata scale='two' is not a positive number"),
        ("alpha", "-1", r"metadata alpha='-1' is not a positive number"),
        ("format_version", "v1", r"format_version 'v1' is not an integer"),
        ("rank", "four", r"metadata rank='four' is not a positive integer"),
        ("use_rslora", "yes please", r"metadata use_rslora='yes please' is not JSON true or false"),
    ],
)
def test_malformed_metadata_names_the_file_and_field(tmp_path, good_file, field, value, match):
    _, tensors, meta = good_file
    meta[field] = value
    path = _rewrite(tmp_path, tensors, meta)
    _assert_load_fails_and_model_unchanged(path, r"bad\.safetensors.*" + match)


def test_every_bad_metadata_field_is_named_in_one_error(tmp_path, good_file):
    _, tensors, meta = good_file
    meta.update(scale="two", dropout="lots", user="[1]")
    del meta["alpha"]
    with pytest.raises(AdapterLoadError) as err:
        load_adapter(make_model(), _rewrite(tmp_path, tensors, meta))
    text = str(err.value)
    for needle in ("lacks the required fields ['alpha']", "metadata scale='two'",
                   "metadata dropout='lots'", "metadata user='[1]' is not a JSON object"):
        assert needle in text, needle


@pytest.mark.parametrize("version", ["1", "2", "4"])
def test_a_format_version_other_than_the_current_one_is_refused_naming_it(tmp_path, good_file,
                                                                         version):
    _, tensors, meta = good_file
    meta["format_version"] = version
    _assert_load_fails_and_model_unchanged(
        _rewrite(tmp_path, tensors, meta),
        rf"bad\.safetensors has adapter format version {version}; this library reads version 3")


# -- damaged values, nested wrappers, metadata types, folders --------------------------------------
def _nan_factor(tensors):
    tensors[f"{_QKV}.lora_A"][0, 0] = float("nan")


def _inf_factor(tensors):
    tensors[f"{_QKV}.lora_B"][1, 0] = float("inf")


def _nan_step(tensors):
    tensors[f"{_QKV}.lora_B_qscale"][0] = float("nan")


def _huge_step(tensors):  # finite, but int16 * step overflows float32
    tensors[f"{_QKV}.lora_A_qscale"][0] = 3e38


@pytest.mark.parametrize("fixture,damage,match", [
    ("good_file", _nan_factor, rf"{_QKV}\.lora_A holds 1 NaN or infinite value"),
    ("good_file", _inf_factor, rf"{_QKV}\.lora_B holds 1 NaN or infinite value"),
    ("q16_file", _nan_step, rf"{_QKV}\.lora_B_qscale holds 1 NaN"),
    ("q16_file", _huge_step, rf"{_QKV}\.lora_A \(decoded\) holds .* NaN or infinite"),
])
def test_nan_or_infinite_factors_or_steps_are_refused_with_the_model_unchanged(
        tmp_path, request, fixture, damage, match):
    _, tensors, meta = request.getfixturevalue(fixture)
    damage(tensors)
    _assert_load_fails_and_model_unchanged(_rewrite(tmp_path, tensors, meta), match)


def test_nan_dora_magnitudes_are_refused(tmp_path):
    path = save_adapter(_trained(kind="dora"), tmp_path / "d.safetensors")
    tensors = load_file(path)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors[f"{_QKV}.lora_magnitude"][2] = float("-inf")
    _assert_load_fails_and_model_unchanged(_rewrite(tmp_path, tensors, meta),
                                           rf"{_QKV}\.lora_magnitude holds 1 NaN")


def test_a_layer_path_inside_an_existing_wrapper_is_refused(tmp_path, good_file):
    _, tensors, meta = good_file
    inner = f"{_QKV}.base_layer"
    tensors = {k.replace(f"{_QKV}.", f"{inner}."): v for k, v in tensors.items()}
    meta["layers"] = json.dumps([inner if p == _QKV else p for p in json.loads(meta["layers"])])
    path = _rewrite(tmp_path, tensors, meta)
    model = _trained()  # qkv is already wrapped by the adapter "default"
    before = state_bits(model)
    wrappers = dict(iter_lora_layers(model))
    with pytest.raises(AdapterLoadError, match=rf"'{inner}' lies inside the adapter wrapper at "
                                               rf"'{_QKV}'"):
        load_adapter(model, path, name="other")
    assert dict(iter_lora_layers(model)) == wrappers
    assert not isinstance(model.get_submodule(_QKV).base_layer, LoRALayer)
    assert same_state(state_bits(model), before)


@pytest.mark.parametrize("field,value,match", [
    ("targets", '"attn"', r"metadata targets='\"attn\"' is not a JSON list of non-empty strings"),
    ("targets", "[1]", r"metadata targets='\[1\]' is not a JSON list"),
    ("exclude", "{}", r"metadata exclude='\{\}' is not a JSON list"),
    ("layers", "[]", r"metadata layers='\[\]' is not a JSON list of non-empty strings \(at least"),
    ("layers", '"fused_blocks.0.attn.qkv"', r"metadata layers=.* is not a JSON list"),
    ("dropout", "lots", r"metadata dropout='lots' is not a number in \[0, 1\)"),
    ("dropout", "1.5", r"metadata dropout='1.5' is not a number in \[0, 1\)"),
    ("file_rank", "0", r"metadata file_rank='0' is not a positive integer"),
    ("file_rank", "8", r"metadata file_rank=8 but layer .* holds rank 4"),
    ("rank", "-4", r"metadata rank='-4' is not a positive integer"),
    ("use_rslora", "1", r"metadata use_rslora='1' is not JSON true or false"),
    ("user", "[1, 2]", r"metadata user='\[1, 2\]' is not a JSON object"),
    ("lora_kind", None, r"lacks the required fields \['lora_kind'\]"),
    ("layers", '["a..b"]', r"metadata layers=.*a\.\.b.* is not a list of dotted module paths"),
])
def test_metadata_fields_are_validated_by_type_naming_the_field(tmp_path, good_file, field,
                                                                 value, match):
    _, tensors, meta = good_file
    if value is None:
        del meta[field]
    else:
        meta[field] = value
    _assert_load_fails_and_model_unchanged(_rewrite(tmp_path, tensors, meta),
                                           r"bad\.safetensors.*" + match)


def test_a_folder_passed_as_a_file_says_so(tmp_path, good_file):
    path, _, _ = good_file
    _assert_load_fails_and_model_unchanged(
        tmp_path, rf"{tmp_path} is a folder, not an adapter file; pass one of the "
                  r"\.safetensors files inside it \(good\.safetensors\)")
    peft_like = tmp_path / "peft"
    peft_like.mkdir()
    (peft_like / "adapter_config.json").write_text("{}")
    _assert_load_fails_and_model_unchanged(peft_like, "a PEFT folder: load it with import_peft")


def test_a_missing_file_is_an_adapter_error_and_a_file_not_found_error(tmp_path):
    from selva_core.model.lora import AdapterNotFoundError

    with pytest.raises(AdapterNotFoundError, match="does not exist") as err:
        load_adapter(make_model(), tmp_path / "nope.safetensors")
    assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, AdapterLoadError)


def test_a_truncated_file_is_an_adapter_error(tmp_path, good_file):
    path, _, _ = good_file
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[:-64])
    _assert_load_fails_and_model_unchanged(cut, r"cut\.safetensors is not a valid safetensors")


def _with_grown_rank(init: str):
    """A rank-2 adapter on one Linear whose intruder reduction grows its file rank to 3."""
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(8, 24))
    model = copy.deepcopy(base)
    attach_lora(model, LoRAConfig(rank=2, alpha=2.0, init=init, targets=("0",), seed=1))
    st = model[0].adapters["default"]
    W0 = model[0].original_weight2d().detach()
    Q, _ = torch.linalg.qr(torch.cat([W0, torch.randn(24, 16)], 1))
    with torch.no_grad():  # a strong direction outside W0's column space plus a second one
        st.lora_B[:, 0] = Q[:, 8] * 10 * torch.linalg.matrix_norm(W0, ord=2)
        st.lora_B[:, 1] = torch.randn(24)
        st.lora_A.copy_(torch.randn(2, 8))
    assert reduce_intruders(model, lam=0.5)
    assert max(s.factors()[0].shape[0] for s in adapter_layers(model, "default").values()) > 2
    return base, model


def test_auto_storage_keeps_a_plain_adapter_exact_after_intruder_reduction_grows_its_rank(
        tmp_path, caplog):
    base, model = _with_grown_rank("standard")
    x = torch.randn(5, 8)
    path = save_adapter(model, tmp_path / "reduced.safetensors")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["storage_dtype"] == "float32" and "storage_rel_error" not in meta
    load_adapter(base, path)
    assert torch.equal(base(x), model(x))


def test_lossy_storage_is_logged_and_recorded_with_its_error(tmp_path, caplog):
    model = _trained(init="pissa")
    with caplog.at_level(logging.INFO, logger="selva_core.model.lora"):
        path = save_adapter(model, tmp_path / "p.safetensors")  # auto: PiSSA -> q16
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    err = float(meta["storage_rel_error"])
    assert meta["storage_dtype"] == "q16" and 0 < err < 1e-4
    assert "stored as q16: relative error of the stored change up to" in caplog.text


# -- issue 20: finite files whose change is unusable; a symbolic-link loop ------------------
def _output_is_finite_with(path) -> bool:
    model = make_model()
    load_adapter(model, path)
    x, t = make_inputs()
    return bool(torch.isfinite(model(x, t)).all())


def test_factors_whose_product_overflows_are_refused_naming_the_layer(tmp_path, good_file):
    _, tensors, meta = good_file
    tensors[f"{_QKV}.lora_A"].fill_(1e30)
    tensors[f"{_QKV}.lora_B"].fill_(1e30)
    _assert_load_fails_and_model_unchanged(
        _rewrite(tmp_path, tensors, meta), rf"layer {_QKV}: its change .* overflows")


def test_a_huge_finite_scale_is_refused_naming_the_layer(tmp_path, good_file):
    path, tensors, meta = good_file
    assert _output_is_finite_with(path)
    meta = {**meta, "scale": "1e30"}
    _assert_load_fails_and_model_unchanged(
        _rewrite(tmp_path, tensors, meta), r"layer .*: its change to the weight is .* times "
                                           r"the size of the weight")


def test_an_ordinary_adapter_on_a_zero_weight_still_loads(tmp_path, good_file):
    path, _, _ = good_file
    model = make_model()
    with torch.no_grad():
        dict(model.named_parameters())[f"{_QKV}.weight"].zero_()
    load_adapter(model, path)  # a small change to a zero weight is usable, not "infinitely" large
    x, t = make_inputs()
    assert bool(torch.isfinite(model(x, t)).all())


def test_a_dora_update_that_cancels_a_row_of_the_weight_is_refused(tmp_path):
    path = save_adapter(_trained(kind="dora"), tmp_path / "d.safetensors")
    tensors = load_file(path)
    with safe_open(str(path), "pt") as f:
        meta = {**f.metadata(), "scale": "1.0"}
    W = dict(make_model().named_parameters())[f"{_QKV}.weight"].detach()
    W = W.reshape(W.shape[0], -1)
    A, B = tensors[f"{_QKV}.lora_A"], tensors[f"{_QKV}.lora_B"]
    B[:, 0] = 0.0
    B[0] = 0.0
    B[0, 0] = 1.0
    A[0] = -W[0].reshape(A[0].shape)  # W + 1 * B A: row 0 is exactly zero
    _assert_load_fails_and_model_unchanged(
        _rewrite(tmp_path, tensors, meta), rf"layer {_QKV}: DoRA row 0 of W \+ s B A has "
                                           r"norm 0")


def test_a_symbolic_link_loop_is_named_as_one(tmp_path):
    loop = tmp_path / "loop.safetensors"
    loop.symlink_to(loop)
    _assert_load_fails_and_model_unchanged(loop, "is a symbolic-link loop")
