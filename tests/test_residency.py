"""SharedResidency: a base pipeline's networks as one module that carries its forks along."""

from __future__ import annotations

import gc

import pytest
import torch

from selva_core.model.lora import LoRAConfig, attach_lora, save_adapter
from selva_core.pipeline import SelvaPipeline
from selva_core.pipeline.residency import SharedResidency


def _adapter(pipe: SelvaPipeline, path, seed: int):
    work = pipe.fork()
    handle = attach_lora(work.generator, LoRAConfig(rank=4, targets=("attn",)), name="x",
                         variant_name=pipe.variant.name)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in handle.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g))
    return save_adapter(work.generator, path, name="x")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    pipe = SelvaPipeline.build("tiny_16k", device="cpu", seed=0)
    root = tmp_path_factory.mktemp("adapters")
    return _adapter(pipe, root / "a.safetensors", 1), _adapter(pipe, root / "b.safetensors", 2)


@pytest.fixture
def family(files):
    """A fresh base, one adapted fork and a fork stacked on it (tests move them)."""
    base = SelvaPipeline.build("tiny_16k", device="cpu", seed=0)
    one = base.with_adapters([(files[0], 1.0)])
    two = one.with_adapters([(files[1], 0.5)])
    return base, one, two


def _adapter_bytes(pipe: SelvaPipeline) -> int:
    tensors = [*pipe.generator.named_parameters(), *pipe.generator.named_buffers()]
    return sum(t.numel() * t.element_size() for n, t in tensors if ".adapters." in f".{n}")


def _storages(module: torch.nn.Module) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in (*module.parameters(), *module.buffers())}


def _adapter_storages(pipe: SelvaPipeline) -> set[int]:
    return {t.untyped_storage().data_ptr() for n, t in pipe.generator.named_parameters()
            if ".adapters." in f".{n}"}


def _state_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def test_a_fork_is_counted_only_by_the_tensors_it_owns(family):
    base, one, two = family
    residency = SharedResidency(base.networks())
    size = _state_bytes(residency)
    assert size == sum(_state_bytes(m) for m in base.networks().values())
    assert residency.follow(one) == _adapter_bytes(one) > 0
    assert residency.follow(two) == _adapter_bytes(two) > _adapter_bytes(one)  # both adapters
    assert _state_bytes(residency) == size  # following adds nothing to the base
    assert residency.forks() == [one, two]


def test_moving_the_base_layer_by_layer_then_whole_keeps_every_fork_sharing(family):
    """As ComfyUI loads: leaf modules first, then the whole module; a round trip through
    another dtype leaves every fork on the base's very tensors and rendering as before."""
    base, one, two = family
    feats = base.extract_features(torch.zeros(25, 3, 32, 32, dtype=torch.uint8), "a dog barks",
                                  duration=1.0)
    want = [p.render(feats, seed=3, num_steps=2) for p in (base, one, two)]
    residency = SharedResidency(base.networks())
    residency.follow(one)
    residency.follow(two)
    shared = [len(_storages(base.generator) & _storages(f.generator)) for f in (one, two)]
    assert min(shared) > 0
    for dtype in (torch.float64, torch.float32):
        for _, module in residency.named_modules():
            if any(True for _ in module.parameters(recurse=False)):
                module.to(dtype)
        assert not _storages(base.generator) & _storages(one.generator)  # not yet followed
        residency.to(dtype)
        for fork, count in zip((one, two), shared):
            assert {t.dtype for t in fork.generator.parameters()} == {dtype}
            assert len(_storages(base.generator) & _storages(fork.generator)) == count
        assert _adapter_storages(one) <= _adapter_storages(two)  # stacked: still one copy
    assert all(torch.equal(p.render(feats, seed=3, num_steps=2), w)
               for p, w in zip((base, one, two), want))


def test_moving_the_base_away_leaves_no_fork_tensor_behind(family):
    base, one, two = family
    residency = SharedResidency(base.networks())
    residency.follow(one)
    residency.follow(two)
    residency.to("meta")  # a stand-in for the offload device
    for pipe in (base, one, two):
        for name, net in pipe.networks().items():
            assert all(t.is_meta for t in (*net.parameters(), *net.buffers())), name


def test_a_base_tensor_replaced_by_another_shape_is_not_forced_onto_a_fork(family):
    base, one, _ = family
    residency = SharedResidency(base.networks())
    residency.follow(one)
    owner, name = next((m, n) for m in base.generator.modules() for n, b in m._buffers.items()
                       if b is not None and b.numel() > 1)
    path = next(p for p, m in base.generator.named_modules() if m is owner)
    kept = one.generator.get_submodule(path)._buffers[name]
    owner._buffers[name] = torch.zeros(kept.numel() + 1)  # e.g. tables for another length
    residency.to(torch.float64)
    got = one.generator.get_submodule(path)._buffers[name]
    assert got.shape == kept.shape and torch.equal(got, kept.to(got.dtype))


def test_a_dropped_fork_is_forgotten(family, files):
    base, one, _ = family
    residency = SharedResidency(base.networks())
    residency.follow(one)
    dropped = base.with_adapters([(files[1], 1.0)])
    residency.follow(dropped)
    del dropped
    gc.collect()
    assert residency.forks() == [one]
    residency.to(torch.float64)  # still carries the live one
    assert {t.dtype for t in one.generator.parameters()} == {torch.float64}
