"""Stand-in for ``comfy.model_management`` (tests only): CPU devices, the interrupt flag and
the list of loaded models that ``load_models_gpu`` fills and ``unload_all_models`` empties,
with ComfyUI's accounting: one entry per model object (clones replace each other), each
counted by its patcher's ``model_size()`` and ``loaded_size()``."""

from __future__ import annotations

import logging
import weakref

import torch

current_loaded_models: list = []
_interrupted = False
SOFT_EMPTY_CACHE_CALLS = [0]
FREE_MEMORY_CALLS: list = []  # (bytes, device) asked to be freed
MEMORY_REQUIRED: list = []  # per load_models_gpu call: {device: bytes the load needs}
OOM_EXCEPTION = torch.cuda.OutOfMemoryError


class InterruptProcessingException(Exception):
    pass


def interrupt_current_processing(value=True):
    global _interrupted
    _interrupted = value


def processing_interrupted():
    return _interrupted


def throw_exception_if_processing_interrupted():
    global _interrupted
    if _interrupted:
        _interrupted = False
        raise InterruptProcessingException()


def get_torch_device():
    return torch.device("cpu")


def unet_offload_device():
    return torch.device("cpu")


def intermediate_device():
    return torch.device("cpu")


def should_use_bf16(device=None, model_params=0, prioritize_performance=True, manual_cast=False):
    return False


def soft_empty_cache(force=False):
    SOFT_EMPTY_CACHE_CALLS[0] += 1


def module_size(module) -> int:
    """Bytes of a module's state dict (each entry counted, as ComfyUI counts them)."""
    return sum(t.nelement() * t.element_size() for t in module.state_dict().values())


class LoadedModel:
    """One entry of ``current_loaded_models``: a weak reference to a patcher; when a clone
    dies the entry falls back to the clone's parent (ComfyUI's ``_switch_parent``)."""

    def __init__(self, model):
        self._set_model(model)
        self.device = model.load_device
        self.currently_used = True

    def _set_model(self, model):
        self._model = weakref.ref(model)
        if model.parent is not None:
            self._parent_model = weakref.ref(model.parent)
            weakref.finalize(model, self._switch_parent)

    def _switch_parent(self):
        parent = self._parent_model()
        if parent is not None:
            self._set_model(parent)

    @property
    def model(self):
        return self._model()

    def model_memory(self):
        return self.model.model_size()

    def model_loaded_memory(self):
        return self.model.loaded_size()

    def model_offloaded_memory(self):
        return self.model.model_size() - self.model.loaded_size()

    def model_memory_required(self, device):
        if device == self.model.current_loaded_device():
            return self.model_offloaded_memory()
        return self.model_memory()

    def model_load(self, lowvram_model_memory=0, force_patch_weights=False):
        self.model.partially_load(self.device, 1e32, force_patch_weights=force_patch_weights)
        return self.model.model

    def model_unload(self, memory_to_free=None, unpatch_weights=True):
        if self.model is not None:  # (ComfyUI warns about a dead entry and drops it)
            self.model.detach(unpatch_weights)
        return True

    def __eq__(self, other):
        return self.model is other.model


def load_models_gpu(models, memory_required=0, force_patch_weights=False,
                    minimum_memory_required=None, force_full_load=False):
    """As ComfyUI: reuse a patcher's entry, drop the entries of its clones (same model
    object) without moving anything, record the bytes each device must make room for
    (``MEMORY_REQUIRED``), then load (a loaded model is not moved again)."""
    wanted = []
    for patcher in models:
        if patcher not in wanted:
            wanted.append(patcher)
    to_load = []
    for patcher in wanted:
        entry = LoadedModel(patcher)
        found = next((lm for lm in current_loaded_models if lm == entry), None)
        if found is not None:
            found.currently_used = True
            to_load.append(found)
        else:
            logging.info("Requested to load %s", patcher.model.__class__.__name__)
            to_load.append(entry)
    for entry in to_load:
        for i in reversed(range(len(current_loaded_models))):
            if entry.model.is_clone(current_loaded_models[i].model):
                current_loaded_models.pop(i).model.detach(unpatch_all=False)
    required: dict = {}
    for entry in to_load:
        required[entry.device] = required.get(entry.device, 0) + \
            entry.model_memory_required(entry.device)
    MEMORY_REQUIRED.append(required)
    for entry in to_load:
        entry.model_load()
        current_loaded_models.insert(0, entry)


def free_memory(memory_required, device, keep_loaded=()):
    FREE_MEMORY_CALLS.append((memory_required, device))
    return []


def loaded_models(only_currently_used=False):
    return [lm.model for lm in current_loaded_models]


def unload_all_models():
    while current_loaded_models:
        current_loaded_models.pop().model_unload()
