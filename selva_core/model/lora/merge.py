"""Merge several adapter files into one: ``linear`` (exact), ``svd``, ``ties`` and ``dare``.

Each source ``i`` brings a weight ``w_i`` and per layer the change ``D_i = s_i B_i A_i`` (its
plain delta: PiSSA files already hold ``[B, -B0] [A; A0]``, see ``io.py``). Methods, with
peft's ``add_weighted_adapter`` combination types as the reference definitions:

* ``linear`` (peft ``cat``): ``sum_i w_i D_i`` kept exactly, the factors concatenated:
  ``A = [w_1 s_1 A_1; w_2 s_2 A_2; ...]``, ``B = [B_1, B_2, ...]``, scale 1. The rank adds up.
* ``svd`` (peft ``svd``): the same sum re-factorised to rank ``R`` by a truncated SVD per layer
  (from the concatenated factors, no dense matrix).
* ``ties`` (peft ``ties_svd``): each ``D_i`` keeps its ``density`` largest-magnitude entries;
  per entry the sign of ``sum_i D_i`` (pruned) is elected; the weighted entries agreeing with
  it are averaged (Yadav et al., "TIES-Merging", arXiv 2306.01708); then rank ``R`` by SVD.
* ``dare`` (peft ``dare_linear_svd``): each ``D_i`` keeps every entry with probability
  ``density`` and is divided by ``density`` (Yu et al., "Language Models are Super Mario",
  arXiv 2311.03099); the weighted sum is re-factorised to rank ``R``. The masks come from a
  generator seeded with ``seed``, drawn layer by layer in file order, source by source.

Layers present in only some sources take the others' change as zero. The re-factorised
methods record each layer's relative Frobenius error ``||D - D_R|| / ||D||`` (``D`` the
merged dense change before truncation) in the file's metadata (``merge_rel_errors``) and
return the worst. Only kinds whose change does not depend on the base weights merge into a
file (``lora``, ``loraxs``: their kind's ``lowrank`` gives the factors). DoRA's (its
magnitude renormalises ``W + s B A``), IA3's (row or column scales of W) and HRA's
(``W (H - I)``) do, so adapters of these kinds are refused by every method with a pointer to
``selva_core.export``, which bakes any kind into the generator.
Every refusal is one :class:`MergeError` (or the loader's ``AdapterLoadError``) naming the
file or the layer; nothing is written by this module (callers write the returned tensors).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ... import __version__
from .io import _adapter_states, read_adapter_file
from .kind import get_kind
from .lowrank import lowrank_svd, refactor
from .metadata import FORMAT, FORMAT_VERSION, AdapterFileInfo, parse_adapter_metadata

logger = logging.getLogger(__name__)

METHODS = ("linear", "svd", "ties", "dare")
DEFAULT_DENSITY = 0.2  # TIES-Merging keeps the top 20 % of each task vector


class MergeError(ValueError):
    """Adapters that cannot be merged; the message names the file or layer and the fix."""


@dataclass
class MergeResult:
    """Tensors and metadata of the merged adapter file, and each layer's relative error."""

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    rel_errors: dict[str, float] = field(default_factory=dict)

    @property
    def worst(self) -> tuple[str, float] | None:
        """(layer, error) of the largest relative error, None for the exact ``linear``."""
        if not self.rel_errors:
            return None
        return max(self.rel_errors.items(), key=lambda kv: kv[1])


@dataclass
class _Source:
    label: str
    weight: float
    info: AdapterFileInfo
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]  # layer -> (A, B) layer shapes


def _read_source(path: str | os.PathLike, weight: float) -> _Source:
    if not math.isfinite(float(weight)):
        raise MergeError(f"{path}: weight {weight!r} is not a finite number")
    tensors, meta = read_adapter_file(path)
    info = parse_adapter_metadata(meta, path)
    impl = get_kind(info.kind)
    states = _adapter_states(tensors, info, path, torch.device("cpu"), 1.0)
    if impl.lowrank(next(iter(states.values()))) is None:
        raise MergeError(
            f"{path}: adapter kind {info.kind!r} cannot be merged into an adapter file (its "
            "change depends on the base weights); bake it into the generator with "
            "python -m selva_core.export instead"
        )
    factors = {}
    for p, st in states.items():
        A, B = impl.lowrank(st)
        factors[p] = (A.detach() * st.scale, B.detach())  # change = B A exactly
    return _Source(str(path), float(weight), info, factors)


