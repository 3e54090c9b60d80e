"""What every SelVA node shares: types, one-message errors, progress with interruption, memory.

Used by all nodes of the pack (``nodes/evaluation.py`` too). Importing this module is cheap:
ComfyUI's modules and ``selva_core``'s torch-heavy parts are imported inside the functions,
when a node runs, so ComfyUI starts fast and the module also imports outside ComfyUI.

* :class:`SelvaNodeError` and :func:`reported`: a library error becomes ONE message naming the
  node, the input and the fix (``SelVA LoRA Loader: lora_name: ...``), raised without the
  library's exception chain so ComfyUI shows the sentence, not a wall of traceback text (the
  original traceback goes to the log at DEBUG level). Interruptions and out-of-memory errors
  pass through unchanged: ComfyUI handles both itself.
* :func:`progress_callback`: a ``(done, total)`` callback for the library that updates a ComfyUI
  progress bar and raises ComfyUI's interruption exception when the user pressed Cancel;
  :func:`stop_requested` is the non-raising check for loops that must save first (training).
* :class:`SelvaModel` and :func:`on_device`: the ``SELVA_MODEL`` value passed between nodes,
  and a context manager that registers GPU-resident networks with ``comfy.model_management``
  (a ``ModelPatcher``; adapted models are clones of their base's, so the base counts once),
  so ComfyUI can unload SelVA when other models need the GPU, and after every run, also
  after an interruption or an error, empties the device cache.
"""

from __future__ import annotations

import gc
import logging
import os
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("selva.nodes")

CATEGORY = "SelVA"
MODEL_TYPE = "SELVA_MODEL"
FEATURES_TYPE = "SELVA_FEATURES"
MODEL_FOLDER = "selva"  # models/selva, registered with folder_paths at import
LORA_FOLDER = "loras"  # ComfyUI's own models/loras


class SelvaNodeError(ValueError):
    """One user-facing sentence: which node, which input, what is wrong and what to do."""


# ComfyUI shows an exception's type as "<module>.<class>"; inside ComfyUI this module's name
# is the pack's folder path, so give the error a short, stable one.
SelvaNodeError.__module__ = "selva"


def node_error(node: str, input_name: str | None, problem: str, fix: str = "") -> SelvaNodeError:
    """Build the pack's error message: ``SelVA <node>: <input>: <problem>; <fix>``."""
    where = f"SelVA {node}: " + (f"{input_name}: " if input_name else "")
    text = problem.rstrip(". ")
    if fix:
        text += f"; {fix.rstrip('.')}"
    return SelvaNodeError(where + text + ".")


def _passthrough_types() -> tuple[type[BaseException], ...]:
    """Exceptions ComfyUI must see as they are: its interruption and out-of-memory."""
    kinds: list[type[BaseException]] = [SelvaNodeError, MemoryError, KeyboardInterrupt]
    try:
        import comfy.model_management as mm

        kinds.append(mm.InterruptProcessingException)
    except ImportError:
        pass
    try:
        import torch

        kinds.append(torch.cuda.OutOfMemoryError)
    except (ImportError, AttributeError):
        pass
    return tuple(kinds)


def _library_error_types() -> tuple[type[BaseException], ...]:
    kinds: list[type[BaseException]] = [ValueError, OSError, LookupError]
    try:
        from selva_core.weights import WeightsError

        kinds.append(WeightsError)
    except ImportError:
        pass
    return tuple(kinds)


@contextmanager
def reported(node: str, input_name: str | None = None, fix: str = "") -> Iterator[None]:
    """Turn a library error raised inside the block into one :class:`SelvaNodeError`.

    ``input_name`` names the input the block reads (the library's message names the file or
    value); ``fix`` is appended when the library's message has no advice of its own (the
    library writes its advice after a ';' or on further lines).
    """
    try:
        yield
    except _passthrough_types():
        raise
    except _library_error_types() as exc:
        logger.debug("SelVA %s failed", node, exc_info=True)
        message = str(exc).strip() or type(exc).__name__
        if isinstance(exc, FileNotFoundError) and exc.filename and str(exc.filename) not in message:
            message = f"{message} ({exc.filename})"
        name = getattr(exc, "input_name", None) or input_name
        has_advice = ";" in message or "\n" in message
        raise node_error(node, name, message, "" if has_advice else fix) from None


# --- ComfyUI runtime (imported lazily) ----------------------------------------------------------
def _model_management():
    import comfy.model_management as mm

    return mm


