"""Weights shipped inside the package: the trained ``tiny_16k`` model.

``scripts/train_tiny_base.py`` trains the tiny configuration's mel VAE, vocoder and generator
on the synthetic clips (:mod:`selva_core.data.synthetic`) and writes them, together with the
TextSynch and T5 encoders whose features the generator learned to read, to
``selva_core/assets/<variant>/``. The registry (:data:`selva_core.variants.BUNDLED_WEIGHTS`)
holds each file's sha256; :func:`load_bundled` checks it, then loads strictly through
:func:`selva_core.weights.load_checked`. No download is ever involved.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from safetensors.torch import load_file
from torch import nn

from ..checksums import file_sha256
from ..variants import BUNDLED_WEIGHTS, BundledFile
from .errors import WeightsError
from .loading import load_checked

logger = logging.getLogger(__name__)

ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"
_VERIFIED: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256 seen


def bundled_files(variant: str) -> dict[str, BundledFile]:
    """``{component: BundledFile}`` shipped for ``variant`` (empty when it has none)."""
    return dict(BUNDLED_WEIGHTS.get(variant, {}))


def has_bundled_weights(variant: str) -> bool:
    return bool(BUNDLED_WEIGHTS.get(variant))


def bundled_path(file: BundledFile) -> Path:
    return ASSETS_DIR / file.path


def check_bundled_file(file: BundledFile) -> Path:
    """The file's path once it exists and matches its registered sha256, else one
    :class:`~selva_core.weights.WeightsError` naming the file and what to do."""
    path = bundled_path(file)
    if not path.is_file():
        raise WeightsError(
            f"the bundled weight file {path} is missing; restore it from the repository "
            f"(git checkout -- {Path('selva_core/assets') / file.path}) or regenerate it with "
            "scripts/train_tiny_base.py (then update its sha256 in selva_core/variants.py)"
        )
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    seen = _VERIFIED.get(key) or file_sha256(path)
    if seen != file.sha256:
        raise WeightsError(
            f"the bundled weight file {path} is damaged or was replaced: sha256 {seen}, the "
            f"registry expects {file.sha256}; restore it from the repository or, if you "
            "retrained it on purpose, put the new sha256 in selva_core/variants.py"
        )
    _VERIFIED[key] = seen
    return path


def load_bundled(variant: str, modules: Mapping[str, nn.Module]) -> None:
    """Load the bundled weights of ``variant`` into ``modules`` (``{component: module}``).

    Every component named in ``modules`` must have a bundled file. Files are checked first
    (all of them) so a damaged one leaves every module untouched. A loaded VAE is
    re-normalised (raw MP weights, see :class:`~selva_core.model.vae.MelVAE`); a vocoder is
    loaded in weight-norm form, so fold it (``remove_weight_norm``) afterwards.
    """
    files = bundled_files(variant)
    absent = sorted(set(modules) - set(files))
    if absent:
        raise ValueError(f"variant {variant!r} ships no bundled weights for {absent}")
    paths = {name: check_bundled_file(files[name]) for name in modules}
    for name, module in modules.items():
        state_dict = load_file(str(paths[name]))
        known = name in ("generator", "video_encoder", "vae", "vocoder")
        load_checked(module, state_dict, component=name, variant=variant, source=paths[name],
                     candidates=None if known else {})
        if name == "vae":
            module.normalize_weights_()
    logger.info("loaded the bundled %s weights (%s)", variant, ", ".join(modules))
