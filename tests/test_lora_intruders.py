"""Intruder-dimension diagnostic: zero change, planted spike, files, reduction."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from selva_core.model.lora import (
    LoRAConfig,
    attach_lora,
    intruder_report,
    reduce_intruders,
)
from tests.test_lora_common import (
    make_model,
    perturb,
)


def test_no_change_means_no_intruders_at_any_threshold():
    model = make_model()
    attach_lora(model, LoRAConfig(rank=4, targets=("attn",)))  # B = 0: dW = 0
    report = intruder_report(model)
    assert len(report.layers) == 9
    assert all(report.total(t) == 0 for t in report.thresholds)
    assert all(layer.delta_rel_norm == 0 and layer.delta_stable_rank == 0
               for layer in report.layers)
    conv = next(la for la in report.layers if la.layer == "fused_blocks.0.linear1")
    assert conv.shape == (16, 48)  # (out, in * k)


def _spiked(scale_of_top: float = 10.0):
    """Linear 8 -> 24 whose adapter adds a rank-1 spike outside W0's column space."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 24))
    W0 = model[0].weight.detach()
    Q, _ = torch.linalg.qr(torch.cat([W0, torch.randn(24, 16)], 1))
    u = Q[:, 8:9]  # orthogonal to the 8-dim column space of W0
    v = torch.nn.functional.normalize(torch.randn(8, 1), dim=0)
    sigma = scale_of_top * torch.linalg.matrix_norm(W0, ord=2)
    attach_lora(model, LoRAConfig(rank=2, alpha=2.0, targets=("0",)))  # scale 1
    st = model[0].adapters["default"]
    with torch.no_grad():
        st.lora_B.zero_()
        st.lora_B[:, :1] = u * sigma
        st.lora_A.zero_()
        st.lora_A[:1] = v.T
    return model, u, v, sigma


def test_a_planted_orthogonal_spike_is_found_as_an_intruder():
    model, *_ = _spiked()
    report = intruder_report(model)
    layer = report.layers[0]
    assert layer.cos[0] < 0.1  # the new top direction matches nothing in W0 (c ~ |W0 v|/sigma)
    assert layer.counts["0.50"] >= 1 and report.total() >= 1
    assert layer.delta_stable_rank == pytest.approx(1.0)
    counts = [layer.counts[f"{t:.2f}"] for t in report.thresholds]
    assert counts == sorted(counts)  # more intruders at looser thresholds


def test_report_writes_json_and_a_png_chart(tmp_path):
    model = make_model()
    attach_lora(model, LoRAConfig(rank=4, targets=("attn",)))
    perturb(model, std=0.5)
    report = intruder_report(
        model, json_path=tmp_path / "intruders.json", png_path=tmp_path / "intruders.png"
    )
    data = json.loads((tmp_path / "intruders.json").read_text())
    assert data["adapter"] == "default" and data["top_k"] == 10
    assert len(data["layers"]) == len(report.layers)
    assert set(data["totals"]) == {f"{t:.2f}" for t in report.thresholds}
    assert (tmp_path / "intruders.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["intruders.json", "intruders.png"]


def test_reduction_scales_the_intruder_direction_by_lambda_and_keeps_the_rest():
    model, *_ = _spiked()
    layer = model[0]
    st = layer.adapters["default"]
    W0 = layer.original_weight2d().double()
    W1 = W0 + st.impl.delta_weight(layer, st).double()
    U1, S1, V1h = torch.linalg.svd(W1, full_matrices=False)
    changed = reduce_intruders(model, lam=0.5)
    assert changed == {"0": 1}
    W1_new = W0 + st.impl.delta_weight(layer, st).double()
    expected = W1 - 0.5 * S1[0] * U1[:, :1] @ V1h[:1]
    assert torch.allclose(W1_new, expected, atol=1e-4 * S1[0].item())
    s_new = torch.linalg.svdvals(W1_new)
    s_expected = torch.cat([S1[:1] * 0.5, S1[1:]]).sort(descending=True).values
    assert torch.allclose(s_new, s_expected, rtol=1e-4)
    assert st.init == "intruders_reduced" and st.rank <= 3


def test_pissa_is_measured_on_its_learned_change_not_on_its_principal_factors():
    model = make_model()
    attach_lora(model, LoRAConfig(rank=4, init="pissa", targets=("attn",)))
    report = intruder_report(model)  # at init: dW = s (B A - B0 A0) ~ 0, not s B A
    assert report.total(0.9) == 0
    assert all(layer.delta_rel_norm < 1e-6 for layer in report.layers)
    perturb(model, std=0.5)
    assert all(layer.delta_rel_norm > 1e-3 for layer in intruder_report(model).layers)
