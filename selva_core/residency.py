"""One module for a memory manager to move: a pipeline's networks plus the forks that share them.

A pipeline made by :meth:`~selva_core.pipeline.SelvaPipeline.fork` or ``with_adapters`` holds
its own generator modules over the base's very tensors. A memory manager that moves one
module per model (ComfyUI's ``ModelPatcher``) would, given one module per pipeline, count
the shared base once per fork, and moving the base alone would leave each fork holding the
old copies (so an unloaded base stays in device memory, and a reloaded one is duplicated).

:class:`SharedResidency` is the base's networks as one ``nn.Module``; forks registered with
:meth:`SharedResidency.follow` move with it. After every move of the whole module
(``.to()``), each fork's tensor that still shares a base tensor is pointed at that tensor's
new copy, and the tensors a fork owns (its adapters) get the same conversion once, kept
shared between forks that share them. A memory manager then counts the base once and each
fork only by :meth:`SharedResidency.follow`'s answer, the bytes it owns.

Moves of single submodules (a manager that moves layer by layer, then the whole module)
are caught up at the next whole-module move, because each link remembers the tensor both
sides held at the last synchronisation rather than comparing current tensors.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn

logger = logging.getLogger(__name__)

_Key = tuple


def storage_key(t: torch.Tensor) -> _Key:
    """Identity of the memory a tensor views: two tensors with equal keys are the same view
    of the same storage (device, dtype, address, offset, shape, strides)."""
    return (t.device, t.dtype, t.untyped_storage().data_ptr(), t.storage_offset(),
            tuple(t.shape), tuple(t.stride()))


def _slots(module: nn.Module) -> Iterator[tuple[str, nn.Module, str, str, torch.Tensor]]:
    """(module path, owner, 'p' or 'b', name, tensor) for every parameter and buffer."""
    for path, owner in module.named_modules():
        for name, p in owner._parameters.items():
            if p is not None:
                yield path, owner, "p", name, p
        for name, b in owner._buffers.items():
            if b is not None:
                yield path, owner, "b", name, b


def _set_slot(owner: nn.Module, kind: str, name: str, tensor: torch.Tensor) -> None:
    if kind == "p":
        param = owner._parameters[name]
        if torch._has_compatible_shallow_copy_type(param, tensor):
            param.data = tensor.data
        else:  # e.g. to or from "meta": a new parameter, as nn.Module._apply makes
            owner._parameters[name] = nn.Parameter(tensor.data, param.requires_grad)
    else:
        owner._buffers[name] = tensor


@dataclass
class _Link:
    """A fork's slot that shares a base slot; ``key`` is what both held at the last sync."""

    network: str
    path: str
    kind: str
    name: str
    base: tuple[nn.Module, str, str]  # base owner, kind, name
    key: _Key


class SharedResidency(nn.Module):
    """The networks ``name -> module`` of a base pipeline as one module (the state-dict keys
    are ``<network>.<parameter>``), carrying registered forks along on every ``.to()``.

    The networks stay the base pipeline's own objects; the module adds no tensors.
    """

    def __init__(self, networks: Mapping[str, nn.Module]):
        super().__init__()
        for name, module in networks.items():
            self.add_module(name, module)
        # (weak reference to the fork's pipeline, its links); plain attribute, not a submodule
        self.__dict__["_forks"] = []

    def _base_slots(self) -> dict[_Key, tuple[nn.Module, str, str]]:
        return {storage_key(t): (owner, kind, name) for _, owner, kind, name, t in _slots(self)}

    def _own_networks(self, pipeline) -> Iterator[tuple[str, nn.Module]]:
        """The fork's networks that are not the base's objects (in practice its generator)."""
        base_ids = {id(m) for m in self.modules()}
        for name, module in pipeline.networks().items():
            if isinstance(module, nn.Module) and id(module) not in base_ids:
                yield name, module

    def follow(self, pipeline) -> int:
        """Register ``pipeline`` (a fork of the base) to move with this module; return the
        bytes of the tensors it holds beyond the base's (its adapters), each storage once.

        Call it while the fork still shares the base's tensors (right after making it).
        """
        base = self._base_slots()
        base_ids = {id(m) for m in self.modules()}
        links: list[_Link] = []
        own: dict[_Key, int] = {}
        for network, module in self._own_networks(pipeline):
            for path, owner, kind, name, t in _slots(module):
                if id(owner) in base_ids:
                    continue  # a base module inside the fork moves with the base
                key = storage_key(t)
                if key in base:
                    links.append(_Link(network, path, kind, name, base[key], key))
                else:
                    own[key] = t.numel() * t.element_size()
        self._forks[:] = [(ref, ls) for ref, ls in self._forks if ref() is not None]
        self._forks.append((weakref.ref(pipeline), links))
        extra = sum(own.values())
        logger.debug("residency: a fork shares %d tensors with the base and owns %d bytes",
                     len(links), extra)
        return extra

    def forks(self) -> list:
        """The registered forks still alive."""
        return [p for p in (ref() for ref, _ in self._forks) if p is not None]

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True):
        result = super()._apply(fn, recurse)
        converted: dict[_Key, torch.Tensor] = {}  # a fork's own tensor -> its new copy, once

        def convert(t: torch.Tensor) -> torch.Tensor:
            key = storage_key(t)
            if key not in converted:
                with torch.no_grad():
                    converted[key] = fn(t)
            return converted[key]

        live = []
        base_ids = {id(m) for m in self.modules()}
        for ref, links in self._forks:
            pipeline = ref()
            if pipeline is None:
                continue
            live.append((ref, links))
            by_slot = {(ln.network, ln.path, ln.kind, ln.name): ln for ln in links}
            for network, module in self._own_networks(pipeline):
                for path, owner, kind, name, t in _slots(module):
                    if id(owner) in base_ids:
                        continue
                    link = by_slot.get((network, path, kind, name))
                    if link is not None and storage_key(t) == link.key:
                        b_owner, b_kind, b_name = link.base
                        now = (b_owner._parameters if b_kind == "p" else b_owner._buffers)[b_name]
                        if now is not None and now.shape == t.shape:
                            _set_slot(owner, kind, name, now)
                            link.key = storage_key(now)
                            continue
                    _set_slot(owner, kind, name, convert(t))
        self._forks[:] = live
        return result


__all__ = ["SharedResidency", "storage_key"]
