"""An adapter file's metadata: its declared fields, their checks, and the base's fingerprint.

Metadata (all strings) of format ``selva-lora``, version 3: ``format``, ``format_version``,
``library_version``, ``lora_kind`` (lora/dora/loraxs/ia3/hra), ``init``, ``converted``,
``rank`` (trained rank), ``file_rank``, ``alpha``, ``scale``, ``use_rslora``, ``dropout``,
``storage_dtype`` (plus ``storage_rel_error`` for the lossy storages),
``targets``/``exclude``/``layers`` (JSON lists), ``model_variant`` (e.g. small_16k) and
``base_fingerprint`` (statistics of the adapted base weights, compared with a tolerance; a
mismatch on load is a warning, the model variant a hard check), ``user`` (JSON object of
caller metadata such as training steps). :func:`metadata_schema` declares each field once;
:func:`parse_adapter_metadata` checks them all and raises ONE :class:`AdapterLoadError` that
names the file and every bad field.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ...schema import REQUIRED, Field, Schema
from .errors import AdapterLoadError
from .kind import kind_names
from .layers import LoRALayer
from .storage import STORAGES

FORMAT = "selva-lora"
FORMAT_VERSION = 3

# -- identity of the base model ----------------------------------------------------------------
_STATS_PREFIX = "stats1:"
#: Relative difference of a layer's statistics still taken as the same base weights: far above
#: what a bf16 / fp16 copy of a checkpoint changes (rounding errors average out over a layer),
#: far below what fine-tuning or another checkpoint changes.
BASE_STATS_RTOL = 1e-3


def _layer_stats(model: nn.Module, layers: list[str]) -> list[tuple[str, float, float]]:
    """(path, sum |W|, sum W^2) of each adapted layer's base weight, in sorted path order."""
    stats = []
    for path in sorted(layers):
        module = model.get_submodule(path)
        w = module.original_weight2d() if isinstance(module, LoRALayer) else module.weight
        w = w.detach().double()
        stats.append((path, w.abs().sum().item(), w.pow(2).sum().item()))
    return stats


def base_fingerprint(model: nn.Module, layers: list[str]) -> str:
    """Statistics of the adapted base weights (sum |W| and sum W^2 per layer) as a string.

    Compared with a relative tolerance by :func:`same_base`, so the same checkpoint is
    recognised whether the model holds it in fp32, bf16 or fp16 (a bf16 ComfyUI pipeline loads
    adapters trained on the fp32 weights without a false warning), while another checkpoint
    differs. No base weight is stored.
    """
    return _STATS_PREFIX + ",".join(f"{a:.6e}/{b:.6e}" for _, a, b in
                                    _layer_stats(model, layers))


def same_base(recorded: str, model: nn.Module, layers: list[str]) -> bool:
    """Whether ``model``'s adapted layers hold the base weights a file's fingerprint describes."""
    if not recorded.startswith(_STATS_PREFIX):
        return False
    try:
        saved = [tuple(float(v) for v in item.split("/"))
                 for item in recorded[len(_STATS_PREFIX):].split(",")]
    except ValueError:
        return False
    now = _layer_stats(model, layers)
    if len(saved) != len(now):
        return False
    return all(
        len(pair) == 2 and all(abs(x - y) <= BASE_STATS_RTOL * max(abs(x), abs(y), 1e-12)
                               for x, y in zip(pair, (a, b)))
        for pair, (_, a, b) in zip(saved, now)
    )


# -- the declared fields -----------------------------------------------------------------------
def _int_text(value: str) -> int:
    """A count written as decimal digits (``int`` would also take '-4' or ' 4_0')."""
    if not (isinstance(value, str) and value.strip().isdigit()):
        raise ValueError(value)
    return int(value)


def _file_rank(value: str) -> int | None:
    return None if value == "mixed" else _int_text(value)


def _names(allow_empty: bool):
    def problem(value: list) -> str | None:
        if all(isinstance(v, str) and v for v in value) and (value or allow_empty):
            return None
        return _NAMES + ("" if allow_empty else " (at least one)")
    return problem


_NAMES = "a JSON list of non-empty strings"


def _layers_problem(value: list) -> str | None:
    wrong = _names(False)(value)
    if wrong:
        return wrong
    bad = [p for p in value if p.startswith(".") or p.endswith(".") or ".." in p]
    if bad:
        return f"a list of dotted module paths ({bad[0]!r} is not one)"
    if len(set(value)) != len(value):
        dup = next(p for p in value if value.count(p) > 1)
        return f"a list naming each layer once ({dup!r} is listed twice)"
    return None


def _kind_problem(value: str) -> str | None:
    names = kind_names()
    return None if value in names else f"a known LoRA kind ({', '.join(names)})"


