"""The LoRA library's refusal of an adapter file or folder (one exception front ends catch)."""

from __future__ import annotations


class AdapterLoadError(ValueError):
    """An adapter file or folder that cannot be loaded; the message names it and what is wrong.

    The one exception front ends catch for bad adapters (a ``ValueError``, so callers that
    catch ``ValueError`` see it too). The model is unchanged when it is raised.
    """


class AdapterNotFoundError(AdapterLoadError, FileNotFoundError):
    """The adapter path does not exist (also a ``FileNotFoundError``)."""
