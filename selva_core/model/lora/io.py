"""Adapter files: safetensors with metadata, strict loading, training-state dicts.

File layout (format ``selva-lora``): per adapted layer ``<module path>.lora_A`` (R, in[, k]) and
``<module path>.lora_B`` (out, R[, 1]), plus ``<module path>.lora_magnitude`` (out,) fp32 for
DoRA. The change on the *unmodified* base weight is ``scale * B A`` with ``scale`` from the
metadata. PiSSA adapters are written converted to that plain delta: ``A' = [A; A0]``,
``B' = [B, -B0]`` (R = 2r, same scale), so files never carry base weights and load onto a clean
base with no SVD. How the factors are stored (``storage_dtype``: exact float32, q16 fixed point
with ``lora_A_qscale``/``lora_B_qscale`` steps, float16, bfloat16) is ``storage.py``'s job; by
default plain adapters are float32 and PiSSA's rank-2r deltas q16. Version 1 files hold floats
only; version 2 adds q16 (float files are still written as version 1).

Metadata (all strings): ``format``, ``format_version``, ``library_version``, ``variant``
(lora/dora), ``init``, ``converted``, ``rank`` (trained rank), ``file_rank``, ``alpha``,
``scale``, ``use_rslora``, ``dropout``, ``storage_dtype``, ``targets``/``exclude``/``layers``
(JSON lists), ``base_variant`` (e.g. small_16k) and ``base_fingerprint`` (hash of rounded
statistics of the adapted base weights; a mismatch on load is a warning, the variant a hard
check), ``user`` (JSON object of caller metadata such as training steps).

Loading checks, before touching the model: safetensors (pickles are refused), format and
version, the storage, the exact key set, tensor dtypes, the base variant, the layers and their
shapes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ... import __version__
from ...atomic import save_safetensors_atomic
from .config import LoRAConfig
from .layers import AdapterState, LoRALayer
from .runtime import (
    AdapterHandle,
    AdapterSpec,
    adapter_layers,
    attach_adapter_states,
    get_layer,
    get_spec,
)
from .storage import (
    FLOAT_STORAGES,
    STORAGES,
    check_layer_tensors,
    decode,
    encode,
    file_keys,
    resolve_storage,
)
from .variant import get_variant

logger = logging.getLogger(__name__)

FORMAT = "selva-lora"
FORMAT_VERSION = 2  # 2 added the q16 storage; float files are still written as version 1


# -- identity of the base model ----------------------------------------------------------------
def base_fingerprint(model: nn.Module, layers: list[str]) -> str:
    """16-hex hash of each adapted layer's name, shape, sum |W| and sum W^2 (4 digits).

    Rounded statistics survive a bf16/fp32 cast of the same checkpoint but differ between
    checkpoints, so the check catches "adapter trained on another base" without storing it.
    """
    h = hashlib.sha256()
    for path in sorted(layers):
        module = model.get_submodule(path)
        w = module.original_weight2d() if isinstance(module, LoRALayer) else module.weight
        w = w.detach().double()
        h.update(
            f"{path}|{tuple(w.shape)}|{w.abs().sum().item():.4e}|{w.pow(2).sum().item():.4e}\n"
            .encode()
        )
    return h.hexdigest()[:16]


def model_variant_name(model: nn.Module) -> str | None:
    """The model's base variant: its ``variant_name`` attribute, else the one registered
    variant whose generator config equals ``model.cfg`` (SelvaGenerator), else None."""
    name = getattr(model, "variant_name", None)
    if isinstance(name, str):
        return name
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        return None
    from ...variants import VARIANTS

    matches = [n for n, v in VARIANTS.items() if v.generator == cfg]
    return matches[0] if len(matches) == 1 else None


# -- state dicts -------------------------------------------------------------------------------
def adapter_storage(model: nn.Module, name: str = "default", storage="auto") -> str:
    """The concrete storage of adapter ``name`` (``auto``: see ``storage.resolve_storage``)."""
    spec = get_spec(model, name)
    file_rank = max(st.factors()[0].shape[0] for st in adapter_layers(model, name).values())
    return resolve_storage(storage, file_rank, spec.config.rank)


def adapter_state_dict(
    model: nn.Module, name: str = "default", storage: str | torch.dtype = "float32"
) -> dict[str, torch.Tensor]:
    """File form of adapter ``name`` (PiSSA converted to the plain delta), detached copies.

    ``storage``: ``float32`` (default here: exact), ``q16``, ``float16``, ``bfloat16`` or
    ``auto`` (see ``storage.py``; q16 holds int16 factors plus per-direction steps). DoRA
    magnitudes are always float32.
    """
    kind = adapter_storage(model, name, storage)
    out: dict[str, torch.Tensor] = {}
    for path, st in adapter_layers(model, name).items():
        A, B = st.factors()
        for key, t in encode(A, B, kind).items():
            out[f"{path}.{key}"] = t
        for key in st.impl.extra_keys:
            out[f"{path}.{key}"] = getattr(st, key).detach().float().clone()
    return out


_TRAIN_KEYS = ("lora_A", "lora_B", "lora_A0", "lora_B0")


def training_state_dict(model: nn.Module, name: str = "default") -> dict[str, torch.Tensor]:
    """Raw tensors of adapter ``name`` for checkpoints/resume (PiSSA's A0/B0 included)."""
    out: dict[str, torch.Tensor] = {}
    for path, st in adapter_layers(model, name).items():
        for key in (*_TRAIN_KEYS, *st.impl.extra_keys):
            t = getattr(st, key, None)
            if t is not None:
                out[f"{path}.{key}"] = t.detach().clone()
    return out


@torch.no_grad()
def load_training_state_dict(
    model: nn.Module, state: dict[str, torch.Tensor], name: str = "default"
) -> None:
    """Copy a :func:`training_state_dict` back into the attached adapter ``name`` (strict)."""
    layers = adapter_layers(model, name)
    targets: dict[str, torch.Tensor] = {}
    for path, st in layers.items():
        for key in (*_TRAIN_KEYS, *st.impl.extra_keys):
            t = getattr(st, key, None)
            if t is not None:
                targets[f"{path}.{key}"] = t
    _check_keys(set(state), set(targets), f"training state of adapter {name!r}")
    for k, t in targets.items():
        if tuple(state[k].shape) != tuple(t.shape):
            raise ValueError(
                f"training state of adapter {name!r}: {k} has shape {tuple(state[k].shape)}, "
                f"the attached adapter expects {tuple(t.shape)}"
            )
    for k, t in targets.items():
        t.copy_(state[k])


# -- files -------------------------------------------------------------------------------------
def adapter_metadata(
    model: nn.Module, name: str = "default", user: dict[str, Any] | None = None
) -> dict[str, str]:
    """Metadata of adapter ``name`` as written to files."""
    layers = adapter_layers(model, name)
    spec = get_spec(model, name)
    cfg = spec.config
    states = list(layers.values())
    ranks = {st.factors()[0].shape[0] for st in states}
    converted = "pissa->delta" if any(st.is_pissa for st in states) else ""
    variant_name = spec.variant_name or model_variant_name(model) or ""
    return {
        "format": FORMAT,
        "format_version": "1",
        "library_version": __version__,
        "variant": states[0].variant,
        "init": spec.init,
        "converted": converted,
        "rank": str(cfg.rank),
        "file_rank": str(ranks.pop()) if len(ranks) == 1 else "mixed",
        "alpha": repr(cfg.effective_alpha),
        "scale": repr(states[0].scale),
        "use_rslora": json.dumps(cfg.use_rslora),
        "dropout": repr(cfg.dropout),
        "targets": json.dumps(list(cfg.targets)),
        "exclude": json.dumps(list(cfg.exclude)),
        "layers": json.dumps(list(layers)),
        "base_variant": variant_name,
        "base_fingerprint": base_fingerprint(model, list(layers)),
        "user": json.dumps(user or {}, default=str),
    }


def save_adapter(
    model: nn.Module,
    path: str | os.PathLike,
    name: str = "default",
    metadata: dict[str, Any] | None = None,
    storage: str | torch.dtype = "auto",
) -> Path:
    """Write adapter ``name`` to ``path`` (safetensors, atomic). ``metadata``: caller extras.

    ``storage``: ``auto`` (default: exact float32 for adapters stored at their trained rank,
    ``q16`` for PiSSA's rank-2r delta, which keeps it at the size of a plain adapter),
    ``float32``, ``q16``, ``float16`` or ``bfloat16`` (a torch float dtype works too); see
    ``storage.py`` for the formats and their errors.
    """
    kind = adapter_storage(model, name, storage)
    tensors = adapter_state_dict(model, name, kind)
    meta = adapter_metadata(model, name, metadata)
    meta["storage_dtype"] = kind
    if kind not in FLOAT_STORAGES:
        meta["format_version"] = str(FORMAT_VERSION)  # readers of version 1 know floats only
    ranks = {t.shape[0] for k, t in tensors.items() if k.endswith(".lora_A")}
    meta["file_rank"] = str(ranks.pop()) if len(ranks) == 1 else "mixed"
    out = save_safetensors_atomic(path, tensors, meta)
    logger.info("saved LoRA adapter %r (%d tensors, %s) to %s", name, len(tensors), kind, out)
    return out


def _refuse_pickle(path: Path) -> None:
    """Refuse pickles / torch zip files by their header, before any parser sees them.

    A safetensors file starts with an 8-byte little-endian header length followed by ``{``.
    """
    with open(path, "rb") as f:
        head = f.read(9)
    n = int.from_bytes(head[:8], "little") if len(head) >= 8 else -1
    if len(head) == 9 and head[8:9] == b"{" and 0 < n <= path.stat().st_size - 8:
        return
    if head[:1] == b"\x80" or head[:2] == b"PK":
        raise ValueError(
            f"{path} is a pickle / torch.save file; adapters are only read from safetensors "
            "because pickles can run code. Re-save it as safetensors (or import it with "
            "import_peft if it is a PEFT folder)."
        )


def read_adapter_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of an adapter file, with format and pickle checks."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"adapter file {path} does not exist")
    _refuse_pickle(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as e:
        raise ValueError(f"{path} is not a valid safetensors file ({e})") from None
    if meta.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not a {FORMAT} adapter (metadata format={meta.get('format')!r}); "
            "PEFT folders load with import_peft"
        )
    try:
        version = int(meta.get("format_version", "0"))
    except ValueError:
        raise ValueError(
            f"{path}: metadata format_version {meta.get('format_version')!r} is not an integer"
        ) from None
    if not 1 <= version <= FORMAT_VERSION:
        raise ValueError(
            f"{path} has adapter format version {version}; this library reads 1..{FORMAT_VERSION}"
            " (update selva_core)"
        )
    return tensors, meta


def _check_keys(found: set[str], expected: set[str], what: str) -> None:
    missing, extra = sorted(expected - found), sorted(found - expected)
    if missing or extra:
        def show(keys):
            return ", ".join(keys[:6]) + (f" ... ({len(keys)} in all)" if len(keys) > 6 else "")

        parts = []
        if missing:
            parts.append(f"missing keys: {show(missing)}")
        if extra:
            parts.append(f"unexpected keys: {show(extra)}")
        raise ValueError(f"{what} does not match: " + "; ".join(parts))


def _load_json(meta: dict[str, str], key: str, path: Path):
    try:
        return json.loads(meta[key])
    except (KeyError, json.JSONDecodeError):
        raise ValueError(f"{path}: metadata field {key!r} is missing or not JSON") from None


def _meta_number(meta: dict[str, str], key: str, path: Path) -> float:
    """A positive finite number from the metadata, or one error naming the file and field."""
    try:
        value = float(meta[key])
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{path}: metadata {key}={meta[key]!r} is not a positive number")
    return value


def load_adapter(
    model: nn.Module,
    path: str | os.PathLike,
    name: str = "default",
    strength: float = 1.0,
    expected_variant: str | None = None,
    *,
    freeze_base: bool = True,
) -> AdapterHandle:
    """Attach the adapter stored in ``path`` as ``name``; the model is unchanged on error.

    ``expected_variant`` (or the model's ``variant_name`` attribute) must equal the file's base
    variant when both are known. A different base-weight fingerprint only logs a warning.
    """
    path = Path(path)
    if not math.isfinite(float(strength)):
        raise ValueError(f"strength must be finite, got {strength!r}")
    tensors, meta = read_adapter_file(path)
    missing = [k for k in ("variant", "scale", "alpha", "layers") if k not in meta]
    if missing:
        raise ValueError(f"{path}: metadata lacks the required fields {missing}")
    variant = meta["variant"]
    try:
        impl = get_variant(variant)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    scale = _meta_number(meta, "scale", path)
    alpha = _meta_number(meta, "alpha", path)
    layers = _load_json(meta, "layers", path)
    if not isinstance(layers, list) or not layers:
        raise ValueError(f"{path}: metadata lists no adapted layers")
    storage = meta.get("storage_dtype", "float32")
    if storage not in STORAGES:
        raise ValueError(
            f"{path}: metadata storage_dtype {storage!r} is not one of {list(STORAGES)}"
        )
    keys = (*file_keys(storage), *impl.extra_keys)
    _check_keys(set(tensors), {f"{p}.{k}" for p in layers for k in keys}, f"adapter file {path}")
    for p in layers:
        check_layer_tensors({k: tensors[f"{p}.{k}"] for k in file_keys(storage)}, storage,
                            f"{path}: {p}")
        for key in impl.extra_keys:
            if not tensors[f"{p}.{key}"].is_floating_point():
                raise ValueError(f"{path}: {p}.{key} is not floating point")
    file_variant = meta.get("base_variant") or None
    want = expected_variant or model_variant_name(model)
    if file_variant and want and file_variant != want:
        raise ValueError(
            f"{path} was trained for base variant {file_variant!r}, but the model is {want!r}; "
            "load it onto a matching generator"
        )
    device = _model_device(model, layers[0])
    states = {}
    for p in layers:
        A, B = decode({k: tensors[f"{p}.{k}"] for k in file_keys(storage)}, storage)
        st = AdapterState(
            A.to(device, torch.float32),
            B.to(device, torch.float32),
            scale=scale, variant=variant, init="loaded", strength=strength,
        )
        for key in impl.extra_keys:
            setattr(st, key, nn.Parameter(tensors[f"{p}.{key}"].to(device, torch.float32)))
        states[p] = st
    _check_extra_shapes(model, states, impl, path)
    try:
        rank = int(meta.get("rank", states[layers[0]].rank))
    except ValueError:
        raise ValueError(f"{path}: metadata rank {meta['rank']!r} is not an integer") from None
    try:
        cfg = LoRAConfig(
            rank=rank,
            alpha=alpha,
            use_rslora="use_rslora" in meta and bool(_load_json(meta, "use_rslora", path)),
            variant=variant,
            targets=tuple(_load_json(meta, "targets", path)) or tuple(layers),
            exclude=tuple(_load_json(meta, "exclude", path)),
        )
    except (TypeError, ValueError) as e:
        msg = str(e)
        raise ValueError(msg if str(path) in msg else f"{path}: metadata: {msg}") from None
    spec = AdapterSpec(
        name=name, config=cfg, scale=scale, variant_name=file_variant or want,
        init=meta.get("init", "loaded"), source=str(path),
    )
    try:
        handle = attach_adapter_states(model, spec, states, freeze_base=freeze_base)
    except ValueError as e:
        raise ValueError(f"cannot load {path}: {e}") from None
    fp_now = base_fingerprint(model, layers)
    if meta.get("base_fingerprint") and meta["base_fingerprint"] != fp_now:
        logger.warning(
            "%s was trained on different base weights (fingerprint %s, model %s); its effect "
            "may differ", path, meta["base_fingerprint"], fp_now,
        )
    logger.info(
        "loaded LoRA adapter %r from %s: %d layers, variant %s, scale %.6g, strength %g",
        name, path, len(layers), variant, scale, strength,
    )
    return handle


def _model_device(model: nn.Module, path: str) -> torch.device:
    module = get_layer(model, path)
    w = module.weight if hasattr(module, "weight") else next(module.parameters())
    return w.device


def _check_extra_shapes(model: nn.Module, states: dict[str, AdapterState], impl, path) -> None:
    for p, st in states.items():
        for key in impl.extra_keys:
            t = getattr(st, key)
            out_dim = st.lora_B.shape[0]
            if tuple(t.shape) != (out_dim,):
                raise ValueError(
                    f"cannot load {path}: {p}.{key} has shape {tuple(t.shape)}, expected "
                    f"({out_dim},)"
                )
