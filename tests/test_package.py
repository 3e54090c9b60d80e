"""The pack imports cleanly inside and outside ComfyUI; selva_core never imports ComfyUI."""

import importlib.util
import subprocess
import sys

from tests.conftest import ROOT


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)


def test_root_init_loads_as_a_comfyui_custom_node_package():
    # ComfyUI imports a custom-node folder as a package from its path.
    spec = importlib.util.spec_from_file_location(
        "selva_pack_under_test", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        assert isinstance(module.NODE_CLASS_MAPPINGS, dict)
        assert isinstance(module.NODE_DISPLAY_NAME_MAPPINGS, dict)
    finally:
        sys.modules.pop(spec.name, None)


def test_root_init_runs_as_a_plain_module_outside_comfyui():
    proc = _run("import runpy; g = runpy.run_path('__init__.py'); "
                "print(type(g['NODE_CLASS_MAPPINGS']).__name__)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "dict"


def test_importing_selva_core_never_imports_comfyui_modules():
    code = (
        "import sys, pkgutil, importlib, selva_core\n"
        "for m in pkgutil.walk_packages(selva_core.__path__, 'selva_core.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = [n for n in sys.modules if n.split('.')[0] in "
        "('comfy', 'folder_paths', 'nodes', 'server', 'execution', 'comfy_extras')]\n"
        "print(bad)"
    )
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
