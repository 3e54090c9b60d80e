"""Spectral surgery: policies, hook sensitivities, no-op edits, energy, planted directions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from selva_core.model.lora import (
    LoRAConfig,
    SurgeryConfig,
    adapter_layers,
    attach_lora,
    delta_svd,
    reweight,
    set_strength,
    spectral_surgery,
    surgery_with_validation,
)
from tests.test_lora_common import (
    make_inputs,
    make_model,
    perturb,
    rel_err,
)

UNIT = SurgeryConfig(amp_factor=1.0, sup_factor=1.0, mid_factor=1.0)


# -- policies -----------------------------------------------------------------------------------
@pytest.mark.parametrize("policy", ["abs_select", "smooth_abs", "gd", "random_index"])
def test_every_policy_keeps_the_singular_value_sum_and_nonnegativity(policy):
    g = torch.Generator().manual_seed(0)
    sigma = torch.rand(10, generator=g).sort(descending=True).values
    sens = torch.randn(10, generator=g)
    new = reweight(sigma, sens, SurgeryConfig(policy=policy))
    assert new.sum().item() == pytest.approx(sigma.double().sum().item(), rel=1e-12)
    assert (new >= 0).all() and not torch.allclose(new, sigma.double())


def test_unit_factors_leave_sigma_unchanged():
    sigma, sens = torch.tensor([3.0, 2.0, 1.0, 0.5]), torch.tensor([0.1, -2.0, 0.3, 1.0])
    assert torch.allclose(reweight(sigma, sens, UNIT), sigma.double())


def test_abs_select_amplifies_top_and_suppresses_bottom_by_absolute_sensitivity():
    sigma = torch.ones(10)
    sens = torch.tensor([0.1, -5.0, 0.2, 0.3, 4.0, 0.4, 0.5, -0.01, 0.6, 0.7])
    new = reweight(sigma, sens, SurgeryConfig(preserve_energy="none"))
    expected = torch.ones(10, dtype=torch.float64)
    expected[[1, 4]] = 1.25  # top 20 % by |g|, sign ignored
    expected[[7, 0]] = 0.8  # bottom 20 %
    assert torch.allclose(new, expected)
    rnd = reweight(sigma, sens, SurgeryConfig(policy="random_index", preserve_energy="none"))
    assert sorted(rnd.tolist()) == sorted(expected.tolist())


def test_gd_shrinks_directions_whose_growth_raises_the_loss():
    sigma = torch.ones(4)
    new = reweight(sigma, torch.tensor([1.0, -1.0, 0.0, 0.0]), SurgeryConfig(policy="gd"))
    assert new[0] < new[2] == new[3] < new[1]


# -- sensitivities from hooks --------------------------------------------------------------------
def test_hook_sensitivities_equal_u_t_grad_w_v_on_linear_and_channel_last_conv_layers():
    model = make_model()
    attach_lora(model, LoRAConfig(rank=3, init="pissa", targets=("attn",)))
    perturb(model)
    set_strength(model, "default", 0.7)
    x, t = make_inputs()
    target = torch.randn_like(x)

    def loss_fn(i):
        return F.mse_loss(model(x, t), target)

    result = spectral_surgery(model, loss_fn, num_batches=2)
    layers = adapter_layers(model, "default")
    bases = {p: model.get_submodule(p).base_layer for p in layers}
    for b in bases.values():
        b.weight.requires_grad_(True)
    loss_fn(0).backward()
    for path, st in layers.items():
        U, _, V = delta_svd(st)
        if bases[path].weight.grad is None:  # last joint text stream: output unused
            assert not result.edits[path].sensitivity.any()
            assert torch.equal(result.edits[path].gates, torch.ones_like(U[0]).float())
            continue
        G = bases[path].weight.grad.reshape(U.shape[0], -1).double()
        g = 0.7 * torch.einsum("ok,oi,ik->k", U, G, V)
        expected = g / g.abs().mean()
        assert torch.allclose(result.edits[path].sensitivity.double(), expected, atol=1e-4)


# -- edits on a model ----------------------------------------------------------------------------
def _loss_closure(model):
    x, t = make_inputs(seed=11)
    target = torch.randn_like(x)
    return lambda i: F.mse_loss(model(x, t), target)


@pytest.mark.parametrize("init", ["standard", "pissa"])
def test_surgery_with_all_gates_one_is_a_no_op_and_revert_is_exact(init):
    model = make_model()
    attach_lora(model, LoRAConfig(rank=4, init=init, targets=("attn",)))
    perturb(model)
    x, t = make_inputs()
    y = model(x, t)
    result = spectral_surgery(model, _loss_closure(model), num_batches=1, config=UNIT)
    assert all(torch.allclose(e.gates, torch.ones_like(e.gates)) for e in result.edits.values())
    result.apply()
    assert rel_err(model(x, t), y) <= 1e-5
    result.revert()
    assert torch.equal(model(x, t), y)


def test_surgery_works_on_the_pissa_change_and_keeps_its_singular_value_sum():
    model = make_model()
    attach_lora(model, LoRAConfig(rank=4, init="pissa", targets=("attn",)))
    perturb(model)
    result = spectral_surgery(model, _loss_closure(model), num_batches=2)
    layers = adapter_layers(model, "default")
    for path, st in layers.items():
        layer = model.get_submodule(path)
        dense = st.impl.delta_weight(layer, st).double()  # s (B A - B0 A0)
        sv = torch.linalg.svdvals(dense)[: result.edits[path].sigma.numel()]
        assert torch.allclose(result.edits[path].sigma.double(), sv, rtol=1e-4, atol=1e-6)
    before = {p: result.edits[p].sigma.sum() for p in layers}
    result.apply()
    for path, st in adapter_layers(model, "default").items():
        assert not st.is_pissa and st.rank == 8  # written back as the rank-2r delta
        assert delta_svd(st)[1].sum().item() == pytest.approx(before[path].item(), rel=1e-5)
    assert result.summary()["layers"][0]["gates"]


def _planted():
    """One Linear layer whose adapter holds two under-fitted good directions and a bad one."""
    torch.manual_seed(0)
    d = 8
    model = nn.Sequential(nn.Linear(d, d, bias=False))
    Q, _ = torch.linalg.qr(torch.randn(d, d))
    P, _ = torch.linalg.qr(torch.randn(d, d))
    good = 1.0 * Q[:, :1] @ P[:, :1].T + 0.8 * Q[:, 1:2] @ P[:, 1:2].T
    w_target = model[0].weight.detach() + good
    attach_lora(model, LoRAConfig(rank=3, alpha=3.0, targets=("0",)))  # scale 1
    st = model[0].adapters["default"]
    with torch.no_grad():
        st.lora_B.copy_(Q[:, :3] * torch.tensor([0.6, 0.48, 0.3]))
        st.lora_A.copy_(P[:, :3].T)

    def batch_loss(seed):
        x = torch.randn(256, d, generator=torch.Generator().manual_seed(seed))
        return F.mse_loss(model(x), x @ w_target.T)

    return model, (lambda i: batch_loss(100 + i)), (lambda: batch_loss(7))


@pytest.mark.parametrize("policy", ["gd", "abs_select"])
def test_surgery_lowers_the_validation_loss_when_a_learned_direction_hurts(policy):
    model, calib, val = _planted()
    out = surgery_with_validation(
        model, calib, val, num_batches=4, config=SurgeryConfig(policy=policy)
    )
    assert out.kept and out.val_after < 0.8 * out.val_before
    gates = out.result.edits["0"].gates
    assert gates[-1] < gates[0]  # the bad (smallest) direction lost weight


def test_an_edit_that_makes_validation_worse_is_reverted_exactly():
    model, calib, val = _planted()
    st = model[0].adapters["default"]
    A, B = st.lora_A.detach().clone(), st.lora_B.detach().clone()
    out = surgery_with_validation(model, calib, lambda: -val(), num_batches=2,
                                  config=SurgeryConfig(policy="gd"))
    assert not out.kept and out.val_after > out.val_before
    assert torch.equal(st.lora_A, A) and torch.equal(st.lora_B, B)
    assert out.to_dict()["kept"] is False


def test_surgery_refuses_a_loss_that_does_not_depend_on_the_model():
    model = make_model()
    attach_lora(model, LoRAConfig(rank=2))
    with pytest.raises(ValueError, match="scalar loss"):
        spectral_surgery(model, lambda i: torch.tensor(1.0), num_batches=1)


def test_random_index_control_draws_independent_indices_per_layer():
    model = make_model()
    attach_lora(model, LoRAConfig(rank=4, targets=("attn",)))
    perturb(model)
    cfg = SurgeryConfig(policy="random_index", preserve_energy="none")
    result = spectral_surgery(model, _loss_closure(model), num_batches=1, config=cfg)
    gates = [
        tuple(round(v, 4) for v in e.gates.tolist())
        for e in result.edits.values() if e.sensitivity.any()
    ]
    assert len(gates) >= 5 and len(set(gates)) > 1  # not one index pattern for every layer
    assert all(sorted(g) == [0.8, 1.0, 1.0, 1.25] for g in gates)  # abs_select's counts
    again = spectral_surgery(model, _loss_closure(model), num_batches=1, config=cfg)
    assert all(torch.equal(a.gates, b.gates)
               for a, b in zip(again.edits.values(), result.edits.values()))
