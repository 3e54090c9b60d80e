"""Intruder-dimension diagnostic and optional reduction.

Shuttleworth et al., "LoRA vs Full Fine-tuning: An Illusion of Equivalence", arXiv 2410.21228.

Per adapted layer, with W0 the original base weight and W1 = W0 + dW the adapted one (the
adapter at strength 1; conv weights as (out, in*k) matrices):

* SVD of both; for each of the top-k (10) left singular vectors y_j of W1,
  ``c_j = max_i |<y_j, x_i>|`` over all left singular vectors x_i of W0 (reduced SVD: the
  basis of W0's column space). y_j is an *intruder* at threshold eps when ``c_j < eps``
  (counts reported for eps = 0.1 ... 0.9; the paper's default 0.5).
* ``||dW||_F / ||W0||_F`` and the stable rank ``||dW||_F^2 / ||dW||_2^2`` of the change, and
  ``sigma_j(W1) / sigma_1(W0)`` of the top-k. (W1 is formed densely: its SVD is the point.)

When W0 is square or wide, its left singular vectors span all of R^out, so ``c_j >= 1/sqrt(out)``
always; an intruder is a direction poorly aligned with *each* pre-trained direction.

Reduction (:func:`reduce_intruders`): ``W1' = W1 + (lam - 1) sum_j sigma_j y_j z_j^T`` over the
intruders (lam = fraction kept, default 0.75), written back as a plain delta adapter: the old
factors plus one rank-1 term per intruder, compressed exactly (QR + SVD, zero directions
dropped), so a layer's rank may grow by the number of intruders.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ...atomic import savefig_atomic, write_json_atomic
from .lowrank import lowrank_svd, refactor
from .runtime import adapter_layers

logger = logging.getLogger(__name__)

THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class LayerIntruders:
    """Diagnostic of one adapted layer."""

    layer: str
    shape: tuple[int, int]
    cos: list[float]  # c_j for the top-k singular vectors of W1
    sigma_ratio: list[float]  # sigma_j(W1) / sigma_1(W0)
    counts: dict[str, int]  # threshold -> number of intruders among the top-k
    delta_rel_norm: float  # ||dW||_F / ||W0||_F
    delta_stable_rank: float  # ||dW||_F^2 / ||dW||_2^2 (0 for dW = 0)


@dataclass
class IntruderReport:
    """All layers of one adapter; ``threshold`` is the one used for reduction and the chart."""

    adapter: str
    top_k: int
    thresholds: tuple[float, ...]
    threshold: float
    layers: list[LayerIntruders] = field(default_factory=list)

    def total(self, eps: float | None = None) -> int:
        key = _key(self.threshold if eps is None else eps)
        return sum(layer.counts[key] for layer in self.layers)

    def to_dict(self) -> dict:
        return {
            "adapter": self.adapter,
            "top_k": self.top_k,
            "thresholds": list(self.thresholds),
            "threshold": self.threshold,
            "totals": {_key(t): self.total(t) for t in self.thresholds},
            "layers": [asdict(layer) for layer in self.layers],
        }

    def save_json(self, path: str | os.PathLike) -> Path:
        return write_json_atomic(path, self.to_dict())

    def plot(self, path: str | os.PathLike) -> Path:
        """PNG: intruders per layer at ``threshold`` and totals per threshold."""
        from matplotlib.figure import Figure  # Agg canvas, no pyplot global state

        names = [layer.layer for layer in self.layers]
        key = _key(self.threshold)
        fig = Figure(figsize=(max(8.0, 0.25 * len(names) + 5), 4.5))
        ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 1]})
        ax1.bar(range(len(names)), [layer.counts[key] for layer in self.layers], color="#c0504d")
        ax1.set_xticks(range(len(names)))
        ax1.set_xticklabels(names, rotation=90, fontsize=6)
        ax1.set_ylabel(f"intruders in top-{self.top_k} (cos < {self.threshold})")
        ax1.set_title(f"adapter {self.adapter!r}: intruder dimensions per layer")
        ax2.plot(self.thresholds, [self.total(t) for t in self.thresholds], marker="o")
        ax2.set_xlabel("threshold eps")
        ax2.set_ylabel("total intruders")
        ax2.grid(alpha=0.3)
        fig.tight_layout()
        return savefig_atomic(path, fig, dpi=120)


def _key(eps: float) -> str:
    return f"{eps:.2f}"


def _layer_stats(W0: torch.Tensor, dW: torch.Tensor, top_k: int):
    U0, S0, _ = torch.linalg.svd(W0, full_matrices=False)
    U1, S1, V1h = torch.linalg.svd(W0 + dW, full_matrices=False)
    k = min(top_k, S1.numel())
    keep = S0 > S0[0] * torch.finfo(S0.dtype).eps * max(W0.shape) if S0.numel() else S0 > 0
    cos = (U1[:, :k].T @ U0[:, keep]).abs().amax(dim=1)
    return cos, S1[:k] / S0[0].clamp_min(1e-30), U1[:, :k], S1[:k], V1h[:k].T


def intruder_report(
    model: nn.Module,
    name: str = "default",
    top_k: int = 10,
    thresholds: tuple[float, ...] = THRESHOLDS,
    threshold: float = 0.5,
    json_path: str | os.PathLike | None = None,
    png_path: str | os.PathLike | None = None,
) -> IntruderReport:
    """Intruder statistics of every layer of adapter ``name`` (see the module docstring).

    ``json_path`` / ``png_path``: also write the JSON report / the chart (atomic writes).
    """
    report = IntruderReport(name, top_k, tuple(thresholds), threshold)
    for path, st in adapter_layers(model, name).items():
        layer = model.get_submodule(path)
        with torch.no_grad():
            W0 = layer.original_weight2d().double()
            dW = st.impl.delta_weight(layer, st).double()
            cos, ratio, *_ = _layer_stats(W0, dW, top_k)
            fro = dW.norm()
            top = torch.linalg.matrix_norm(dW, ord=2) if fro > 0 else fro
        report.layers.append(
            LayerIntruders(
                layer=path,
                shape=(W0.shape[0], W0.shape[1]),
                cos=cos.tolist(),
                sigma_ratio=ratio.tolist(),
                counts={_key(t): int((cos < t).sum()) for t in report.thresholds},
                delta_rel_norm=float(fro / W0.norm().clamp_min(1e-30)),
                delta_stable_rank=float((fro / top) ** 2) if fro > 0 else 0.0,
            )
        )
        if _key(threshold) not in report.layers[-1].counts:
            report.layers[-1].counts[_key(threshold)] = int((cos < threshold).sum())
    logger.info(
        "intruder report for %r: %d intruders (cos < %g) over %d layers",
        name, report.total(), threshold, len(report.layers),
    )
    if json_path is not None:
        report.save_json(json_path)
    if png_path is not None:
        report.plot(png_path)
    return report


@torch.no_grad()
def reduce_intruders(
    model: nn.Module,
    name: str = "default",
    lam: float = 0.75,
    threshold: float = 0.5,
    top_k: int = 10,
) -> dict[str, int]:
    """Scale intruder directions of W1 by ``lam`` (fraction kept) and re-factor the adapter.

    Returns layer -> number of directions scaled. Plain LoRA adapters only.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam is the fraction of each intruder kept, in [0, 1]; got {lam}")
    changed: dict[str, int] = {}
    for path, st in adapter_layers(model, name).items():
        if st.kind != "lora":
            raise ValueError(
                f"intruder reduction needs a plain LoRA adapter; {path} is {st.kind}"
            )
        layer = model.get_submodule(path)
        W0 = layer.original_weight2d().double()
        dW = st.impl.delta_weight(layer, st).double()
        cos, _, Y, S, Z = _layer_stats(W0, dW, top_k)
        idx = (cos < threshold).nonzero().flatten()
        if idx.numel() == 0:
            continue
        B, A = st.factors2d()
        extra_B = Y[:, idx] * (S[idx] * (lam - 1.0) / st.scale)[None, :]
        B_all = torch.cat([B.double(), extra_B], 1)
        A_all = torch.cat([A.double(), Z[:, idx].T], 0)
        U, s, V = lowrank_svd(B_all, A_all)
        keep = s > s.max() * 1e-10 if s.numel() else s > 0
        B2, A2 = refactor(U[:, keep], s[keep] * st.scale, V[:, keep], st.scale)
        st.set_plain_factors(B2, A2, init="intruders_reduced")
        changed[path] = int(idx.numel())
    logger.info("reduced %d intruder directions (lam %g) in %d layers of %r",
                sum(changed.values()), lam, len(changed), name)
    return changed

