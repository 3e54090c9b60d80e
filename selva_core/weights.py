"""Checkpoint files: where they live, how they are fetched and verified, and safe strict loading.

Three jobs, one concern (getting the right tensors into a network and nothing else):

* :func:`resolve_models_dir` / :func:`ensure_checkpoint` find a weight file under the models
  folder, download it from the hub when allowed (into a temporary name, md5-checked, then
  atomically renamed) and otherwise say exactly which file to put where.
* :func:`read_state_dict` reads ``.safetensors`` or torch pickles with ``weights_only=True``
  (a pickle that would run code is refused, never executed) and turns every way a file can
  be broken into one :class:`CheckpointError` naming the file.
* :func:`load_checked` compares a state dict with a module's keys and shapes *before* touching
  the module and loads it strictly only when everything matches, so a network is never left
  half-loaded. A file of another variant is recognised and named.

This module never imports ComfyUI; the nodes pass ``models/selva`` as ``models_dir``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import pickle
import re
import shutil
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from .atomic import write_text_atomic
from .variants import VARIANTS, CheckpointFile, ModelVariant, get_variant

logger = logging.getLogger(__name__)

MODELS_DIR_ENV = "SELVA_MODELS_DIR"
DEFAULT_MODELS_DIR = Path("models") / "selva"
MD5_SIDECAR_SUFFIX = ".md5ok"
_MD5_CHUNK = 8 * 1024 * 1024
_LIST_LIMIT = 5  # names shown per problem category in an error message

def obsolete_keys(component: str) -> tuple[str, ...]:
    """Keys the reference deletes before its strict load (buffers old checkpoints still hold).

    The generator owns the list (``SelvaGenerator.OBSOLETE_KEYS``); other components have none.
    """
    if component == "generator":
        from .model.generator import SelvaGenerator

        return tuple(SelvaGenerator.OBSOLETE_KEYS)
    return ()


COMPONENTS = ("generator", "video_encoder", "vae", "vocoder")


class CheckpointError(ValueError):
    """A weight file is missing, broken, unsafe or does not fit the network it is loaded into."""


# --- models folder -----------------------------------------------------------------------------
def resolve_models_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The folder that holds the SelVA weight files.

    Precedence: the ``explicit`` argument, then the ``SELVA_MODELS_DIR`` environment variable,
    then ``./models/selva`` (relative to the working directory, as inside ComfyUI).
    """
    if explicit is not None and str(explicit) != "":
        return Path(explicit).expanduser()
    env = os.environ.get(MODELS_DIR_ENV, "")
    if env:
        return Path(env).expanduser()
    return DEFAULT_MODELS_DIR


