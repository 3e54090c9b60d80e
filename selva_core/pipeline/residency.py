"""Where a pipeline's networks live: device moves, runs, offload, freed encoders, forks' residency.

A pipeline's networks rest where ``offload`` says between runs (``gpu``: on the compute
device; ``cpu``: in host memory). :func:`running` puts the networks one step needs on the
compute device in eval mode for the length of a block and restores every flag, device and
tensor afterwards, so a pipeline cached by ComfyUI or reused by the evaluator is never
changed by a run. :func:`free_encoders` drops the feature encoders once features are
extracted (the shared VAE encoder only when no other member of the family needs it).

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

import contextlib
import gc
import logging
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..variants import SequenceLengths
from .state import PipelineState

logger = logging.getLogger(__name__)

#: ``offload`` choices: where the networks rest between runs (``gpu``: on the compute device;
#: ``cpu``: in host memory, moved to the compute device for each run and back after it).
OFFLOAD_CHOICES = ("auto", "gpu", "cpu")
#: ``offload="auto"`` keeps the networks on the GPU when they fill at most this share of its memory.
AUTO_OFFLOAD_MAX_SHARE = 0.5
NETWORK_NAMES = ("generator", "video_encoder", "clip_text", "t5", "vae", "vocoder")


def default_device() -> torch.device:
    """The GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def networks(pipe: PipelineState) -> dict[str, nn.Module]:
    """Name -> network of every network this pipeline holds (freed encoders left out)."""
    return {n: getattr(pipe, n) for n in NETWORK_NAMES if getattr(pipe, n) is not None}


def module_bytes(modules: Sequence[nn.Module]) -> int:
    """Bytes of the parameters and buffers of ``modules``, each tensor once."""
    seen: set[int] = set()
    total = 0
    for m in modules:
        for t in (*m.parameters(), *m.buffers()):
            if id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
    return total


def check_offload(offload: str) -> str:
    """``offload`` if it is one of :data:`OFFLOAD_CHOICES`, else one error listing them."""
    if offload not in OFFLOAD_CHOICES:
        raise ValueError(f"offload {offload!r} is unknown; choose one of {OFFLOAD_CHOICES}")
    return offload


def resolve_offload(pipe: PipelineState, offload: str, target: torch.device) -> str:
    """``offload`` with ``auto`` decided: ``gpu`` off CUDA (the networks live where they
    compute), else ``gpu`` when the networks fill at most :data:`AUTO_OFFLOAD_MAX_SHARE` of
    the device's memory and ``cpu`` otherwise."""
    if check_offload(offload) != "auto":
        return offload
    if target.type != "cuda":
        return "gpu"
    size = module_bytes(list(networks(pipe).values()))
    total = torch.cuda.get_device_properties(target).total_memory
    return "gpu" if size <= AUTO_OFFLOAD_MAX_SHARE * total else "cpu"


def move(pipe: PipelineState, device: torch.device | str | None = None,
         dtype: torch.dtype | None = None):
    """Move every network (and cast its floating weights when ``dtype`` is given).

    The networks other than the generator are shared with the pipelines made by
    ``fork`` / ``with_adapters``, so those see them move too (each run moves what it needs
    to its own pipeline's device and back).
    """
    if device is not None:
        pipe._device = torch.device(device)
    if dtype is not None:
        pipe.dtype = dtype
    for module in networks(pipe).values():
        module.to(device=pipe._device, dtype=pipe.dtype)
    pipe.mel.to(pipe._device)  # the mel front end always computes in float32
    return pipe


def _module_device(module: nn.Module) -> torch.device | None:
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return None


def _tensor_slots(module: nn.Module) -> tuple[list, list]:
    """Every parameter (object and data) and buffer of ``module``, with its owner and name."""
    params, buffers = [], []
    for m in module.modules():
        params += [(m, n, p, p.data) for n, p in m._parameters.items() if p is not None]
        buffers += [(m, n, b) for n, b in m._buffers.items() if b is not None]
    return params, buffers


def _restore_tensor_slots(slots: tuple[list, list]) -> None:
    """Put back the very parameter objects (a move may swap their data or replace them)."""
    params, buffers = slots
    for m, name, p, data in params:
        p.data = data
        m._parameters[name] = p
    for m, name, b in buffers:
        m._buffers[name] = b


@contextlib.contextmanager
def running(pipe: PipelineState, *names: str, seq: SequenceLengths | None = None
            ) -> Iterator[None]:
    """The named networks on the compute device in eval mode (and the generator at ``seq``)
    for the duration of the block; afterwards every module's train/eval flag, device and
    the generator's sequence lengths are as they were found, also when the block raises.
    Dtypes are never changed.

    A network moved for the run gets its very tensors back afterwards (not copies made on
    the way back), so an offloaded network keeps sharing its storage with its forks.
    """
    found = []
    old_seq = None
    try:
        for name in names:
            module = getattr(pipe, name)
            if module is None:
                continue
            modes = [(m, m.training) for m in module.modules()]
            where = _module_device(module)
            moved = where is not None and where != pipe._device
            tensors = _tensor_slots(module) if moved else None
            found.append((modes, tensors))
            if moved:
                module.to(pipe._device)
            module.eval()
        if seq is not None and pipe.generator.seq != seq:
            old_seq = pipe.generator.seq
            pipe.generator.update_seq_lengths(seq)
        yield
    finally:
        if old_seq is not None:
            pipe.generator.update_seq_lengths(old_seq)
        for modes, tensors in reversed(found):
            if tensors is not None:
                _restore_tensor_slots(tensors)
            for m, mode in modes:
                m.training = mode


def require(pipe: PipelineState, name: str, purpose: str) -> nn.Module:
    """The network ``name``, or one error saying that :func:`free_encoders` released it."""
    module = getattr(pipe, name)
    if module is None:
        raise RuntimeError(
            f"{purpose} needs the {name} network, which was released by free_encoders(); "
            f"extract features before freeing the encoders, or load a new pipeline"
        )
    return module


def free_encoders(pipe: PipelineState) -> None:
    """Release TextSynch, FLAN-T5, CLIP-text and the VAE encoder (features must be extracted
    before); the generator, VAE decoder and vocoder stay for sampling.

    A pipeline that shares its networks with others (``fork``) only drops its own
    references: the shared VAE keeps its encoder while another member is alive.
    """
    pipe.video_encoder = pipe.clip_text = pipe.t5 = None
    pipe._vae_encoder_released = True
    others = [p for p in pipe._family if p is not pipe and p.vae is pipe.vae]
    if not others and pipe.vae.encoder is not None:
        pipe.vae.drop_encoder()
    gc.collect()
    if pipe._device.type == "cuda":
        torch.cuda.empty_cache()
    logger.info("freed the feature encoders (TextSynch, FLAN-T5, CLIP text, VAE encoder)")


# --- a base and its forks as one module for a memory manager ----------------------------------
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


__all__ = [
    "AUTO_OFFLOAD_MAX_SHARE",
    "OFFLOAD_CHOICES",
    "SharedResidency",
    "check_offload",
    "default_device",
    "free_encoders",
    "module_bytes",
    "move",
    "networks",
    "require",
    "resolve_offload",
    "running",
    "storage_key",
]
