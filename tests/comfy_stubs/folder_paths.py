"""Stand-in for ComfyUI's ``folder_paths`` (tests only), rooted at ``SELVA_TEST_COMFY_ROOT``
or a temporary folder; tests point it elsewhere with :func:`set_base`."""

from __future__ import annotations

import os
import tempfile

supported_pt_extensions = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
base_path = os.environ.get("SELVA_TEST_COMFY_ROOT") or tempfile.mkdtemp(prefix="comfy_stub_")
models_dir = os.path.join(base_path, "models")
folder_names_and_paths: dict[str, tuple[list[str], set[str]]] = {
    "loras": ([os.path.join(models_dir, "loras")], set(supported_pt_extensions)),
}


def set_base(path: str) -> None:
    """Re-root every folder (tests): models/, input/, output/, temp/ under ``path``."""
    global base_path, models_dir
    base_path = str(path)
    new_models = os.path.join(base_path, "models")
    for name, (paths, exts) in list(folder_names_and_paths.items()):
        folder_names_and_paths[name] = (
            [p.replace(models_dir, new_models, 1) for p in paths], exts)
    models_dir = new_models


def add_model_folder_path(folder_name, full_folder_path, is_default=False):
    paths, exts = folder_names_and_paths.setdefault(folder_name, ([], set()))
    if full_folder_path not in paths:
        if is_default:
            paths.insert(0, full_folder_path)
        else:
            paths.append(full_folder_path)


def get_folder_paths(folder_name):
    return list(folder_names_and_paths[folder_name][0])


def get_filename_list(folder_name):
    paths, exts = folder_names_and_paths[folder_name]
    found = set()
    for root_dir in paths:
        for dirpath, dirnames, filenames in os.walk(root_dir, followlinks=True):
            dirnames[:] = [d for d in dirnames if d != ".git"]
            for f in filenames:
                if not exts or os.path.splitext(f)[1].lower() in exts:
                    found.add(os.path.relpath(os.path.join(dirpath, f), root_dir))
    return sorted(found)


def get_full_path(folder_name, filename):
    for root_dir in folder_names_and_paths[folder_name][0]:
        full = os.path.join(root_dir, filename)
        if os.path.isfile(full):
            return full
    return None


def get_full_path_or_raise(folder_name, filename):
    full = get_full_path(folder_name, filename)
    if full is None:
        raise FileNotFoundError(
            f"Model in folder '{folder_name}' with filename '{filename}' not found.")
    return full


def get_input_directory():
    return os.path.join(base_path, "input")


def get_output_directory():
    return os.path.join(base_path, "output")


def get_temp_directory():
    return os.path.join(base_path, "temp")
