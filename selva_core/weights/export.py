"""A generator with adapters baked into its weights, written in the official key layout.

:func:`export_merged_generator` loads the variant's generator (the official checkpoint from
the models folder, or the bundled ``tiny_16k`` weights), attaches the adapters at their
strengths through the LoRA library's checked loader, folds them in
(:func:`~selva_core.model.lora.merged_state_dict`: any kind, DoRA included) and writes the
state dict under the reference names (the generator's own keys, which equal the official
checkpoint's, see ``tests/reference/generator_*.json``). Any SelVA tool then loads the file as
a base generator. Formats: ``safetensors`` (with metadata naming the variant and the adapters)
or ``pth`` (a plain ``{name: tensor}`` dict through ``torch.save``: no pickled code, loads with
``weights_only=True``). Every refusal is one :class:`ExportError` naming the file or the value,
raised before anything is written.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..atomic import atomic_path, save_safetensors_atomic
from ..variants import get_variant
from .loading import build_component, expected_shapes, load_checked, skip_random_init

logger = logging.getLogger(__name__)

FORMATS = ("safetensors", "pth")
EXPORT_FORMAT = "selva-generator"


class ExportError(ValueError):
    """Adapters or options that cannot be exported; the message names the file or value."""


@dataclass(frozen=True)
class ExportResult:
    path: Path
    variant: str
    tensors: int


def load_generator(variant: str, models_dir: str | os.PathLike | None = None, *,
                   download: bool = False) -> nn.Module:
    """The generator of ``variant`` with its released weights (fp32, eval mode, frozen)."""
    v = get_variant(variant)
    with skip_random_init():
        generator = build_component("generator", v)
    if v.is_tiny:
        from .bundled import load_bundled

        load_bundled(v.name, {"generator": generator})
    else:
        from .preflight import ensure_checkpoint
        from .safe_read import read_state_dict

        file = v.checkpoint_files()["generator"]
        path = ensure_checkpoint(file, models_dir, download=download)
        load_checked(generator, read_state_dict(path, subkey=file.subkey),
                     component="generator", variant=v.name, source=path)
    return generator.requires_grad_(False).eval()


def adapters_variant(adapters: Sequence[tuple[str | os.PathLike, float]],
                     variant: str | None = None) -> str:
    """The model variant the adapter files name (all the same), checked against ``variant``."""
    from ..model.lora.io import parse_adapter_metadata, read_adapter_file

    named = []
    for path, _ in adapters:
        info = parse_adapter_metadata(read_adapter_file(path)[1], path)
        if info.model_variant:
            named.append((str(path), info.model_variant))
    for path, v in named:
        if variant is not None and v != variant:
            raise ExportError(
                f"{path} was trained for model variant {v!r}, not {variant!r}; export it onto "
                f"--variant {v} (or leave --variant out)"
            )
        if v != named[0][1]:
            raise ExportError(
                f"{path} is for model variant {v!r} but {named[0][0]} is for {named[0][1]!r}; "
                "export adapters of one model variant together"
            )
    chosen = variant or (named[0][1] if named else None)
    if chosen is None:
        raise ExportError("none of the adapter files names its model variant; pass --variant")
    try:
        get_variant(chosen)
    except (KeyError, ValueError) as e:
        raise ExportError(f"model variant {chosen!r}: {e}") from None
    return chosen


def merged_generator_state(generator: nn.Module,
                           adapters: Sequence[tuple[str | os.PathLike, float]],
                           variant: str) -> dict[str, torch.Tensor]:
    """``generator``'s weights with ``adapters`` folded in (the generator is left as it was)."""
    from ..model.lora import merged_state_dict, remove_all_adapters
    from ..model.lora.io import load_adapter_tensors, read_adapter_file

    try:
        for i, (path, strength) in enumerate(adapters):
            tensors, meta = read_adapter_file(path)
            load_adapter_tensors(generator, tensors, meta, name=f"export_{i}",
                                 strength=float(strength), expected_variant=variant,
                                 source=path)
        return merged_state_dict(generator)
    finally:
        remove_all_adapters(generator)


def export_merged_generator(
    adapters: Sequence[tuple[str | os.PathLike, float]],
    output: str | os.PathLike,
    *,
    variant: str | None = None,
    models_dir: str | os.PathLike | None = None,
    fmt: str = "safetensors",
    download: bool = False,
    generator: nn.Module | None = None,
) -> ExportResult:
    """Write the generator of ``variant`` (default: the adapters') with ``adapters``
    (``(file, strength)``) merged into its weights. ``generator``: an already loaded base
    generator of that variant to use instead of loading one (left unchanged)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not adapters:
        raise ExportError("no adapters to export; give at least one --adapter FILE[:STRENGTH]")
    name = adapters_variant(adapters, variant)
    if generator is None:
        generator = load_generator(name, models_dir, download=download)
    state = merged_generator_state(generator, adapters, name)
    want = expected_shapes("generator", name)
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != want:  # the reference layout is the contract of the file
        raise ExportError(f"the merged {name} generator does not have the official key layout "
                          f"({len(set(got) ^ set(want))} keys differ); nothing was written")
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    out = Path(output)
    if fmt == "pth":
        with atomic_path(out) as tmp:
            torch.save(state, tmp)
    else:
        meta = {
            "format": EXPORT_FORMAT,
            "model_variant": name,
            "adapters": json.dumps([{"file": Path(p).name, "strength": float(s)}
                                    for p, s in adapters]),
        }
        save_safetensors_atomic(out, state, meta)
    logger.info("exported the %s generator with %d adapter(s) merged to %s", name,
                len(adapters), out)
    return ExportResult(out, name, len(state))