def _check_compatible(sources: Sequence[_Source]) -> str | None:
    """The shared model variant (None when no file names one); one error otherwise."""
    named = [(s.label, s.info.model_variant) for s in sources if s.info.model_variant]
    variants = {v for _, v in named}
    if len(variants) > 1:
        (la, va), (lb, vb) = named[0], next(x for x in named if x[1] != named[0][1])
        raise MergeError(
            f"{lb} is for model variant {vb!r} but {la} is for {va!r}; only adapters of the "
            "same model variant can be merged"
        )
    shapes: dict[str, tuple[str, tuple, tuple]] = {}
    for s in sources:
        for p, (A, B) in s.factors.items():
            here = (tuple(A.shape[1:]), (B.shape[0], *B.shape[2:]))
            if p in shapes and shapes[p][1:] != here:
                raise MergeError(
                    f"layer {p}: {s.label} adapts a layer of shape (in{here[0]}, out{here[1]}) "
                    f"but {shapes[p][0]} one of (in{shapes[p][1]}, out{shapes[p][2]}); these "
                    "adapters target different layers under the same name and cannot be merged"
                )
            shapes.setdefault(p, (s.label, *here))
    return variants.pop() if variants else None


def _prune_magnitude(t: torch.Tensor, density: float) -> torch.Tensor:
    """``t`` with all but its ``int(density * numel)`` largest-magnitude entries zeroed."""
    k = int(density * t.numel())
    mask = torch.zeros(t.numel(), dtype=t.dtype, device=t.device)
    mask[torch.topk(t.abs().reshape(-1), k=k, largest=True).indices] = 1
    return t * mask.reshape(t.shape)


def ties_merge(deltas: Sequence[torch.Tensor], weights: Sequence[float], density: float
               ) -> torch.Tensor:
    """TIES: trim to ``density`` by magnitude, elect the sign of the (unweighted) sum, average
    the weighted entries that agree with it (division by their count, at least 1)."""
    stacked = torch.stack([_prune_magnitude(d, density) for d in deltas])
    elected = torch.where(stacked.sum(0) >= 0, 1, -1)
    agree = stacked.sign() == elected
    w = torch.tensor(list(weights), dtype=stacked.dtype).reshape(-1, *[1] * (stacked.dim() - 1))
    total = (stacked * w * agree).sum(0)
    return total / agree.sum(0).clamp(min=1).to(stacked.dtype)


def dare_merge(deltas: Sequence[torch.Tensor], weights: Sequence[float], density: float,
               rng: torch.Generator) -> torch.Tensor:
    """DARE: each delta keeps every entry with probability ``density``, rescaled by
    ``1 / density``; the weighted sum of the results. The masks are drawn in float32 (as
    peft draws them for float32 weights), so a seed gives the same masks in both."""
    out = torch.zeros_like(deltas[0])
    for d, w in zip(deltas, weights):
        keep = torch.full(d.shape, density, dtype=torch.float32)
        mask = torch.bernoulli(keep, generator=rng).to(d.dtype)
        out += w * (d * mask / density)
    return out


