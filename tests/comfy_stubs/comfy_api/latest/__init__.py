"""Stand-in for ``comfy_api.latest``: ``io``, ``ui`` and ``ComfyExtension`` (tests only)."""

from abc import ABC, abstractmethod

from . import _io as io
from . import _ui as ui


class ComfyExtension(ABC):
    async def on_load(self) -> None:  # noqa: B027 (optional hook, as in ComfyUI)
        """Called when the extension is loaded."""

    @abstractmethod
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        """The node classes this extension registers."""


__all__ = ["ComfyExtension", "io", "ui"]
