"""Export to and import from Hugging Face PEFT's LoRA folder layout.

A PEFT folder holds ``adapter_config.json`` and ``adapter_model.safetensors`` with keys
``base_model.model.<module path>.lora_A.weight`` / ``.lora_B.weight`` (peft's shapes, which are
also ours: conv A (r, in, k), conv B (out, r, 1)) and, for DoRA,
``base_model.model.<module path>.lora_magnitude_vector`` ((out,) for Linear, (1, out, 1) for
Conv1d). peft computes the scale as ``lora_alpha / r`` (``/ sqrt(r)`` with ``use_rslora``), per
module overridable by ``rank_pattern`` / ``alpha_pattern`` (regex keys matched as
``(.*\\.)?(key)$``).

Export writes the plain-delta form (PiSSA converted, rank 2r), choosing ``lora_alpha`` so that
peft's scale equals ours; layers whose rank differs get exact ``rank_pattern`` /
``alpha_pattern`` entries. Import reads such a folder; per-layer scales that differ from the
first layer's are folded into B, so one adapter keeps one scale.

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
from .config import LoRAConfig
from .io import _check_extra_shapes, _model_device, adapter_state_dict
from .layers import AdapterState
from .runtime import AdapterHandle, AdapterSpec, adapter_layers, attach_adapter_states, get_spec
from .variant import get_variant

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
    ours = adapter_state_dict(model, name)
    is_dora = next(iter(layers.values())).variant == "dora"
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


def _pattern_value(patterns: dict, path: str, default):
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", path):
            return value
    return default


def import_peft(
    model: nn.Module,
    peft_dir: str | os.PathLike,
    name: str = "default",
    strength: float = 1.0,
    variant_name: str | None = None,
    *,
    freeze_base: bool = True,
) -> AdapterHandle:
    """Attach a PEFT LoRA folder (``adapter_config.json`` + ``adapter_model.safetensors``)."""
    peft_dir = Path(peft_dir)
    cfg_path, w_path = peft_dir / PEFT_CONFIG, peft_dir / PEFT_WEIGHTS
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise FileNotFoundError(f"PEFT folder {peft_dir} lacks {p.name}")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path} is not valid JSON ({e})") from None
    if cfg.get("peft_type") != "LORA":
        raise ValueError(f"{cfg_path}: peft_type {cfg.get('peft_type')!r} is not LORA")
    for key in ("lora_bias", "fan_in_fan_out"):
        if cfg.get(key):
            raise ValueError(f"{cfg_path}: {key}=true is not supported")
    if cfg.get("modules_to_save"):
        raise ValueError(f"{cfg_path}: modules_to_save (full-weight modules) is not supported")
    try:
        with safe_open(str(w_path), framework="pt") as f:
            raw = {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as e:
        raise ValueError(f"{w_path} is not a valid safetensors file ({e})") from None
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
        raise ValueError(
            f"{w_path}: keys not in PEFT LoRA layout: {unknown[:5]}"
            + (f" ... ({len(unknown)} in all)" if len(unknown) > 5 else "")
        )
    use_dora = bool(cfg.get("use_dora", False))
    need = {"lora_A", "lora_B"} | ({"lora_magnitude_vector"} if use_dora else set())
    for path, parts in per_layer.items():
        if set(parts) != need:
            raise ValueError(
                f"{w_path}: layer {path!r} has tensors {sorted(parts)}, expected {sorted(need)}"
            )
    if not per_layer:
        raise ValueError(f"{w_path} holds no LoRA tensors")
    rs = bool(cfg.get("use_rslora", False))
    r0, alpha0 = int(cfg["r"]), float(cfg["lora_alpha"])
    rank_pat, alpha_pat = cfg.get("rank_pattern") or {}, cfg.get("alpha_pattern") or {}
    layers = list(per_layer)
    device = _model_device(model, layers[0])
    variant = "dora" if use_dora else "lora"
    impl = get_variant(variant)
    states, scale0 = {}, None
    for path in layers:
        A, B = per_layer[path]["lora_A"].float(), per_layer[path]["lora_B"].float()
        r = A.shape[0]
        if r != int(_pattern_value(rank_pat, path, r0)):
            raise ValueError(f"{w_path}: layer {path!r} has rank {r}, config says otherwise")
        alpha = float(_pattern_value(alpha_pat, path, alpha0))
        scale = alpha / (math.sqrt(r) if rs else r)
        if scale0 is None:
            scale0 = scale
        elif scale != scale0:
            B = B * (scale / scale0)
        st = AdapterState(
            A.to(device), B.to(device), scale=scale0, variant=variant, init="peft",
            strength=strength,
        )
        if use_dora:
            st.lora_magnitude = nn.Parameter(
                per_layer[path]["lora_magnitude_vector"].float().reshape(-1).to(device)
            )
        states[path] = st
    _check_extra_shapes(model, states, impl, peft_dir)
    config = LoRAConfig(
        rank=r0, alpha=alpha0, use_rslora=rs, variant=variant, targets=tuple(layers),
        dropout=float(cfg.get("lora_dropout", 0.0) or 0.0),
    )
    spec = AdapterSpec(
        name=name, config=config, scale=scale0, variant_name=variant_name, init="peft",
        source=str(peft_dir),
    )
    try:
        handle = attach_adapter_states(model, spec, states, freeze_base=freeze_base)
    except ValueError as e:
        raise ValueError(f"cannot import {peft_dir}: {e}") from None
    logger.info("imported PEFT adapter %s as %r: %d layers", peft_dir, name, len(layers))
    return handle
