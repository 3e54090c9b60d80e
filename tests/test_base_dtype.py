"""Half-precision frozen base weights: adapters stay fp32, shared tensors are never modified."""

from __future__ import annotations

import copy

import pytest
import torch

from selva_core.model.generator import SelvaGenerator
from selva_core.model.lora import LoRAConfig, attach_lora, trainable_parameters
from selva_core.model.precision import cast_frozen_weights, resolve_base_dtype
from selva_core.variants import get_variant
from tests.generator_inputs import random_inputs

VARIANT = "tiny_16k"
DURATION = 1.0


def _frozen_generator() -> SelvaGenerator:
    torch.manual_seed(0)
    gen = SelvaGenerator.from_variant(VARIANT, duration=DURATION)
    for p in gen.parameters():
        p.requires_grad_(False)
    return gen


def test_casting_a_structural_copy_leaves_the_shared_original_in_float32():
    original = _frozen_generator()
    before = {k: v.clone() for k, v in original.state_dict().items()}
    tensors = list(original.parameters()) + list(original.buffers())
    copy_ = copy.deepcopy(original, memo={id(t): t for t in tensors})
    attach_lora(copy_, LoRAConfig(rank=4, targets=("attn",), init="gaussian", seed=1))
    saved = cast_frozen_weights(copy_, torch.bfloat16)
    assert saved > 0
    for key, value in original.state_dict().items():
        assert value.dtype == torch.float32 and torch.equal(value, before[key]), key
    assert all(p.dtype == torch.float32 for p in trainable_parameters(copy_))
    cast = [m.weight for m in copy_.modules() if isinstance(m, torch.nn.Linear)
            and not m.weight.requires_grad]
    assert cast and all(w.dtype == torch.bfloat16 for w in cast)
    assert copy_.latent_std.dtype == torch.float32  # statistics stay exact


def test_bf16_base_under_autocast_trains_the_fp32_adapter_close_to_the_fp32_base():
    variant = get_variant(VARIANT)
    inputs = random_inputs(variant.generator, variant.sequence_lengths(DURATION), 2, seed=3)

    def grads(base_dtype: torch.dtype):
        gen = _frozen_generator()
        attach_lora(gen, LoRAConfig(rank=4, targets=("attn",), init="gaussian", seed=1))
        cast_frozen_weights(gen, base_dtype)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = gen(*inputs).float().square().mean()
        loss.backward()
        return [p.grad for p in trainable_parameters(gen)]

    full, half = grads(torch.float32), grads(torch.bfloat16)
    assert all(g.dtype == torch.float32 for g in half)
    num = sum((a - b).square().sum() for a, b in zip(full, half))
    den = sum(a.square().sum() for a in full)
    # Under bf16 autocast the fp32 base is rounded to bf16 for every matmul anyway: storing
    # it in bf16 changes nothing but the order of that rounding.
    assert float((num / den).sqrt()) < 1e-2


def test_auto_base_dtype_is_fp32_on_cpu_and_names_are_checked():
    assert resolve_base_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_base_dtype("fp16", torch.device("cpu")) == torch.float16
    with pytest.raises(ValueError, match="fp8"):
        resolve_base_dtype("fp8", torch.device("cpu"))
