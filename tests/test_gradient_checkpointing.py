"""Gradient checkpointing of the generator's MM-DiT blocks: same outputs, same gradients."""

from __future__ import annotations

import pytest
import torch

from selva_core.model import checkpointing
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


def _loss_and_grads(gen: SelvaGenerator, checkpointing: bool, selective: bool = True):
    variant = get_variant(VARIANT)
    latent, clip_f, sync_f, text_f, t = random_inputs(
        variant.generator, variant.sequence_lengths(DURATION), batch=2, seed=7
    )
    gen.set_gradient_checkpointing(checkpointing, selective=selective)
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


def _saved_bytes(checkpointing: bool, selective: bool = True) -> int:
    """Bytes saved for the backward pass (distinct storages)."""
    gen = _adapted_generator()
    gen.set_gradient_checkpointing(checkpointing, selective=selective)
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


def test_checkpointing_does_nothing_without_autograd():
    gen = _adapted_generator()
    variant = get_variant(VARIANT)
    inputs = random_inputs(variant.generator, variant.sequence_lengths(DURATION), 1, seed=1)
    with torch.no_grad():
        plain = gen(*inputs)
        gen.set_gradient_checkpointing(True)
        again = gen(*inputs)
    assert torch.equal(plain, again)


def _kept_projections(gen: SelvaGenerator, block_prefix: str) -> set[str]:
    """Names of the projections in one block whose outputs the selective policy keeps."""
    aten = torch.ops.aten
    kept = set()
    for name, module in gen.named_modules():
        if not name.startswith(block_prefix):
            continue
        w = getattr(module, "weight", None)
        if isinstance(module, torch.nn.Conv1d):
            x = torch.empty(1, w.shape[1], 8)
            keep = checkpointing.keep_output(aten.convolution.default, (x, w))
        elif isinstance(module, torch.nn.Linear):
            x = torch.empty(8, w.shape[1])
            keep = checkpointing.keep_output(aten.mm.default, (x, w.t()))
        else:
            continue
        if keep:
            kept.add(name[len(block_prefix):])
    return kept


def test_selective_policy_keeps_down_projections_and_three_tap_output_projections():
    gen = SelvaGenerator.from_variant(VARIANT, duration=DURATION)
    assert _kept_projections(gen, "fused_blocks.0.") == {"ffn.w2", "linear1"}
    # The text stream's output projection is a plain linear: cheap, recomputed.
    assert _kept_projections(gen, "joint_blocks.0.text_block.") == {"ffn.w2"}
    attention = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default
    assert checkpointing.keep_output(attention, ())
    assert not checkpointing.keep_output(torch.ops.aten.mul.Tensor, ())


@pytest.mark.parametrize("kind,init", [("lora", "gaussian"), ("dora", "gaussian"),
                                       ("lora", "pissa")])
def test_adapters_on_kept_projections_train_bitwise_equal_with_dropout(kind, init):
    """LoRA on ``ffn.w2`` and ``linear1`` (outputs the policy keeps) with dropout active."""
    torch.manual_seed(0)
    gen = SelvaGenerator.from_variant(VARIANT, duration=DURATION)
    attach_lora(gen, LoRAConfig(rank=4, targets=("attn+ffn",), init=init, seed=3,
                                kind=kind, dropout=0.1))
    gen.train()
    results = []
    for mode in ("plain", "selective", "full"):
        torch.manual_seed(11)  # the same dropout masks for every mode
        results.append(_loss_and_grads(gen, checkpointing=mode != "plain",
                                       selective=mode == "selective"))
    (plain_out, plain_grads), *others = results
    for out, grads in others:
        assert torch.equal(plain_out, out)
        assert all(torch.equal(a, b) for a, b in zip(plain_grads, grads))


def test_selective_checkpointing_keeps_more_than_full_and_far_less_than_plain():
    plain, selective, full = (_saved_bytes(False), _saved_bytes(True, selective=True),
                              _saved_bytes(True, selective=False))
    assert full < selective < 0.5 * plain


def test_blocks_fall_back_to_plain_checkpointing_without_selective_support(monkeypatch):
    gen = _adapted_generator()
    plain_out, plain_grads = _loss_and_grads(gen, checkpointing=False)
    monkeypatch.setattr(checkpointing, "SELECTIVE_AVAILABLE", False)
    out, grads = _loss_and_grads(gen, checkpointing=True)
    assert torch.equal(plain_out, out)
    assert all(torch.equal(a, b) for a, b in zip(plain_grads, grads))
    assert _saved_bytes(True, selective=True) == _saved_bytes(True, selective=False)