def stop_requested() -> bool:
    """True once the user pressed Cancel (does not clear the request)."""
    return bool(_model_management().processing_interrupted())


def raise_if_interrupted() -> None:
    """Raise ComfyUI's interruption (and clear the request) if the user pressed Cancel."""
    _model_management().throw_exception_if_processing_interrupted()


def progress_callback(node_id: str | None = None) -> Callable[[int, int], None]:
    """A library ``progress_callback(done, total)`` driving one ComfyUI progress bar.

    Each call first checks for an interruption (raising ComfyUI's exception, which the library
    lets through after restoring its state), then updates the bar; ComfyUI's progress hook is
    an interrupt point too.
    """
    from comfy.utils import ProgressBar

    bar: list[Any] = []

    def callback(done: int, total: int) -> None:
        raise_if_interrupted()
        if not bar:
            bar.append(ProgressBar(int(total), node_id=node_id))
        bar[0].update_absolute(int(done), int(total))

    return callback


def hidden_node_id(cls) -> str | None:
    """The running node's id (V3 ``cls.hidden.unique_id``), None outside ComfyUI's executor."""
    hidden = getattr(cls, "hidden", None)
    return getattr(hidden, "unique_id", None) if hidden is not None else None


# --- the model value and its memory -----------------------------------------------------------
@dataclass(eq=False)
class SelvaModel:
    """The ``SELVA_MODEL`` value: a pipeline plus a label and an identity for content caches.

    Where the networks rest between runs is the pipeline's ``offload`` (``gpu``: on the
    compute device, registered with ComfyUI so it can unload them when another model needs
    the memory; ``cpu``: the library moves each network in for a run and back after it).

    A model made from another (:meth:`derived`: the LoRA Loader's and the Trainer's output)
    shares the base's residency in ComfyUI's memory manager, as ComfyUI's own LoRA models
    do: its ``ModelPatcher`` is a ``clone()`` of the base's, over the one module that holds
    the base networks and moves every derived pipeline with them
    (:class:`selva_core.pipeline.residency.SharedResidency`), and its size is the base's plus only
    the tensors the derived pipeline owns (its adapters). ComfyUI keeps one entry per base,
    so the base weights are counted and moved once, however many branches use them.
    """

    pipeline: Any
    label: str = ""
    uid: str = field(default_factory=lambda: uuid.uuid4().hex)
    _patcher: Any = field(default=None, repr=False)
    _base: SelvaModel | None = field(default=None, repr=False)

    def derived(self, pipeline: Any, label: str) -> SelvaModel:
        """A new value for a pipeline made from this one (e.g. with adapters), sharing the
        base's residency when both rest on the compute device."""
        base = self._base or self
        model = SelvaModel(pipeline=pipeline, label=label, _base=base)
        if _rests_on_device(pipeline) and _rests_on_device(base.pipeline):
            # now, while the new pipeline still shares the base's tensors
            base_patcher = base.patcher()
            clone = base_patcher.clone()
            clone.size = base_patcher.model_size() + base_patcher.model.follow(pipeline)
            model._patcher = clone
        return model

    def patcher(self):
        """The ``ModelPatcher`` through which ComfyUI loads and unloads these networks."""
        if self._patcher is None:
            import comfy.model_patcher

            from selva_core.pipeline.residency import SharedResidency

            mm = _model_management()
            self._patcher = comfy.model_patcher.ModelPatcher(
                SharedResidency(self.pipeline.networks()), load_device=self.pipeline.device,
                offload_device=mm.unet_offload_device(),
            )
        return self._patcher

    def __repr__(self) -> str:
        return f"SelvaModel({self.label or self.pipeline!r})"


def _rests_on_device(pipeline: Any) -> bool:
    return getattr(pipeline, "offload", "gpu") == "gpu"


def library_mode():
    """Leave ComfyUI's ``torch.inference_mode`` for library code.

    ComfyUI executes every node under inference mode, where new tensors become inference
    tensors that autograd can never use. The library keeps to ``no_grad`` so that networks,
    RoPE tables and adapters shared between inference and training stay ordinary tensors;
    nodes run it (and build pipelines) with inference mode off.
    """
    import torch

    return torch.inference_mode(False)