@functools.cache
def metadata_schema() -> Schema:
    """Every metadata field of an adapter file (the checks and the docs' table)."""
    text = "str"
    return Schema([
        Field("format", text, REQUIRED, choices=(FORMAT,), help="the file format's name"),
        Field("format_version", text, REQUIRED, choices=(str(FORMAT_VERSION),),
              help="the file format's version"),
        Field("lora_kind", text, REQUIRED, check=_kind_problem,
              want=f"a known LoRA kind ({', '.join(kind_names())})",
              help="the kind of adapter (what its tensors mean)"),
        Field("scale", "float", REQUIRED, decode=float, low=0, low_open=True,
              help="the change is scale x B A on the unmodified base weight"),
        Field("alpha", "float", REQUIRED, decode=float, low=0, low_open=True,
              help="LoRA alpha (scale = alpha/rank, alpha/sqrt(rank) with use_rslora)"),
        Field("layers", "list", REQUIRED, decode=json.loads, check=_layers_problem,
              want=_NAMES + " (at least one)", help="the adapted layers' module paths"),
        Field("rank", "int", None, nullable=True, decode=_int_text, low=1,
              help="the trained rank"),
        Field("file_rank", "int", None, nullable=True, decode=_file_rank, low=1,
              shown_default="mixed", want="a positive integer or mixed",
              help="the rank of the stored factors (PiSSA: 2 x rank)"),
        Field("targets", "list", [], decode=json.loads, check=_names(True), want=_NAMES,
              shown_default="the layers", help="the target patterns the adapter was made with"),
        Field("exclude", "list", [], decode=json.loads, check=_names(True), want=_NAMES,
              help="patterns left out of the targets"),
        Field("dropout", "float", 0.0, decode=float, low=0, high=1, high_open=True,
              help="dropout on the adapter's input while training"),
        Field("use_rslora", "bool", False, decode=json.loads, want="JSON true or false",
              help="rank-stabilised scaling"),
        Field("storage_dtype", text, "float32", choices=tuple(STORAGES),
              help="how the factors are stored (storage.py)"),
        Field("storage_rel_error", text, None, nullable=True,
              help="relative error of the stored change (lossy storages)"),
        Field("init", text, "loaded", help="the initialisation it was trained from"),
        Field("converted", text, "", help="pissa->delta when PiSSA factors were converted"),
        Field("model_variant", text, "", shown_default="unknown",
              help="the model variant it belongs to (checked on load)"),
        Field("base_fingerprint", text, "", shown_default="none",
              help="statistics of the adapted base weights (a mismatch only warns)"),
        Field("library_version", text, "", help="the selva_core version that wrote it"),
        Field("user", "dict", {}, decode=json.loads, want="a JSON object",
              help="the caller's metadata (e.g. the training run's settings)"),
    ], label="metadata {name}", style="is_not")


@dataclass(frozen=True)
class AdapterFileInfo:
    """The validated metadata of an adapter file (see the module docstring for the fields)."""

    kind: str
    scale: float
    alpha: float
    rank: int | None
    file_rank: int | None
    layers: tuple[str, ...]
    targets: tuple[str, ...]
    exclude: tuple[str, ...]
    dropout: float
    use_rslora: bool
    storage: str
    model_variant: str | None
    init: str
    fingerprint: str | None
    version: int
    user: dict[str, Any] = field(default_factory=dict)


def check_format_version(meta: Mapping[str, str], path) -> int:
    """The file's format version; one :class:`AdapterLoadError` unless it is this library's."""
    raw = meta.get("format_version", "0")
    try:
        version = int(raw)
    except ValueError:
        raise AdapterLoadError(
            f"{path}: metadata format_version {raw!r} is not an integer") from None
    if version != FORMAT_VERSION:
        raise AdapterLoadError(
            f"{path} has adapter format version {version}; this library reads version "
            f"{FORMAT_VERSION} (update selva_core, or save the adapter again with this one)")
    return version


# format and format_version are checked first (check_format_version), the rest are information
_CHECKED = ("lora_kind", "scale", "alpha", "layers", "rank", "file_rank", "targets", "exclude",
            "dropout", "use_rslora", "storage_dtype", "init", "model_variant", "base_fingerprint",
            "user")


def parse_adapter_metadata(
    meta: Mapping[str, str], path: str | os.PathLike = "adapter"
) -> AdapterFileInfo:
    """Validate an adapter file's metadata; one :class:`AdapterLoadError` naming the file and
    every bad field."""
    if not isinstance(meta, Mapping) or not all(isinstance(v, str) for v in meta.values()):
        raise AdapterLoadError(f"{path}: metadata must map names to strings")
    version = check_format_version(meta, path)
    problems: list[str] = []
    v = metadata_schema().parse(meta, problems, only=_CHECKED, allow_unknown=True)
    if problems:
        raise AdapterLoadError(f"{path}: " + "; ".join(problems))
    layers = tuple(v["layers"])
    return AdapterFileInfo(
        kind=v["lora_kind"], scale=float(v["scale"]), alpha=float(v["alpha"]), rank=v["rank"],
        file_rank=v["file_rank"], layers=layers, targets=tuple(v["targets"]) or layers,
        exclude=tuple(v["exclude"]), dropout=float(v["dropout"]), use_rslora=v["use_rslora"],
        storage=v["storage_dtype"], model_variant=v["model_variant"] or None,
        init=v["init"] or "loaded", fingerprint=v["base_fingerprint"] or None,
        version=version, user=v["user"],
    )
