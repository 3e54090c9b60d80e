"""The registry of LoRA kinds: the built-in ones (``kinds/``) and any a caller registers.

What a kind implements is described in ``protocol.py``.
"""

from __future__ import annotations

from .kinds import BUILTIN_KINDS

_REGISTRY: dict[str, type] = {cls.name: cls for cls in BUILTIN_KINDS}


def register_kind(cls: type) -> type:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    _REGISTRY[cls.name] = cls
    return cls


def get_kind(name: str) -> type:
    """The registered kind called ``name``; an unknown name lists the known ones."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown LoRA kind {name!r}; choose one of: {', '.join(sorted(_REGISTRY))}"
        ) from None


def kind_names() -> list[str]:
    return sorted(_REGISTRY)