def release_memory(exc: BaseException | None = None) -> None:
    """Empty the device cache; after an interruption or an error also drop what the failed
    run's frames still hold (``exc``'s traceback keeps their tensors alive until ComfyUI
    discards the exception) and collect garbage."""
    if exc is not None:
        traceback.clear_frames(exc.__traceback__)
        gc.collect()
    _model_management().soft_empty_cache()


@contextmanager
def on_device(model: SelvaModel) -> Iterator[Any]:
    """Make room for and load ``model``'s networks for one run; yield the pipeline.

    A GPU-resident pipeline (offload ``gpu``) is loaded through ComfyUI's model management,
    which frees other models first and may later unload SelVA for them; an offloading one
    asks ComfyUI to free the memory its networks need. Afterwards the device cache is
    emptied, and after an interruption or an error the failed run's tensors are released
    first: the library has already put every network back where it rests, so a cancelled
    run leaves no VRAM behind.
    """
    mm = _model_management()
    pipeline = model.pipeline
    stack = ExitStack()
    failure: BaseException | None = None
    try:
        stack.enter_context(library_mode())
        if _rests_on_device(pipeline):
            mm.load_models_gpu([model.patcher()], force_full_load=True)
        elif pipeline.device.type != "cpu" and hasattr(mm, "free_memory"):
            size = sum(t.numel() * t.element_size() for m in pipeline.networks().values()
                       for t in m.parameters())
            mm.free_memory(int(size * 1.2), pipeline.device)
        yield pipeline
    except BaseException as exc:
        failure = exc
        raise
    finally:
        stack.close()
        release_memory(failure)
        failure = None


# --- folders ----------------------------------------------------------------------------------
def register_model_folder() -> None:
    """Register ``models/selva`` with folder_paths (weights only), keeping yaml-added paths."""
    try:
        import folder_paths
    except ImportError:
        return
    folder_paths.add_model_folder_path(MODEL_FOLDER, os.path.join(folder_paths.models_dir,
                                                                  MODEL_FOLDER))
    paths, exts = folder_paths.folder_names_and_paths[MODEL_FOLDER]
    if not exts:
        folder_paths.folder_names_and_paths[MODEL_FOLDER] = (
            paths, set(folder_paths.supported_pt_extensions))


def model_folders() -> list[str]:
    """Every ``models/selva`` folder ComfyUI knows (default first, then extra_model_paths)."""
    import folder_paths

    try:
        return folder_paths.get_folder_paths(MODEL_FOLDER)
    except KeyError:
        return [os.path.join(folder_paths.models_dir, MODEL_FOLDER)]


def list_files(folder: str) -> list[str]:
    """Files ComfyUI lists for ``folder`` (for dropdowns; empty outside ComfyUI)."""
    try:
        import folder_paths

        return list(folder_paths.get_filename_list(folder))
    except (ImportError, KeyError):
        return []


def resolve_user_path(path: str, base: str) -> str:
    """An absolute or ``~`` path as given; a relative one under ComfyUI's ``base`` directory
    (``input`` or ``output``)."""
    import folder_paths

    path = os.path.expanduser(path.strip())
    if os.path.isabs(path):
        return path
    root = folder_paths.get_input_directory() if base == "input" else \
        folder_paths.get_output_directory()
    return os.path.join(root, path)


def chosen_file(node: str, name_input: str, path_input: str, name: str, explicit: str,
                none: str, what: str) -> tuple[str | None, str]:
    """(file, the input it came from) of a loader with a ``models/loras`` list and an explicit
    path (which wins when not empty); ``(None, name_input)`` when nothing is chosen."""
    if explicit and explicit.strip():
        path = os.path.expanduser(explicit.strip())
        if not os.path.isfile(path):
            raise node_error(node, path_input, f"no file at {path}",
                             f"give the full path of {what} .safetensors file")
        return path, path_input
    if not name or name == none:
        return None, name_input
    import folder_paths

    path = folder_paths.get_full_path(LORA_FOLDER, name)
    if path is None:
        raise node_error(node, name_input, f"{name} is not in models/loras",
                         "refresh the node list (R) or put the file there")
    return path, name_input


__all__ = [
    "CATEGORY", "FEATURES_TYPE", "MODEL_TYPE", "SelvaModel", "SelvaNodeError", "chosen_file",
    "hidden_node_id",
    "library_mode", "list_files", "model_folders", "node_error", "on_device", "progress_callback",
    "raise_if_interrupted", "register_model_folder", "release_memory", "reported",
    "resolve_user_path", "stop_requested",
]
