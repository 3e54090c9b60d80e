"""The ComfyUI nodes on tiny models, without ComfyUI (stand-ins in tests/comfy_stubs).

Schema contract, AUDIO layout, progress, interruption within one sampling step, memory
release, the LoRA loader's untouched base (two branches), trainer node outputs, and one
clear error per bad input.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.node_harness import PACK_NAME, ROOT, STUBS, fake_video, load_pack, node, run_node

NODE_IDS = ("SelVAModelLoader", "SelVAFeatureExtractor", "SelVASampler", "SelVALoraLoader",
            "SelVAEmbeddingLoader", "SelVALoraTrainer")
# node id -> ({input id: io type}, [output io types])
SCHEMA = {
    "SelVAModelLoader": (
        {"variant": "COMBO", "precision": "COMBO", "offload": "COMBO", "weights_folder": "COMBO",
         "models_dir": "STRING", "download": "BOOLEAN", "for_training": "BOOLEAN"},
        ["SELVA_MODEL", "STRING"]),
    "SelVAFeatureExtractor": (
        {"model": "SELVA_MODEL", "prompt": "STRING", "video": "VIDEO", "images": "IMAGE",
         "fps": "FLOAT", "duration": "FLOAT", "mask": "MASK", "mask_strength": "FLOAT"},
        ["SELVA_FEATURES", "STRING"]),
    "SelVASampler": (
        {"model": "SELVA_MODEL", "features": "SELVA_FEATURES", "prompt": "STRING",
         "negative_prompt": "STRING", "duration": "FLOAT", "steps": "INT", "cfg": "FLOAT",
         "seed": "INT", "window_s": "FLOAT"},
        ["AUDIO"]),
    "SelVALoraLoader": (
        {"model": "SELVA_MODEL", "lora_name": "COMBO", "strength": "FLOAT",
         "lora_path": "STRING"},
        ["SELVA_MODEL", "STRING", "STRING"]),
    "SelVAEmbeddingLoader": (
        {"model": "SELVA_MODEL", "embedding_name": "COMBO", "embedding_path": "STRING"},
        ["SELVA_MODEL", "STRING"]),
    "SelVALoraTrainer": (
        {"model": "SELVA_MODEL", "data_dir": "STRING", "output_dir": "STRING", "steps": "INT",
         "rank": "INT", "lr": "FLOAT", "target": "COMBO", "init": "COMBO",
         "batch_size": "INT", "warmup_steps": "INT", "duration": "FLOAT",
         "save_every": "INT", "seed": "INT", "resume": "BOOLEAN", "lora_kind": "COMBO",
         "gradient_checkpointing": "BOOLEAN", "base_dtype": "COMBO"},
        ["STRING", "IMAGE", "SELVA_MODEL"]),
}
OPTIONAL = {"SelVAModelLoader": {"models_dir"},
            "SelVAFeatureExtractor": {"video", "images", "mask"},
            "SelVALoraLoader": {"lora_path"},
            "SelVAEmbeddingLoader": {"embedding_path"},
            "SelVALoraTrainer": {"lora_kind", "gradient_checkpointing", "base_dtype"}}


# --- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pack():
    return load_pack()


@pytest.fixture(scope="module")
def common(pack):
    return sys.modules[f"{pack.__name__}.nodes.common"]


@pytest.fixture(scope="module")
def tiny(common):
    """A tiny random SelVA model as the Model Loader hands it on (the VAE encoder kept)."""
    from selva_core.pipeline import SelvaPipeline

    pipeline = SelvaPipeline.tiny(seed=0, trained=False)
    return common.SelvaModel(pipeline=pipeline, label="tiny_16k")


@pytest.fixture(scope="module")
def images():
    """2 s of 64x48 frames at 12 fps as an IMAGE batch."""
    g = torch.Generator().manual_seed(0)
    return torch.rand(24, 48, 64, 3, generator=g)


@pytest.fixture(scope="module")
def features(tiny, images):
    return run_node("SelVAFeatureExtractor", model=tiny, prompt="a dog barks", images=images,
                    fps=12.0)[0]


@pytest.fixture(autouse=True)
def _clean_comfy_state(pack):
    import comfy.model_management as mm
    import comfy.utils

    comfy.utils.PROGRESS_CALLS.clear()
    comfy.utils.set_progress_bar_global_hook(comfy.utils._default_hook)
    mm.interrupt_current_processing(False)
    yield
    comfy.utils.set_progress_bar_global_hook(comfy.utils._default_hook)
    mm.interrupt_current_processing(False)


def _adapter_file(pipeline, path, *, variant=None, prompt="a dog barks", seed=1):
    """A LoRA adapter for ``pipeline``'s generator with non-zero factors, saved to ``path``."""
    from selva_core.model.lora import LoRAConfig, attach_lora, save_adapter, trainable_parameters

    fork = pipeline.fork()
    attach_lora(fork.generator, LoRAConfig(rank=4, targets=("attn",), seed=seed),
                variant_name=pipeline.variant.name)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in trainable_parameters(fork.generator):
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
    save_adapter(fork.generator, path, metadata={"prompt": prompt, "steps": 7})
    if variant is not None:  # the same tensors, claimed for another model variant
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata())
        meta["model_variant"] = variant
        save_file(load_file(str(path)), str(path), metadata=meta)
    return path


