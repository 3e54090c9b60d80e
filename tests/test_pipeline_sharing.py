"""One pipeline shared by many callers: build, fork, adapters on copies, state left as found."""

from __future__ import annotations

import pytest
import torch

from selva_core.features import ConditionFeatures
from selva_core.model.lora import (
    LoRAConfig,
    LoRALayer,
    attach_lora,
    iter_lora_layers,
    read_adapter_file,
    save_adapter,
)
from selva_core.pipeline import AdapterLoadError, SelvaPipeline

DURATION = 1.0
STEPS = 2


def _frames(num: int = 25, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (num, 3, 40, 56), generator=g, dtype=torch.uint8)


@pytest.fixture(scope="module")
def pipe() -> SelvaPipeline:
    return SelvaPipeline.build("tiny_16k", device="cpu", seed=0)


@pytest.fixture(scope="module")
def features(pipe) -> ConditionFeatures:
    return pipe.extract_features(_frames(), "a dog barks", duration=DURATION)


def _make_adapter(pipe: SelvaPipeline, path, seed: int, targets=("attn",)):
    """A trained-looking adapter file for ``pipe``'s generator (random non-zero B factors)."""
    work = pipe.fork()
    handle = attach_lora(work.generator, LoRAConfig(rank=4, targets=targets), name="x",
                         variant_name=pipe.variant.name)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in handle.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g))
    return save_adapter(work.generator, path, name="x", metadata={"note": f"seed {seed}"})


