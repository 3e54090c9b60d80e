"""Load the pack as ComfyUI does, on the stand-ins in ``tests/comfy_stubs`` (no ComfyUI).

``load_pack()`` puts the stand-ins first on ``sys.path``, re-roots the stand-in
``folder_paths`` at a temporary ComfyUI folder and imports the pack folder as a package
(``spec_from_file_location`` with the folder as search location, as ComfyUI's loader does).
``run_node`` calls a V3 node the way ComfyUI's executor does (a class clone with hidden
inputs); ``fake_video`` is a stand-in for core VIDEO (``get_components``).
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
STUBS = Path(__file__).resolve().parent / "comfy_stubs"
PACK_NAME = "selva_pack_nodes_under_test"
COMFY_ROOT = Path(tempfile.mkdtemp(prefix="selva_comfy_root_"))


def install_stubs() -> None:
    if str(STUBS) not in sys.path:
        sys.path.insert(0, str(STUBS))
    import folder_paths

    if folder_paths.base_path != str(COMFY_ROOT):
        folder_paths.set_base(str(COMFY_ROOT))
    for sub in ("input", "output", "temp", "models/loras", "models/selva"):
        (COMFY_ROOT / sub).mkdir(parents=True, exist_ok=True)


def load_pack():
    """The pack module (imported once per test session)."""
    install_stubs()
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    spec = importlib.util.spec_from_file_location(
        PACK_NAME, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    spec.loader.exec_module(module)
    return module


def node(node_id: str):
    return load_pack().NODE_CLASS_MAPPINGS[node_id]


def run_node(node_id: str, unique_id: str = "7", **inputs):
    """Execute a node like ComfyUI's executor (a class clone with hidden inputs, under
    ``torch.inference_mode()`` as ComfyUI runs every node); returns its outputs as a tuple."""
    import torch
    from comfy_api.latest import io

    cls = node(node_id).PREPARE_CLASS_CLONE({io.Hidden.unique_id: unique_id})
    with torch.inference_mode():
        out = cls.execute(**inputs)
    return tuple(out.args) if isinstance(out, io.NodeOutput) else tuple(out)


def fake_video(images, fps: float):
    """A stand-in for core VIDEO: ``get_components()`` like ``VideoFromFile``'s."""

    class _Video:
        def get_components(self):
            return SimpleNamespace(images=images, audio=None, frame_rate=Fraction(fps),
                                   metadata=None)

        def get_dimensions(self):
            return int(images.shape[2]), int(images.shape[1])

    return _Video()


def clean_comfy_state():
    """Load the pack, clear the stand-ins' recorded progress and interruption flag, yield, and
    clear the flag again: the body of a node test module's autouse fixture."""
    load_pack()
    import comfy.model_management as mm
    import comfy.utils

    comfy.utils.PROGRESS_CALLS.clear()
    mm.interrupt_current_processing(False)
    yield
    mm.interrupt_current_processing(False)
