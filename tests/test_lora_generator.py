"""LoRA on the real generator class (``tiny_16k``): targets, identity, gradients, files, merge."""

from __future__ import annotations

import pytest
import torch

from selva_core.model.generator import SelvaGenerator
from selva_core.model.layers import ChannelLastConv1d
from selva_core.model.lora import (
    AdapterLoadError,
    LoRAConfig,
    LoRAConv1d,
    LoRALinear,
    adapter_layers,
    attach_lora,
    load_adapter,
    merge_adapters,
    read_adapter_file,
    remove_all_adapters,
    resolve_targets,
    save_adapter,
    unmerge_adapters,
)
from selva_core.variants import get_variant
from tests.generator_inputs import random_inputs
from tests.test_lora_common import (
    perturb,
    rel_err,
    same_state,
    state_bits,
)

VARIANT = "tiny_16k"
DURATION = 1.0


def _generator(seed: int = 0) -> SelvaGenerator:
    torch.manual_seed(seed)
    return SelvaGenerator.from_variant(VARIANT, duration=DURATION)


def _inputs(batch: int = 2):
    variant = get_variant(VARIANT)
    return random_inputs(variant.generator, variant.sequence_lengths(DURATION), batch, seed=5)


def test_presets_on_the_generator_hit_every_stream_and_honour_the_pre_only_block():
    gen = _generator()
    cfg = gen.cfg
    qkv = resolve_targets(gen, ["qkv"])
    assert len(qkv) == 3 * cfg.joint_depth + cfg.fused_depth
    attach_lora(gen, LoRAConfig(rank=4, targets=("qkv+linear1",)))
    last = gen.joint_blocks[cfg.joint_depth - 1]
    assert isinstance(last.latent_block.linear1, LoRAConv1d)
    assert not hasattr(last.clip_block, "linear1") and not hasattr(last.text_block, "linear1")
    first = gen.joint_blocks[0]
    assert isinstance(first.clip_block.linear1, LoRAConv1d)
    assert isinstance(first.clip_block.linear1.base_layer, ChannelLastConv1d)
    assert isinstance(first.text_block.linear1, LoRALinear)  # text stream: nn.Linear
    assert isinstance(gen.fused_blocks[0].linear1, LoRAConv1d)


def test_generator_step_0_gradients_reach_every_b_and_no_base_weight():
    gen = _generator()
    attach_lora(gen, LoRAConfig(rank=4, targets=("qkv+linear1",)))
    latent, clip, sync, text, t = _inputs()
    gen(latent, clip, sync, text, t).pow(2).mean().backward()
    for path, st in adapter_layers(gen, "default").items():
        assert st.lora_B.grad is not None and st.lora_B.grad.abs().sum() > 0, path
        assert not st.lora_A.grad.any(), path
    assert all(p.grad is None for n, p in gen.named_parameters() if ".adapters." not in n)


def test_generator_pissa_starts_as_the_base_model():
    gen = _generator()
    x = _inputs()
    y0 = gen(*x)
    attach_lora(gen, LoRAConfig(rank=4, init="pissa", targets=("attn",)), variant_name=VARIANT)
    assert rel_err(gen(*x), y0) <= 1e-6


def test_generator_file_round_trip_merge_and_exact_restore_on_all_block_layers(tmp_path):
    gen = _generator()
    x = _inputs()
    base_bits = state_bits(gen)
    y0 = gen(*x)
    attach_lora(gen, LoRAConfig(rank=4, targets=("all",)))  # variant found from gen.cfg
    assert torch.equal(gen(*x), y0)
    perturb(gen, std=0.02)
    y = gen(*x)
    assert rel_err(y, y0) > 1e-3
    path = save_adapter(gen, tmp_path / "g.safetensors")
    assert read_adapter_file(path)[1]["model_variant"] == VARIANT
    fresh = _generator()
    load_adapter(fresh, path, expected_variant=VARIANT)
    assert torch.equal(fresh(*x), y)
    merge_adapters(gen)
    assert rel_err(gen(*x), y) <= 1e-5
    unmerge_adapters(gen)
    remove_all_adapters(gen)
    assert same_state(state_bits(gen), base_bits)
    with pytest.raises(AdapterLoadError, match="model variant"):
        load_adapter(_generator(), path, expected_variant="small_16k")