# --- md5 -----------------------------------------------------------------------------------------
def file_md5(path: str | os.PathLike, chunk_size: int = _MD5_CHUNK) -> str:
    """md5 hex digest of a file, read in chunks (multi-GB checkpoints never sit in memory)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk_size)
            if not block:
                break
            digest.update(block)
    return digest.hexdigest()


def _sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + MD5_SIDECAR_SUFFIX)


def _file_identity(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def verify_md5(path: str | os.PathLike, expected: str, *, use_sidecar: bool = True) -> None:
    """Check ``path`` against ``expected`` md5; raise :class:`CheckpointError` on mismatch.

    A successful check is remembered in ``<file>.md5ok`` keyed by md5, size and mtime, so the
    next call on an unchanged file is instant; any change to the file invalidates it.
    """
    path = Path(path)
    expected = expected.lower()
    sidecar = _sidecar_path(path)
    identity = _file_identity(path)
    if use_sidecar and sidecar.is_file():
        try:
            record = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = None
        if record == {"md5": expected, **identity}:
            logger.debug("md5 of %s already verified (%s)", path, sidecar.name)
            return
    logger.info("verifying md5 of %s", path)
    actual = file_md5(path)
    if actual != expected:
        raise CheckpointError(
            f"checksum mismatch for {path}: md5 is {actual}, expected {expected}. The file is "
            f"corrupt, incomplete or a different file; delete it and download it again."
        )
    if use_sidecar:
        try:
            write_text_atomic(sidecar, json.dumps({"md5": expected, **identity}))
        except OSError as exc:  # a read-only models folder is fine, just slower next time
            logger.debug("could not write %s: %s", sidecar, exc)


# --- download ------------------------------------------------------------------------------------
def _hub_url(file: CheckpointFile) -> str:
    return f"https://huggingface.co/{file.repo_id}/resolve/main/{file.filename}"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def ensure_checkpoint(
    file: CheckpointFile,
    models_dir: str | os.PathLike | None = None,
    download: bool = True,
    verify: bool = True,
) -> Path:
    """Path of ``file`` inside the models folder, downloading it first when it is missing.

    ``download=False`` (or ``HF_HUB_OFFLINE=1``) never touches the network. A download goes to
    the staging folder ``.download-<name>`` beside the target (kept after an interruption, so
    the next attempt resumes), is md5-checked when the md5 is known, and is then renamed into
    place: a half file never appears under the real name. ``verify`` checks the md5 of a file
    already present (once; see :func:`verify_md5`).
    """
    folder = resolve_models_dir(models_dir)
    target = folder / file.local_name
    if target.is_file():
        if verify and file.md5:
            verify_md5(target, file.md5)
        return target

    where = (
        f"Download it by hand from {_hub_url(file)} (hub repo {file.repo_id!r}, file "
        f"{file.filename!r}) and put it at {target}"
    )
    if not download:
        raise CheckpointError(f"missing weight file {file.local_name} in {folder}. {where}.")
    if _offline():
        raise CheckpointError(
            f"missing weight file {file.local_name} in {folder}, and HF_HUB_OFFLINE is set so "
            f"it cannot be downloaded. {where}."
        )

    from huggingface_hub import hf_hub_download

    folder.mkdir(parents=True, exist_ok=True)
    # A fixed staging folder: an interrupted download resumes from its partial file next time.
    staging = folder / f".download-{file.local_name}"
    logger.info("downloading %s from %s into %s", file.filename, file.repo_id, folder)
    try:
        fetched = Path(hf_hub_download(file.repo_id, file.filename, local_dir=staging))
    except Exception as exc:  # offline, DNS, HTTP, 404, gated repo ... one clear message
        if not any(p.is_file() for p in staging.rglob("*")):
            shutil.rmtree(staging, ignore_errors=True)
        else:
            logger.info("partial download kept in %s; the next attempt resumes it", staging)
        raise CheckpointError(
            f"could not download weight file {file.filename} from hub repo "
            f"{file.repo_id!r} ({type(exc).__name__}: {exc}). {where}."
        ) from exc
    try:
        if file.md5:
            actual = file_md5(fetched)
            if actual != file.md5.lower():
                raise CheckpointError(
                    f"downloaded {file.filename} from {file.repo_id!r} but its md5 is {actual}, "
                    f"expected {file.md5}; the download was discarded. Try again, or {where}."
                )
        os.replace(fetched, target)
        if file.md5:
            with contextlib.suppress(OSError):
                write_text_atomic(
                    _sidecar_path(target),
                    json.dumps({"md5": file.md5.lower(), **_file_identity(target)}),
                )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("saved %s", target)
    return target


# --- reading -------------------------------------------------------------------------------------
def _unsafe_global(message: str) -> str | None:
    m = re.search(r"GLOBAL\s+([\w.]+)", message)
    return m.group(1) if m else None


def _read_pickle(path: Path) -> object:
    use_mmap = zipfile.is_zipfile(path)  # mmap works only for the zip (torch >= 1.6) format
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=use_mmap)
    except pickle.UnpicklingError as exc:
        message = str(exc)
        if "Weights only load failed" in message:
            name = _unsafe_global(message)
            what = f" (it asks for {name})" if name else ""
            raise CheckpointError(
                f"refusing to unpickle arbitrary code from {path}{what}: a weights-only load "
                f"allows tensors and plain containers only. Use a checkpoint from a trusted "
                f"source, or convert it to .safetensors."
            ) from exc
        raise CheckpointError(
            f"{path} is not a readable torch checkpoint ({exc}); it is corrupt or truncated. "
            f"Delete it and download it again."
        ) from exc
    except (RuntimeError, EOFError, KeyError, ValueError, OSError, AttributeError) as exc:
        raise CheckpointError(
            f"{path} is truncated or corrupt and cannot be read ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'unexpected end of data'}). Delete it "
            f"and download it again."
        ) from exc


def _read_safetensors(path: Path, subkey: str | None) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path), device="cpu")
    except SafetensorError as exc:
        raise CheckpointError(
            f"{path} is truncated or corrupt and cannot be read as safetensors ({exc}). "
            f"Delete it and download or convert it again."
        ) from exc
    if subkey:  # safetensors cannot nest: a nested state dict is stored with dotted prefixes
        prefix = subkey + "."
        nested = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if nested:
            return nested
    return tensors


def _describe_keys(keys: Iterable[str]) -> str:
    keys = list(keys)
    shown = ", ".join(repr(k) for k in keys[:_LIST_LIMIT])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > _LIST_LIMIT else "")


def _keys(count: int) -> str:
    return f"{count} key" if count == 1 else f"{count} keys"


def read_state_dict(path: str | os.PathLike, subkey: str | None = None) -> dict[str, torch.Tensor]:
    """Read a flat ``{name: tensor}`` state dict from ``.safetensors`` or a torch pickle.

    ``subkey`` selects a nested state dict (the BigVGAN files keep theirs under
    ``'generator'``). Pickles are read with ``weights_only=True`` (memory-mapped when the
    file allows it); one :class:`CheckpointError` naming the file covers an empty, truncated
    or corrupt file, a pickle that would execute code, non-dict content and a missing subkey.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weight file {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(
            f"weight file {path} is empty (0 bytes), probably an interrupted download. Delete "
            f"it and download it again."
        )
    if path.suffix.lower() in (".safetensors", ".sft"):
        return _read_safetensors(path, subkey)

    obj = _read_pickle(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path} holds a {type(obj).__name__}, not a state dict ({{name: tensor}}); it is "
            f"not a weight file for this network."
        )
    if subkey is not None:
        if subkey not in obj:
            raise CheckpointError(
                f"{path} has no entry {subkey!r} (top-level keys: {_describe_keys(obj)}); it is "
                f"not the expected checkpoint."
            )
        obj = obj[subkey]
        if not isinstance(obj, Mapping):
            raise CheckpointError(
                f"{path}[{subkey!r}] is a {type(obj).__name__}, not a state dict"
            )
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        nested = [k for k in bad if isinstance(obj[k], Mapping)]
        hint = (
            f" It looks like a wrapper around nested state dicts ({_describe_keys(nested)}): "
            f"the expected checkpoint stores tensors directly"
            + (f" or under {subkey!r}" if subkey else "")
            + "."
            if nested
            else ""
        )
        raise CheckpointError(
            f"{path} is not a flat state dict: {len(bad)} entries are not tensors "
            f"({_describe_keys(bad)}).{hint}"
        )
    return {str(k): v for k, v in obj.items()}


