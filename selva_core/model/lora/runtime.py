"""Attach, stack, weigh, merge and remove named adapters on a model.

``attach_lora`` wraps the matched modules (``targets.py``) in ``LoRALinear`` / ``LoRAConv1d``
(a module already wrapped gets one more adapter), freezes the base model (by default) and logs
the effective scale. Every layer's ``AdapterState`` points at one shared :class:`AdapterSpec`.

Strength multiplies each adapter's learned change at run time (0 = exactly the base model);
several adapters add. Removing the last adapter of a layer puts the original module object
back, so the base model's ``state_dict`` (keys and bits) is restored exactly.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .config import LoRAConfig
from .init import init_factors
from .kind import get_kind
from .layers import AdapterState, LoRALayer, check_wrappable, factor_shapes, wrap_module
from .targets import resolve_targets

logger = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")
_FROZEN_ATTR = "_lora_saved_requires_grad"


@dataclass
class AdapterSpec:
    """Model-level description of one named adapter (shared by all its layers).

    ``variant_name``: the base model's variant (e.g. ``small_16k``) for files; ``init``: how
    the factors were made; ``source``: the file it was loaded from, if any;
    ``base_fingerprint``: set by a trainer that stores the frozen base in another dtype after
    attaching, so files record the fingerprint of the weights the adapter was made for.
    """

    name: str
    config: LoRAConfig
    scale: float
    variant_name: str | None = None
    init: str = "standard"
    source: str | None = None
    layers: list[str] = field(default_factory=list)
    base_fingerprint: str | None = None


@dataclass
class AdapterHandle:
    """What ``attach_lora`` / ``load_adapter`` return: the model, the spec and the layers."""

    model: nn.Module
    spec: AdapterSpec

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def layers(self) -> list[str]:
        return list(self.spec.layers)

    def parameters(self) -> list[nn.Parameter]:
        return trainable_parameters(self.model, self.name)

    def set_strength(self, strength: float) -> None:
        set_strength(self.model, self.name, strength)

    def remove(self) -> None:
        remove_adapter(self.model, self.name)


def check_adapter_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name) or hasattr(nn.ModuleDict(), name):
        raise ValueError(
            f"adapter name {name!r} is not usable: use letters, digits, '_' or '-' "
            "(no dots), e.g. 'default' or 'style_a'"
        )
    return name


def iter_lora_layers(model: nn.Module) -> Iterator[tuple[str, LoRALayer]]:
    """(qualified name, wrapper) for every LoRA wrapper in ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, LoRALayer):
            yield name, module


def adapter_layers(model: nn.Module, name: str) -> dict[str, AdapterState]:
    """Layer name -> ``AdapterState`` of adapter ``name``; raises if the adapter is unknown."""
    found = {
        n: layer.adapters[name] for n, layer in iter_lora_layers(model) if name in layer.adapters
    }
    if not found:
        known = adapter_names(model)
        raise KeyError(
            f"no adapter named {name!r} on this model; attached adapters: {known or 'none'}"
        )
    return found


def adapter_names(model: nn.Module) -> list[str]:
    """Names of the adapters attached to ``model`` (attach order)."""
    names: dict[str, None] = {}
    for _, layer in iter_lora_layers(model):
        names.update(dict.fromkeys(layer.adapters.keys()))
    return list(names)


def get_spec(model: nn.Module, name: str) -> AdapterSpec:
    return next(iter(adapter_layers(model, name).values())).spec


def get_layer(model: nn.Module, path: str) -> nn.Module:
    """The module at ``path``, or one clear error naming the missing adapter layer."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise ValueError(
            f"adapter layer {path!r} does not exist in {type(model).__name__}"
        ) from None


def check_not_inside_wrapper(model: nn.Module, path: str) -> None:
    """Refuse a layer path inside an adapter wrapper (e.g. ``x.base_layer``): wrapping a
    wrapper's base would nest wrappers, and merge / unmerge would then corrupt the base."""
    parts = path.split(".")
    for i in range(len(parts)):
        outer = ".".join(parts[:i])
        try:
            module = model.get_submodule(outer) if outer else model
        except AttributeError:
            return
        if isinstance(module, LoRALayer):
            raise ValueError(
                f"adapter layer {path!r} lies inside the adapter wrapper at "
                f"{outer or '<model>'!r}; adapters attach to the wrapped layer itself "
                f"({outer or '<model>'!r}), never inside a wrapper"
            )


def _set_submodule(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, child, new)


def _check_not_merged(model: nn.Module, action: str) -> None:
    if any(layer.merged for _, layer in iter_lora_layers(model)):
        raise RuntimeError(
            f"cannot {action} while adapters are merged; call unmerge_adapters first"
        )


def freeze_base_model(model: nn.Module) -> None:
    """Set ``requires_grad=False`` on every non-adapter parameter; remember the old flags once."""
    saved = getattr(model, _FROZEN_ATTR, None)
    if saved is None:
        saved = {}
        for n, p in model.named_parameters():
            if ".adapters." not in f".{n}":
                saved[n] = p.requires_grad
        object.__setattr__(model, _FROZEN_ATTR, saved)
    for n, p in model.named_parameters():
        if ".adapters." not in f".{n}":
            p.requires_grad_(False)