@pytest.fixture(scope="module")
def adapter_files(pipe, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return _make_adapter(pipe, root / "style_a.safetensors", 1), _make_adapter(
        pipe, root / "style_b.safetensors", 2, targets=("attn", "ffn"))


def _snapshot(module: torch.nn.Module) -> dict[str, tuple[torch.Tensor, bool]]:
    return {n: (p.detach().clone(), p.requires_grad) for n, p in module.named_parameters()}


def _assert_unchanged(module: torch.nn.Module, before) -> None:
    after = dict(module.named_parameters())
    assert after.keys() == before.keys()
    for n, (value, flag) in before.items():
        assert torch.equal(after[n], value), n
        assert after[n].requires_grad == flag, n
    assert not any(isinstance(m, LoRALayer) for m in module.modules())


def _render(p: SelvaPipeline, features, seed=3) -> torch.Tensor:
    return p.render(features, seed=seed, num_steps=STEPS)


# --- build ---------------------------------------------------------------------------------------
def test_build_freezes_every_network_and_puts_it_in_eval_mode(pipe):
    assert pipe.variant.name == "tiny_16k" and pipe.device == torch.device("cpu")
    assert pipe.dtype == torch.float32  # auto on the CPU
    nets = pipe.networks()
    assert set(nets) == {"generator", "video_encoder", "clip_text", "t5", "vae", "vocoder"}
    for name, net in nets.items():
        assert not any(p.requires_grad for p in net.parameters()), name
        assert not any(m.training for m in net.modules()), name
    assert pipe.vae.encoder is None  # inference does not need it
    assert SelvaPipeline.build("tiny_16k", device="cpu", need_vae_encoder=True).vae.encoder


def test_build_rejects_unknown_precision_and_offload():
    with pytest.raises(ValueError, match="precision 'fp8'"):
        SelvaPipeline.build("tiny_16k", device="cpu", precision="fp8")
    with pytest.raises(ValueError, match="offload 'disk'"):
        SelvaPipeline.build("tiny_16k", device="cpu", offload="disk")
    with pytest.raises(ValueError, match="unknown variant 'huge'"):
        SelvaPipeline.build("huge", device="cpu")


def test_build_tiny_is_the_tiny_model_of_the_same_seed(features):
    a = SelvaPipeline.build("tiny_16k", device="cpu", seed=5)
    b = SelvaPipeline.tiny(seed=5)
    sa, sb = a.generator.state_dict(), b.generator.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


# --- fork and adapters ---------------------------------------------------------------------------
def test_fork_shares_every_tensor_but_not_the_module_objects(pipe):
    fork = pipe.fork()
    assert fork.generator is not pipe.generator
    for (n, p), (_, q) in zip(pipe.generator.named_parameters(), fork.generator.named_parameters()):
        assert p is not q and p.data_ptr() == q.data_ptr(), n
    for (n, b), (_, c) in zip(pipe.generator.named_buffers(), fork.generator.named_buffers()):
        assert b.data_ptr() == c.data_ptr(), n
    for name in ("vae", "vocoder", "video_encoder", "clip_text", "t5"):
        assert getattr(fork, name) is getattr(pipe, name)


def test_adapters_go_on_a_copy_and_the_base_stays_bit_identical(pipe, features, adapter_files):
    before = _snapshot(pipe.generator)
    plain = _render(pipe, features)
    styled = pipe.with_adapters([(adapter_files[0], 0.7), (adapter_files[1], 0.3)])
    assert [a.name for a in styled.adapters] == ["style_a", "style_b"]
    assert [a.strength for a in styled.adapters] == [0.7, 0.3]
    assert styled.adapters[0].source == str(adapter_files[0])
    assert styled.adapters[0].metadata["format"] == "selva-lora"
    assert pipe.adapters == ()
    out = _render(styled, features)
    assert (out - plain).abs().max() > 1e-4  # the adapters act
    assert len(list(iter_lora_layers(styled.generator))) > 0
    _assert_unchanged(pipe.generator, before)
    assert torch.equal(_render(pipe, features), plain)


def test_the_same_adapters_twice_give_equal_results_without_double_patching(
    pipe, features, adapter_files
):
    a = pipe.with_adapters([(adapter_files[0], 0.8)])
    b = pipe.with_adapters([(adapter_files[0], 0.8)])
    assert a.adapters == b.adapters
    assert torch.equal(_render(a, features), _render(b, features))
    for _, layer in iter_lora_layers(a.generator):
        assert list(layer.adapters) == ["style_a"]  # one adapter per layer, not two


def test_adapters_stack_onto_an_adapted_pipeline(pipe, features, adapter_files):
    one = pipe.with_adapters([(adapter_files[0], 0.7)])
    stacked = one.with_adapters([(adapter_files[1], 0.3)])
    both = pipe.with_adapters([(adapter_files[0], 0.7), (adapter_files[1], 0.3)])
    assert [a.name for a in stacked.adapters] == ["style_a", "style_b"]
    assert [a.name for a in one.adapters] == ["style_a"]
    assert all(list(layer.adapters) == ["style_a"] for _, layer in iter_lora_layers(one.generator))
    assert torch.allclose(_render(stacked, features), _render(both, features), atol=1e-6)
    again = one.with_adapters([(adapter_files[0], 0.5)])  # the same file twice: a new name
    assert [a.name for a in again.adapters] == ["style_a", "style_a_2"]


def test_an_adapter_in_memory_loads_like_its_file(pipe, features, adapter_files):
    tensors, metadata = read_adapter_file(adapter_files[0])
    from_file = pipe.with_adapters([(adapter_files[0], 0.6)])
    from_pair = pipe.with_adapters([((tensors, metadata), 0.6)])
    from_map = pipe.with_adapters([({**tensors, "__metadata__": metadata}, 0.6)])
    want = _render(from_file, features)
    assert torch.equal(_render(from_pair, features), want)
    assert torch.equal(_render(from_map, features), want)
    assert from_pair.adapters[0].source == "<adapter state 1>"


def test_a_bad_adapter_raises_one_error_naming_it_and_changes_nothing(
    pipe, adapter_files, tmp_path
):
    before = _snapshot(pipe.generator)
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(adapter_files[0].read_bytes()[:200])
    with pytest.raises(AdapterLoadError, match="damaged.safetensors"):
        pipe.with_adapters([(adapter_files[0], 1.0), (damaged, 1.0)])
    other = SelvaPipeline.build("tiny_16k", device="cpu", seed=1)
    other_file = _make_adapter(other, tmp_path / "other.safetensors", 3)
    tensors, metadata = read_adapter_file(other_file)
    meta = {**metadata, "model_variant": "small_16k"}
    with pytest.raises(AdapterLoadError, match="small_16k"):
        pipe.with_adapters([((tensors, meta), 1.0)])
    with pytest.raises(ValueError, match="finite"):
        pipe.with_adapters([(adapter_files[0], float("nan"))])
    _assert_unchanged(pipe.generator, before)


def test_a_merged_generator_cannot_be_forked(pipe, adapter_files):
    from selva_core.model.lora import merge_adapters, unmerge_adapters

    styled = pipe.with_adapters([(adapter_files[0], 1.0)])
    merge_adapters(styled.generator)
    try:
        with pytest.raises(RuntimeError, match="merged"):
            styled.fork()
    finally:
        unmerge_adapters(styled.generator)


def test_a_fork_freeing_its_encoders_leaves_the_original_able_to_extract(pipe):
    fork = SelvaPipeline.build("tiny_16k", device="cpu", need_vae_encoder=True)
    child = fork.fork()
    child.free_encoders()
    assert child.video_encoder is None and fork.video_encoder is not None
    assert fork.vae.encoder is not None  # shared VAE keeps its encoder for the original
    fork.encode_audio(torch.zeros(16000), 16000)
    with pytest.raises(RuntimeError, match="free_encoders"):
        child.encode_audio(torch.zeros(16000), 16000)


# --- sample leaves the generator as found ---------------------------------------------------------
def test_sample_leaves_seq_lengths_and_modes_as_found_also_when_interrupted(pipe):
    feats = pipe.extract_features(_frames(50), "rain", duration=2.0)
    gen = pipe.generator
    seq_before = gen.seq
    gen.train()
    try:
        modes = [m.training for m in gen.modules()]
        pipe.sample(feats, seed=0, num_steps=1)
        assert gen.seq == seq_before
        assert [m.training for m in gen.modules()] == modes

        class Stop(Exception):
            pass

        def stop(i, n):
            assert not gen.training  # sampling runs in eval mode
            raise Stop

        with pytest.raises(Stop):
            pipe.sample(feats, seed=0, num_steps=3, progress_callback=stop)
        assert gen.seq == seq_before
        assert [m.training for m in gen.modules()] == modes
        assert all(p.dtype == torch.float32 for p in gen.parameters())
    finally:
        gen.eval()


# --- one cached pipeline for everything ----------------------------------------------------------
def test_one_cached_pipeline_serves_plain_and_adapted_renders_and_a_training_run(
    adapter_files, tmp_path
):
    from selva_core.data.synthetic import make_synthetic_dataset
    from selva_core.training.config import TrainConfig
    from selva_core.training.run import run_training

    cached = SelvaPipeline.build("tiny_16k", device="cpu", need_vae_encoder=True)
    features = cached.extract_features(_frames(), "a dog barks", duration=DURATION)
    before = _snapshot(cached.generator)
    first = _render(cached, features)

    styled = cached.with_adapters([(adapter_files[0], 0.7), (adapter_files[1], 0.3)])
    assert (_render(styled, features) - first).abs().max() > 1e-4

    make_synthetic_dataset(tmp_path / "clips", clips_per_class=2, duration=DURATION, size=32)
    cfg = TrainConfig(data_dir=str(tmp_path / "clips"), output_dir=str(tmp_path / "run"),
                      cache_dir=str(tmp_path / "cache"), variant="tiny_16k", duration=DURATION,
                      steps=3, warmup_steps=1, batch_size=2, save_every=3, val_every=3, rank=4,
                      lr=3e-3, val_clips=1, samples=False, surgery=False, quiet=True,
                      device="cpu")
    result = run_training(cfg, pipeline=cached)
    assert result.completed and result.adapter_path.is_file()

    assert torch.equal(_render(cached, features), first)  # plain again: bit-identical
    _assert_unchanged(cached.generator, before)
    assert cached.adapters == () and not list(iter_lora_layers(cached.generator))
    assert cached.video_encoder is not None and cached.vae.encoder is not None  # not freed
    trained = cached.with_adapters([(result.adapter_path, 1.0)])
    assert (_render(trained, features) - first).abs().max() > 1e-5


def test_build_in_bf16_keeps_the_weights_in_bf16_and_renders_close_to_fp32(pipe, features):
    half = SelvaPipeline.build("tiny_16k", device="cpu", precision="bf16")
    for name, net in half.networks().items():
        floats = [p for p in net.parameters() if p.is_floating_point()]
        assert all(p.dtype == torch.bfloat16 for p in floats), name
    want = _render(pipe, features)
    got = half.render(features, seed=3, num_steps=STEPS)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    assert (got - want).abs().max() < 0.25 * want.abs().max()  # bf16 rounding, same sound
    assert all(p.dtype == torch.bfloat16 for p in half.generator.parameters())


def test_networks_moved_for_a_run_get_their_very_tensors_back(pipe):
    """What offload relies on: a network moved to the compute device for a run returns to its
    own storage afterwards (no copies), so an offloaded fork keeps sharing with its base."""
    fork = pipe.fork()
    before = {n: p.data_ptr() for n, p in fork.generator.named_parameters()}
    buffers = {n: b.data_ptr() for n, b in fork.generator.named_buffers()}
    fork._device = torch.device("meta")  # a stand-in compute device (no GPU needed)
    with fork._running("generator", "vae"):
        assert all(p.is_meta for p in fork.generator.parameters())
        assert all(p.is_meta for p in pipe.vae.parameters())  # shared by reference
    assert {n: p.data_ptr() for n, p in fork.generator.named_parameters()} == before
    assert {n: b.data_ptr() for n, b in fork.generator.named_buffers()} == buffers
    assert all(p.device.type == "cpu" for p in pipe.vae.parameters())
    base = {n: p.data_ptr() for n, p in pipe.generator.named_parameters()}
    assert before == base