# --- expected shapes of every variant ------------------------------------------------------------
Shapes = Mapping[str, tuple[int, ...]]


def build_component(component: str, variant: ModelVariant) -> nn.Module:
    """Construct (random init, current default device) the network ``component`` of ``variant``.

    Under ``with torch.device('meta'):`` this costs no memory, which is how the shapes of
    other variants are obtained for the "this file belongs to variant X" diagnosis.
    """
    if component == "generator":
        from .model.generator import SelvaGenerator

        return SelvaGenerator(variant.generator, variant.sequence_lengths())
    if component == "video_encoder":
        from .model.video_encoder import TextSynch

        return TextSynch(variant.video_encoder)
    if component == "vae":
        from .model.vae import MelVAE

        return MelVAE(variant.vae)
    if component == "vocoder":
        from .model.bigvgan import BigVGAN

        return BigVGAN(variant.vocoder)
    raise ValueError(f"unknown component {component!r}; choose one of: {', '.join(COMPONENTS)}")


def state_dict_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of a module's state dict (works on meta modules)."""
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


class _SkipRandomInit(torch.overrides.TorchFunctionMode):
    """Skip in-place random initialisation (``nn.init.*``, ``Tensor.normal_/uniform_``)."""

    _SKIP = {torch.Tensor.normal_, torch.Tensor.uniform_} | {
        f for n, f in vars(nn.init).items() if n.endswith("_") and not n.startswith("_")
    }

    def __init__(self, meta_only: bool):
        super().__init__()
        self.meta_only = meta_only

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self._SKIP:
            target = args[0] if args else kwargs.get("tensor")
            if isinstance(target, torch.Tensor) and (target.is_meta or not self.meta_only):
                return target
        return func(*args, **kwargs)


