"""IA3 and HRA kinds: identity at init, strength, stacking, merge/unmerge, files, export,
refusals, and equality with peft's IA3 / HRA (forward and gradients) on the same layers."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from selva_core.model.lora import (
    LoRAConfig,
    adapter_layers,
    attach_lora,
    export_peft,
    load_adapter,
    lora_plus_param_groups,
    merge_adapters,
    merged_state_dict,
    resolve_targets,
    save_adapter,
    set_strength,
    trainable_parameters,
    unmerge_adapters,
)
from selva_core.model.lora.io import AdapterLoadError, read_adapter_file
from selva_core.model.lora.merge import MergeError, merge_adapter_files
from tests.test_lora_common import (
    make_inputs,
    make_model,
    make_twin,
    rel_err,
    same_state,
    state_bits,
)

KINDS = ("ia3", "hra")
KEY = {"ia3": "ia3_l", "hra": "hra_u"}
# Linear layers of the tiny model (peft has IA3 / HRA for Linear layers only)
LINEAR = ("qkv", "re:.*text_block\\.(linear1|ffn\\.w[123])")


def reflect(W2d, U):
    """``W2d H`` by the definition: the reflections applied one by one (as peft does)."""
    Un = U / U.norm(dim=0)
    for i in range(Un.shape[1]):
        u = Un[:, i:i + 1]
        W2d = W2d - 2.0 * (W2d @ u) @ u.T
    return W2d


@torch.no_grad()
def _train_like(model, kind, name="default", seed=3, std=0.1):
    g = torch.Generator().manual_seed(seed)
    for st in adapter_layers(model, name).values():
        t = getattr(st, KEY[kind])
        t.add_(torch.randn(t.shape, generator=g) * std)


def _adapted(kind, targets=("all",), seed=3, model=None, name="default"):
    model = make_model() if model is None else model
    attach_lora(model, LoRAConfig(rank=4, kind=kind, targets=targets, seed=0), name=name,
                variant_name="tiny_test")
    _train_like(model, kind, name, seed)
    return model


@pytest.mark.parametrize("kind", KINDS)
def test_identity_at_init_and_only_the_kinds_tensors_train(kind):
    model = make_model()
    x, t = make_inputs()
    base = model(x, t)
    attach_lora(model, LoRAConfig(rank=4, kind=kind, targets=("all",)))
    out = model(x, t)
    if kind == "ia3":
        assert torch.equal(out, base)  # l = 1 exactly
    else:
        assert rel_err(out, base) < 1e-6  # paired reflections: identity up to rounding
    layers = adapter_layers(model, "default")
    params = trainable_parameters(model)
    assert len(params) == len(layers)
    assert all(st.lora_A is None and getattr(st, KEY[kind]) is not None
               for st in layers.values())
    model(x, t).square().mean().backward()
    latent = [getattr(st, KEY[kind]) for p, st in layers.items() if "text_block" not in p]
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in latent)


def test_ia3_scales_outputs_and_the_feedforward_input():
    model = _adapted("ia3")
    for path, st in adapter_layers(model, "default").items():
        w = model.get_submodule(path).weight
        if path.endswith("ffn.w2"):
            assert st.ia3_l.shape == (1, w.shape[1]), path
        else:
            assert st.ia3_l.shape == (w.shape[0], 1), path


@pytest.mark.parametrize("kind", KINDS)
def test_forward_and_gradient_equal_the_dense_formula_on_linear_and_conv_layers(kind):
    model = _adapted(kind)
    for path, st in adapter_layers(model, "default").items():
        layer = model.get_submodule(path)
        b = layer.base_layer
        W = b.weight.detach()
        xin = torch.randn(2, 7, W.shape[1], requires_grad=True)
        out = layer(xin)
        v = getattr(st, KEY[kind]).detach().clone().requires_grad_(True)
        bias = b.bias
        if kind == "hra":
            Wn = reflect(W.reshape(W.shape[0], -1), v).reshape(W.shape)
        elif v.shape[0] == 1:  # feed-forward: scale the input channels
            Wn = W * v.reshape(1, -1, *([1] * (W.dim() - 2)))
        else:
            Wn = W * v.reshape(-1, *([1] * (W.dim() - 1)))
            bias = None if bias is None else bias * v.reshape(-1)
        if W.dim() == 2:
            ref = torch.nn.functional.linear(xin, Wn, bias)
        else:
            ref = torch.nn.functional.conv1d(xin.transpose(1, 2), Wn, bias, b.stride,
                                             b.padding).transpose(1, 2)
        assert rel_err(out, ref) < 1e-5, path
        g = torch.randn_like(out)
        gx, gv = torch.autograd.grad(out, [xin, getattr(st, KEY[kind])], g)
        rx, rv = torch.autograd.grad(ref, [xin, v], g)
        assert rel_err(gx, rx) < 1e-5 and rel_err(gv, rv) < 1e-4, path


@pytest.mark.parametrize("kind", KINDS)
def test_strength_scales_the_change_and_stacked_adapters_add(kind):
    model = _adapted(kind, targets=("qkv", "linear1"))
    path = "joint_blocks.0.latent_block.linear1"
    layer = model.get_submodule(path)
    xin = torch.randn(2, 7, 16)
    full = layer(xin)
    set_strength(model, "default", 0.0)
    base = layer(xin)
    assert torch.equal(base, layer.base_layer(xin))
    set_strength(model, "default", 0.5)
    assert rel_err(layer(xin) - base, 0.5 * (full - base)) < 1e-5
    set_strength(model, "default", 1.0)
    _adapted(kind, targets=("linear1",), seed=9, model=model, name="other")
    both = layer(xin)
    set_strength(model, "default", 0.0)
    other = layer(xin)
    assert rel_err(both - base, (full - base) + (other - base)) < 1e-5


@pytest.mark.parametrize("kind", KINDS)
def test_merge_matches_run_time_and_unmerge_is_bit_exact(kind):
    model = _adapted(kind)
    x, t = make_inputs()
    before = state_bits(model)
    y = model(x, t)
    merge_adapters(model)
    assert rel_err(model(x, t), y) < 1e-5
    unmerge_adapters(model)
    assert same_state(state_bits(model), before)


@pytest.mark.parametrize("kind", KINDS)
def test_merged_state_dict_loads_into_a_plain_model_with_the_adapted_output(kind):
    model = _adapted(kind)
    x, t = make_inputs()
    plain = make_model(seed=5)
    plain.load_state_dict(merged_state_dict(model))
    assert rel_err(plain(x, t), model(x, t)) < 1e-5


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_is_exact_and_lossy_storages_are_refused(kind, tmp_path):
    model = _adapted(kind)
    x, t = make_inputs()
    path = save_adapter(model, tmp_path / "a.safetensors")
    tensors, meta = read_adapter_file(path)
    assert meta["lora_kind"] == kind and all(k.endswith(KEY[kind]) for k in tensors)
    fresh = make_model()
    load_adapter(fresh, path)
    for p, st in adapter_layers(model, "default").items():
        assert torch.equal(getattr(adapter_layers(fresh, "default")[p], KEY[kind]),
                           getattr(st, KEY[kind]))
    assert torch.equal(fresh(x, t), model(x, t))
    with pytest.raises(ValueError, match=f"kind '{kind}'.*float32"):
        save_adapter(model, tmp_path / "q.safetensors", storage="q16")
    assert not (tmp_path / "q.safetensors").exists()


@pytest.mark.parametrize("kind", KINDS)
def test_a_file_whose_tensors_do_not_fit_the_layer_is_refused(kind, tmp_path):
    from safetensors.torch import save_file

    path = save_adapter(_adapted(kind), tmp_path / "a.safetensors")
    tensors, meta = read_adapter_file(path)
    key = next(k for k in tensors if ".attn.qkv." in k)
    bad = dict(tensors)
    bad[key] = torch.cat([tensors[key], tensors[key]], 0)
    save_file(bad, str(tmp_path / "bad.safetensors"), metadata=meta)
    model = make_model()
    before = state_bits(model)
    with pytest.raises(AdapterLoadError, match=f"{KEY[kind]} has shape"):
        load_adapter(model, tmp_path / "bad.safetensors")
    assert same_state(state_bits(model), before)


def test_hra_zero_vector_in_a_file_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = save_adapter(_adapted("hra"), tmp_path / "a.safetensors")
    tensors, meta = read_adapter_file(path)
    key = next(iter(tensors))
    tensors = dict(tensors)
    tensors[key] = tensors[key].clone()
    tensors[key][:, 1] = 0
    save_file(tensors, str(tmp_path / "z.safetensors"), metadata=meta)
    with pytest.raises(AdapterLoadError, match="column 1 has norm 0"):
        load_adapter(make_model(), tmp_path / "z.safetensors")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ["linear", "svd", "ties", "dare"])
def test_merging_adapter_files_of_these_kinds_is_refused_with_one_line(kind, method, tmp_path):
    a = save_adapter(_adapted(kind), tmp_path / "a.safetensors")
    b = save_adapter(_adapted(kind, seed=4), tmp_path / "b.safetensors")
    with pytest.raises(MergeError, match=f"kind '{kind}' cannot be merged.*selva_core.export"):
        merge_adapter_files([(a, 0.5), (b, 0.5)], method, rank=2)


def test_hra_odd_rank_is_refused():
    with pytest.raises(ValueError, match="even rank"):
        attach_lora(make_model(), LoRAConfig(rank=3, kind="hra", targets=("qkv",)))


@pytest.mark.parametrize("kind", KINDS)
def test_lora_plus_groups_hold_the_kinds_tensors(kind):
    groups = lora_plus_param_groups(_adapted(kind), lr=1e-3, ratio=16)
    n = sum(len(g["params"]) for g in groups)
    assert n == len(trainable_parameters(_adapted(kind))) and groups[0]["params"]


@pytest.mark.parametrize("kind", KINDS)
def test_train_config_accepts_the_kind(kind):
    from selva_core.training.config import TrainConfig

    TrainConfig(data_dir="d", output_dir="o", lora_kind=kind).validate()
    with pytest.raises(ValueError, match=kind):
        TrainConfig(data_dir="d", output_dir="o", lora_kind=kind, init="pissa").validate()


def test_train_config_refuses_an_odd_hra_rank():
    from selva_core.training.config import TrainConfig

    with pytest.raises(ValueError, match="even --rank"):
        TrainConfig(data_dir="d", output_dir="o", lora_kind="hra", rank=5).validate()


# -- against peft --------------------------------------------------------------------------
def _peft_pair(kind):
    peft = pytest.importorskip("peft")
    model = make_model()
    targets = resolve_targets(model, list(LINEAR))
    ff = [p for p in targets if p.endswith("ffn.w2")]
    if kind == "ia3":
        cfg = peft.IA3Config(target_modules=targets, feedforward_modules=ff)
    else:
        cfg = peft.HRAConfig(r=4, target_modules=targets)
    pm = peft.get_peft_model(make_twin(copy.deepcopy(model)), cfg)
    attach_lora(model, LoRAConfig(rank=4, kind=kind, targets=LINEAR))
    theirs = {n[len("base_model.model."):]: m for n, m in pm.named_modules()
              if hasattr(m, KEY[kind]) and "default" in getattr(m, KEY[kind])}
    assert set(theirs) == set(targets) and ff
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():  # the same trained-like tensors in both
        for path, st in adapter_layers(model, "default").items():
            t = getattr(theirs[path], KEY[kind])["default"]
            assert t.shape == getattr(st, KEY[kind]).shape, path
            t.add_(torch.randn(t.shape, generator=g) * 0.1)
            getattr(st, KEY[kind]).copy_(t)
    return model, pm, theirs


@pytest.mark.parametrize("kind", KINDS)
def test_forward_and_gradients_equal_peft_on_the_same_layers(kind):
    model, pm, theirs = _peft_pair(kind)
    x, t = make_inputs()
    ours_out, peft_out = model(x, t), pm(x, t)
    assert rel_err(ours_out, peft_out) < 1e-5
    # the tiny model's output is the latent stream; add the first text block's output
    c = torch.randn(2, 1, 16)
    ours_txt = model.joint_blocks[0].text_block(t, c)
    peft_txt = pm.base_model.model.joint_blocks[0].text_block(t, c)
    assert rel_err(ours_txt, peft_txt) < 1e-5
    w, wt = torch.randn_like(ours_out), torch.randn_like(ours_txt)
    ((ours_out * w).sum() + (ours_txt * wt).sum()).backward()
    ((peft_out * w).sum() + (peft_txt * wt).sum()).backward()
    compared = 0
    for path, st in adapter_layers(model, "default").items():
        mine = getattr(st, KEY[kind]).grad
        ref = getattr(theirs[path], KEY[kind])["default"].grad
        assert (mine is None) == (ref is None), path  # the last text block's output is unused
        if ref is not None:
            assert rel_err(mine, ref) < 1e-4, path
            compared += 1
    assert compared >= 8  # latent qkv and the text block's Linear layers (ffn.w2 included)


@pytest.mark.parametrize("kind", KINDS)
def test_peft_export_loads_in_peft_with_the_same_output(kind, tmp_path):
    peft = pytest.importorskip("peft")
    model, _, _ = _peft_pair(kind)
    out = export_peft(model, tmp_path / "peft")
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["peft_type"] == kind.upper()
    loaded = peft.PeftModel.from_pretrained(make_twin(make_model()), str(out))
    x, t = make_inputs()
    assert rel_err(loaded(x, t), model(x, t)) < 1e-5


@pytest.mark.parametrize("kind", KINDS)
def test_peft_export_of_a_conv_layer_is_refused(kind, tmp_path):
    with pytest.raises(ValueError, match="Conv1d"):
        export_peft(_adapted(kind, targets=("linear1",)), tmp_path / "peft")
    assert not (tmp_path / "peft").exists()
