"""Adapter files: safetensors with metadata, validated loading, training-state dicts.

File layout (format ``selva-lora``): per adapted layer ``<module path>.lora_A`` (R, in[, k]) and
``<module path>.lora_B`` (out, R[, 1]), plus ``<module path>.lora_magnitude`` (out,) fp32 for
DoRA, ``<module path>.lora_core`` (R, R) for LoRA-XS (change ``scale * B core A``; the shapes
of a kind's extra tensors come from its ``extra_shapes``). Kinds without factors hold only
their own tensors, float32: ``<module path>.ia3_l`` (IA3) or ``<module path>.hra_u`` (HRA).
The change on the *unmodified* base weight is ``scale * B A`` with ``scale`` from the
metadata. PiSSA adapters are written converted to that plain delta: ``A' = [A; A0]``,
``B' = [B, -B0]`` (R = 2r, same scale), so files never carry base weights and load onto a clean
base with no SVD. How the factors are stored (``storage_dtype``: exact float32, q16 fixed point
with ``lora_A_qscale``/``lora_B_qscale`` steps, float16, bfloat16) is ``storage.py``'s job; by
default plain adapters are float32 and PiSSA's rank-2r deltas q16.

The metadata's fields, their checks and the base's fingerprint are ``metadata.py``'s; the
pre-attach check of each layer's change is ``precheck.py``'s.

Loading checks everything before touching the model, and every refusal is one
:class:`AdapterLoadError` naming the file and the field or tensor: a folder or pickle where a
safetensors file belongs, format and version, each metadata field by type, the storage, the
exact key set, tensor dtypes, finite values (NaN or infinite factors, q16 steps or magnitudes
would make every output NaN), the model variant, the layers (which must exist, be adaptable and
not lie inside another adapter's wrapper) and their shapes.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ... import __version__
from ...atomic import save_safetensors_atomic
from ...run_folder import RunFolder
from ...variants import STRENGTH_RANGE  # noqa: F401  (re-exported with the LoRA library)
from .config import LoRAConfig
from .errors import AdapterLoadError, AdapterNotFoundError
from .kind import get_kind
from .layers import AdapterState
from .metadata import (
    BASE_STATS_RTOL,
    FORMAT,
    FORMAT_VERSION,
    AdapterFileInfo,
    base_fingerprint,
    check_format_version,
    parse_adapter_metadata,
    same_base,
)
from .precheck import check_layer_changes
from .runtime import (
    AdapterHandle,
    AdapterSpec,
    adapter_layers,
    attach_adapter_states,
    get_layer,
    get_spec,
)
from .storage import (
    change_error,
    check_layer_tensors,
    decode,
    encode,
    file_keys,
    resolve_storage,
)

logger = logging.getLogger(__name__)

def model_variant_name(model: nn.Module) -> str | None:
    """The model variant of ``model``: its ``variant_name`` attribute, else the one registered
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
    states = adapter_layers(model, name).values()
    impl = next(iter(states)).impl
    if not impl.has_factors:
        if storage not in ("auto", "float32", torch.float32):
            raise ValueError(
                f"adapter {name!r} is of kind {impl.name!r}, whose tensors are stored exactly "
                f"(float32); storage {storage!r} does not apply to it")
        return "float32"
    file_rank = max(st.factors()[0].shape[0] for st in states)
    pissa = spec.init.startswith("pissa") or any(st.is_pissa for st in states)
    kind = resolve_storage(storage, file_rank, spec.config.rank, pissa=pissa)
    if kind != "float32" and not impl.plain_factors:
        raise ValueError(
            f"adapter {name!r} is of kind {impl.name!r}, whose factors are stored exactly "
            f"(float32); storage {kind!r} would re-factorise them"
        )
    return kind


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
        if st.impl.has_factors:
            for key, t in encode(*st.factors(), kind).items():
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
    ranks = {st.factors()[0].shape[0] if st.impl.has_factors else st.rank for st in states}
    converted = "pissa->delta" if any(st.is_pissa for st in states) else ""
    model_variant = spec.variant_name or model_variant_name(model) or ""
    return {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "library_version": __version__,
        "lora_kind": states[0].kind,
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
        "model_variant": model_variant,
        "base_fingerprint": spec.base_fingerprint or base_fingerprint(model, list(layers)),
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

    ``storage``: ``auto`` (default: exact float32, except ``q16`` for a PiSSA adapter's
    rank-2r delta, which keeps it at the size of a plain adapter), ``float32``, ``q16``,
    ``float16`` or ``bfloat16`` (a torch float dtype works too); see ``storage.py``. A lossy
    storage is logged with the relative error of the stored change, which the file also
    records (``storage_rel_error``).
    """
    kind = adapter_storage(model, name, storage)
    tensors = adapter_state_dict(model, name, kind)
    meta = adapter_metadata(model, name, metadata)
    meta["storage_dtype"] = kind
    ranks = {t.shape[0] for k, t in tensors.items() if k.endswith(".lora_A")}
    if ranks:  # kinds without factors keep adapter_metadata's
        meta["file_rank"] = str(ranks.pop()) if len(ranks) == 1 else "mixed"
    if kind != "float32":
        err = max(
            change_error(*st.factors(), {k: tensors[f"{p}.{k}"] for k in file_keys(kind)}, kind)
            for p, st in adapter_layers(model, name).items()
        )
        meta["storage_rel_error"] = f"{err:.3e}"
        logger.info(
            "adapter %r stored as %s: relative error of the stored change up to %.2g "
            "(storage='float32' is exact)", name, kind, err,
        )
    out = save_safetensors_atomic(path, tensors, meta)
    logger.info("saved LoRA adapter %r (%d tensors, %s) to %s", name, len(tensors), kind, out)
    return out


# -- reading and validating --------------------------------------------------------------------


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
        raise AdapterLoadError(
            f"{path} is a pickle / torch.save file; adapters are only read from safetensors "
            "because pickles can run code. Re-save it as safetensors (or import it with "
            "import_peft if it is a PEFT folder)."
        )


def _folder_hint(path: Path) -> str:
    if (path / "adapter_config.json").is_file():
        return "it looks like a PEFT folder: load it with import_peft"
    files = sorted(p.name for p in path.glob("*.safetensors"))
    if files:
        shown = ", ".join(files[:3]) + (" ..." if len(files) > 3 else "")
        return f"pass one of the .safetensors files inside it ({shown})"
    return "pass the adapter's .safetensors file"


def resolve_adapter_path(path: str | os.PathLike) -> Path:
    """``path`` as an adapter file: a training run's folder means its
    ``adapter_final.safetensors``; anything else that is not a readable file raises
    :class:`AdapterLoadError` saying what it is (a folder, a symbolic-link loop, a dangling
    link; :class:`AdapterNotFoundError` when nothing is there)."""
    path = Path(path)
    if path.is_dir():
        final = RunFolder(path).final_adapter
        if final.is_file():
            return final
        raise AdapterLoadError(f"{path} is a folder, not an adapter file; {_folder_hint(path)}")
    try:
        path.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise AdapterLoadError(f"{path} is a symbolic-link loop (its links lead back to "
                                   "themselves); point it at the adapter file") from None
        if path.is_symlink():
            raise AdapterNotFoundError(f"adapter file {path} is a link to {os.readlink(path)}, "
                                       "which does not exist") from None
        raise AdapterNotFoundError(f"adapter file {path} does not exist") from None
    if not path.is_file():
        raise AdapterLoadError(f"{path} is not a regular file; pass the adapter's "
                               ".safetensors file")
    return path


def read_adapter_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of an adapter file, with format, version and pickle checks.

    Raises :class:`AdapterLoadError` (:class:`AdapterNotFoundError` when nothing is there).
    A training run's folder is not an adapter file here (only :func:`resolve_adapter_path`
    maps it to its final adapter).
    """
    path = Path(path)
    if path.is_dir():
        raise AdapterLoadError(f"{path} is a folder, not an adapter file; {_folder_hint(path)}")
    path = resolve_adapter_path(path)
    try:
        _refuse_pickle(path)
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            # own, aligned memory: a view into the file's buffer sits at whatever offset the
            # header length gives, and SIMD kernels then round differently
            tensors = {k: f.get_tensor(k).clone() for k in f.keys()}
    except OSError as e:
        raise AdapterLoadError(f"cannot read adapter file {path}: {e.strerror or e}") from None
    except (SafetensorError, RuntimeError, ValueError) as e:
        if isinstance(e, AdapterLoadError):
            raise
        raise AdapterLoadError(f"{path} is not a valid safetensors file ({e})") from None
    if meta.get("format") != FORMAT:
        raise AdapterLoadError(
            f"{path} is not a {FORMAT} adapter (metadata format={meta.get('format')!r}); "
            "PEFT folders load with import_peft"
        )
    check_format_version(meta, path)
    return tensors, meta


def _check_keys(found: set[str], expected: set[str], what: str, error=ValueError) -> None:
    missing, extra = sorted(expected - found), sorted(found - expected)
    if missing or extra:
        def show(keys):
            return ", ".join(keys[:6]) + (f" ... ({len(keys)} in all)" if len(keys) > 6 else "")

        parts = []
        if missing:
            parts.append(f"missing keys: {show(missing)}")
        if extra:
            parts.append(f"unexpected keys: {show(extra)}")
        raise error(f"{what} does not match: " + "; ".join(parts))


def check_finite(tensors: Mapping[str, torch.Tensor], where) -> None:
    """One :class:`AdapterLoadError` naming the first float tensor holding NaN or inf."""
    for key, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            n = int((~torch.isfinite(t)).sum())
            raise AdapterLoadError(
                f"{where}: {key} holds {n} NaN or infinite value(s); the adapter is damaged "
                "(it would make every output NaN). Use an earlier file or retrain."
            )


def _adapter_states(
    tensors: Mapping[str, torch.Tensor], info: AdapterFileInfo, path, device, strength: float
) -> dict[str, AdapterState]:
    """Validated ``AdapterState``s (fp32, on ``device``) from the file tensors."""
    impl = get_kind(info.kind)
    if not impl.has_factors:
        return _factor_free_states(tensors, info, path, device, strength, impl)
    keys = (*file_keys(info.storage), *impl.extra_keys)
    _check_keys(set(tensors), {f"{p}.{k}" for p in info.layers for k in keys},
                f"adapter file {path}", AdapterLoadError)
    for p in info.layers:
        layer_tensors = {k: tensors[f"{p}.{k}"] for k in file_keys(info.storage)}
        A, B = layer_tensors["lora_A"], layer_tensors["lora_B"]
        if (A.dim() not in (2, 3) or B.dim() != A.dim() or B.shape[1] != A.shape[0]
                or A.shape[0] == 0):
            raise AdapterLoadError(
                f"{path}: layer {p} has factor shapes A {tuple(A.shape)}, B {tuple(B.shape)}, "
                "which are not a LoRA pair (A (r, in[, k]), B (out, r[, 1]), r >= 1)"
            )
        try:
            check_layer_tensors(layer_tensors, info.storage, f"{path}: {p}")
        except ValueError as e:
            raise AdapterLoadError(str(e)) from None
        shapes = impl.extra_shapes(layer_tensors["lora_A"], layer_tensors["lora_B"])
        for key in impl.extra_keys:
            t = tensors[f"{p}.{key}"]
            if not t.is_floating_point():
                raise AdapterLoadError(f"{path}: {p}.{key} is {t.dtype}, not floating point")
            if tuple(t.shape) != shapes[key]:
                raise AdapterLoadError(
                    f"{path}: {p}.{key} has shape {tuple(t.shape)}, expected {shapes[key]}"
                )
        if info.file_rank is not None and layer_tensors["lora_A"].shape[0] != info.file_rank:
            raise AdapterLoadError(
                f"{path}: metadata file_rank={info.file_rank} but layer {p} holds rank "
                f"{layer_tensors['lora_A'].shape[0]}"
            )
    check_finite({k: tensors[k] for k in sorted(tensors)}, path)
    states = {}
    for p in info.layers:
        A, B = decode({k: tensors[f"{p}.{k}"] for k in file_keys(info.storage)}, info.storage)
        check_finite({f"{p}.lora_A (decoded)": A, f"{p}.lora_B (decoded)": B}, path)
        st = AdapterState(
            A.to(device, torch.float32),
            B.to(device, torch.float32),
            scale=info.scale, kind=info.kind, init="loaded", strength=strength,
            dropout=info.dropout,
        )
        for key in impl.extra_keys:
            setattr(st, key, nn.Parameter(tensors[f"{p}.{key}"].to(device, torch.float32)))
        states[p] = st
    return states


def _factor_free_states(tensors, info, path, device, strength, impl) -> dict[str, AdapterState]:
    """:func:`_adapter_states` for a kind without factors (ia3, hra): its tensors only,
    float32 storage; their fit to the layers is checked when attaching."""
    if info.storage != "float32":
        raise AdapterLoadError(f"{path}: storage_dtype {info.storage!r}: kind {info.kind!r} is "
                               "stored as float32 only")
    _check_keys(set(tensors), {f"{p}.{k}" for p in info.layers for k in impl.extra_keys},
                f"adapter file {path}", AdapterLoadError)
    for k in sorted(tensors):
        if not tensors[k].is_floating_point():
            raise AdapterLoadError(f"{path}: {k} is {tensors[k].dtype}, not floating point")
    check_finite({k: tensors[k] for k in sorted(tensors)}, path)
    states = {}
    for p in info.layers:
        st = AdapterState(None, None, scale=info.scale, kind=info.kind, init="loaded",
                          strength=strength, dropout=info.dropout)
        for key in impl.extra_keys:
            setattr(st, key, nn.Parameter(tensors[f"{p}.{key}"].to(device, torch.float32)))
        states[p] = st
    return states


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

    ``expected_variant`` (or the model's own model variant) must equal the file's model variant
    when both are known. A different base-weight fingerprint only logs a warning. A bad file
    raises :class:`AdapterLoadError`.
    """
    tensors, meta = read_adapter_file(path)
    return load_adapter_tensors(model, tensors, meta, name, strength, expected_variant,
                                freeze_base=freeze_base, source=path)


def load_adapter_tensors(
    model: nn.Module,
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str],
    name: str = "default",
    strength: float = 1.0,
    expected_variant: str | None = None,
    *,
    freeze_base: bool = True,
    source: str | os.PathLike = "adapter",
) -> AdapterHandle:
    """:func:`load_adapter` for the contents of a file already read (``read_adapter_file``):
    one read can be attached to many models. ``source`` names it in errors and in the spec."""
    path = source
    try:
        strength = float(strength)
    except (TypeError, ValueError):
        strength = float("nan")
    if not math.isfinite(strength):
        raise ValueError(f"strength must be a finite number, got {strength!r}")
    if metadata.get("format") != FORMAT:
        raise AdapterLoadError(
            f"{path} is not a {FORMAT} adapter (metadata format={metadata.get('format')!r})"
        )
    info = parse_adapter_metadata(metadata, path)
    want = expected_variant or model_variant_name(model)
    if info.model_variant and want and info.model_variant != want:
        raise AdapterLoadError(
            f"{path} was trained for model variant {info.model_variant!r}, but the model is "
            f"{want!r}; load it onto a matching generator"
        )
    device = _model_device(model, info.layers[0], path)
    states = _adapter_states(tensors, info, path, device, strength)
    try:
        cfg = LoRAConfig(
            rank=info.rank or states[info.layers[0]].rank,
            alpha=info.alpha,
            use_rslora=info.use_rslora,
            kind=info.kind,
            targets=info.targets,
            exclude=info.exclude,
            dropout=info.dropout,
        )
    except (TypeError, ValueError) as e:
        raise AdapterLoadError(f"{path}: metadata: {e}") from None
    check_layer_changes(model, states, path)
    spec = AdapterSpec(
        name=name, config=cfg, scale=info.scale, variant_name=info.model_variant or want,
        init=info.init, source=str(path),
    )
    try:
        handle = attach_adapter_states(model, spec, states, freeze_base=freeze_base)
    except ValueError as e:
        raise AdapterLoadError(f"cannot load {path}: {e}") from None
    if info.fingerprint and not same_base(info.fingerprint, model, list(info.layers)):
        logger.warning(
            "%s was trained on different base weights (their statistics differ from this "
            "model's by more than %g); its effect may differ", path, BASE_STATS_RTOL,
        )
    logger.info(
        "loaded LoRA adapter %r from %s: %d layers, kind %s, scale %.6g, strength %g",
        name, path, len(info.layers), info.kind, info.scale, strength,
    )
    return handle


def _model_device(model: nn.Module, layer: str, path) -> torch.device:
    try:
        module = get_layer(model, layer)
    except ValueError as e:
        raise AdapterLoadError(f"cannot load {path}: {e}") from None
    w = getattr(module, "weight", None)
    if not isinstance(w, torch.Tensor):
        w = next(module.parameters(), None)
    return w.device if w is not None else torch.device("cpu")