def skip_random_init(meta_only: bool = False) -> _SkipRandomInit:
    """Context manager: build modules without their random initialisation.

    For networks whose every persistent tensor is about to be overwritten by a checked strict
    load (saves seconds on the big generators), and for meta-device shape builds
    (``meta_only=True``), where ``normal_`` would otherwise pull in torch's slow reference
    kernels. Deterministic, non-random set-up (RoPE tables, filters) still runs.
    """
    return _SkipRandomInit(meta_only)


def _component_config(component: str, variant: ModelVariant):
    return {
        "generator": variant.generator,
        "video_encoder": variant.video_encoder,
        "vae": variant.vae,
        "vocoder": variant.vocoder,
    }.get(component)


@functools.lru_cache(maxsize=64)
def _config_shapes(component: str, config, variant_name: str):
    # Keyed by the (frozen, hashable) component config: variants sharing a VAE, vocoder or
    # video encoder are built once. ``variant_name`` only supplies the rest of the variant.
    with torch.device("meta"), skip_random_init(meta_only=True):
        module = build_component(component, get_variant(variant_name))
    return tuple(sorted(state_dict_shapes(module).items()))


def expected_shapes(component: str, variant_name: str) -> dict[str, tuple[int, ...]]:
    """State-dict shapes ``component`` of a registered variant has (built on the meta device)."""
    variant = get_variant(variant_name)
    config = _component_config(component, variant)
    if config is None:
        raise ValueError(
            f"unknown component {component!r}; choose one of: {', '.join(COMPONENTS)}"
        )
    first = next(n for n, v in VARIANTS.items() if _component_config(component, v) == config)
    return dict(_config_shapes(component, config, first))


def _registered_candidates(component: str, variant_name: str) -> dict[str, Shapes]:
    """Shapes of ``component`` in every other registered variant with a different config."""
    own = VARIANTS.get(variant_name)
    own_cfg = _component_config(component, own) if own is not None else None
    out: dict[str, Shapes] = {}
    for name, other in VARIANTS.items():
        if name == variant_name:
            continue
        cfg = _component_config(component, other)
        if cfg is None or cfg == own_cfg:
            continue
        try:
            out[name] = expected_shapes(component, name)
        except Exception as exc:  # diagnosis only; never mask the real error
            logger.debug("cannot build %s of %s on meta: %s", component, name, exc)
    return out


