"""LoRA-XS kind: identity at init, the formula, gradients, strength, stacking, merge, files."""

from __future__ import annotations

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
    save_adapter,
    set_strength,
    trainable_parameters,
    unmerge_adapters,
)
from selva_core.model.lora.merge import merge_adapter_files
from tests.test_lora_common import (
    make_inputs,
    make_model,
    perturb,
    rel_err,
    same_state,
    state_bits,
)

RANK = 3


def _xs(targets=("all",), seed=5):
    model = make_model()
    attach_lora(model, LoRAConfig(rank=RANK, kind="loraxs", targets=targets),
                variant_name="tiny_test")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for st in adapter_layers(model, "default").values():
            st.lora_core.copy_(0.05 * torch.randn(RANK, RANK, generator=g))
    return model


def test_identity_at_init_and_only_the_core_trains():
    model = make_model()
    x, t = make_inputs()
    base = model(x, t)
    attach_lora(model, LoRAConfig(rank=RANK, kind="loraxs", targets=("all",)))
    assert torch.equal(model(x, t), base)
    params = trainable_parameters(model)
    layers = adapter_layers(model, "default")
    assert len(params) == len(layers) and all(p.shape == (RANK, RANK) for p in params)
    model(x, t).square().mean().backward()
    # the tiny model's output is the latent stream: its layers' cores all get a gradient
    latent = [st.lora_core for path, st in layers.items() if "text_block" not in path]
    assert latent and all(c.grad is not None and c.grad.abs().sum() > 0 for c in latent)


def test_basis_is_the_top_svd_directions_of_the_base_weight():
    model = _xs()
    for st_path, st in adapter_layers(model, "default").items():
        W = model.get_submodule(st_path).weight2d().double()
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        B = st.lora_B.reshape(st.lora_B.shape[0], -1).double()
        A = st.lora_A.reshape(RANK, -1).double()
        assert torch.allclose(B @ A, (U[:, :RANK] * S[:RANK]) @ Vh[:RANK], atol=1e-5)


def test_forward_and_gradient_equal_the_dense_formula_on_linear_and_conv_layers():
    model = _xs(targets=("qkv+linear1",))
    x, t = make_inputs()
    layers = adapter_layers(model, "default")
    for path, st in layers.items():
        layer = model.get_submodule(path)
        xin = torch.randn(2, 7, layer.base_layer.weight.shape[1], requires_grad=True)
        out = layer(xin)
        W = layer.base_layer.weight.detach()
        core = st.lora_core.detach().clone().requires_grad_(True)
        dW = st.scale * (st.lora_B.reshape(W.shape[0], RANK) @ core
                         @ st.lora_A.reshape(RANK, -1)).reshape(W.shape)
        if W.dim() == 2:
            ref = torch.nn.functional.linear(xin, W + dW, layer.base_layer.bias)
        else:
            b = layer.base_layer
            ref = torch.nn.functional.conv1d(xin.transpose(1, 2), W + dW, b.bias, b.stride,
                                             b.padding).transpose(1, 2)
        assert rel_err(out, ref) < 1e-5, path
        g = torch.randn_like(out)
        (gx, gcore) = torch.autograd.grad(out, [xin, st.lora_core], g)
        (rx, rcore) = torch.autograd.grad(ref, [xin, core], g)
        assert rel_err(gx, rx) < 1e-5 and rel_err(gcore, rcore) < 1e-5, path


def test_strength_scales_the_change_and_stacks_with_a_plain_lora():
    model = _xs()
    x, t = make_inputs()
    full = model(x, t)
    set_strength(model, "default", 0.0)
    base = model(x, t)
    set_strength(model, "default", 0.5)
    half = model(x, t)
    assert not torch.equal(full, base) and not torch.equal(half, base)
    attach_lora(model, LoRAConfig(rank=2, targets=("qkv",)), name="other")
    perturb(model, "other")
    both = model(x, t)
    set_strength(model, "default", 0.0)
    only_other = model(x, t)
    # per layer the changes add: the stacked output differs from each one alone
    assert not torch.equal(both, only_other) and not torch.equal(both, half)


def test_merge_matches_run_time_and_unmerge_is_bit_exact():
    model = _xs()
    x, t = make_inputs()
    before = state_bits(model)
    y = model(x, t)
    merge_adapters(model)
    assert rel_err(model(x, t), y) < 1e-5
    unmerge_adapters(model)
    assert same_state(state_bits(model), before)


def test_save_load_is_exact_and_lossy_storages_are_refused(tmp_path):
    model = _xs()
    x, t = make_inputs()
    path = save_adapter(model, tmp_path / "xs.safetensors")
    fresh = make_model()
    load_adapter(fresh, path)
    ours, loaded = adapter_layers(model, "default"), adapter_layers(fresh, "default")
    for p, st in ours.items():  # every tensor stored exactly
        for key in ("lora_A", "lora_B", "lora_core"):
            assert torch.equal(getattr(loaded[p], key), getattr(st, key)), (p, key)
    assert rel_err(fresh(x, t), model(x, t)) < 1e-6
    with pytest.raises(ValueError, match="loraxs.*float32"):
        save_adapter(model, tmp_path / "q.safetensors", storage="q16")
    assert not (tmp_path / "q.safetensors").exists()


def test_loraxs_files_merge_through_their_plain_factors(tmp_path):
    a = save_adapter(_xs(seed=1), tmp_path / "a.safetensors")
    b = save_adapter(_xs(seed=2), tmp_path / "b.safetensors")
    result = merge_adapter_files([(a, 0.6), (b, 0.4)], "linear")
    from safetensors.torch import save_file

    save_file(result.tensors, str(tmp_path / "m.safetensors"), metadata=result.metadata)
    stacked, merged = make_model(), make_model()
    load_adapter(stacked, a, name="a", strength=0.6)
    load_adapter(stacked, b, name="b", strength=0.4)
    load_adapter(merged, tmp_path / "m.safetensors")
    x, t = make_inputs()
    assert rel_err(merged(x, t), stacked(x, t)) < 1e-5


def test_peft_export_of_loraxs_is_refused(tmp_path):
    with pytest.raises(ValueError, match="kind 'loraxs'"):
        export_peft(_xs(), tmp_path / "peft")


def test_lora_plus_puts_the_core_at_the_base_rate():
    groups = lora_plus_param_groups(_xs(), lr=1e-3, ratio=16)
    assert all(p.shape == (RANK, RANK) for p in groups[0]["params"]) and groups[0]["params"]
    assert groups[1]["params"] == []


def test_train_config_accepts_loraxs_and_refuses_it_with_pissa():
    from selva_core.training.config import TrainConfig

    TrainConfig(data_dir="d", output_dir="o", lora_kind="loraxs").validate()
    with pytest.raises(ValueError, match="loraxs"):
        TrainConfig(data_dir="d", output_dir="o", lora_kind="loraxs", init="pissa").validate()
