"""Multi-process data parallelism (torchrun) with the same script as a single-process run.

``torchrun --nproc_per_node N train_lora.py ...`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``;
:func:`init_distributed` then joins the process group (NCCL on GPUs, gloo on CPU) and picks
the process's device. Without those variables everything here is a no-op on one process.

Only rank 0 writes files (logs, checkpoints, samples, the adapter); the others compute. The
data sharding itself lives in :mod:`selva_core.training.data_order`.
"""

from __future__ import annotations

import inspect
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank, the world size and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class DeviceUnavailableError(ValueError):
    """``--device`` names a device this machine does not have (one line naming the fix)."""


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """'auto' -> this process's GPU when CUDA is available, else the CPU; a GPU that is not
    there raises :class:`DeviceUnavailableError`."""
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    if preference.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(f"--device {preference} asked for a GPU but CUDA is "
                                         "not available on this machine; use --device cpu "
                                         "(or auto)")
        count = torch.cuda.device_count()
        if preference == "cuda":
            return torch.device("cuda", local_rank % count)
        index = torch.device(preference).index
        if index is not None and index >= count:
            raise DeviceUnavailableError(f"--device {preference}: this machine has {count} "
                                         f"GPU(s) (cuda:0 to cuda:{count - 1})")
    return torch.device(preference)


def init_distributed(device_preference: str = "auto") -> DistContext:
    """Join the torchrun process group if the environment asks for one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(device=resolve_device(device_preference))
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    device = resolve_device(device_preference, local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    log.info("process %d/%d on %s (%s)", rank, world, device, backend)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=device,
                       backend=backend)


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def all_reduce_mean(value: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Mean of ``value`` over all processes (a new tensor; identity on one process)."""
    if not ctx.enabled:
        return value.detach().clone()
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / ctx.world_size


def all_true(flag: bool, ctx: DistContext) -> bool:
    """True only if ``flag`` is true on every process (e.g. 'no one was interrupted')."""
    if not ctx.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item() > 0.5)


def wrap_model(model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """DistributedDataParallel over the trainable (adapter) parameters when world > 1."""
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    # The generator's buffers (RoPE tables) are computed identically on every process, so
    # they need no syncing at each forward (newer torch: forward_sync_buffers).
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in params
            else {"broadcast_buffers": False})
    return DistributedDataParallel(model, device_ids=ids, **sync)
