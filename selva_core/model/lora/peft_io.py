"""Export to and import from Hugging Face PEFT's LoRA folder layout.

A PEFT folder holds ``adapter_config.json`` and ``adapter_model.safetensors`` with keys
``base_model.model.<module path>.lora_A.weight`` / ``.lora_B.weight`` (peft's shapes, which are
also ours: conv A (r, in, k), conv B (out, r, 1)) and, for DoRA,
``base_model.model.<module path>.lora_magnitude_vector`` ((out,) for Linear, (1, out, 1) for
Conv1d). peft computes the scale as ``lora_alpha / r`` (``/ sqrt(r)`` with ``use_rslora``), per
module overridable by ``rank_pattern`` / ``alpha_pattern`` (regex keys matched as
``(.*\\.)?(key)$``).

IA3 and HRA adapters export as peft's ``IA3`` / ``HRA`` folders (keys ``base_model.model.<module
path>.ia3_l`` / ``.hra_u``, peft's shapes; Linear layers only, as peft has no Conv1d form of
either). Export writes the LoRA kinds in the plain-delta form (PiSSA converted, rank 2r), choosing
``lora_alpha`` so that peft's scale equals ours; layers whose rank differs get exact
``rank_pattern`` / ``alpha_pattern`` entries. Import reads such a folder; per-layer scales that
differ from the first layer's are folded into B, so one adapter keeps one scale. Import validates
the config's fields by type, the tensors' layout, dtypes and finite values, and the layers (as
``load_adapter`` does) before changing the model; a bad folder is one ``AdapterLoadError``.

Note: peft builds its conv ``lora_A``/``lora_B`` with ``type(base_layer)``, so on a
``ChannelLastConv1d`` they are channel-last convs too and plain peft LoRA runs correctly on
SelVA's generator; peft's DoRA conv path broadcasts the magnitude over dim 1 and does not.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections import Counter
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ...atomic import save_safetensors_atomic, write_json_atomic
from ...schema import REQUIRED, Field, Schema, is_int, is_number
from .config import LoRAConfig
from .errors import AdapterLoadError, AdapterNotFoundError
from .io import _model_device, adapter_state_dict, check_finite
from .layers import AdapterState
from .metadata import FORMAT
from .runtime import AdapterHandle, AdapterSpec, adapter_layers, attach_adapter_states, get_spec

logger = logging.getLogger(__name__)

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
_PREFIX = "base_model.model."
_KEY_RE = re.compile(
    r"^base_model\.model\.(?P<path>.+)\.(?P<kind>lora_A\.weight|lora_B\.weight|"
    r"lora_magnitude_vector(?:\.weight)?)$"
)


def _peft_alpha(scale: float, rank: int, use_rslora: bool) -> float:
    return scale * (math.sqrt(rank) if use_rslora else rank)


def export_peft(
    model: nn.Module,
    out_dir: str | os.PathLike,
    name: str = "default",
    base_model_name_or_path: str | None = None,
) -> Path:
    """Write adapter ``name`` as a PEFT LoRA folder (config + safetensors, atomic writes)."""
    out_dir = Path(out_dir)
    spec = get_spec(model, name)
    layers = adapter_layers(model, name)
    kind = next(iter(layers.values())).kind
    if kind in ("ia3", "hra"):
        return _export_vectors(model, out_dir, name, kind, base_model_name_or_path)
    if kind not in ("lora", "dora"):
        raise ValueError(f"adapter {name!r} is of kind {kind!r}, which peft has no LoRA form "
                         "for; export the model with selva_core.export instead")
    ours = adapter_state_dict(model, name)
    is_dora = kind == "dora"
    rs = spec.config.use_rslora
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    for path in layers:
        A, B = ours[f"{path}.lora_A"], ours[f"{path}.lora_B"]
        ranks[path] = A.shape[0]
        tensors[f"{_PREFIX}{path}.lora_A.weight"] = A
        tensors[f"{_PREFIX}{path}.lora_B.weight"] = B
        if is_dora:
            m = ours[f"{path}.lora_magnitude"]
            if isinstance(model.get_submodule(path).base_layer, nn.Conv1d):
                m = m.reshape(1, -1, 1)
            tensors[f"{_PREFIX}{path}.lora_magnitude_vector"] = m
    r = Counter(ranks.values()).most_common(1)[0][0]
    scale = spec.scale
    rank_pattern = {re.escape(p): k for p, k in ranks.items() if k != r}
    alpha_pattern = {pat: _peft_alpha(scale, k, rs) for pat, k in rank_pattern.items()}
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_model_name_or_path,
        "r": r,
        "lora_alpha": _peft_alpha(scale, r, rs),
        "use_rslora": rs,
        "use_dora": is_dora,
        "target_modules": sorted(layers),
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "lora_dropout": spec.config.dropout,
        "bias": "none",
        "lora_bias": False,
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "inference_mode": True,
    }
    save_safetensors_atomic(out_dir / PEFT_WEIGHTS, tensors, {"format": "pt"})
    write_json_atomic(out_dir / PEFT_CONFIG, config)
    logger.info("exported LoRA adapter %r as a PEFT folder %s (r=%d)", name, out_dir, r)
    return out_dir


def _export_vectors(model, out_dir: Path, name: str, kind: str, base) -> Path:
    """IA3 (``ia3_l``, peft's shapes already) or HRA (``hra_u``) as a PEFT folder; peft has
    these kinds for Linear layers only, so an adapter on a Conv1d is refused."""
    layers = adapter_layers(model, name)
    convs = [p for p in layers if not isinstance(model.get_submodule(p).base_layer, nn.Linear)]
    if convs:
        raise ValueError(
            f"adapter {name!r} ({kind}) adapts the Conv1d layer {convs[0]!r}; peft's "
            f"{kind.upper()} has no Conv1d layers: export the model with selva_core.export "
            "instead, or train on Linear layers only")
    key = "ia3_l" if kind == "ia3" else "hra_u"
    tensors = {f"{_PREFIX}{p}.{key}": getattr(st, key).detach().float().clone()
               for p, st in layers.items()}
    common = {
        "task_type": None, "base_model_name_or_path": base, "target_modules": sorted(layers),
        "modules_to_save": None, "inference_mode": True,
    }
    if kind == "ia3":
        from .kinds.ia3 import is_feedforward

        ff = sorted(p for p, st in layers.items() if is_feedforward(st))
        config = {"peft_type": "IA3", **common, "feedforward_modules": ff,
                  "fan_in_fan_out": False, "init_ia3_weights": True}
    else:
        ranks = {st.rank for st in layers.values()}
        if len(ranks) != 1:
            raise ValueError(f"adapter {name!r} has layers of different HRA ranks {sorted(ranks)}; "
                             "peft's HRA config holds one rank")
        config = {"peft_type": "HRA", **common, "r": ranks.pop(), "apply_GS": False,
                  "init_weights": True, "bias": "none"}
    save_safetensors_atomic(out_dir / PEFT_WEIGHTS, tensors, {"format": "pt"})
    write_json_atomic(out_dir / PEFT_CONFIG, config)
    logger.info("exported %s adapter %r as a PEFT folder %s", kind, name, out_dir)
    return out_dir


def _pattern_value(patterns: dict, path: str, default):
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", path):
            return value
    return default


def _pattern_map(check):
    """``Field.check`` of a ``rank_pattern`` / ``alpha_pattern``: regex keys, checked values."""
    def ok(v: dict) -> bool:
        if not all(isinstance(k, str) and check(x) for k, x in v.items()):
            return False
        try:
            for k in v:
                re.compile(k)
        except re.error:
            return False
        return True
    return ok


_UNSUPPORTED = "supported (only false / null is)"
#: The ``adapter_config.json`` fields the import reads (others are peft's and ignored).
PEFT_CONFIG_SCHEMA = Schema([
    Field("peft_type", "str", REQUIRED, choices=("LORA",),
          help="peft's adapter type; import reads LoRA folders"),
    Field("r", "int", REQUIRED, low=1, help="rank of the layers not in rank_pattern"),
    Field("lora_alpha", "float", REQUIRED, low=0, low_open=True,
          help="alpha of the layers not in alpha_pattern (scale = alpha/r)"),
    Field("use_rslora", "bool", False, nullable=True, help="scale = alpha/sqrt(r)"),
    Field("use_dora", "bool", False, nullable=True,
          help="DoRA: lora_magnitude_vector tensors present"),
    Field("lora_dropout", "float", 0.0, nullable=True, low=0, high=1, high_open=True,
          help="dropout on the adapter's input while training"),
    Field("rank_pattern", "dict", {}, nullable=True,
          want="an object of regex -> positive integer",
          check=_pattern_map(lambda v: is_int(v) and v >= 1),
          help="per-layer ranks (keys matched as (.*\\.)?(key)$)"),
    Field("alpha_pattern", "dict", {}, nullable=True,
          want="an object of regex -> positive number",
          check=_pattern_map(lambda v: is_number(v) and v > 0), help="per-layer alphas"),
    Field("lora_bias", "any", False, nullable=True, check=lambda v: not v,
          want=_UNSUPPORTED, help="trained biases: not supported"),
    Field("fan_in_fan_out", "any", False, nullable=True, check=lambda v: not v,
          want=_UNSUPPORTED, help="transposed weights: not supported"),
    Field("modules_to_save", "any", None, nullable=True, check=lambda v: not v,
          want=_UNSUPPORTED,
          help="full-weight modules: not supported"),
], label="{name}", style="is_not")


def read_peft_folder(
    peft_dir: str | os.PathLike,
) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
    """Validated ``adapter_config.json`` and per-layer tensors of a PEFT LoRA folder."""
    peft_dir = Path(peft_dir)
    if peft_dir.is_file():
        hint = ""
        try:
            with safe_open(str(peft_dir), framework="pt") as f:
                if (f.metadata() or {}).get("format") == FORMAT:
                    hint = "; it is a selva-lora adapter file: load it with load_adapter"
        except Exception:  # noqa: BLE001 - only a hint; the error below is the message
            pass
        raise AdapterLoadError(
            f"{peft_dir} is a file; import_peft takes a PEFT folder holding {PEFT_CONFIG} and "
            f"{PEFT_WEIGHTS}{hint}"
        )
    if not peft_dir.is_dir():
        raise AdapterNotFoundError(f"PEFT folder {peft_dir} does not exist")
    cfg_path, w_path = peft_dir / PEFT_CONFIG, peft_dir / PEFT_WEIGHTS
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise AdapterNotFoundError(f"PEFT folder {peft_dir} lacks {p.name}")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterLoadError(f"{cfg_path} is not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise AdapterLoadError(f"{cfg_path} must hold a JSON object, got {type(cfg).__name__}")
    problems: list[str] = []
    PEFT_CONFIG_SCHEMA.parse(cfg, problems, allow_unknown=True)
    if problems:
        raise AdapterLoadError(f"{cfg_path}: " + "; ".join(problems))
    try:
        with safe_open(str(w_path), framework="pt") as f:
            raw = {k: f.get_tensor(k) for k in f.keys()}
    except OSError as e:
        raise AdapterLoadError(f"cannot read {w_path}: {e.strerror or e}") from None
    except (SafetensorError, RuntimeError, ValueError) as e:
        raise AdapterLoadError(f"{w_path} is not a valid safetensors file ({e})") from None
    per_layer: dict[str, dict[str, torch.Tensor]] = {}
    unknown = []
    for k, t in raw.items():
        m = _KEY_RE.match(k)
        if not m:
            unknown.append(k)
            continue
        kind = m.group("kind").split(".")[0]
        per_layer.setdefault(m.group("path"), {})[kind] = t
    if unknown:
        raise AdapterLoadError(
            f"{w_path}: keys not in PEFT LoRA layout: {unknown[:5]}"
            + (f" ... ({len(unknown)} in all)" if len(unknown) > 5 else "")
        )
    if not per_layer:
        raise AdapterLoadError(f"{w_path} holds no LoRA tensors")
    use_dora = bool(cfg.get("use_dora") or False)
    need = {"lora_A", "lora_B"} | ({"lora_magnitude_vector"} if use_dora else set())
    for path, parts in per_layer.items():
        if set(parts) != need:
            raise AdapterLoadError(
                f"{w_path}: layer {path!r} has tensors {sorted(parts)}, expected {sorted(need)}"
            )
        for key, t in parts.items():
            if not t.is_floating_point():
                raise AdapterLoadError(f"{w_path}: {path}.{key} is {t.dtype}, not floating point")
        A, B = parts["lora_A"], parts["lora_B"]
        if (A.dim() not in (2, 3) or B.dim() != A.dim() or B.shape[1] != A.shape[0]
                or A.shape[0] == 0):
            raise AdapterLoadError(
                f"{w_path}: layer {path!r} has factor shapes A {tuple(A.shape)}, "
                f"B {tuple(B.shape)}, which are not a LoRA pair"
            )
        check_finite({f"{path}.{k}": t for k, t in parts.items()}, w_path)
    return cfg, per_layer


def import_peft(
    model: nn.Module,
    peft_dir: str | os.PathLike,
    name: str = "default",
    strength: float = 1.0,
    variant_name: str | None = None,
    *,
    freeze_base: bool = True,
) -> AdapterHandle:
    """Attach a PEFT LoRA folder (``adapter_config.json`` + ``adapter_model.safetensors``).

    ``variant_name``: the model variant it belongs to (PEFT folders do not record it). A bad
    folder raises :class:`AdapterLoadError`; the model is then unchanged.
    """
    peft_dir = Path(peft_dir)
    cfg, per_layer = read_peft_folder(peft_dir)
    w_path = peft_dir / PEFT_WEIGHTS
    use_dora = bool(cfg.get("use_dora") or False)
    rs = bool(cfg.get("use_rslora") or False)
    r0, alpha0 = int(cfg["r"]), float(cfg["lora_alpha"])
    rank_pat, alpha_pat = cfg.get("rank_pattern") or {}, cfg.get("alpha_pattern") or {}
    layers = list(per_layer)
    device = _model_device(model, layers[0], peft_dir)
    kind = "dora" if use_dora else "lora"
    states, scale0 = {}, None
    for path in layers:
        A, B = per_layer[path]["lora_A"].float(), per_layer[path]["lora_B"].float()
        r = A.shape[0]
        if r != int(_pattern_value(rank_pat, path, r0)):
            raise AdapterLoadError(
                f"{w_path}: layer {path!r} has rank {r}, but {PEFT_CONFIG} gives "
                f"{_pattern_value(rank_pat, path, r0)}"
            )
        alpha = float(_pattern_value(alpha_pat, path, alpha0))
        scale = alpha / (math.sqrt(r) if rs else r)
        if scale0 is None:
            scale0 = scale
        elif scale != scale0:
            B = B * (scale / scale0)
        st = AdapterState(
            A.to(device), B.to(device), scale=scale0, kind=kind, init="peft",
            strength=strength,
        )
        if use_dora:
            m = per_layer[path]["lora_magnitude_vector"].float().reshape(-1)
            if m.numel() != B.shape[0]:
                raise AdapterLoadError(
                    f"{w_path}: {path}.lora_magnitude_vector has {m.numel()} values, expected "
                    f"{B.shape[0]} (one per output channel)"
                )
            st.lora_magnitude = nn.Parameter(m.to(device))
        states[path] = st
    try:
        config = LoRAConfig(
            rank=r0, alpha=alpha0, use_rslora=rs, kind=kind, targets=tuple(layers),
            dropout=float(cfg.get("lora_dropout") or 0.0),
        )
    except ValueError as e:
        raise AdapterLoadError(f"{peft_dir}: {e}") from None
    spec = AdapterSpec(
        name=name, config=config, scale=scale0, variant_name=variant_name, init="peft",
        source=str(peft_dir),
    )
    try:
        handle = attach_adapter_states(model, spec, states, freeze_base=freeze_base)
    except ValueError as e:
        raise AdapterLoadError(f"cannot import {peft_dir}: {e}") from None
    logger.info("imported PEFT adapter %s as %r: %d layers", peft_dir, name, len(layers))
    return handle
