"""Reading weight files safely: ``.safetensors`` or torch pickles with ``weights_only=True``.

A pickle that would run code is refused, never executed; every way a file can be broken
(empty, truncated, corrupt, not a state dict, nested where a flat one is expected) becomes one
:class:`~selva_core.weights.errors.WeightsError` naming the file.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from .errors import WeightsError

LIST_LIMIT = 5  # names shown per problem category in an error message


def _unsafe_global(message: str) -> str | None:
    m = re.search(r"GLOBAL\s+([\w.]+)", message)
    return m.group(1) if m else None


def _read_pickle(path: Path) -> object:
    use_mmap = zipfile.is_zipfile(path)  # mmap works only for the zip (torch >= 1.6) format
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=use_mmap)
    except pickle.UnpicklingError as exc:
        message = str(exc)
        if "Weights only load failed" in message:
            name = _unsafe_global(message)
            what = f" (it asks for {name})" if name else ""
            raise WeightsError(
                f"refusing to unpickle arbitrary code from {path}{what}: a weights-only load "
                f"allows tensors and plain containers only. Use a checkpoint from a trusted "
                f"source, or convert it to .safetensors."
            ) from exc
        raise WeightsError(
            f"{path} is not a readable torch checkpoint ({exc}); it is corrupt or truncated. "
            f"Delete it and download it again."
        ) from exc
    except (RuntimeError, EOFError, KeyError, ValueError, OSError, AttributeError) as exc:
        raise WeightsError(
            f"{path} is truncated or corrupt and cannot be read ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'unexpected end of data'}). Delete it "
            f"and download it again."
        ) from exc


def _read_safetensors(path: Path, subkey: str | None) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path), device="cpu")
    except SafetensorError as exc:
        raise WeightsError(
            f"{path} is truncated or corrupt and cannot be read as safetensors ({exc}). "
            f"Delete it and download or convert it again."
        ) from exc
    if subkey:  # safetensors cannot nest: a nested state dict is stored with dotted prefixes
        prefix = subkey + "."
        nested = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if nested:
            return nested
    return tensors


def describe_keys(keys: Iterable[str]) -> str:
    keys = list(keys)
    shown = ", ".join(repr(k) for k in keys[:LIST_LIMIT])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > LIST_LIMIT else "")


def count_keys(count: int) -> str:
    return f"{count} key" if count == 1 else f"{count} keys"


def read_state_dict(path: str | os.PathLike, subkey: str | None = None) -> dict[str, torch.Tensor]:
    """Read a flat ``{name: tensor}`` state dict from ``.safetensors`` or a torch pickle.

    ``subkey`` selects a nested state dict (the BigVGAN files keep theirs under
    ``'generator'``). Pickles are read with ``weights_only=True`` (memory-mapped when the
    file allows it); one :class:`WeightsError` naming the file covers an empty, truncated
    or corrupt file, a pickle that would execute code, non-dict content and a missing subkey.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weight file {path} does not exist")
    if path.stat().st_size == 0:
        raise WeightsError(
            f"weight file {path} is empty (0 bytes), probably an interrupted download. Delete "
            f"it and download it again."
        )
    if path.suffix.lower() in (".safetensors", ".sft"):
        return _read_safetensors(path, subkey)

    obj = _read_pickle(path)
    if not isinstance(obj, Mapping):
        raise WeightsError(
            f"{path} holds a {type(obj).__name__}, not a state dict ({{name: tensor}}); it is "
            f"not a weight file for this network."
        )
    if subkey is not None:
        if subkey not in obj:
            raise WeightsError(
                f"{path} has no entry {subkey!r} (top-level keys: {describe_keys(obj)}); it is "
                f"not the expected checkpoint."
            )
        obj = obj[subkey]
        if not isinstance(obj, Mapping):
            raise WeightsError(
                f"{path}[{subkey!r}] is a {type(obj).__name__}, not a state dict"
            )
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        nested = [k for k in bad if isinstance(obj[k], Mapping)]
        hint = (
            f" It looks like a wrapper around nested state dicts ({describe_keys(nested)}): "
            f"the expected checkpoint stores tensors directly"
            + (f" or under {subkey!r}" if subkey else "")
            + "."
            if nested
            else ""
        )
        raise WeightsError(
            f"{path} is not a flat state dict: {len(bad)} entries are not tensors "
            f"({describe_keys(bad)}).{hint}"
        )
    return {str(k): v for k, v in obj.items()}