def _sample(model, features, **kw):
    kw = {"steps": 2, "seed": 3, **kw}
    return run_node("SelVASampler", model=model, features=features, **kw)[0]


def _error(excinfo, node_name: str, input_name: str | None) -> str:
    message = str(excinfo.value)
    prefix = f"SelVA {node_name}: " + (f"{input_name}: " if input_name else "")
    assert message.startswith(prefix), message
    assert "Traceback" not in message and excinfo.value.__cause__ is None
    return message


# --- registration and schema ------------------------------------------------------------------
def test_every_node_is_registered_under_a_prefixed_id_with_its_display_name(pack):
    for node_id in NODE_IDS:
        cls = pack.NODE_CLASS_MAPPINGS[node_id]
        schema = cls.define_schema()
        assert schema.node_id == node_id and node_id.startswith("SelVA")
        assert schema.category == "SelVA"
        assert pack.NODE_DISPLAY_NAME_MAPPINGS[node_id] == schema.display_name
        assert schema.display_name.startswith("SelVA ") and schema.description
    nodes = sys.modules[f"{pack.__name__}.nodes"]
    listed = asyncio.run(asyncio.run(nodes.comfy_entrypoint()).get_node_list())
    assert {c.define_schema().node_id for c in listed} == set(pack.NODE_CLASS_MAPPINGS)


@pytest.mark.parametrize("node_id", NODE_IDS)
def test_schema_declares_the_contracted_inputs_and_outputs(node_id):
    schema = node(node_id).define_schema()
    schema.validate()
    inputs, outputs = SCHEMA[node_id]
    assert {i.id: str(i.io_type) for i in schema.inputs} == inputs
    assert [str(o.io_type) for o in schema.outputs] == outputs
    assert {i.id for i in schema.inputs if i.optional} == OPTIONAL.get(node_id, set())


def test_model_folder_is_registered_with_folder_paths_at_import(pack):
    import folder_paths

    assert folder_paths.get_folder_paths("selva")[0].endswith("selva")
    assert ".safetensors" in folder_paths.folder_names_and_paths["selva"][1]


def test_model_loader_builds_the_tiny_model_without_downloads(common):
    model, info = run_node("SelVAModelLoader", variant="tiny_16k", precision="auto",
                           offload="auto", weights_folder="(ComfyUI models/selva)",
                           for_training=True)
    assert isinstance(model, common.SelvaModel)
    pipeline = model.pipeline
    assert pipeline.variant.name == "tiny_16k" and pipeline.dtype == torch.float32
    assert pipeline.vae.encoder is not None  # for_training keeps the VAE encoder
    assert not any(p.requires_grad for m in pipeline.networks().values()
                   for p in m.parameters())
    assert info.startswith("tiny_16k, float32 on cpu")


def test_the_nodes_choice_lists_equal_the_librarys(pack):
    """The nodes keep light copies of the library's choices (fast pack import); same values."""
    from selva_core.model.lora.config import INIT_MODES
    from selva_core.model.lora.kind import kind_names
    from selva_core.model.lora.targets import PRESETS
    from selva_core.model.precision import BASE_DTYPE_CHOICES
    from selva_core.pipeline import OFFLOAD_CHOICES, PRECISION_CHOICES

    loader = sys.modules[f"{PACK_NAME}.nodes.loader"]
    trainer = sys.modules[f"{PACK_NAME}.nodes.trainer"]
    assert set(loader.PRECISIONS) == set(PRECISION_CHOICES)
    assert set(loader.OFFLOADS) == set(OFFLOAD_CHOICES)
    assert set(trainer.INIT_MODES) == set(INIT_MODES)
    assert set(trainer.LORA_KINDS) == set(kind_names())
    assert set(trainer.BASE_DTYPES) == set(BASE_DTYPE_CHOICES)
    assert set(trainer.TARGET_PRESETS) <= set(PRESETS)


