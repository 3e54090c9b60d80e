"""Forks of a pipeline and the adapters / embeddings they carry; the base is never changed.

:func:`fork` gives a pipeline whose generator is a structural copy over the same frozen
tensors (the other networks shared by reference); :func:`with_adapters` and
:func:`with_embeddings` are forks that carry LoRA adapters or textual-inversion tokens. A
bad adapter raises the LoRA library's error naming it and nothing is attached anywhere.
"""

from __future__ import annotations

import copy
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..model.lora import AdapterLoadError
from .residency import require
from .state import PipelineState

_ADAPTER_NAME_RE = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(frozen=True)
class AppliedAdapter:
    """One adapter a pipeline's generator carries: its name on the generator, where it came
    from (file path, or ``<state dict N>``), its strength and the file's metadata."""

    name: str
    source: str
    strength: float
    metadata: dict[str, str] = field(default_factory=dict, compare=False)


def _read_adapter_source(
    source: str | os.PathLike | Mapping | tuple, index: int
) -> tuple[str, str, Mapping[str, torch.Tensor], Mapping[str, str]]:
    """(label for messages and :class:`AppliedAdapter`, name hint, tensors, metadata)."""
    from ..model.lora import read_adapter_file

    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        tensors, metadata = read_adapter_file(path)
        return str(path), path.stem, tensors, metadata
    if isinstance(source, tuple) and len(source) == 2 and isinstance(source[0], Mapping):
        tensors, metadata = source
    elif isinstance(source, Mapping):
        tensors = {k: v for k, v in source.items() if k != "__metadata__"}
        metadata = source.get("__metadata__") or {}
    else:
        raise AdapterLoadError(
            f"adapter source {index + 1} is a {type(source).__name__}; give a file path, "
            "(tensors, metadata) or a tensor mapping with '__metadata__'"
        )
    label = f"<adapter state {index + 1}>"
    if not all(isinstance(t, torch.Tensor) for t in tensors.values()):
        raise AdapterLoadError(f"{label}: every value of the tensor mapping must be a tensor")
    metadata = {str(k): str(v) for k, v in dict(metadata).items()}
    return label, metadata.get("name") or f"adapter_{index + 1}", tensors, metadata


def _unique_adapter_name(hint: str, taken: set[str]) -> str:
    """A valid adapter name from ``hint`` (letters, digits, '_' and '-'), not in ``taken``."""
    base = _ADAPTER_NAME_RE.sub("_", hint).strip("_") or "adapter"
    if not base[0].isalnum():
        base = f"a{base}"
    name, n = base, 2
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    return name


def fork(pipe: PipelineState):
    """A new pipeline with its own generator structure over the same frozen tensors.

    The generator's module objects are copied while every parameter keeps its storage
    (new ``nn.Parameter`` objects over the same tensors, so ``requires_grad`` flags and
    device moves stay per pipeline) and buffers are shared; the other networks are
    shared by reference. Attaching, training or removing adapters on the fork leaves this
    pipeline as it is; writing into the shared tensors in place (merging adapters into the
    base weights) would not, so a merged generator cannot be forked.
    """
    from ..model.lora import iter_lora_layers

    if any(layer.merged for _, layer in iter_lora_layers(pipe.generator)):
        raise RuntimeError(
            "cannot fork a pipeline whose generator has merged adapters (the merge writes "
            "into the shared base weights); unmerge_adapters(pipeline.generator) first"
        )
    memo: dict[int, object] = {}
    for p in pipe.generator.parameters():
        memo[id(p)] = nn.Parameter(p.detach(), requires_grad=p.requires_grad)
    for b in pipe.generator.buffers():
        memo[id(b)] = b
    generator = copy.deepcopy(pipe.generator, memo)
    other = object.__new__(type(pipe))
    other.__dict__.update(pipe.__dict__)
    other.generator = generator
    other._family = pipe._family
    pipe._family.add(other)
    return other


def _check_adapter_items(items: list) -> None:
    for item in items:
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise ValueError(f"adapters must be (source, strength) pairs, got {item!r}")
        strength = item[1]
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or (
            not math.isfinite(float(strength))
        ):
            raise ValueError(f"adapter strength must be a finite number, got {strength!r}")


def with_adapters(
    pipe: PipelineState,
    adapters: Sequence[tuple[str | os.PathLike | Mapping | tuple, float]],
):
    """A :func:`fork` whose generator carries ``adapters`` on top of this one's.

    Each item is ``(source, strength)``: ``source`` an adapter file, or an adapter in
    memory as ``(tensors, metadata)`` (what ``read_adapter_file`` returns) or a tensor
    mapping with its metadata under ``"__metadata__"``. This pipeline is never changed:
    a bad adapter (damaged file, another model variant, non-finite factors) raises the LoRA
    library's error naming it, and nothing is attached anywhere. Calling it twice with the
    same list gives two equal pipelines (each starts from this pipeline's generator).
    """
    from ..model.lora import adapter_names
    from ..model.lora.io import load_adapter_tensors

    items = list(adapters)
    _check_adapter_items(items)
    loaded = [_read_adapter_source(source, i) for i, (source, _) in enumerate(items)]
    other = pipe.fork()
    applied = list(pipe._adapters)
    taken = set(adapter_names(other.generator))
    for (label, hint, tensors, metadata), (_, strength) in zip(loaded, items):
        name = _unique_adapter_name(hint, taken)
        load_adapter_tensors(
            other.generator, tensors, metadata, name=name, strength=float(strength),
            expected_variant=pipe._variant.name, freeze_base=False, source=label,
        )
        taken.add(name)
        applied.append(AppliedAdapter(name, label, float(strength), dict(metadata)))
    other._adapters = tuple(applied)
    return other


def with_embeddings(pipe: PipelineState, sources: Sequence[str | os.PathLike | object]):
    """A :func:`fork` whose prompts also understand the tokens of ``sources`` (embedding
    files or :class:`~selva_core.model.textual_inversion.TokenEmbedding` objects).

    The networks are not changed (the vectors are spliced in when a prompt is encoded), so
    this pipeline and its other forks keep their prompts' meaning. A bad file, another
    variant or a token already loaded raises one ``AdapterLoadError`` and nothing changes.
    """
    from ..model.textual_inversion import TokenEmbedding, read_embedding, tokenizer_identities

    clip_text = require(pipe, "clip_text", "loading an embedding")
    t5 = require(pipe, "t5", "loading an embedding")
    identities = tokenizer_identities(clip_text, t5)
    loaded = list(pipe._embeddings)
    for source in sources:
        emb = source if isinstance(source, TokenEmbedding) else read_embedding(
            source, variant=pipe._variant.name, clip_width=clip_text.width,
            t5_dim=t5.d_model, identities=identities, clip_tokenizer=clip_text.tokenizer)
        if any(e.token == emb.token for e in loaded):
            raise AdapterLoadError(f"embedding {emb.source}: token {emb.token!r} is "
                                   "already loaded on this model; load it once")
        loaded.append(emb)
    other = pipe.fork()
    other._embeddings = tuple(loaded)
    return other


__all__ = ["AppliedAdapter", "fork", "with_adapters", "with_embeddings"]