def _restore_requires_grad(model: nn.Module) -> None:
    saved = getattr(model, _FROZEN_ATTR, None)
    if saved is None:
        return
    params = dict(model.named_parameters())
    for n, flag in saved.items():
        if n in params:
            params[n].requires_grad_(flag)
    object.__delattr__(model, _FROZEN_ATTR)


def _precheck_new_adapter(model: nn.Module, name: str) -> None:
    check_adapter_name(name)
    if name in adapter_names(model):
        raise ValueError(
            f"an adapter named {name!r} is already attached; remove it or choose another name"
        )
    _check_not_merged(model, "attach an adapter")


def attach_adapter_states(
    model: nn.Module, spec: AdapterSpec, states: dict[str, AdapterState], freeze_base: bool = True
) -> AdapterHandle:
    """Insert ready-made ``AdapterState``s (layer name -> state) under ``spec.name``.

    Checks everything first (name free, modules exist and are adaptable, shapes fit) so the
    model is unchanged when it raises.
    """
    name = spec.name
    _precheck_new_adapter(model, name)
    modules = {}
    for path, st in states.items():
        if not path:
            raise ValueError("an adapter layer path is empty; name a module inside the model")
        check_not_inside_wrapper(model, path)
        module = get_layer(model, path)
        check_wrappable(module, path)
        if not st.impl.has_factors:
            if all(getattr(st, k, None) is not None for k in st.impl.extra_keys):
                problem = st.impl.check_tensors(tuple(module.weight.shape), st)
                if problem:
                    raise ValueError(f"adapter {name!r} layer {path!r}: {problem}")
            modules[path] = module
            continue
        exp_a, exp_b = factor_shapes(module, st.rank)
        if tuple(st.lora_A.shape) != exp_a or tuple(st.lora_B.shape) != exp_b:
            raise ValueError(
                f"adapter {name!r} layer {path!r}: factor shapes A {tuple(st.lora_A.shape)}, "
                f"B {tuple(st.lora_B.shape)} do not fit the layer (expected A {exp_a}, B {exp_b})"
            )
        modules[path] = module
    # all checks passed: change the model
    for path, module in modules.items():
        wrapper = module if isinstance(module, LoRALayer) else wrap_module(module)
        if wrapper is not module:
            _set_submodule(model, path, wrapper)
        states[path].spec = spec
        states[path].path = path
        wrapper.adapters[name] = states[path]
    spec.layers = list(states)
    if freeze_base:
        freeze_base_model(model)
    return AdapterHandle(model, spec)


def attach_lora(
    model: nn.Module,
    config: LoRAConfig,
    name: str = "default",
    variant_name: str | None = None,
    *,
    freeze_base: bool = True,
    strength: float = 1.0,
) -> AdapterHandle:
    """Wrap the modules matched by ``config.targets`` and add a fresh adapter ``name``.

    ``variant_name`` names the base model variant (``small_16k``...) for files. With
    ``freeze_base`` every non-adapter parameter gets ``requires_grad=False`` (restored by
    :func:`remove_all_adapters`). Logs the effective scale.
    """
    _precheck_new_adapter(model, name)
    config.check_scale()
    scale = config.scale
    paths = resolve_targets(model, config.targets, config.exclude)
    kind = get_kind(config.kind)
    states: dict[str, AdapterState] = {}
    for i, path in enumerate(paths):
        module = model.get_submodule(path)
        check_wrappable(module, path)
        if not kind.has_factors:  # ia3, hra: the kind makes its tensors in kind.init
            states[path] = AdapterState(
                None, None, scale=scale, kind=config.kind, init=config.init,
                strength=strength, dropout=config.dropout,
            )
            states[path].init_seed = None if config.seed is None else config.seed + i
            continue
        base = module.base_layer if isinstance(module, LoRALayer) else module
        w = base.weight
        f = init_factors(
            w.reshape(w.shape[0], -1), config.rank, config.init, scale,
            seed=None if config.seed is None else config.seed + i,
        )
        a_shape, b_shape = factor_shapes(module, config.rank)
        states[path] = AdapterState(
            f.A.reshape(a_shape), f.B.reshape(b_shape), scale=scale, kind=config.kind,
            init=config.init, strength=strength, dropout=config.dropout,
            A0=None if f.A0 is None else f.A0.reshape(a_shape),
            B0=None if f.B0 is None else f.B0.reshape(b_shape),
        )
    spec = AdapterSpec(
        name=name, config=config, scale=scale, variant_name=variant_name, init=config.init
    )
    handle = attach_adapter_states(model, spec, states, freeze_base=freeze_base)
    for path in paths:
        layer = model.get_submodule(path)
        kind.init(layer, layer.adapters[name])
    logger.info(
        "attached LoRA %r: %d layers, kind %s, init %s, rank %d, alpha %g, scale %.6g (%s)",
        name, len(paths), config.kind, config.init, config.rank, config.effective_alpha,
        scale, "alpha/sqrt(r), rsLoRA" if config.use_rslora else "alpha/r",
    )
    return handle


