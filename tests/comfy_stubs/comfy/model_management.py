"""Stand-in for ``comfy.model_management`` (tests only): CPU devices, the interrupt flag and
the list of loaded models that ``load_models_gpu`` fills and ``unload_all_models`` empties."""

from __future__ import annotations

import torch

current_loaded_models: list = []
_interrupted = False
SOFT_EMPTY_CACHE_CALLS = [0]
FREE_MEMORY_CALLS: list = []  # (bytes, device) asked to be freed
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


class LoadedModel:
    def __init__(self, model):
        self.model = model
        self.device = model.load_device

    def model_unload(self, memory_to_free=None, unpatch_weights=True):
        self.model.detach(unpatch_weights)
        return True


def load_models_gpu(models, memory_required=0, force_patch_weights=False,
                    minimum_memory_required=None, force_full_load=False):
    for patcher in models:
        if not any(lm.model is patcher for lm in current_loaded_models):
            current_loaded_models.insert(0, LoadedModel(patcher))
        patcher.model.to(patcher.load_device)
        patcher.model.device = patcher.load_device


def free_memory(memory_required, device, keep_loaded=()):
    FREE_MEMORY_CALLS.append((memory_required, device))
    return []


def loaded_models(only_currently_used=False):
    return [lm.model for lm in current_loaded_models]


def unload_all_models():
    while current_loaded_models:
        current_loaded_models.pop().model_unload()
