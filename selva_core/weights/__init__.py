"""Weight files: where they live, how they are fetched and verified, safe reading, strict loading.

* :mod:`.models_dir` — the models folder, each file's destination, checksums and sidecars.
* :mod:`.hub` — one quick probe of the hub, resumable verified downloads.
* :mod:`.preflight` — :func:`preflight`: every file of a variant checked (or fetched) first;
  one :class:`MissingWeightsError` lists all that is missing.
* :mod:`.safe_read` — ``.safetensors`` / weights-only pickles into a flat state dict.
* :mod:`.loading` — building the networks and loading them strictly (nothing half-loaded).
* :mod:`.bundled` — the trained ``tiny_16k`` weights shipped in the package (sha256-checked).

This package never imports ComfyUI; the nodes pass ``models/selva`` as ``models_dir``.
"""

from .errors import MissingFile, MissingWeightsError, WeightsError
from .hub import RemoteFile, download_file, fetch, file_url, hub_endpoint, hub_offline, probe
from .loading import (
    COMPONENTS,
    Shapes,
    build_component,
    expected_shapes,
    load_checked,
    obsolete_keys,
    skip_random_init,
    state_dict_shapes,
)
from .models_dir import (
    DEFAULT_MODELS_DIR,
    MODELS_DIR_ENV,
    SIDECAR_SUFFIX,
    destination,
    destinations,
    file_digests,
    file_md5,
    read_sidecar,
    resolve_models_dir,
    sidecar_path,
    verify_file,
)
from .preflight import download_command, ensure_checkpoint, ensure_files, preflight
from .safe_read import read_state_dict

__all__ = [
    "COMPONENTS",
    "DEFAULT_MODELS_DIR",
    "MODELS_DIR_ENV",
    "SIDECAR_SUFFIX",
    "WeightsError",
    "MissingFile",
    "MissingWeightsError",
    "RemoteFile",
    "Shapes",
    "build_component",
    "destination",
    "destinations",
    "download_command",
    "download_file",
    "ensure_checkpoint",
    "ensure_files",
    "expected_shapes",
    "fetch",
    "file_digests",
    "file_md5",
    "file_url",
    "hub_endpoint",
    "hub_offline",
    "load_checked",
    "obsolete_keys",
    "preflight",
    "probe",
    "read_sidecar",
    "read_state_dict",
    "resolve_models_dir",
    "sidecar_path",
    "skip_random_init",
    "state_dict_shapes",
    "verify_file",
]
