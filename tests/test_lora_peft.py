"""Against peft itself: same math (standard, rsLoRA, PiSSA, DoRA) and PEFT folders both ways."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

peft = pytest.importorskip("peft")

from selva_core.model.lora import (  # noqa: E402
    LoRAConfig,
    adapter_layers,
    attach_lora,
    export_peft,
    import_peft,
    resolve_targets,
)
from tests.test_lora_common import (  # noqa: E402
    make_inputs,
    make_model,
    make_twin,
    perturb,
    rel_err,
)


def _peft_model(base, targets, **kw):
    cfg = peft.LoraConfig(target_modules=targets, **kw)
    return peft.get_peft_model(copy.deepcopy(base), cfg)


def _peft_layers(pm):
    """path -> peft LoRA layer (paths relative to the wrapped model)."""
    prefix = "base_model.model."
    return {
        n[len(prefix):]: m
        for n, m in pm.named_modules()
        if n.startswith(prefix) and hasattr(m, "lora_A") and "default" in m.lora_A
    }


@torch.no_grad()
def _perturb_peft(pm, seed=4, std=0.05):
    g = torch.Generator().manual_seed(seed)
    for layer in _peft_layers(pm).values():
        for t in (layer.lora_A["default"].weight, layer.lora_B["default"].weight):
            t.add_(torch.randn(t.shape, generator=g) * std)


@torch.no_grad()
def _copy_factors_from_peft(model, pm):
    layers = _peft_layers(pm)
    for path, st in adapter_layers(model, "default").items():
        st.lora_A.copy_(layers[path].lora_A["default"].weight)
        st.lora_B.copy_(layers[path].lora_B["default"].weight)


@pytest.mark.parametrize("use_rslora", [False, True])
def test_standard_init_and_scaling_match_peft_on_linear_and_conv_layers(use_rslora):
    model = make_model()
    targets = resolve_targets(model, ["attn"])
    pm = _peft_model(make_twin(model), targets, r=4, lora_alpha=6, use_rslora=use_rslora)
    attach_lora(model, LoRAConfig(rank=4, alpha=6.0, use_rslora=use_rslora, targets=("attn",)))
    x, t = make_inputs()
    assert torch.allclose(model(x, t), pm(x, t), atol=1e-6)  # both identity at init
    for path, st in adapter_layers(model, "default").items():
        theirs = _peft_layers(pm)[path]
        assert st.scale == pytest.approx(theirs.scaling["default"], rel=1e-12)
        assert st.scale == pytest.approx(6 / (2 if use_rslora else 4))
        bound = 1 / math.sqrt(st.lora_A[0].numel())
        for a in (st.lora_A, theirs.lora_A["default"].weight):
            assert a.abs().max() <= bound and a.std() > bound / 3
        assert not st.lora_B.any() and not theirs.lora_B["default"].weight.any()
    _perturb_peft(pm)
    _copy_factors_from_peft(model, pm)
    assert rel_err(model(x, t), pm(x, t)) <= 1e-5


@pytest.mark.parametrize("use_rslora", [False, True])
def test_pissa_factors_and_trained_outputs_match_peft(use_rslora):
    # alpha 8, r 4: scale 2 (alpha/r) or 4 (rsLoRA); PiSSA pre-divides the SVD by either.
    # Linear layers only: peft's PiSSA init does not handle convolutions.
    model = make_model()
    targets = resolve_targets(model, ["qkv"])
    pm = _peft_model(
        make_twin(model), targets, r=4, lora_alpha=8, init_lora_weights="pissa",
        use_rslora=use_rslora,
    )
    attach_lora(
        model, LoRAConfig(rank=4, alpha=8.0, init="pissa", use_rslora=use_rslora, targets=("qkv",))
    )
    theirs = _peft_layers(pm)
    for path, st in adapter_layers(model, "default").items():
        assert torch.allclose(st.lora_A, theirs[path].lora_A["default"].weight, atol=1e-5)
        assert torch.allclose(st.lora_B, theirs[path].lora_B["default"].weight, atol=1e-5)
    _perturb_peft(pm)
    _copy_factors_from_peft(model, pm)
    x, t = make_inputs()
    assert rel_err(model(x, t), pm(x, t)) <= 1e-5


def _load_into_peft(base, folder):
    return peft.PeftModel.from_pretrained(copy.deepcopy(base), str(folder))


@pytest.mark.parametrize(
    "init,kind", [("standard", "lora"), ("pissa", "lora"), ("standard", "dora")]
)
def test_our_peft_export_loads_into_peft_and_gives_the_same_outputs(tmp_path, init, kind):
    model = make_model()
    twin = make_twin(model)
    attach_lora(model, LoRAConfig(rank=4, init=init, kind=kind, targets=("attn",)))
    perturb(model)
    folder = export_peft(model, tmp_path / "peft")
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["r"] == (8 if init == "pissa" else 4) and cfg["use_dora"] == (kind == "dora")
    x, t = make_inputs()
    assert rel_err(_load_into_peft(twin, folder)(x, t), model(x, t)) <= 1e-5


def test_export_runs_under_peft_on_the_same_channel_last_network(tmp_path):
    # peft builds conv lora_A/lora_B with type(base_layer): channel-last convs here
    model = make_model()
    base = copy.deepcopy(model)
    attach_lora(model, LoRAConfig(rank=4, init="pissa", targets=("attn",)))
    perturb(model)
    folder = export_peft(model, tmp_path / "peft")
    x, t = make_inputs()
    pm = _load_into_peft(base, folder)
    assert rel_err(pm(x, t), model(x, t)) <= 1e-5


def test_import_of_a_peft_saved_adapter_with_rank_and_alpha_patterns(tmp_path):
    model = make_model()
    targets = resolve_targets(model, ["attn"])
    pm = _peft_model(
        make_twin(model), targets, r=4, lora_alpha=8, use_rslora=True,
        rank_pattern={"linear1": 2}, alpha_pattern={"linear1": 3},
    )
    _perturb_peft(pm)
    pm.save_pretrained(str(tmp_path / "saved"))
    import_peft(model, tmp_path / "saved")
    x, t = make_inputs()
    assert rel_err(model(x, t), pm(x, t)) <= 1e-5
    ranks = {p: st.rank for p, st in adapter_layers(model, "default").items()}
    assert ranks["fused_blocks.0.linear1"] == 2 and ranks["fused_blocks.0.attn.qkv"] == 4


def test_import_of_a_peft_dora_adapter(tmp_path):
    model = make_model()
    targets = resolve_targets(model, ["attn"])
    pm = _peft_model(make_twin(model), targets, r=4, lora_alpha=8, use_dora=True)
    _perturb_peft(pm)
    pm.save_pretrained(str(tmp_path / "saved"))
    import_peft(model, tmp_path / "saved")
    x, t = make_inputs()
    assert rel_err(model(x, t), pm(x, t)) <= 1e-5


def test_peft_folder_with_unsupported_keys_is_refused(tmp_path):
    model = make_model()
    pm = _peft_model(make_twin(model), ["cond"], r=2, lora_alpha=2, modules_to_save=["final"])
    pm.save_pretrained(str(tmp_path / "saved"))
    with pytest.raises(ValueError, match="modules_to_save"):
        import_peft(model, tmp_path / "saved")


# -- bad PEFT folders: one AdapterLoadError each, model unchanged -------------------------------
def _exported(tmp_path):
    model = make_model()
    attach_lora(model, LoRAConfig(rank=4, targets=("attn",)))
    with torch.no_grad():
        for st in adapter_layers(model, "default").values():
            st.lora_B.normal_()
    return export_peft(model, tmp_path / "peft")


def _assert_import_fails_and_model_unchanged(folder, match):
    from selva_core.model.lora import AdapterLoadError, iter_lora_layers
    from tests.test_lora_common import same_state, state_bits

    model = make_model()
    before = state_bits(model)
    with pytest.raises(AdapterLoadError, match=match):
        import_peft(model, folder)
    assert not list(iter_lora_layers(model)) and same_state(state_bits(model), before)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_peft_import_refuses_nan_or_infinite_factors(tmp_path, value):
    from safetensors.torch import load_file, save_file

    folder = _exported(tmp_path)
    w = folder / "adapter_model.safetensors"
    tensors = load_file(str(w))
    key = "base_model.model.fused_blocks.0.attn.qkv.lora_B.weight"
    tensors[key][0, 0] = value
    save_file(tensors, str(w), metadata={"format": "pt"})
    _assert_import_fails_and_model_unchanged(
        folder, r"fused_blocks\.0\.attn\.qkv\.lora_B holds 1 NaN or infinite")


@pytest.mark.parametrize("field,value,match", [
    ("r", "4", r"r='4' is not a positive integer"),
    ("lora_alpha", -2, r"lora_alpha=-2 is not a positive number"),
    ("use_dora", "yes", r"use_dora='yes' is not true or false"),
    ("lora_dropout", 2, r"lora_dropout=2 is not a number in \[0, 1\)"),
    ("rank_pattern", {"(": 2}, r"rank_pattern=.* is not an object of regex -> positive integer"),
])
def test_peft_config_fields_are_validated_by_type(tmp_path, field, value, match):
    folder = _exported(tmp_path)
    cfg_path = folder / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg[field] = value
    cfg_path.write_text(json.dumps(cfg))
    _assert_import_fails_and_model_unchanged(folder, r"adapter_config\.json: " + match)


def test_every_bad_peft_config_field_is_named_in_one_error(tmp_path):
    folder = _exported(tmp_path)
    cfg_path = folder / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(r=0, use_dora="yes", fan_in_fan_out=True, peft_type="IA3")
    del cfg["lora_alpha"]
    cfg_path.write_text(json.dumps(cfg))
    from selva_core.model.lora import AdapterLoadError

    with pytest.raises(AdapterLoadError) as err:
        import_peft(make_model(), folder)
    text = str(err.value)
    for needle in ("lacks the required fields ['lora_alpha']", "peft_type='IA3' is not one of",
                   "r=0 is not a positive integer", "use_dora='yes' is not true or false",
                   "fan_in_fan_out=True is not supported"):
        assert needle in text, needle


def test_peft_config_that_is_not_an_object_is_refused(tmp_path):
    folder = _exported(tmp_path)
    (folder / "adapter_config.json").write_text("[1, 2]")
    _assert_import_fails_and_model_unchanged(folder, "must hold a JSON object, got list")


def test_a_file_passed_to_import_peft_says_it_needs_a_folder(tmp_path):
    from selva_core.model.lora import save_adapter

    model = make_model()
    attach_lora(model, LoRAConfig(rank=2, targets=("attn",)))
    ours = save_adapter(model, tmp_path / "ours.safetensors")
    _assert_import_fails_and_model_unchanged(
        ours, r"is a file; import_peft takes a PEFT folder .* load it with load_adapter")
