"""Selective activation checkpointing of one MM-DiT block.

Plain checkpointing keeps only a block's inputs and re-runs its whole forward in the backward
pass. With a frozen base that re-run costs about half a training step, because the backward
pass of a frozen layer computes only the input's gradient (no weight gradient): a full re-run
adds roughly one forward to a step of one forward and one backward.

Selective checkpointing (``torch.utils.checkpoint`` with a ``context_fn`` from
``create_selective_checkpoint_contexts``) keeps a few op outputs inside the block and
recomputes the rest. The policy keeps what is dear to recompute and cheap to store:

* the output of every projection (``mm``/``addmm``/``convolution``) that contracts over more
  than twice as many values as it produces per position: the MLP's down projection and the
  kernel-3 output projections of the latent and clip streams. Their outputs are a token-width
  tensor each, their cost is a hidden-width or three-tap contraction;
* the outputs of attention (all SDPA kernels), whose backward needs them anyway.

Everything else (norms, modulation, RoPE, qkv and the MLP's expanding projections) is
recomputed. Gradients are unchanged: kept values are the forward's own results and recomputed
ones repeat the same kernels on the same inputs, RNG state included (dropout masks repeat).

Kept outputs must not be modified in place afterwards (PyTorch raises "Tensor cached during
selective activation checkpoint has been mutated"); the LoRA wrappers therefore add their
change out of place.

On a PyTorch without selective checkpointing, blocks fall back to plain checkpointing.
"""

from __future__ import annotations

import functools
import inspect

import torch
import torch.utils.checkpoint as tuc

__all__ = ["SELECTIVE_AVAILABLE", "checkpoint_block", "keep_output"]

#: Output width this many times smaller than the contraction makes an op's output worth keeping.
CONTRACTION_OVER_OUTPUT = 2

SELECTIVE_AVAILABLE = hasattr(tuc, "create_selective_checkpoint_contexts") and hasattr(
    tuc, "CheckpointPolicy"
)
# Newer PyTorch asks whether kept tensors pass through saved-tensor hooks (memory probes use
# them); say yes, so that kept outputs are counted like any other saved tensor.
_RESPECTS_HOOKS = "respect_saved_tensors_hooks" in inspect.signature(tuc.checkpoint).parameters


def _attention_ops() -> frozenset:
    aten = torch.ops.aten
    names = (
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
    )
    return frozenset(getattr(aten, n).default for n in names if hasattr(aten, n))


_ATTENTION = _attention_ops()
_MM = frozenset((torch.ops.aten.mm.default, torch.ops.aten.addmm.default))
_CONV = torch.ops.aten.convolution.default


def keep_output(op, args) -> bool:
    """Whether the block keeps ``op``'s output for the backward pass instead of recomputing it."""
    if op in _ATTENTION:
        return True
    if op in _MM:
        w = args[1] if op is torch.ops.aten.mm.default else args[2]  # (contraction, out)
        return w.shape[0] > CONTRACTION_OVER_OUTPUT * w.shape[1]
    if op is _CONV:
        w = args[1]  # (out, in / groups, *kernel)
        return w[0].numel() > CONTRACTION_OVER_OUTPUT * w.shape[0]
    return False


def _policy(ctx, op, *args, **kwargs):
    if keep_output(op, args):
        return tuc.CheckpointPolicy.MUST_SAVE
    return tuc.CheckpointPolicy.PREFER_RECOMPUTE


def checkpoint_block(block, *args, selective: bool = True):
    """Run ``block(*args)`` keeping few activations for its backward pass (non-reentrant)."""
    kwargs = {"use_reentrant": False}
    if selective and SELECTIVE_AVAILABLE:
        kwargs["context_fn"] = functools.partial(
            tuc.create_selective_checkpoint_contexts, _policy
        )
        if _RESPECTS_HOOKS:
            kwargs["respect_saved_tensors_hooks"] = True
    return tuc.checkpoint(block, *args, **kwargs)
