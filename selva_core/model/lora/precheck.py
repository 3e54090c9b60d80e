"""The pre-attach check: an adapter whose finite tensors still give an unusable change is
refused before anything is attached (:func:`check_layer_changes`)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from .errors import AdapterLoadError
from .kind import get_kind
from .layers import AdapterState, LoRALayer
from .runtime import get_layer

# A change this many times the size of the weight it adds to is no trained adapter: it only
# overflows the activations downstream (a scale or factors far out of range).
MAX_CHANGE_RATIO = 1e3


def _base_weight2d(module: nn.Module) -> torch.Tensor:
    """The (out, in*k) base weight of a layer, wrapped or not, as fp32."""
    if isinstance(module, LoRALayer):
        return module.weight2d().detach().float()
    w = module.weight.detach()
    return w.reshape(w.shape[0], -1).float()


def _change_norm(st: AdapterState) -> float:
    """Frobenius norm of a factor kind's change ``s B A`` without forming it:
    ``||B A||^2 = sum((B^T B) * (A A^T))``, in float64 (inf when the factors overflow)."""
    B, A = st.factors2d()
    B64, A64 = B.detach().double(), A.detach().double()
    sq = float(((B64.T @ B64) * (A64 @ A64.T)).sum().clamp_min(0.0))
    return abs(st.scale) * math.sqrt(sq) if math.isfinite(sq) else math.inf


def check_layer_changes(model: nn.Module, states: Mapping[str, AdapterState], path) -> None:
    """Refuse (one :class:`AdapterLoadError` naming the layer) an adapter whose finite
    factors still give an unusable change: ``s B A`` overflowing float32, a change more than
    :data:`MAX_CHANGE_RATIO` times the size of the weight (a weight of norm below 1 counts as
    1), or (DoRA) an output row of ``W + s B A`` with norm 0, which the magnitude would divide
    by. Nothing is attached. Plain factor kinds are checked through their factors' Gram
    matrices (no dense change is formed); the others through their dense change."""
    f32_max = torch.finfo(torch.float32).max
    for p, st in states.items():
        try:
            module = get_layer(model, p)
        except ValueError as e:
            raise AdapterLoadError(f"cannot load {path}: {e}") from None
        what = f"scale {st.scale:g} x B A" if st.impl.has_factors else st.kind
        dense = (not st.impl.has_factors
                 or "lora_magnitude" in get_kind(st.kind).extra_keys)
        if st.impl.has_factors:
            W = _base_weight2d(module)
            B, A = st.factors2d()
            if tuple(W.shape) != (B.shape[0], A.shape[1]):
                continue  # attach_adapter_states names the shape mismatch
        else:
            w = getattr(module, "weight", None)
            if w is None or st.impl.check_tensors(tuple(w.shape), st):
                continue  # attach_adapter_states names the problem
            W = _base_weight2d(module)
        delta = None
        if dense:
            with torch.no_grad():
                if st.impl.has_factors:
                    B, A = st.factors2d()
                    delta = torch.mm(B.float(), A.float().to(B.device)).mul_(st.scale)
                else:
                    W = W.to(getattr(st, st.impl.extra_keys[0]).device)
                    delta = st.impl.weight_delta(W, st)
            finite = bool(torch.isfinite(delta).all())
            delta_norm = float(torch.linalg.vector_norm(delta, dtype=torch.float64)) \
                if finite else math.inf
        else:
            delta_norm = _change_norm(st)
            finite = delta_norm <= f32_max
        if not finite:
            raise AdapterLoadError(
                f"{path}: layer {p}: its change to the weight ({what}) overflows to NaN or "
                "infinity; the adapter is damaged (it would make every output NaN). Use an "
                "earlier file or retrain.")
        # A weight smaller than 1 (a zero-initialised layer) counts as 1: a usable change to
        # it is still small in absolute terms.
        weight_norm = float(torch.linalg.vector_norm(W, dtype=torch.float64))
        ratio = delta_norm / max(weight_norm, 1.0)
        if not ratio <= MAX_CHANGE_RATIO:
            raise AdapterLoadError(
                f"{path}: layer {p}: its change to the weight is {ratio:.3g} times the size of "
                f"the weight (norm {delta_norm:.3g} against {weight_norm:.3g}, counted as at "
                f"least 1; at most {MAX_CHANGE_RATIO:g} times is usable); the adapter is "
                "damaged or its scale is wrong (it would overflow the output). Use an earlier "
                "file or retrain.")
        if delta is not None and "lora_magnitude" in get_kind(st.kind).extra_keys:
            norms = (W.to(delta.device) + delta).double().pow(2).sum(1).sqrt()
            zero = torch.nonzero(~(norms > 0)).flatten().tolist()
            if zero:
                raise AdapterLoadError(
                    f"{path}: layer {p}: DoRA row {zero[0]} of W + s B A has norm 0 "
                    f"({len(zero)} row(s)), which the magnitude divides by; the adapter is "
                    "damaged. Use an earlier file or retrain.")