def _truncate(U: torch.Tensor, S: torch.Tensor, V: torch.Tensor, rank: int, A_like, B_like
              ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Balanced rank-``rank`` factors (layer shapes) of ``U diag(S) V^T`` and the relative
    Frobenius error of the truncation."""
    total = float(S.double().pow(2).sum())
    k = min(rank, S.shape[0])
    err = math.sqrt(float(S[k:].double().pow(2).sum()) / total) if total > 0 else 0.0
    B2, A2 = refactor(U[:, :k], S[:k], V[:, :k], 1.0)
    return (A2.reshape(k, *A_like.shape[1:]),
            B2.reshape(B2.shape[0], k, *B_like.shape[2:]), err)


def merge_adapter_files(
    sources: Sequence[tuple[str | os.PathLike, float]],
    method: str = "linear",
    *,
    rank: int | None = None,
    density: float = DEFAULT_DENSITY,
    seed: int = 0,
) -> MergeResult:
    """Merge ``(file, weight)`` sources by ``method`` (see the module docstring).

    ``rank``: the rank of ``svd`` / ``ties`` / ``dare`` (default: the largest file rank among
    the sources; ignored by ``linear``). ``density``: the kept fraction of ``ties`` / ``dare``
    in (0, 1]. ``seed``: the masks of ``dare``.
    """
    if method not in METHODS:
        raise MergeError(f"unknown merge method {method!r}; choose one of {', '.join(METHODS)}")
    if not sources:
        raise MergeError("no adapters to merge; give at least one FILE[:WEIGHT]")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise MergeError(f"rank must be a positive integer, got {rank!r}")
    if method in ("ties", "dare") and not 0.0 < density <= 1.0:
        raise MergeError(f"density must be in (0, 1], got {density!r}")
    read = [_read_source(p, w) for p, w in sources]
    variant = _check_compatible(read)
    layers = list(dict.fromkeys(p for s in read for p in s.factors))
    if rank is None:
        rank = max(A.shape[0] for s in read for A, _ in s.factors.values())
    rng = torch.Generator().manual_seed(int(seed))
    tensors: dict[str, torch.Tensor] = {}
    errors: dict[str, float] = {}
    for p in layers:
        present = [(s, s.factors[p]) for s in read if p in s.factors]
        A_like, B_like = present[0][1]
        A_cat = torch.cat([s.weight * A for s, (A, _) in present], 0)
        B_cat = torch.cat([B for _, (_, B) in present], 1)
        if method == "linear":
            A, B = A_cat, B_cat
        elif method == "svd":
            U, S, V = lowrank_svd(B_cat.reshape(B_cat.shape[0], -1),
                                  A_cat.reshape(A_cat.shape[0], -1))
            A, B, errors[p] = _truncate(U, S, V, rank, A_like, B_like)
        else:
            deltas = [(B.reshape(B.shape[0], -1).double() @ A.reshape(A.shape[0], -1).double())
                      for _, (A, B) in present]
            weights = [s.weight for s, _ in present]
            if method == "ties":
                D = ties_merge(deltas, weights, density)
            else:
                D = dare_merge(deltas, weights, density, rng)
            U, S, Vh = torch.linalg.svd(D, full_matrices=False)
            A, B, errors[p] = _truncate(U, S, Vh.T, rank, A_like, B_like)
        tensors[f"{p}.lora_A"] = A.float().contiguous()
        tensors[f"{p}.lora_B"] = B.float().contiguous()
    metadata = _merged_metadata(read, layers, tensors, method, rank, density, seed, variant,
                                errors)
    result = MergeResult(tensors, metadata, errors)
    logger.info("merged %d adapters (%s) over %d layers%s", len(read), method, len(layers),
                "" if result.worst is None else
                f"; worst relative error {result.worst[1]:.3g} ({result.worst[0]})")
    return result


def _merged_metadata(read, layers, tensors, method, rank, density, seed, variant, errors
                     ) -> dict[str, str]:
    ranks = {tensors[f"{p}.lora_A"].shape[0] for p in layers}
    top = max(ranks)
    file_rank = ranks.pop() if len(ranks) == 1 else None
    prints = {s.info.fingerprint for s in read}
    same_layers = len({tuple(sorted(s.factors)) for s in read}) == 1
    targets = list(dict.fromkeys(t for s in read for t in s.info.targets))
    settings = {"method": method,
                "sources": [{"file": Path(s.label).name, "weight": s.weight} for s in read]}
    if method != "linear":
        settings["rank"] = rank
    if method in ("ties", "dare"):
        settings["density"] = density
    if method == "dare":
        settings["seed"] = int(seed)
    meta = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "library_version": __version__,
        "lora_kind": "lora",
        "init": f"merged_{method}",
        "converted": "",
        "rank": str(top),
        "file_rank": str(file_rank) if file_rank else "mixed",
        "alpha": repr(float(top)),  # alpha / rank = the scale 1 for a loader recomputing it
        "scale": "1.0",
        "use_rslora": "false",
        "dropout": "0.0",
        "storage_dtype": "float32",
        "targets": json.dumps(targets),
        "exclude": "[]",
        "layers": json.dumps(layers),
        "model_variant": variant or "",
        # the statistics of the base weights only carry over when every source measured the
        # same layers of the same base
        "base_fingerprint": (prints.pop() or "") if len(prints) == 1 and same_layers else "",
        "user": json.dumps({"merge": settings}),
    }
    if errors:
        meta["merge_rel_errors"] = json.dumps({p: float(f"{e:.4e}") for p, e in errors.items()})
    return meta