def set_strength(model: nn.Module, name: str, strength: float) -> None:
    """Runtime multiplier of adapter ``name``'s change (0 = base model exactly)."""
    strength = float(strength)
    if not torch.isfinite(torch.tensor(strength)):
        raise ValueError(f"strength must be finite, got {strength!r}")
    layers = adapter_layers(model, name)
    remerge = _unmerge_all(model)
    for st in layers.values():
        st.strength = strength
    if remerge:
        merge_adapters(model)


def get_strength(model: nn.Module, name: str) -> float:
    return next(iter(adapter_layers(model, name).values())).strength


def _unmerge_all(model: nn.Module) -> bool:
    merged = False
    for _, layer in iter_lora_layers(model):
        if layer.merged:
            layer.unmerge()
            merged = True
    return merged


def remove_adapter(model: nn.Module, name: str) -> None:
    """Drop adapter ``name``; layers left without adapters get their original module back."""
    layers = adapter_layers(model, name)
    remerge = _unmerge_all(model)
    for path in layers:
        layer: LoRALayer = model.get_submodule(path)
        del layer.adapters[name]
        if len(layer.adapters) == 0:
            _set_submodule(model, path, layer.unwrap())
    if not any(True for _ in iter_lora_layers(model)):
        _restore_requires_grad(model)
    elif remerge:
        merge_adapters(model)
    logger.info("removed LoRA adapter %r from %d layers", name, len(layers))


def remove_all_adapters(model: nn.Module) -> None:
    """Remove every adapter and wrapper; the base model is restored exactly."""
    for path, layer in list(iter_lora_layers(model)):
        _set_submodule(model, path, layer.unwrap())
    _restore_requires_grad(model)


def base_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base model's own state dict (original keys and original weights, also while
    merged) of a model with adapters attached; adapter tensors left out."""
    out: dict[str, torch.Tensor] = {}
    originals = {}
    for path, layer in iter_lora_layers(model):
        if layer.merged:
            originals[f"{path}.base_layer.weight"] = layer._original_weight
            if layer._original_bias is not None:
                originals[f"{path}.base_layer.bias"] = layer._original_bias
    for key, value in model.state_dict().items():
        if ".adapters." in f".{key}":
            continue
        value = originals.get(key, value)
        out[key.replace(".base_layer.", ".")] = value
    return out


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base model's state dict (original keys, as :func:`base_state_dict`) with every
    active adapter folded into its weights at its strength; the model is not changed. What a
    tool that knows nothing of adapters loads as a plain model."""
    merged = {}
    for path, layer in iter_lora_layers(model):
        merged[f"{path}.base_layer.weight"] = (
            layer.base_layer.weight.detach().clone() if layer.merged else layer.merged_weight())
        bias = layer.base_layer.bias.detach().clone() if layer.merged else layer.merged_bias()
        if layer.base_layer.bias is not None and bias is not None:
            merged[f"{path}.base_layer.bias"] = bias
    out = base_state_dict(model)
    for key, value in merged.items():
        out[key.replace(".base_layer.", ".")] = value
    return out


def merge_adapters(model: nn.Module) -> None:
    """Fold all active adapters (at their strengths) into the base weights; forward = base."""
    for _, layer in iter_lora_layers(model):
        layer.merge()


def unmerge_adapters(model: nn.Module) -> None:
    """Restore the original base weights bit-exactly; adapters act at run time again."""
    _unmerge_all(model)


def trainable_parameters(model: nn.Module, name: str | None = None) -> list[nn.Parameter]:
    """Adapter parameters (A, B and the kind's extras) of ``name`` or of all adapters that
    require gradients (a kind may freeze some, e.g. LoRA-XS's basis)."""
    params = []
    for _, layer in iter_lora_layers(model):
        for n, st in layer.adapters.items():
            if name is None or n == name:
                params.extend(p for p in st.parameters() if p.requires_grad)
    return params


def lora_plus_param_groups(
    model: nn.Module,
    lr: float,
    ratio: float = 16.0,
    name: str | None = None,
    weight_decay: float = 0.0,
) -> list[dict[str, Any]]:
    """Optimizer groups for LoRA+ (Hayou et al., arXiv 2402.12354): A at ``lr``; B and the
    1-D extras (DoRA magnitude) at ``lr * ratio`` (as peft's ``create_loraplus_optimizer``)."""
    group_a, group_b = [], []
    for _, layer in iter_lora_layers(model):
        for n, st in layer.adapters.items():
            if name is not None and n != name:
                continue
            for pname, p in st.named_parameters():
                if not p.requires_grad:
                    continue
                # B and 1-D extras learn at the higher rate; A and square cores (LoRA-XS) not
                fast = pname == "lora_B" or p.dim() < 2
                (group_b if fast else group_a).append(p)
    if not group_a and not group_b:
        raise ValueError(f"no adapter parameters found (adapter {name!r})")
    return [  # a group may be empty (LoRA-XS, IA3 and HRA have no B)
        {"params": group_a, "lr": lr, "weight_decay": weight_decay},
        {"params": group_b, "lr": lr * ratio, "weight_decay": weight_decay},
    ]
