"""LoRA runtime: targets, identity at init, step-0 gradients, strength, stacking, merge, removal."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from selva_core.model.layers import ChannelLastConv1d
from selva_core.model.lora import (
    AdapterState,
    LoRAConfig,
    LoRAConv1d,
    LoRALinear,
    adapter_layers,
    adapter_names,
    attach_lora,
    lora_plus_param_groups,
    merge_adapters,
    remove_adapter,
    remove_all_adapters,
    resolve_targets,
    set_strength,
    trainable_parameters,
    unmerge_adapters,
)
from selva_core.model.lora.layers import factor_shapes, wrap_module
from tests.test_lora_common import (
    make_inputs,
    make_model,
    perturb,
    rel_err,
    same_state,
    state_bits,
)

INITS = ["standard", "gaussian", "pissa", "pissa_niter_3"]
KINDS = ["lora", "dora"]


# -- targets ------------------------------------------------------------------------------------
def test_presets_pick_qkv_linear1_and_ffn_layers_of_the_blocks():
    model = make_model()
    qkv = resolve_targets(model, ["qkv"])
    assert qkv == [
        "joint_blocks.0.latent_block.attn.qkv", "joint_blocks.0.text_block.attn.qkv",
        "joint_blocks.1.latent_block.attn.qkv", "joint_blocks.1.text_block.attn.qkv",
        "fused_blocks.0.attn.qkv",
    ]
    attn = resolve_targets(model, ["attn"])
    assert set(attn) - set(qkv) == {
        "joint_blocks.0.latent_block.linear1", "joint_blocks.0.text_block.linear1",
        "joint_blocks.1.latent_block.linear1", "fused_blocks.0.linear1",
    }
    assert resolve_targets(model, ["qkv+linear1"]) == attn
    everything = resolve_targets(model, ["all"])
    assert "joint_blocks.0.latent_block.ffn.w2" in everything
    assert "joint_blocks.1.text_block.adaLN_modulation.1" in everything
    assert "cond" not in everything and "final" not in everything
    assert resolve_targets(model, ["attn.qkv"], exclude=["re:fused.*"]) == qkv[:4]


def test_a_target_pattern_that_matches_nothing_is_refused_by_name():
    # adaLN_modulation is the Sequential; its Linear is adaLN_modulation.1
    with pytest.raises(ValueError, match=r"LoRA target 'adaLN_modulation' matches no adaptable"):
        resolve_targets(make_model(), ["attn", "adaLN_modulation"])
    assert "joint_blocks.0.latent_block.adaLN_modulation.1" in resolve_targets(
        make_model(), ["attn", "adaLN_modulation.1"])


def test_attaching_to_nothing_lists_the_adaptable_modules():
    with pytest.raises(ValueError, match=r"joint_blocks\.\*\.latent_block\.attn\.qkv \(x2\)"):
        attach_lora(make_model(), LoRAConfig(targets=("to_q",)))


def test_attach_wraps_linear_and_channel_last_conv_layers():
    model = make_model()
    attach_lora(model, LoRAConfig(rank=4))
    assert isinstance(model.joint_blocks[0].latent_block.attn.qkv, LoRALinear)
    conv = model.joint_blocks[0].latent_block.linear1
    assert isinstance(conv, LoRAConv1d) and conv.channel_last
    st = conv.adapters["default"]
    assert st.lora_A.shape == (4, 16, 3) and st.lora_B.shape == (16, 4, 1)
    assert st.lora_A.dtype == torch.float32


def test_grouped_conv_is_refused_before_the_model_changes():
    model = nn.Sequential(nn.Conv1d(4, 4, 3, groups=2))
    with pytest.raises(ValueError, match="groups=1"):
        attach_lora(model, LoRAConfig(targets=("0",)))
    assert isinstance(model[0], nn.Conv1d) and model[0].weight.requires_grad


# -- scaling ------------------------------------------------------------------------------------
def test_scale_defaults_keep_alpha_fixed_and_warn_on_rslora_with_alpha_tied_to_rank(caplog):
    assert LoRAConfig(rank=16).scale == 2.0
    assert LoRAConfig(rank=64).scale == 0.5  # alpha stays 32
    assert LoRAConfig(rank=16, use_rslora=True).scale == 2.0
    assert LoRAConfig(rank=64, use_rslora=True).scale == 1.0
    with caplog.at_level(logging.WARNING):
        LoRAConfig(rank=16, alpha=32, use_rslora=True).check_scale()
    assert "undoes rsLoRA" in caplog.text


def test_attach_logs_the_effective_scale(caplog):
    with caplog.at_level(logging.INFO, logger="selva_core.model.lora"):
        attach_lora(make_model(), LoRAConfig(rank=8, alpha=4.0, use_rslora=True))
    assert "scale 1.41421" in caplog.text and "rsLoRA" in caplog.text


# -- identity at init ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("init", INITS)
def test_wrapped_model_equals_base_at_init(init, kind):
    model = make_model()
    x, t = make_inputs()
    y0 = model(x, t)
    attach_lora(model, LoRAConfig(rank=4, init=init, kind=kind, targets=("all",), seed=0))
    y = model(x, t)
    if init.startswith("pissa"):
        assert rel_err(y, y0) <= 1e-6
    else:
        assert torch.equal(y, y0)


def test_pissa_factors_hold_the_top_singular_directions_pre_divided_by_the_scale():
    torch.manual_seed(0)
    lin = nn.Linear(12, 20)
    model = nn.Sequential(lin)
    cfg = LoRAConfig(rank=3, alpha=6.0, init="pissa", targets=("0",))
    attach_lora(model, cfg)
    st = model[0].adapters["default"]
    U, S, Vh = torch.linalg.svd(lin.weight.detach(), full_matrices=False)
    top = (U[:, :3] * S[:3]) @ Vh[:3]
    assert torch.allclose(cfg.scale * st.lora_B @ st.lora_A, top, atol=1e-5)
    assert torch.equal(st.lora_A0, st.lora_A) and torch.equal(st.lora_B0, st.lora_B)


# -- gradients at step 0 ------------------------------------------------------------------------
def _one_layer(kind: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    if kind == "linear":
        return nn.Sequential(nn.Linear(8, 6)), torch.randn(2, 5, 8)
    return nn.Sequential(ChannelLastConv1d(8, 6, 3, padding=1)), torch.randn(2, 5, 8)


def _rank_space(model: nn.Module, x: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """A x as (tokens, r) for either layer type."""
    base = model[0].base_layer
    if isinstance(base, nn.Conv1d):
        h = F.conv1d(x.transpose(1, 2), A, None, base.stride, base.padding)
        return h.transpose(1, 2).reshape(-1, A.shape[0])
    return (x @ A.T).reshape(-1, A.shape[0])


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_standard_init_gradients_at_step_0_reach_b_only_and_match_the_formula(kind):
    model, x = _one_layer(kind)
    cfg = LoRAConfig(rank=3, alpha=6.0, targets=("0",))
    attach_lora(model, cfg)
    st = model[0].adapters["default"]
    y = model(x)
    g = torch.randn_like(y)
    (y * g).sum().backward()
    h = _rank_space(model, x, st.lora_A.detach())
    expected_B = cfg.scale * g.reshape(-1, g.shape[-1]).T @ h
    assert torch.allclose(st.lora_B.grad.reshape(expected_B.shape), expected_B, atol=1e-5)
    assert st.lora_B.grad.abs().sum() > 0
    assert torch.equal(st.lora_A.grad, torch.zeros_like(st.lora_A))
    assert all(p.grad is None for p in model[0].base_layer.parameters())


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_dora_magnitude_gradient_at_step_0_is_g_dot_wx_over_the_norm(kind):
    model, x = _one_layer(kind)
    base = model[0]
    wx = base(x).detach() - base.bias.detach()  # bias-free base output
    attach_lora(model, LoRAConfig(rank=3, kind="dora", targets=("0",)))
    st = model[0].adapters["default"]
    y = model(x)
    g = torch.randn_like(y)
    (y * g).sum().backward()
    norm = base.weight.detach().reshape(base.weight.shape[0], -1).norm(dim=1)
    expected_m = (g * wx).reshape(-1, g.shape[-1]).sum(0) / norm
    assert torch.allclose(st.lora_magnitude.grad, expected_m, atol=1e-5)
    assert st.lora_B.grad.abs().sum() > 0
    dA, dB = _expected_factor_grads(model, x, g, st.lora_A.detach(), st.lora_B.detach(), st.scale)
    # f = 1 at init and the norm is detached: exactly plain LoRA's B gradient
    assert torch.allclose(st.lora_B.grad, dB, atol=1e-5)
    assert torch.equal(st.lora_A.grad, torch.zeros_like(st.lora_A))
    assert all(p.grad is None for p in base.parameters())


def test_pissa_gradients_reach_both_factors_and_never_the_base_or_a0_b0():
    model, x = _one_layer("linear")
    attach_lora(model, LoRAConfig(rank=3, init="pissa", targets=("0",)))
    st = model[0].adapters["default"]
    model(x).pow(2).sum().backward()
    assert st.lora_A.grad.abs().sum() > 0 and st.lora_B.grad.abs().sum() > 0
    assert not st.lora_A0.requires_grad and st.lora_A0.grad is None
    assert all(p.grad is None for p in model[0].base_layer.parameters())


def _expected_factor_grads(model, x, g, A, B, scale):
    """Closed-form dL/dA and dL/dB of L = <g, y> for y = base(x) + scale * B (A x)."""
    base = model[0].base_layer
    r = A.shape[0]
    if isinstance(base, nn.Conv1d):
        xc, gc = x.transpose(1, 2), g.transpose(1, 2)  # channel-last layer -> (batch, C, N)
        h = F.conv1d(xc, A, None, base.stride, base.padding)  # (batch, r, N)
        dB = scale * torch.einsum("bon,brn->or", gc, h).unsqueeze(-1)
        gh = torch.einsum("bon,or->brn", gc, B.reshape(B.shape[0], r))
        dA = scale * torch.nn.grad.conv1d_weight(xc, A.shape, gh, base.stride, base.padding)
        return dA, dB
    X, G = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
    return scale * (B.T @ G.T @ X), scale * (G.T @ X @ A.T)


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("init", ["gaussian", "pissa"])
def test_step_0_gradients_of_every_factor_match_the_closed_form(init, kind):
    model, x = _one_layer(kind)
    cfg = LoRAConfig(rank=3, alpha=6.0, init=init, targets=("0",))
    attach_lora(model, cfg)
    st = model[0].adapters["default"]
    y = model(x)
    g = torch.randn_like(y)
    (y * g).sum().backward()
    dA, dB = _expected_factor_grads(model, x, g, st.lora_A.detach(), st.lora_B.detach(), 2.0)
    assert torch.allclose(st.lora_B.grad, dB, atol=1e-5) and dB.abs().sum() > 0
    assert torch.allclose(st.lora_A.grad, dA, atol=1e-5)
    if init == "pissa":  # both factors learn from step 0; the frozen copies never do
        assert dA.abs().sum() > 0 and st.lora_A0.grad is None and st.lora_B0.grad is None
    else:
        assert not st.lora_A.grad.any()
    assert all(p.grad is None for p in model[0].base_layer.parameters())


def test_attach_freezes_the_base_model_and_remove_all_restores_the_flags():
    model = make_model()
    model.cond.weight.requires_grad_(False)
    attach_lora(model, LoRAConfig(rank=2))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".adapters.default.lora_" in n for n in trainable)
    remove_all_adapters(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    assert flags.pop("cond.weight") is False and all(flags.values())


# -- strength and stacking ----------------------------------------------------------------------
@pytest.mark.parametrize("init", ["standard", "pissa"])
@pytest.mark.parametrize("kind", KINDS)
def test_strength_zero_is_the_base_model_exactly_and_strength_scales_the_change(init, kind):
    model = make_model()
    x, t = make_inputs()
    y0 = model(x, t)
    attach_lora(model, LoRAConfig(rank=4, init=init, kind=kind, targets=("qkv",)))
    perturb(model)
    set_strength(model, "default", 0.0)
    assert torch.equal(model(x, t), y0)
    # single layer: the output change is linear in the strength for plain LoRA and DoRA
    lin = model.fused_blocks[0].attn.qkv
    h = torch.randn(3, 7, 16)
    set_strength(model, "default", 0.0)
    b0 = lin(h)
    set_strength(model, "default", 1.0)
    d1 = lin(h) - b0
    set_strength(model, "default", 0.5)
    assert torch.allclose(lin(h) - b0, 0.5 * d1, atol=1e-5)
    assert d1.abs().max() > 1e-3


def test_stacked_adapters_add_and_removing_one_keeps_the_other():
    model = make_model()
    x, t = make_inputs()
    lin = model.joint_blocks[0].latent_block.linear1
    h = torch.randn(2, 9, 16)
    b0 = lin(h)
    attach_lora(model, LoRAConfig(rank=4, targets=("attn",)), name="a")
    perturb(model, "a", seed=5)
    attach_lora(model, LoRAConfig(rank=2, init="pissa", targets=("attn",)), name="b")
    perturb(model, "b", seed=6)
    lin = model.joint_blocks[0].latent_block.linear1
    both = lin(h) - b0
    set_strength(model, "b", 0.0)
    only_a = lin(h) - b0
    set_strength(model, "b", 1.0)
    set_strength(model, "a", 0.0)
    only_b = lin(h) - b0
    assert torch.allclose(both, only_a + only_b, atol=1e-5)
    set_strength(model, "a", 1.0)
    remove_adapter(model, "a")
    assert adapter_names(model) == ["b"]
    assert torch.allclose(lin(h) - b0, only_b, atol=1e-6)


# -- merge / unmerge / remove -------------------------------------------------------------------
@pytest.mark.parametrize("init", ["standard", "pissa"])
@pytest.mark.parametrize("kind", KINDS)
def test_merge_equals_unmerged_forward_and_unmerge_restores_weights_bit_exactly(init, kind):
    model = make_model()
    x, t = make_inputs()
    base_bits = state_bits(model)
    attach_lora(model, LoRAConfig(rank=4, init=init, kind=kind, targets=("all",)))
    perturb(model)
    set_strength(model, "default", 0.7)
    y_unmerged = model(x, t)
    merge_adapters(model)
    assert model.fused_blocks[0].linear1.merged
    assert rel_err(model(x, t), y_unmerged) <= 1e-5
    unmerge_adapters(model)
    assert torch.equal(model(x, t), y_unmerged)
    remove_all_adapters(model)
    assert same_state(state_bits(model), base_bits)
    assert type(model.fused_blocks[0].linear1) is ChannelLastConv1d


def test_strength_change_and_removal_while_merged_keep_weights_exact():
    model = make_model()
    x, t = make_inputs()
    y0 = model(x, t)
    base_bits = state_bits(model)
    attach_lora(model, LoRAConfig(rank=4, targets=("attn",)), name="a")
    attach_lora(model, LoRAConfig(rank=4, targets=("qkv",)), name="b")
    perturb(model, "a")
    perturb(model, "b", seed=9)
    merge_adapters(model)
    set_strength(model, "a", 0.0)
    set_strength(model, "b", 0.0)
    assert torch.equal(model(x, t), y0)  # merged at strength 0: weights are the originals
    set_strength(model, "a", 1.0)
    remove_adapter(model, "b")
    remove_adapter(model, "a")
    assert same_state(state_bits(model), base_bits)


def test_attaching_while_merged_is_refused():
    model = make_model()
    attach_lora(model, LoRAConfig(rank=2), name="a")
    merge_adapters(model)
    with pytest.raises(RuntimeError, match="unmerge"):
        attach_lora(model, LoRAConfig(rank=2), name="b")


def test_duplicate_or_dotted_adapter_names_are_refused():
    model = make_model()
    attach_lora(model, LoRAConfig(rank=2), name="a")
    with pytest.raises(ValueError, match="already attached"):
        attach_lora(model, LoRAConfig(rank=2), name="a")
    with pytest.raises(ValueError, match="not usable"):
        attach_lora(model, LoRAConfig(rank=2), name="a.b")


# -- dtype, dropout, optimizer groups -----------------------------------------------------------
def test_bf16_base_without_autocast_runs_the_fp32_adapter_and_keeps_bf16_output():
    model = make_model().to(torch.bfloat16)
    x, t = make_inputs()
    attach_lora(model, LoRAConfig(rank=4, targets=("attn",)))
    perturb(model)
    st = next(iter(adapter_layers(model, "default").values()))
    assert st.lora_A.dtype == torch.float32
    y = model(x.bfloat16(), t.bfloat16())
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    merge_adapters(model)
    assert (model(x.bfloat16(), t.bfloat16()).float() - y.float()).abs().max() < 0.1


def test_dropout_acts_only_in_training_mode():
    model = make_model()
    x, t = make_inputs()
    attach_lora(model, LoRAConfig(rank=4, dropout=0.5))
    perturb(model)
    model.eval()
    assert torch.equal(model(x, t), model(x, t))
    model.train()
    assert not torch.equal(model(x, t), model(x, t))


def test_lora_plus_groups_put_b_and_magnitudes_at_ratio_times_lr():
    model = make_model()
    attach_lora(model, LoRAConfig(rank=2, kind="dora", targets=("qkv",)))
    ga, gb = lora_plus_param_groups(model, lr=1e-4, ratio=16)
    assert ga["lr"] == 1e-4 and gb["lr"] == pytest.approx(1.6e-3)
    n = len(adapter_layers(model, "default"))
    assert len(ga["params"]) == n and len(gb["params"]) == 2 * n
    assert len(trainable_parameters(model, "default")) == 3 * n


@pytest.mark.parametrize("k,pad,dil", [(3, 1, 1), (7, 3, 1), (3, 2, 2), (3, 0, 1), (1, 0, 1)])
def test_channel_last_conv_adapter_path_equals_the_a_convolution(k, pad, dil):
    torch.manual_seed(0)
    layer = LoRAConv1d(ChannelLastConv1d(6, 5, k, padding=pad, dilation=dil))
    A, x = torch.randn(4, 6, k), torch.randn(2, 11, 6)
    expected = F.conv1d(x.transpose(1, 2), A, None, 1, pad, dil)
    assert torch.allclose(layer.apply_a(x, A), expected, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_autocast_training_keeps_fp32_adapter_gradients(kind):
    model = make_model()
    attach_lora(model, LoRAConfig(rank=4, init="pissa", kind=kind, targets=("all",)))
    perturb(model)
    x, t = make_inputs()
    ref = model(x, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x, t)
    assert y.dtype == torch.bfloat16 and (y.float() - ref).abs().max() < 0.05
    y.float().pow(2).mean().backward()
    st = adapter_layers(model, "default")["fused_blocks.0.linear1"]
    assert st.lora_A.grad.dtype == torch.float32 and st.lora_B.grad.abs().sum() > 0


def test_base_state_dict_gives_the_original_keys_and_weights_while_adapted_and_merged():
    from selva_core.model.lora import base_state_dict

    model = make_model()
    before = state_bits(model)
    attach_lora(model, LoRAConfig(rank=4, targets=("all",)))
    perturb(model)
    merge_adapters(model)
    assert same_state(base_state_dict(model), before)


@pytest.mark.parametrize("first,second", [("lora", "dora"), ("dora", "lora"), ("dora", "dora")])
@pytest.mark.parametrize(
    "target", ["joint_blocks.0.latent_block.linear1", "fused_blocks.0.attn.qkv"]
)
def test_stacked_dora_adds_its_own_change_and_merges_to_the_same_function(first, second, target):
    # DoRA's magnitude term scales the *base* output W x, never another adapter's change
    model = make_model()
    lin = model.get_submodule(target)
    h = torch.randn(2, 9, 16)
    b0 = lin(h).detach()
    for name, kind, seed in (("a", first, 5), ("b", second, 6)):
        attach_lora(model, LoRAConfig(rank=3, kind=kind, targets=(target,)), name=name)
        perturb(model, name, seed=seed, std=0.3)
    lin = model.get_submodule(target)
    both = lin(h) - b0
    set_strength(model, "a", 0.0)
    only_b = lin(h) - b0
    set_strength(model, "a", 1.0)
    set_strength(model, "b", 0.0)
    only_a = lin(h) - b0
    set_strength(model, "b", 1.0)
    assert torch.allclose(both, only_a + only_b, atol=1e-5)
    assert only_a.abs().max() > 1e-2 and only_b.abs().max() > 1e-2
    unmerged = lin(h)
    merge_adapters(model)
    assert rel_err(lin(h), unmerged) <= 1e-5


@pytest.mark.parametrize("init", ["standard", "pissa"])
@pytest.mark.parametrize("kind", KINDS)
def test_channel_first_conv1d_identity_strength_merge_and_exact_removal(init, kind):
    # the twin's convs are plain nn.Conv1d taking (B, C, N): the adapter path must follow
    model = make_model(channel_last=False)
    x, t = make_inputs()
    y0 = model(x, t)
    base_bits = state_bits(model)
    attach_lora(model, LoRAConfig(rank=4, init=init, kind=kind, targets=("all",)))
    conv = model.fused_blocks[0].linear1
    assert isinstance(conv, LoRAConv1d) and not conv.channel_last
    assert rel_err(model(x, t), y0) <= 1e-6
    perturb(model)
    y = model(x, t)
    assert rel_err(y, y0) > 1e-3
    h = torch.randn(2, 16, 9)  # channel-first input of the conv alone
    b0 = conv.base_layer(h)
    d1 = conv(h) - b0
    set_strength(model, "default", 0.5)
    assert torch.allclose(conv(h) - b0, 0.5 * d1, atol=1e-5) and d1.abs().max() > 1e-3
    set_strength(model, "default", 0.0)
    assert torch.equal(model(x, t), y0)
    set_strength(model, "default", 1.0)
    merge_adapters(model)
    assert rel_err(model(x, t), y) <= 1e-5
    remove_all_adapters(model)
    assert same_state(state_bits(model), base_bits)


def _reference_change(base: nn.Module, x: torch.Tensor, A, B, coef: float) -> torch.Tensor:
    """``coef * B A`` applied to ``x`` with plain functional ops, in the module's layout."""
    if isinstance(base, nn.Linear):
        return coef * F.linear(F.linear(x, A), B)
    cl = getattr(base, "channel_last", False)
    xc = x.transpose(1, 2) if cl else x
    h = F.conv1d(xc, A, None, base.stride, base.padding, base.dilation)
    out = coef * F.conv1d(h, B)
    return out.transpose(1, 2) if cl else out


