"""Gradient checkpointing of the generator's MM-DiT blocks: same outputs, same gradients."""

from __future__ import annotations

import torch

from selva_core.model.generator import SelvaGenerator
from selva_core.model.lora import LoRAConfig, attach_lora, trainable_parameters
from selva_core.variants import get_variant
from tests.generator_inputs import random_inputs

VARIANT = "tiny_16k"
DURATION = 1.0


def _adapted_generator() -> SelvaGenerator:
    torch.manual_seed(0)
    gen = SelvaGenerator.from_variant(VARIANT, duration=DURATION)
    attach_lora(gen, LoRAConfig(rank=4, targets=("attn",), init="gaussian", seed=3))
    return gen


def _loss_and_grads(gen: SelvaGenerator, checkpointing: bool):
    variant = get_variant(VARIANT)
    latent, clip_f, sync_f, text_f, t = random_inputs(
        variant.generator, variant.sequence_lengths(DURATION), batch=2, seed=7
    )
    gen.set_gradient_checkpointing(checkpointing)
    for p in trainable_parameters(gen):
        p.grad = None
    out = gen(latent, clip_f, sync_f, text_f, t)
    loss = out.square().mean()
    loss.backward()
    return out.detach(), [p.grad.clone() for p in trainable_parameters(gen)]


def test_checkpointed_blocks_give_bitwise_equal_outputs_and_adapter_gradients_on_cpu():
    gen = _adapted_generator()
    plain_out, plain_grads = _loss_and_grads(gen, checkpointing=False)
    ckpt_out, ckpt_grads = _loss_and_grads(gen, checkpointing=True)
    assert torch.equal(plain_out, ckpt_out)
    assert len(plain_grads) == len(ckpt_grads) > 0
    assert any(g.abs().sum() > 0 for g in plain_grads)
    for a, b in zip(plain_grads, ckpt_grads):
        assert torch.equal(a, b)


def test_checkpointing_keeps_fewer_activations_for_backward():
    """Bytes saved for the backward pass (distinct storages) shrink when blocks recompute."""

    def saved_bytes(checkpointing: bool) -> int:
        gen = _adapted_generator()
        gen.set_gradient_checkpointing(checkpointing)
        variant = get_variant(VARIANT)
        inputs = random_inputs(variant.generator, variant.sequence_lengths(DURATION), 2, seed=7)
        storages: dict[int, int] = {}

        def pack(t: torch.Tensor):
            storage = t.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            gen(*inputs).square().mean().backward()
        return sum(storages.values())

    plain, ckpt = saved_bytes(False), saved_bytes(True)
    assert ckpt < 0.5 * plain


def test_checkpointing_does_nothing_without_autograd():
    gen = _adapted_generator()
    variant = get_variant(VARIANT)
    inputs = random_inputs(variant.generator, variant.sequence_lengths(DURATION), 1, seed=1)
    with torch.no_grad():
        plain = gen(*inputs)
        gen.set_gradient_checkpointing(True)
        again = gen(*inputs)
    assert torch.equal(plain, again)
