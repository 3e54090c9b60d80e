"""ComfyUI entry point of the SelVA LoRA pack.

Imports cleanly both inside ComfyUI (as a custom-node package) and outside it (plain import
or test collection). ``selva_core`` never imports ComfyUI; only ``nodes/`` may.

ComfyUI imports this folder as a package without putting it on ``sys.path``; the library is
imported as ``selva_core``, so the folder is appended there (appended, so that nothing in it
shadows an installed module). Importing registers the nodes and loads no torch-heavy code.
"""

import os
import sys

if __package__:  # imported as a package: a ComfyUI custom node (or a test loading it so)
    _HERE = os.path.dirname(os.path.abspath(__file__))
    if _HERE not in sys.path:
        sys.path.append(_HERE)
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
else:  # run as a plain module (no parent package)
    NODE_CLASS_MAPPINGS: dict = {}
    NODE_DISPLAY_NAME_MAPPINGS: dict = {}

WEB_DIRECTORY = None
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