@pytest.mark.parametrize("kind", ["linear3d", "linear2d", "conv_channel_last", "conv"])
def test_in_place_adapter_paths_give_the_reference_output_and_gradients(kind):
    torch.manual_seed(0)
    base = {
        "linear3d": lambda: nn.Linear(6, 5), "linear2d": lambda: nn.Linear(6, 5),
        "conv_channel_last": lambda: ChannelLastConv1d(6, 5, 3, padding=1),
        "conv": lambda: nn.Conv1d(6, 5, 3, padding=1),
    }[kind]().requires_grad_(False)
    shape = {"linear3d": (2, 7, 6), "linear2d": (7, 6), "conv_channel_last": (2, 7, 6),
             "conv": (2, 6, 7)}[kind]
    layer = wrap_module(base)
    names = ("one", "two")  # two stacked adapters, random factors, different strengths
    a_shape, b_shape = factor_shapes(base, 3)
    for i, name in enumerate(names):
        layer.adapters[name] = AdapterState(
            torch.randn(a_shape), torch.randn(b_shape), scale=0.5, strength=1.0 - 0.7 * i
        )
    x = torch.randn(shape, requires_grad=True)
    y = layer(x)
    x_ref = x.detach().clone().requires_grad_(True)
    facs = {n: (layer.adapters[n].lora_A.detach().clone().requires_grad_(True),
                layer.adapters[n].lora_B.detach().clone().requires_grad_(True)) for n in names}
    y_ref = base(x_ref) + sum(
        _reference_change(base, x_ref, A, B, 0.5 * layer.adapters[n].strength)
        for n, (A, B) in facs.items()
    )
    assert y.shape == y_ref.shape and torch.allclose(y, y_ref, atol=1e-5)
    g = torch.randn(y.shape)
    y.backward(g)
    y_ref.backward(g)
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-5)
    for n, (A, B) in facs.items():
        st = layer.adapters[n]
        assert torch.allclose(st.lora_A.grad, A.grad, atol=1e-4)
        assert torch.allclose(st.lora_B.grad, B.grad, atol=1e-4)
    assert base.weight.grad is None