def test_importing_the_pack_loads_no_torch_heavy_library_code():
    code = (
        "import sys, time, importlib.util\n"
        f"sys.path.insert(0, {str(STUBS)!r})\n"
        "t = time.perf_counter()\n"
        f"spec = importlib.util.spec_from_file_location('p', {str(ROOT / '__init__.py')!r}, "
        f"submodule_search_locations=[{str(ROOT)!r}])\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['p'] = m\n"
        "spec.loader.exec_module(m)\n"
        "heavy = [n for n in ('torch', 'selva_core.pipeline', 'selva_core.model', 'open_clip',"
        " 'transformers', 'librosa', 'av', 'matplotlib') if n in sys.modules]\n"
        "print(len(m.NODE_CLASS_MAPPINGS), heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    count, heavy = proc.stdout.strip().split(" ", 1)
    assert int(count) >= len(NODE_IDS)
    assert heavy == "[]"


# --- feature extraction -----------------------------------------------------------------------
def test_feature_extractor_resamples_frames_by_timestamp_to_25_fps(tiny, images, features):
    feats, info = run_node("SelVAFeatureExtractor", model=tiny, prompt="a dog barks",
                           images=images, fps=12.0)
    assert info.startswith("24 frames at 12 fps (2.00 s) -> 50 frames at 25 fps")
    assert feats.duration == pytest.approx(2.0) and feats.prompts == ["a dog barks"]
    assert feats.sync_f.device.type == "cpu"
    # the same clip at 25 fps (each 12 fps frame held for its time span) gives equal features
    from selva_core.frames import resample_indices

    held = images[resample_indices(24, 12.0)]
    direct = tiny.pipeline.extract_features(
        (held * 255).round().to(torch.uint8).permute(0, 3, 1, 2), "a dog barks")
    torch.testing.assert_close(feats.sync_f, direct.sync_f.cpu())


def test_feature_extractor_takes_core_video_like_frames_and_fps(tiny, images, features):
    feats, info = run_node("SelVAFeatureExtractor", model=tiny, prompt="a dog barks",
                           video=fake_video(images, 12))
    torch.testing.assert_close(feats.sync_f, features.sync_f)
    assert "12 fps" in info


def test_a_video_file_is_read_from_its_file_like_the_same_frames(tiny, tmp_path):
    from selva_core.data.synthetic import write_video
    from tests.test_nodes_frames import _decoded

    g = torch.Generator().manual_seed(3)
    frames = (torch.rand(24, 32, 48, 3, generator=g) * 255).to(torch.uint8).numpy()
    path = write_video(tmp_path / "clip.mp4", frames, fps=12)
    images, rate = _decoded(path)
    video = fake_video(images, rate)
    video.get_stream_source = lambda: str(path)
    from_file, info = run_node("SelVAFeatureExtractor", model=tiny, prompt="rain", video=video)
    from_frames, _ = run_node("SelVAFeatureExtractor", model=tiny, prompt="rain",
                              images=images, fps=rate)
    assert from_frames is from_file  # the same 25 fps frames: the content cache hits
    assert info.startswith("24 frames at 12 fps")


def test_feature_cache_is_keyed_by_content(tiny, images, features):
    again, info = run_node("SelVAFeatureExtractor", model=tiny, prompt="a dog barks",
                           images=images.clone(), fps=12.0)
    assert info.endswith("(cached)") and again is features
    changed = images.clone()
    changed[5, 10, 10, 0] = 1.0 - changed[5, 10, 10, 0]
    _, info = run_node("SelVAFeatureExtractor", model=tiny, prompt="a dog barks",
                       images=changed, fps=12.0)
    assert not info.endswith("(cached)")


def test_mask_greys_out_the_background_by_its_strength(tiny, images, features):
    mask = torch.zeros(48, 64)
    mask[10:30, 20:40] = 1.0
    masked, _ = run_node("SelVAFeatureExtractor", model=tiny, prompt="a dog barks",
                         images=images, fps=12.0, mask=mask, mask_strength=1.0)
    assert not torch.allclose(masked.sync_f, features.sync_f)
    off, _ = run_node("SelVAFeatureExtractor", model=tiny, prompt="a dog barks",
                      images=images, fps=12.0, mask=mask, mask_strength=0.0)
    torch.testing.assert_close(off.sync_f, features.sync_f)
    from selva_core.frames import prepare_frames

    prepared = prepare_frames(images, 12.0, mask=mask, mask_strength=1.0)
    assert (prepared.frames[:, :, 0, 0] == 128).all()  # outside the mask: neutral grey
    inside = (images[0, 15, 25] * 255).round().to(torch.uint8)
    assert torch.equal(prepared.frames[0, :, 15, 25], inside)


# --- sampling ---------------------------------------------------------------------------------
def test_sampler_returns_comfy_audio_at_the_models_rate(tiny, features):
    audio = _sample(tiny, features)
    wave = audio["waveform"]
    assert set(audio) == {"waveform", "sample_rate"}
    assert wave.dtype == torch.float32 and wave.device.type == "cpu" and wave.is_contiguous()
    samples = tiny.pipeline.variant.render_samples(features.duration)
    assert tuple(wave.shape) == (1, 1, samples)
    assert type(audio["sample_rate"]) is int and audio["sample_rate"] == 16000
    assert torch.isfinite(wave).all() and wave.abs().max() > 0


def test_sampler_node_equals_the_library_render(tiny, features):
    audio = _sample(tiny, features, steps=3, seed=11, cfg=3.0, negative_prompt="wind")
    direct = tiny.pipeline.render(features, seed=11, num_steps=3, cfg_strength=3.0,
                                  negative_prompt="wind", window_s=8.0)
    assert torch.equal(audio["waveform"][:, 0], direct)


def test_sampler_keeps_the_batch(tiny, images):
    feats = tiny.pipeline.extract_features(
        (images[:16].repeat(4, 1, 1, 1)[:50] * 255).to(torch.uint8).permute(0, 3, 1, 2)
        .unsqueeze(0).expand(2, -1, -1, -1, -1), ["a dog", "rain"])
    audio = _sample(tiny, feats)
    assert audio["waveform"].shape[:2] == (2, 1)
    assert not torch.equal(audio["waveform"][0], audio["waveform"][1])


def test_sampler_prompt_override_changes_only_the_text_condition(tiny, features):
    base = _sample(tiny, features)
    other = _sample(tiny, features, prompt="heavy rain")
    assert not torch.equal(base["waveform"], other["waveform"])
    from selva_core.prompting import with_prompt

    swapped = with_prompt(tiny.pipeline, features, "heavy rain")
    assert torch.equal(swapped.sync_f, features.sync_f) and features.prompts == ["a dog barks"]


def test_sampler_reports_progress_after_every_step_with_its_node_id(tiny, features):
    import comfy.utils

    run_node("SelVASampler", unique_id="42", model=tiny, features=features, steps=4, seed=0)
    assert comfy.utils.PROGRESS_CALLS == [("42", i, 4) for i in range(1, 5)]


def test_long_clip_progress_counts_steps_over_all_windows(tiny, images):
    import comfy.utils

    frames = (images.repeat(3, 1, 1, 1) * 255).to(torch.uint8).permute(0, 3, 1, 2)  # 72 frames
    feats = tiny.pipeline.extract_features(frames[:70], "a dog barks")  # 2.8 s
    audio = _sample(tiny, feats, steps=2, window_s=1.6)
    windows = len(tiny.pipeline.plan_render(feats.duration, seed=3, window_s=1.6))
    assert windows > 1
    assert [c[1:] for c in comfy.utils.PROGRESS_CALLS] == [
        (i, 2 * windows) for i in range(1, 2 * windows + 1)]
    assert audio["waveform"].shape[-1] == tiny.pipeline.variant.render_samples(feats.duration)


def test_interruption_stops_within_one_sampling_step_and_frees_memory(tiny, features):
    import comfy.model_management as mm

    generator = tiny.pipeline.generator
    seq_before = generator.seq
    forwards = []

    def count_and_cancel(module, args, output):
        forwards.append(1)
        if len(forwards) == 2:  # the user presses Cancel during the second step
            mm.interrupt_current_processing(True)

    empties = mm.SOFT_EMPTY_CACHE_CALLS[0]
    handle = generator.final_layer.register_forward_hook(count_and_cancel)  # once per step
    try:
        with pytest.raises(mm.InterruptProcessingException):
            _sample(tiny, features, steps=10, seed=5)
    finally:
        handle.remove()
    assert len(forwards) == 2  # CFG runs both branches in one batched forward per step
    assert not mm.processing_interrupted()  # the request was consumed by the stop
    assert mm.SOFT_EMPTY_CACHE_CALLS[0] > empties  # device cache emptied after the stop
    assert generator.seq == seq_before and not generator.training
    # the model works as before: a full run after the interruption equals a fresh one
    assert torch.equal(_sample(tiny, features, seed=5)["waveform"],
                       _sample(tiny, features, seed=5)["waveform"])


def test_an_error_during_sampling_still_frees_memory_and_leaves_the_model_usable(tiny,
                                                                                   features):
    import comfy.model_management as mm

    def fail(module, args, output):
        raise RuntimeError("simulated device failure")

    before = _sample(tiny, features)["waveform"]
    empties = mm.SOFT_EMPTY_CACHE_CALLS[0]
    handle = tiny.pipeline.generator.final_layer.register_forward_hook(fail)
    try:
        with pytest.raises(RuntimeError, match="simulated"):
            _sample(tiny, features)
    finally:
        handle.remove()
    assert mm.SOFT_EMPTY_CACHE_CALLS[0] > empties
    assert not tiny.pipeline.generator.training
    assert torch.equal(_sample(tiny, features)["waveform"], before)


def test_gpu_resident_models_are_registered_with_comfy_model_management(tiny, features):
    import comfy.model_management as mm

    _sample(tiny, features)
    assert any(m is tiny.patcher() for m in mm.loaded_models())
    mm.unload_all_models()  # ComfyUI freeing memory for another model
    assert _sample(tiny, features)["waveform"].abs().max() > 0


def _adapter_bytes(model) -> int:
    generator = model.pipeline.generator
    tensors = [*generator.named_parameters(), *generator.named_buffers()]
    return sum(t.numel() * t.element_size() for n, t in tensors if ".adapters." in f".{n}")


def test_adapted_branches_share_the_base_residency_in_comfy_memory_manager(tiny, features,
                                                                           tmp_path):
    """Base + two LoRA branches: ComfyUI holds one entry for them, loading a branch after
    the base asks only for its adapter's bytes, and unloading and reloading works."""
    import gc

    import comfy.model_management as mm

    cpu = torch.device("cpu")
    base = tiny.patcher()
    size = base.model_size()
    bare = _sample(tiny, features)["waveform"]
    branches = [run_node("SelVALoraLoader", model=tiny, lora_name="(none)", strength=1.0,
                         lora_path=str(_adapter_file(tiny.pipeline, tmp_path / f"{s}.st",
                                                     seed=s)))[0] for s in (1, 2)]
    extra = [_adapter_bytes(b) for b in branches]
    assert all(0 < e < size / 20 for e in extra)
    assert [b.patcher().model_size() for b in branches] == [size + e for e in extra]
    assert all(b.patcher().is_clone(base) and b.patcher().parent is base for b in branches)
    sounds = [_sample(b, features)["waveform"] for b in branches]

    mm.unload_all_models()
    mm.MEMORY_REQUIRED.clear()
    for model in (tiny, *branches):
        _sample(model, features)
    del model
    assert mm.MEMORY_REQUIRED == [{cpu: size}, {cpu: extra[0]}, {cpu: extra[1]}]
    assert len(mm.current_loaded_models) == 1  # the base, counted once
    assert mm.loaded_models()[0] is branches[1].patcher() and base.loaded_size() == size

    mm.unload_all_models()  # ComfyUI freeing the memory for another model
    assert base.loaded_size() == 0
    assert torch.equal(_sample(branches[0], features)["waveform"], sounds[0])
    assert mm.MEMORY_REQUIRED[-1] == {cpu: size + extra[0]}
    assert torch.equal(_sample(branches[1], features)["waveform"], sounds[1])
    assert torch.equal(_sample(tiny, features)["waveform"], bare)
    assert tiny.patcher() is base and tiny.pipeline.adapters == ()
    base_storages = {p.untyped_storage().data_ptr() for p in tiny.pipeline.generator.parameters()}
    for b in branches:
        assert base_storages <= {p.untyped_storage().data_ptr()
                                 for p in b.pipeline.generator.parameters()}

    _sample(branches[1], features)
    del b, branches
    gc.collect()  # a branch ComfyUI no longer caches: its entry falls back to the base
    assert mm.loaded_models() == [base]


def test_offloading_models_ask_comfy_for_room_and_are_not_kept_loaded(common):
    import comfy.model_management as mm

    net = torch.nn.Linear(10, 10)
    pipeline = type("Pipe", (), {"offload": "cpu", "device": torch.device("cuda"),
                                 "networks": lambda self: {"net": net}})()
    model = common.SelvaModel(pipeline=pipeline, label="offloading")
    mm.FREE_MEMORY_CALLS.clear()
    with common.on_device(model) as pipe:
        assert pipe is pipeline
    assert mm.FREE_MEMORY_CALLS == [(int(110 * 4 * 1.2), torch.device("cuda"))]
    assert model._patcher is None  # never registered: it rests on the CPU between runs


# --- LoRA loader ------------------------------------------------------------------------------
def test_lora_loader_never_changes_the_base_model_two_branches(tiny, features, tmp_path):
    path = _adapter_file(tiny.pipeline, tmp_path / "style.safetensors")
    base_state = {k: v.clone() for k, v in tiny.pipeline.generator.state_dict().items()}
    bare_before = _sample(tiny, features)
    adapted, prompt, settings = run_node("SelVALoraLoader", model=tiny, lora_name="(none)",
                                         strength=1.0, lora_path=str(path))
    with_lora = _sample(adapted, features)
    bare_after = _sample(tiny, features)  # the other branch of the same workflow
    assert not torch.equal(with_lora["waveform"], bare_before["waveform"])
    assert torch.equal(bare_after["waveform"], bare_before["waveform"])
    state = tiny.pipeline.generator.state_dict()
    assert state.keys() == base_state.keys()
    assert all(torch.equal(state[k], base_state[k]) for k in state)
    assert tiny.pipeline.adapters == () and adapted is not tiny
    info = json.loads(settings)
    assert prompt == "a dog barks" and info["steps"] == 7
    assert info["model_variant"] == "tiny_16k" and info["rank"] == 4


def test_lora_loader_strength_and_stacking(tiny, features, tmp_path):
    a = _adapter_file(tiny.pipeline, tmp_path / "a.safetensors", seed=1)
    b = _adapter_file(tiny.pipeline, tmp_path / "b.safetensors", seed=2)
    zero = run_node("SelVALoraLoader", model=tiny, lora_name="(none)", strength=0.0,
                    lora_path=str(a))[0]
    torch.testing.assert_close(_sample(zero, features)["waveform"],
                               _sample(tiny, features)["waveform"], rtol=0, atol=1e-5)
    first = run_node("SelVALoraLoader", model=tiny, lora_name="(none)", strength=1.0,
                     lora_path=str(a))[0]
    both = run_node("SelVALoraLoader", model=first, lora_name="(none)", strength=0.5,
                    lora_path=str(b))[0]
    assert [x.strength for x in both.pipeline.adapters] == [1.0, 0.5]
    assert len(first.pipeline.adapters) == 1
    assert not torch.equal(_sample(both, features)["waveform"],
                           _sample(first, features)["waveform"])


def test_lora_loader_lists_and_loads_adapters_from_models_loras(tiny, tmp_path, caplog):
    import folder_paths

    loras = folder_paths.get_folder_paths("loras")[0]
    _adapter_file(tiny.pipeline, f"{loras}/selva_test_style.safetensors")
    schema = node("SelVALoraLoader").define_schema()
    combo = next(i for i in schema.inputs if i.id == "lora_name")
    assert "selva_test_style.safetensors" in combo.options and combo.options[0] == "(none)"
    model = run_node("SelVALoraLoader", model=tiny, lora_name="selva_test_style.safetensors",
                     strength=0.8)[0]
    assert model.pipeline.adapters[0].strength == 0.8
    with caplog.at_level(logging.WARNING, logger="selva.nodes"):
        bare = run_node("SelVALoraLoader", model=tiny, lora_name="(none)", strength=1.0)[0]
    assert bare is tiny
    assert "no adapter chosen" in caplog.text


# --- trainer ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    from selva_core.data.synthetic import make_synthetic_dataset

    folder = tmp_path_factory.mktemp("clips")
    make_synthetic_dataset(folder, clips_per_class=1, duration=1.0, size=32)
    return folder


def _train(model, clips, out, **kw):
    settings = dict(steps=2, rank=4, lr=1e-3, target="qkv", init="standard", batch_size=2,
                    warmup_steps=0, duration=1.0, save_every=100, seed=0, resume=False)
    settings.update(kw)
    return run_node("SelVALoraTrainer", model=model, data_dir=str(clips), output_dir=str(out),
                    **settings)


def test_trainer_node_writes_the_cli_outputs_and_leaves_the_model_alone(tiny, features, clips,
                                                                        tmp_path):
    import comfy.utils

    before = _sample(tiny, features)
    adapter, curve, trained = _train(tiny, clips, tmp_path / "run")
    assert adapter.endswith("adapter_final.safetensors") and (tmp_path / "run").is_dir()
    assert (tmp_path / "run" / "summary.json").is_file()
    assert (tmp_path / "run" / "checkpoints").is_dir()
    assert curve.ndim == 4 and curve.shape[0] == 1 and curve.shape[-1] == 3
    assert curve.dtype == torch.float32 and 0 <= curve.min() and curve.max() <= 1
    assert len(trained.pipeline.adapters) == 1 and tiny.pipeline.adapters == ()
    assert torch.equal(_sample(tiny, features)["waveform"], before["waveform"])
    assert [c[1:] for c in comfy.utils.PROGRESS_CALLS if c[2] == 2][:2] == [(1, 2), (2, 2)]


def test_trainer_node_passes_the_memory_options_and_the_lora_kind_to_the_trainer(tiny, clips,
                                                                                tmp_path):
    import json

    _train(tiny, clips, tmp_path / "run", lora_kind="dora", gradient_checkpointing=True,
           base_dtype="fp32")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["lora_kind"] == "dora" and summary["gradient_checkpointing"] is True
    seed = next(i for i in node("SelVALoraTrainer").define_schema().inputs if i.id == "seed")
    assert seed.control_after_generate is False  # a re-queued run keeps its seed


def test_trainer_node_out_of_memory_reaches_comfyui_as_an_oom_with_the_advice(
        tiny, clips, tmp_path, monkeypatch):
    """ComfyUI frees its cached models on an out-of-memory error: the node must not wrap it."""
    import selva_core.training.trainer as trainer_module

    def no_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(trainer_module, "training_loss", no_memory)
    with pytest.raises(torch.cuda.OutOfMemoryError, match="optimiser step 1.*--batch_size 1"):
        _train(tiny, clips, tmp_path / "run")
    assert tiny.pipeline.adapters == ()


def test_trainer_cancel_writes_a_resumable_checkpoint(tiny, clips, tmp_path):
    import comfy.model_management as mm
    import comfy.utils

    def cancel_after_first_step(value, total, preview, node_id=None):
        comfy.utils.PROGRESS_CALLS.append((node_id, value, total))
        if value >= 1:
            mm.interrupt_current_processing(True)

    comfy.utils.set_progress_bar_global_hook(cancel_after_first_step)
    with pytest.raises(mm.InterruptProcessingException):
        _train(tiny, clips, tmp_path / "run", steps=3)
    assert any((tmp_path / "run" / "checkpoints").iterdir())
    comfy.utils.set_progress_bar_global_hook(comfy.utils._default_hook)
    adapter, _, _ = _train(tiny, clips, tmp_path / "run", steps=3, resume=True)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert adapter.endswith("adapter_final.safetensors")
    assert summary.get("steps_done", summary.get("steps", 3)) == 3


def test_trainer_rerun_into_a_finished_run_names_the_node_inputs_not_cli_flags(common, tiny,
                                                                             clips, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "adapter_final.safetensors").write_bytes(b"a finished run")
    with pytest.raises(common.SelvaNodeError) as excinfo:
        _train(tiny, clips, tmp_path / "run")
    message = str(excinfo.value)
    assert message.startswith("SelVA LoRA Trainer: output_dir: ") and "--" not in message
    assert "already holds a training run" in message and "'resume'" in message


# --- one clear error per bad input ------------------------------------------------------------
@pytest.mark.parametrize("case", ["no_frames", "nothing_connected", "fps_zero", "fps_nan",
                                  "mask_size", "too_long", "both_sources"])
def test_feature_extractor_bad_inputs_give_one_clear_error(common, tiny, images, case):
    kw = dict(model=tiny, prompt="x", images=images, fps=12.0)
    expected = {"no_frames": "images", "nothing_connected": "images", "fps_zero": "fps",
                "fps_nan": "fps", "mask_size": "mask", "too_long": "duration",
                "both_sources": "images"}[case]
    if case == "no_frames":
        kw["images"] = images[:0]
    elif case == "nothing_connected":
        kw.pop("images")
    elif case == "fps_zero":
        kw["fps"] = 0.0
    elif case == "fps_nan":
        kw["fps"] = math.nan
    elif case == "mask_size":
        kw["mask"] = torch.ones(1, 32, 32)
    elif case == "too_long":
        kw["duration"] = 5.0
    elif case == "both_sources":
        kw["video"] = fake_video(images, 12)
    with pytest.raises(common.SelvaNodeError) as excinfo:
        run_node("SelVAFeatureExtractor", **kw)
    message = _error(excinfo, "Feature Extractor", expected)
    assert "; " in message  # the problem, then what to do


def test_core_video_without_frames_is_one_clear_error(common, tiny, images):
    with pytest.raises(common.SelvaNodeError) as excinfo:
        run_node("SelVAFeatureExtractor", model=tiny, prompt="x",
                 video=fake_video(images[:0], 25))
    _error(excinfo, "Feature Extractor", "video")


def test_sampler_bad_inputs_give_one_clear_error(common, tiny, features):
    with pytest.raises(common.SelvaNodeError) as excinfo:
        _sample(tiny, features, duration=features.duration + 3)
    assert "at most 2.00" in _error(excinfo, "Sampler", "duration")
    from dataclasses import replace

    foreign = replace(features, variant="small_16k")
    with pytest.raises(common.SelvaNodeError) as excinfo:
        _sample(tiny, foreign)
    _error(excinfo, "Sampler", "features")


def test_adapter_for_another_variant_is_one_clear_error(common, tiny, tmp_path):
    path = _adapter_file(tiny.pipeline, tmp_path / "other.safetensors", variant="small_16k")
    with pytest.raises(common.SelvaNodeError) as excinfo:
        run_node("SelVALoraLoader", model=tiny, lora_name="(none)", strength=1.0,
                 lora_path=str(path))
    message = _error(excinfo, "LoRA Loader", "lora_path")
    assert "small_16k" in message and "other.safetensors" in message
    assert tiny.pipeline.adapters == ()


def test_damaged_adapter_file_is_one_clear_error(common, tiny, tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x00\x01 not a safetensors file")
    with pytest.raises(common.SelvaNodeError) as excinfo:
        run_node("SelVALoraLoader", model=tiny, lora_name="(none)", strength=1.0,
                 lora_path=str(path))
    message = _error(excinfo, "LoRA Loader", "lora_path")
    assert "broken.safetensors" in message
    assert "damaged or is not a SelVA adapter" in message and "variant" not in message


def test_random_bytes_in_models_loras_get_the_damaged_file_fix(common, tiny, tmp_path):
    import os

    path = tmp_path / "noise.safetensors"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(common.SelvaNodeError) as excinfo:
        run_node("SelVALoraLoader", model=tiny, lora_name="(none)", strength=1.0,
                 lora_path=str(path))
    message = _error(excinfo, "LoRA Loader", "lora_path")
    assert "damaged or is not a SelVA adapter" in message and "variant" not in message


def test_every_input_of_every_node_has_a_tooltip():
    import nodes

    missing = [f"{cls.define_schema().node_id}.{i.id}" for cls in nodes.NODE_LIST
               for i in cls.define_schema().inputs or [] if not getattr(i, "tooltip", None)]
    assert len(nodes.NODE_LIST) >= 7 and missing == []


def test_missing_lora_file_names_the_input(common, tiny):
    with pytest.raises(common.SelvaNodeError) as excinfo:
        run_node("SelVALoraLoader", model=tiny, lora_name="gone.safetensors", strength=1.0)
    _error(excinfo, "LoRA Loader", "lora_name")


def test_missing_weights_is_one_error_listing_the_files(common, tmp_path):
    with pytest.raises(common.SelvaNodeError) as excinfo:
        run_node("SelVAModelLoader", variant="small_16k", precision="fp32", offload="auto",
                 weights_folder="(ComfyUI models/selva)", models_dir=str(tmp_path),
                 download=False)
    message = _error(excinfo, "Model Loader", "models_dir")
    assert "selva_core.download" in message and "generator" in message
    assert "flan-t5" in message.lower()  # the missing text-encoder folder is listed too


def test_weights_of_another_model_in_the_chosen_files_is_one_clear_error(common, tmp_path):
    from selva_core.variants import get_variant
    from selva_core.weights import MissingWeightsError, build_component, preflight

    with pytest.raises(MissingWeightsError) as missing:
        preflight(get_variant("small_16k"), tmp_path, download=False)
    tiny = build_component("generator", get_variant("tiny_16k")).state_dict()
    for m in missing.value.missing:  # every file present; the generator is another model's
        m.destination.parent.mkdir(parents=True, exist_ok=True)
        if m.key == "generator":
            save_file({k: v.contiguous() for k, v in tiny.items()}, str(m.destination))
        else:
            m.destination.write_bytes(b"not the real file")
    with pytest.raises(common.SelvaNodeError) as excinfo:
        run_node("SelVAModelLoader", variant="small_16k", precision="fp32", offload="auto",
                 weights_folder="(ComfyUI models/selva)", models_dir=str(tmp_path))
    message = _error(excinfo, "Model Loader", "models_dir")
    assert "generator_small_16k_sup_5.pth" in message and "download it again" in message


def test_trainer_bad_inputs_give_one_clear_error(common, tiny, clips, tmp_path):
    with pytest.raises(common.SelvaNodeError) as excinfo:
        _train(tiny, tmp_path / "nowhere", tmp_path / "run")
    _error(excinfo, "LoRA Trainer", "data_dir")
    with pytest.raises(common.SelvaNodeError) as excinfo:
        _train(tiny, clips, tmp_path / "run", warmup_steps=5)
    _error(excinfo, "LoRA Trainer", "warmup_steps")
    no_encoder = tiny.derived(tiny.pipeline.fork(), "fork")
    no_encoder.pipeline.vae = type("VAE", (), {"encoder": None})()
    with pytest.raises(common.SelvaNodeError) as excinfo:
        _train(no_encoder, clips, tmp_path / "run")
    assert "for_training" in _error(excinfo, "LoRA Trainer", "model")


def test_trainer_turns_inference_tensors_back_into_trainable_ones(pack, tiny):
    trainer = sys.modules[f"{pack.__name__}.nodes.trainer"]
    fork = tiny.pipeline.fork()
    layer = fork.generator.final_layer.conv.conv if hasattr(
        fork.generator.final_layer.conv, "conv") else fork.generator.final_layer.conv
    with torch.inference_mode():  # as ComfyUI's model management moves weights
        layer.weight.data = layer.weight.data.clone()
    assert layer.weight.is_inference()
    before = layer.weight.detach().clone()
    trainer._make_trainable_tensors(fork)
    assert not any(t.is_inference() for m in fork.networks().values()
                   for t in (*m.parameters(), *m.buffers()))
    assert torch.equal(layer.weight, before)
