"""The precision vocabulary, frozen base weights in half precision, and the peak memory of a run.

Two dtypes are named apart everywhere: the *weight dtype* (what the frozen networks are stored
in: the pipeline's ``precision``, the trainer's ``--base_dtype``, choices
:data:`BASE_DTYPE_CHOICES`, resolved by :func:`resolve_weight_dtype`) and the *autocast dtype*
(what a training forward computes in: ``--precision``, choices :data:`AUTOCAST_CHOICES`,
resolved by :func:`resolve_autocast_dtype`; None means fp32 without autocast).

Training a LoRA adapter only needs gradients for the adapter, so the frozen generator's
matrices can be stored in bfloat16 / float16: half the bytes of the largest tensors of a
training step. The adapter's own parameters stay float32 and every matmul runs under autocast
in the same half dtype (what autocast would cast the fp32 weights to anyway), so the
adapter's updates see the same arithmetic. Norms, biases and the generator's latent
statistics stay float32.

:func:`cast_frozen_weights` never changes a tensor it was given: it swaps in new parameter
objects on the modules of ``model``, so a generator that shares its tensors with a cached
pipeline (``SelvaPipeline.fork``) leaves the cached one in float32.
"""

from __future__ import annotations

import logging
import resource
import sys

import torch
from torch import nn

logger = logging.getLogger(__name__)

#: ``--base_dtype`` choices -> torch dtype (``auto`` is resolved by :func:`resolve_base_dtype`).
BASE_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
}
BASE_DTYPE_CHOICES = ("auto", *BASE_DTYPES)
#: ``--precision`` (training autocast) choices; fp16 autocast comes with an fp16 base only.
AUTOCAST_CHOICES = ("auto", "bf16", "fp32")


def native_bf16(device: torch.device) -> bool:
    """True on a GPU that computes bfloat16 natively (CUDA compute capability 8.0 or newer, or
    ROCm). Older cards only emulate it, far slower than fp32, so ``auto`` keeps fp32 there."""
    if device.type != "cuda":
        return False
    if device.index is None:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(including_emulation=False)


def resolve_base_dtype(choice: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on a GPU that computes it natively, fp32 elsewhere; else the named dtype."""
    if choice == "auto":
        if native_bf16(device):
            return torch.bfloat16
        return torch.float32
    if choice not in BASE_DTYPES:
        raise ValueError(f"base dtype {choice!r} is unknown; choose one of {BASE_DTYPE_CHOICES}")
    return BASE_DTYPES[choice]


def resolve_weight_dtype(choice: str | torch.dtype, device: torch.device | str) -> torch.dtype:
    """A weight dtype given by name (``auto`` resolved for ``device``) or as a torch dtype."""
    if isinstance(choice, torch.dtype):
        if choice not in BASE_DTYPES.values():
            raise ValueError(f"precision {choice} is not one of {list(BASE_DTYPES)}")
        return choice
    if choice not in BASE_DTYPE_CHOICES:
        raise ValueError(f"precision {choice!r} is unknown; choose one of {BASE_DTYPE_CHOICES}")
    return resolve_base_dtype(choice, torch.device(device))


def resolve_autocast_dtype(choice: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on a capable GPU under 'auto'; fp32 (None) on CPU unless forced."""
    if choice == "fp32":
        return None
    if choice == "bf16":
        return torch.bfloat16
    if native_bf16(device):  # not on cards that only emulate bf16 (slower than fp32)
        return torch.bfloat16
    return None


def _weight_layers(model: nn.Module):
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d)):
            yield module


def cast_frozen_weights(model: nn.Module, dtype: torch.dtype) -> int:
    """Store the frozen weight matrices of ``model``'s Linear / Conv1d layers in ``dtype``.

    Only parameters with ``requires_grad=False`` are cast (adapters are trainable and stay
    as they are); each is replaced by a new ``nn.Parameter`` on its module, so tensors shared
    with another model are never modified. Returns the number of bytes saved.
    """
    if not dtype.is_floating_point:
        raise ValueError(f"base weights need a floating dtype, got {dtype}")
    saved = 0
    for module in _weight_layers(model):
        for name, param in list(module.named_parameters(recurse=False)):
            if param.requires_grad or param.dtype == dtype or not param.is_floating_point():
                continue
            new = nn.Parameter(param.detach().to(dtype), requires_grad=False)
            saved += param.numel() * (param.element_size() - new.element_size())
            setattr(module, name, new)
    if saved:
        logger.info("frozen base weights stored in %s (%.1f MB less)", dtype, saved / 1e6)
    return saved


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak for :func:`peak_memory_bytes` where that is possible (CUDA), so a run
    inside a long-lived process (ComfyUI) reports its own peak. A process's peak resident
    memory cannot be reset: on a CPU the figure covers the whole process."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> tuple[int, str]:
    """The run's peak memory and how it was measured.

    CUDA: ``torch.cuda.max_memory_allocated`` (tensors the caching allocator handed out);
    elsewhere the process's peak resident set size (``ru_maxrss``), which includes the
    Python interpreter and every loaded library.
    """
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda max_memory_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024  # macOS reports bytes, Linux KiB
    return int(rss * scale), "process peak resident memory"


#: What PyTorch raises when a device allocation fails (``torch.cuda.OutOfMemoryError`` before
#: PyTorch 2.5 named it for every device).
OUT_OF_MEMORY_ERROR: type[RuntimeError] = getattr(torch, "OutOfMemoryError",
                                                  torch.cuda.OutOfMemoryError)
# The CPU allocator raises a plain RuntimeError with this text when malloc fails.
_CPU_ALLOCATION_FAILED = "can't allocate memory"


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says an allocation failed (a GPU out of memory, or the CPU allocator)."""
    if isinstance(exc, (OUT_OF_MEMORY_ERROR, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and _CPU_ALLOCATION_FAILED in str(exc)
