"""ComfyUI entry point of the SelVA LoRA pack.

Imports cleanly both inside ComfyUI (as a custom-node package) and outside it (plain import
or test collection). ``selva_core`` never imports ComfyUI; only ``nodes/`` may.
"""

try:  # inside ComfyUI this file is imported as a package
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
except ImportError:  # imported as a top-level module (no parent package)
    NODE_CLASS_MAPPINGS: dict = {}
    NODE_DISPLAY_NAME_MAPPINGS: dict = {}

WEB_DIRECTORY = None
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