def _compare(
    shapes: Mapping[str, tuple[int, ...]], expected: Shapes
) -> tuple[list[str], list[str], list[str]]:
    missing = [k for k in expected if k not in shapes]
    unexpected = [k for k in shapes if k not in expected]
    wrong = [k for k in shapes if k in expected and tuple(shapes[k]) != tuple(expected[k])]
    return missing, unexpected, wrong


def _guess_variants(shapes: Mapping[str, tuple[int, ...]], candidates: Mapping[str, Shapes]):
    """Variants whose keys/shapes explain the file: exact matches, else fitting subsets."""
    exact, partial = [], []
    for name, exp in candidates.items():
        missing, unexpected, wrong = _compare(shapes, exp)
        if unexpected or wrong:
            continue
        (partial if missing else exact).append(name)
    return exact, partial


# --- strict loading ------------------------------------------------------------------------------
def load_checked(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    component: str,
    variant: str,
    drop_keys: Iterable[str] = (),
    transform: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
    source: str | os.PathLike | None = None,
    candidates: Mapping[str, Shapes] | None = None,
) -> nn.Module:
    """Load ``state_dict`` into ``module`` strictly, or raise one :class:`CheckpointError`.

    Steps: drop the component's known obsolete keys and ``drop_keys``; apply ``transform``
    (e.g. legacy weight-norm renaming); compare keys and shapes with ``module.state_dict()``.
    Missing, unexpected and wrong-shape keys are all listed in one error, which also names the
    variant the file seems to belong to (``candidates``: ``{variant: {key: shape}}``; default:
    every registered variant, built on the meta device). The module is modified only when
    everything matches; tensors are cast to the dtype of the module's tensors.
    """
    where = f" from {source}" if source is not None else ""
    sd = dict(state_dict)
    dropped = [k for k in (*obsolete_keys(component), *drop_keys) if k in sd]
    for k in dropped:
        del sd[k]
    if dropped:
        logger.debug("dropped obsolete keys %s%s", dropped, where)
    if transform is not None:
        sd = dict(transform(sd))

    target = module.state_dict()
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    missing, unexpected, wrong = _compare(shapes, {k: tuple(v.shape) for k, v in target.items()})
    if missing or unexpected or wrong:
        lines = [f"the {component} weights{where} do not fit the {variant} {component}:"]
        if unexpected or wrong:  # a merely incomplete file says nothing about its variant
            cands = (
                candidates
                if candidates is not None
                else _registered_candidates(component, variant)
            )
            exact, partial = _guess_variants(shapes, cands)
            if exact:
                shared = f" (they share this {component})" if len(exact) > 1 else ""
                lines.append(
                    f"  this file looks like variant {' or '.join(exact)}{shared}, not "
                    f"{variant}: choose the matching variant or the {variant} file."
                )
            elif partial:
                lines.append(
                    f"  this file looks like (part of) variant {' or '.join(partial)}, "
                    f"not {variant}."
                )
        if missing:
            lines.append(f"  missing {_keys(len(missing))}: {_describe_keys(missing)}")
        if unexpected:
            lines.append(f"  unexpected {_keys(len(unexpected))}: {_describe_keys(unexpected)}")
        if wrong:
            shown = [f"{k!r} file {shapes[k]} vs model {tuple(target[k].shape)}" for k in wrong]
            more = f", ... ({len(wrong)} in all)" if len(wrong) > _LIST_LIMIT else ""
            lines.append(
                f"  {_keys(len(wrong))} with the wrong shape: "
                + "; ".join(shown[:_LIST_LIMIT])
                + more
            )
        lines.append("  nothing was loaded; the model is unchanged.")
        raise CheckpointError("\n".join(lines))

    cast = {}
    for k, v in sd.items():
        ref = target[k]
        cast[k] = v.to(ref.dtype) if v.is_floating_point() and ref.is_floating_point() else v
    module.load_state_dict(cast, strict=True)
    logger.info("loaded %s %s weights%s (%d tensors)", variant, component, where, len(cast))
    return module
