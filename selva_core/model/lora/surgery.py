"""Spectral surgery: reweight the singular directions of a trained adapter's change.

Tian et al., "Spectral Surgery" (arXiv 2603.03995; authors' code TTtianTT/lora-spectral-edit).

1. Decompose the learned change without forming it: ``dW = U diag(sigma) V^T`` from the QR of
   the factors (``lowrank.py``). PiSSA-aware: ``dW = s (B A - B0 A0)``, never ``s B A``.
2. Sensitivity ``g_k = dL/dsigma_k = strength * sum_n <dL/dy_n, u_k> <x_n, v_k>``, gathered by a
   forward hook (projects the layer input on V; for convs through the same conv geometry) and a
   gradient hook on the layer output (projects on U), summed over calibration batches of a
   caller-supplied loss closure (the trainer passes its flow-matching loss). ``g`` is
   normalised by its mean ``|g|`` per layer.
3. Reweight ``sigma`` by a policy (:class:`SurgeryConfig`):
   ``abs_select`` (default): the top ``core_frac`` (20 %) by ``|g|`` x ``amp_factor`` (1.25),
   the bottom ``noise_frac`` (20 %) x ``sup_factor`` (0.8), the rest x ``mid_factor`` (1);
   ``smooth_abs``: gate ``sup + (amp - sup) * sigmoid((|g| - mu) / tau)``, tau = 0.35 x the
   (noise_frac, 1 - core_frac) quantile span, mu placing the median at ``mid_factor``;
   ``gd``: ``sigma * exp(-(2.0 relu(g) - 0.2 relu(-g)))`` (shrink directions that raise the
   loss, grow the ones that lower it); ``random_index``: abs_select's counts at random indices
   (the control; layer ``i`` draws with seed ``seed + i``, so layers get independent picks).
   A layer whose sensitivities are all 0 (it does not reach the loss) is left unchanged.
4. Clamp ``sigma' >= 0`` and rescale so that ``sum sigma' = sum sigma`` (L1, default) or the
   L2 norm is kept.
5. Re-factor ``B' = U sqrt(sigma'/s)``, ``A' = sqrt(sigma'/s) V^T``: a plain delta on the
   unmodified base (PiSSA adapters become their rank-2r delta form).

:func:`spectral_surgery` computes the edit and returns a :class:`SurgeryResult` (not applied);
``apply()`` / ``revert()`` switch between edited and original factors exactly.
:func:`surgery_with_validation` keeps the edit only when the held-out loss does not get worse.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from .layers import AdapterState, LoRALayer
from .lowrank import delta_svd, refactor
from .runtime import adapter_layers
from .targets import expand_patterns, name_matches

logger = logging.getLogger(__name__)

POLICIES = ("abs_select", "smooth_abs", "gd", "random_index")


@dataclass(frozen=True)
class SurgeryConfig:
    """Policy and its constants (defaults: the authors' CLI defaults)."""

    policy: str = "abs_select"
    core_frac: float = 0.2
    noise_frac: float = 0.2
    amp_factor: float = 1.25
    sup_factor: float = 0.80
    mid_factor: float = 1.0
    min_core_k: int = 1
    smooth_temperature: float = 0.35
    smooth_center_q: float = 0.5
    smooth_align_mid: bool = True
    eta_suppress: float = 2.0
    eta_enhance: float = 0.2
    grad_norm: str = "mean_abs"  # "mean_abs", "l2" or "none"
    preserve_energy: str = "l1"  # "l1", "l2" or "none"
    sigma_min: float = 0.0
    seed: int = 0  # random_index: layer i of an adapter uses seed + i

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise ValueError(f"unknown surgery policy {self.policy!r}; choose one of {POLICIES}")
        if self.grad_norm not in ("mean_abs", "l2", "none"):
            raise ValueError(f"grad_norm must be mean_abs, l2 or none, got {self.grad_norm!r}")
        if self.preserve_energy not in ("l1", "l2", "none"):
            raise ValueError(
                f"preserve_energy must be l1, l2 or none, got {self.preserve_energy!r}"
            )


# -- the reweighting policies (pure functions) -------------------------------------------------
def _normalize(g: torch.Tensor, how: str) -> torch.Tensor:
    if how == "mean_abs":
        return g / g.abs().mean().clamp_min(1e-12)
    if how == "l2":
        return g / g.norm().clamp_min(1e-12)
    return g


def _counts(r: int, cfg: SurgeryConfig) -> tuple[int, int]:
    k_core = min(max(round(r * cfg.core_frac), cfg.min_core_k), r)
    k_noise = max(0, min(round(r * cfg.noise_frac), r - k_core))
    return k_core, k_noise


def _select_gate(order: torch.Tensor, r: int, cfg: SurgeryConfig) -> torch.Tensor:
    k_core, k_noise = _counts(r, cfg)
    gate = torch.full((r,), cfg.mid_factor, dtype=torch.float64)
    gate[order[:k_core]] = cfg.amp_factor
    if k_noise:
        gate[order[r - k_noise:]] = cfg.sup_factor
    return gate


def _smooth_gate(a: torch.Tensor, cfg: SurgeryConfig) -> torch.Tensor:
    if float(a.max() - a.min()) < 1e-12:
        return torch.full_like(a, cfg.mid_factor)
    q_lo, q_hi = cfg.noise_frac, 1.0 - cfg.core_frac
    if q_hi <= q_lo:
        q_lo, q_hi = 0.25, 0.75
    span = (torch.quantile(a, q_hi) - torch.quantile(a, q_lo)).clamp_min(1e-8)
    tau = (cfg.smooth_temperature * span).clamp_min(1e-8)
    mu = torch.quantile(a, cfg.smooth_center_q)
    sup, amp, mid = cfg.sup_factor, cfg.amp_factor, cfg.mid_factor
    if cfg.smooth_align_mid and amp > sup and sup < mid < amp:
        p = min(max((mid - sup) / (amp - sup), 1e-4), 1 - 1e-4)
        mu = mu - tau * torch.logit(torch.tensor(p, dtype=a.dtype))
    return sup + (amp - sup) * torch.sigmoid((a - mu) / tau)


def reweight(sigma: torch.Tensor, g: torch.Tensor, cfg: SurgeryConfig) -> torch.Tensor:
    """New singular values from ``sigma`` and raw sensitivities ``g`` (float64)."""
    sigma, g = sigma.double(), g.double()
    r = sigma.numel()
    if not bool((g != 0).any()):
        return sigma.clone()  # no signal (layer does not reach the loss): leave it alone
    gn = _normalize(g, cfg.grad_norm)
    if cfg.policy == "abs_select":
        gate = _select_gate(torch.argsort(gn.abs(), descending=True, stable=True), r, cfg)
    elif cfg.policy == "random_index":
        rng = torch.Generator().manual_seed(cfg.seed)
        gate = _select_gate(torch.randperm(r, generator=rng), r, cfg)
    elif cfg.policy == "smooth_abs":
        gate = _smooth_gate(gn.abs(), cfg)
    else:  # gd
        pos, neg = gn.clamp_min(0), (-gn).clamp_min(0)
        gate = torch.exp(-(cfg.eta_suppress * pos - cfg.eta_enhance * neg))
    new = (sigma * gate).clamp_min(cfg.sigma_min)
    if cfg.preserve_energy == "l1":
        new = new * (sigma.sum() / new.sum().clamp_min(1e-12))
    elif cfg.preserve_energy == "l2":
        new = new * (sigma.norm() / new.norm().clamp_min(1e-12))
    return new


# -- sensitivity hooks -------------------------------------------------------------------------
class _Probe:
    """Accumulates ``g_k`` for one layer from its input (forward hook) and output gradient."""

    def __init__(self, layer: LoRALayer, adapter: AdapterState, U, V):
        self.layer, self.adapter = layer, adapter
        dev = adapter.lora_A.device
        K = V.shape[1]
        # V^T as an "A" factor in layer shape: (K, in) or (K, in, k); U as (out, K)
        self.Vt = V.T.float().reshape(K, *adapter.lora_A.shape[1:]).to(dev).contiguous()
        self.U = U.float().to(dev).contiguous()
        self.g = torch.zeros(K, dtype=torch.float64, device=dev)
        self.handle = layer.register_forward_hook(self._forward_hook)

    def _forward_hook(self, module, inputs, output):
        if not torch.is_grad_enabled() or not output.requires_grad:
            return
        x = inputs[0].detach()
        with torch.no_grad():
            if x.dtype != self.Vt.dtype and not torch.is_autocast_enabled(x.device.type):
                x = x.to(self.Vt.dtype)
            p = self.layer.apply_a(x, self.Vt).float()
        strength = self.adapter.strength
        output.register_hook(lambda gy: self._accumulate(p, gy, strength))

    def _accumulate(self, p: torch.Tensor, gy: torch.Tensor, strength: float) -> None:
        gy = gy.detach().float()
        if p.dim() == 3 and isinstance(self.layer.base_layer, nn.Conv1d):
            # p: (B, K, N) channel-first; gy in the layer's layout
            gc = gy.transpose(1, 2) if self.layer.channel_last else gy  # (B, out, N)
            q = torch.einsum("bon,ok->bkn", gc, self.U)
            self.g += strength * (p * q).sum(dim=(0, 2)).double()
        else:
            q = F.linear(gy, self.U.T)  # (..., K)
            self.g += strength * (p * q).reshape(-1, q.shape[-1]).sum(0).double()

    def remove(self) -> None:
        self.handle.remove()


# -- results -----------------------------------------------------------------------------------
@dataclass
class LayerEdit:
    """One layer's edit: singular values before/after, gates and normalised sensitivities."""

    layer: str
    sigma: torch.Tensor
    sigma_new: torch.Tensor
    sensitivity: torch.Tensor
    B: torch.Tensor  # edited factors (out, K), (K, in*k) with change scale * B A
    A: torch.Tensor

    @property
    def gates(self) -> torch.Tensor:
        """sigma_new / sigma (1 where sigma is 0)."""
        safe = torch.where(self.sigma > 0, self.sigma, torch.ones_like(self.sigma))
        return torch.where(self.sigma > 0, self.sigma_new / safe, torch.ones_like(self.sigma))

    def to_dict(self) -> dict:
        return {
            "layer": self.layer,
            "sigma": self.sigma.tolist(),
            "sigma_new": self.sigma_new.tolist(),
            "gates": self.gates.tolist(),
            "sensitivity": self.sensitivity.tolist(),
        }


@dataclass
class SurgeryResult:
    """The computed edit of adapter ``adapter``; :meth:`apply` and :meth:`revert` switch it."""

    model: nn.Module
    adapter: str
    config: SurgeryConfig
    num_batches: int
    edits: dict[str, LayerEdit]
    _originals: dict[str, dict] = field(default_factory=dict, repr=False)
    applied: bool = False

    def apply(self) -> None:
        """Replace each edited layer's factors by the re-factored ones."""
        if self.applied:
            return
        states = adapter_layers(self.model, self.adapter)
        for path, e in self.edits.items():
            states[path].set_plain_factors(e.B, e.A, init="surgery")
        self.applied = True
        logger.info("spectral surgery (%s) applied to %d layers of adapter %r",
                    self.config.policy, len(self.edits), self.adapter)

    def revert(self) -> None:
        """Restore the original factors (bit-exact)."""
        if not self.applied:
            return
        states = adapter_layers(self.model, self.adapter)
        for path, snap in self._originals.items():
            states[path].load_factors(snap["A"], snap["B"], snap["A0"], snap["B0"], snap["init"])
        self.applied = False

    def summary(self) -> dict:
        return {
            "adapter": self.adapter,
            "policy": self.config.policy,
            "num_batches": self.num_batches,
            "applied": self.applied,
            "layers": [e.to_dict() for e in self.edits.values()],
        }


@dataclass
class SurgeryOutcome:
    """What :func:`surgery_with_validation` decided."""

    val_before: float
    val_after: float
    kept: bool
    result: SurgeryResult

    def to_dict(self) -> dict:
        return {
            "val_before": self.val_before,
            "val_after": self.val_after,
            "kept": self.kept,
            **self.result.summary(),
        }


def _select_layers(
    states: dict[str, AdapterState], layers: Iterable[str] | None
) -> dict[str, AdapterState]:
    if layers is None:
        chosen = dict(states)
    else:
        pats = expand_patterns(layers)
        chosen = {p: s for p, s in states.items() if any(name_matches(p, q) for q in pats)}
    if not chosen:
        raise ValueError(f"surgery layer patterns {layers} match none of {list(states)[:8]}")
    bad = [p for p, s in chosen.items() if s.kind != "lora"]
    if bad:
        raise ValueError(
            f"spectral surgery edits plain LoRA changes; layers {bad[:3]} are of kind "
            f"{chosen[bad[0]].kind!r}"
        )
    return chosen


def spectral_surgery(
    model: nn.Module,
    calib_loss_fn: Callable[[int], torch.Tensor],
    name: str = "default",
    *,
    num_batches: int = 8,
    config: SurgeryConfig | None = None,
    layers: Iterable[str] | None = None,
) -> SurgeryResult:
    """Compute (not apply) a spectral edit of adapter ``name``.

    ``calib_loss_fn(i)`` returns the differentiable scalar loss of calibration batch ``i``
    (``i = 0 .. num_batches-1``) computed with ``model``. ``layers``: optional patterns
    restricting which adapted layers are edited.
    """
    cfg = config or SurgeryConfig()
    if num_batches < 1:
        raise ValueError(f"num_batches must be >= 1, got {num_batches}")
    states = _select_layers(adapter_layers(model, name), layers)
    wrappers = {p: model.get_submodule(p) for p in states}
    if any(w.merged for w in wrappers.values()):
        raise RuntimeError("spectral surgery needs unmerged adapters; call unmerge_adapters")
    if any(s.strength == 0 for s in states.values()):
        raise ValueError(f"adapter {name!r} has strength 0; sensitivities would all be 0")
    svds = {p: delta_svd(s) for p, s in states.items()}
    probes = {p: _Probe(wrappers[p], states[p], svds[p][0], svds[p][2]) for p in states}
    params = [s.lora_A for s in states.values()]
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        for i in range(num_batches):
            loss = calib_loss_fn(i)
            if not isinstance(loss, torch.Tensor) or loss.dim() != 0 or not loss.requires_grad:
                raise ValueError(
                    "calib_loss_fn must return a scalar loss tensor computed with the model "
                    "(with gradients enabled)"
                )
            torch.autograd.grad(loss, params, allow_unused=True)
    finally:
        for p in probes.values():
            p.remove()
        for p, f in zip(params, flags):
            p.requires_grad_(f)
    edits, originals = {}, {}
    for i, (path, st) in enumerate(states.items()):
        U, S, V = svds[path]
        g = probes[path].g / num_batches
        new = reweight(S, g, replace(cfg, seed=cfg.seed + i))
        B2, A2 = refactor(U, new, V, st.scale)
        edits[path] = LayerEdit(
            layer=path, sigma=S.float().cpu(), sigma_new=new.float().cpu(),
            sensitivity=_normalize(g, cfg.grad_norm).float().cpu(), B=B2, A=A2,
        )
        originals[path] = st.snapshot()
    return SurgeryResult(model, name, cfg, num_batches, edits, originals)


def surgery_with_validation(
    model: nn.Module,
    calib_loss_fn: Callable[[int], torch.Tensor],
    val_loss_fn: Callable[[], torch.Tensor | float],
    name: str = "default",
    *,
    num_batches: int = 8,
    config: SurgeryConfig | None = None,
    layers: Iterable[str] | None = None,
) -> SurgeryOutcome:
    """Surgery kept only if the held-out loss ``val_loss_fn()`` does not get worse."""
    with torch.no_grad():
        before = float(val_loss_fn())
    result = spectral_surgery(
        model, calib_loss_fn, name, num_batches=num_batches, config=config, layers=layers
    )
    result.apply()
    with torch.no_grad():
        after = float(val_loss_fn())
    kept = after <= before
    if not kept:
        result.revert()
    logger.info(
        "spectral surgery (%s) on %r: validation loss %.6g -> %.6g, %s",
        result.config.policy, name, before, after, "kept" if kept else "reverted",
    )
    return SurgeryOutcome(before, after, kept, result)
