"""The example workflows: UI files agree with their API copies and with the node schemas, and
the API copies (tiny model) run end to end on the ComfyUI stand-ins.

The core nodes they use (Load Video, Get Video Components, Create Video, Save Video, Save
Audio, Preview Image) are replaced by small stand-ins with the same inputs and outputs; the
same API files are what a real ComfyUI runs (docs/COMFYUI.md, "Checking the pack in ComfyUI").
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.node_harness import COMFY_ROOT, ROOT, load_pack, node, run_node

WORKFLOWS = ROOT / "example_workflows"
NAMES = ("selva_video_to_audio", "selva_lora_two_strengths", "selva_train_adapter")
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# core node -> (socket inputs, widgets (name, extra UI values), output types)
CORE = {
    "LoadVideo": ([], [("file", 1)], ["VIDEO"]),
    "GetVideoComponents": (["video"], [], ["IMAGE", "AUDIO", "FLOAT"]),
    "CreateVideo": (["images", "audio"], [("fps", 0)], ["VIDEO"]),
    "SaveVideo": (["video"], [("filename_prefix", 0), ("format", 0), ("codec", 0)], []),
    "SaveAudio": (["audio"], [("filename_prefix", 0)], []),
    "PreviewImage": (["images"], [], []),
}
# widgets whose API copy differs from the UI file: the tiny, fast settings the tests run
TINY_KEYS = {"variant", "steps", "batch_size", "warmup_steps", "duration", "save_every",
             "output_dir", "rank"}


def _load(name: str, api: bool) -> dict:
    return json.loads((WORKFLOWS / ("api" if api else "") / f"{name}.json").read_text())


def _widgets(node_type: str) -> list[tuple[str, int]]:
    """Widget names in the UI's widgets_values order (required, then optional) and how many
    extra values follow each: the frontend adds a 'control after generate' value where the
    schema asks for one, and also to an INT named seed / noise_seed that does not say."""
    if node_type in CORE:
        return CORE[node_type][1]
    schema = node(node_type).define_schema()
    ws = [i for i in schema.inputs if str(i.io_type) in WIDGET_TYPES]
    ordered = [i for i in ws if not i.optional] + [i for i in ws if i.optional]

    def extra(i) -> int:
        control = getattr(i, "control_after_generate", None)
        if control is None:
            return 1 if str(i.io_type) == "INT" and i.id in ("seed", "noise_seed") else 0
        return 1 if control else 0

    return [(i.id, extra(i)) for i in ordered]


def _ui_to_api(ui: dict) -> dict:
    links = {link[0]: link for link in ui["links"]}
    out = {}
    for n in ui["nodes"]:
        inputs, values = {}, list(n.get("widgets_values", []))
        for name, extra in _widgets(n["type"]):
            inputs[name] = values.pop(0)
            del values[:extra]
        assert not values, f"node {n['id']} has {len(values)} widget values too many"
        for entry in n.get("inputs", []):
            if entry.get("link") is not None:
                link = links[entry["link"]]
                assert link[3] == n["id"]
                inputs[entry["name"]] = [str(link[1]), link[2]]
        out[str(n["id"])] = {"class_type": n["type"], "inputs": inputs}
    return out


@pytest.mark.parametrize("name", NAMES)
def test_ui_workflow_and_its_api_copy_describe_the_same_graph(name):
    load_pack()
    ui, api = _load(name, api=False), _load(name, api=True)
    assert ui["version"] == 0.4 and ui["last_node_id"] == max(n["id"] for n in ui["nodes"])
    assert ui["last_link_id"] == max(link[0] for link in ui["links"])
    converted = _ui_to_api(ui)
    assert converted.keys() == api.keys()
    for node_id, entry in api.items():
        got = converted[node_id]
        assert got["class_type"] == entry["class_type"]
        assert got["inputs"].keys() == entry["inputs"].keys(), node_id
        for key, value in entry["inputs"].items():
            if key not in TINY_KEYS:
                assert got["inputs"][key] == value, (node_id, key)
    ours = {e["class_type"] for e in api.values()} - set(CORE)
    assert ours and all(t.startswith("SelVA") for t in ours)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("api", [False, True])
def test_workflow_widget_values_fit_the_node_schemas(name, api):
    graph = _ui_to_api(_load(name, api=False)) if not api else _load(name, api=True)
    for node_id, entry in graph.items():
        if entry["class_type"] in CORE:
            continue
        schema = node(entry["class_type"]).define_schema()
        by_id = {i.id: i for i in schema.inputs}
        for key, value in entry["inputs"].items():
            spec = by_id[key]
            if isinstance(value, list):
                continue  # a link
            kind = str(spec.io_type)
            if kind == "COMBO" and key != "lora_name":  # adapter files depend on the machine
                assert value in spec.options, (name, node_id, key, value)
            elif kind in ("INT", "FLOAT"):
                assert spec.min <= value <= spec.max, (name, node_id, key, value)
            elif kind == "BOOLEAN":
                assert isinstance(value, bool)
            elif kind == "STRING":
                assert isinstance(value, str)
        required = {i.id for i in schema.inputs if not i.optional}
        assert required <= entry["inputs"].keys(), (name, node_id)


# --- running the API copies -------------------------------------------------------------------
def _decode_video(path: Path):
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        rate = Fraction(stream.average_rate)
    images = torch.from_numpy(np.stack(frames)).float() / 255.0
    return SimpleNamespace(  # like core VideoFromFile: components, or the file itself
        get_components=lambda: SimpleNamespace(images=images, audio=None, frame_rate=rate,
                                               metadata=None),
        get_stream_source=lambda: str(path))


RECORDED: dict[str, list] = {}


def _core(class_type: str, inputs: dict) -> tuple:
    """Stand-ins for the core nodes the example workflows use."""
    if class_type == "LoadVideo":
        return (_decode_video(COMFY_ROOT / "input" / inputs["file"]),)
    if class_type == "GetVideoComponents":
        c = inputs["video"].get_components()
        return c.images, c.audio, float(c.frame_rate)
    if class_type == "CreateVideo":
        return (SimpleNamespace(images=inputs["images"], fps=inputs["fps"],
                                audio=inputs.get("audio")),)
    RECORDED.setdefault(class_type, []).append(inputs)
    return ()


_LOADED: dict[str, tuple] = {}


def _run(graph: dict) -> dict[str, tuple]:
    """Execute an API-format graph in dependency order (what ComfyUI's executor does; like its
    cache, a Model Loader with the same settings is run once)."""
    done: dict[str, tuple] = {}
    pending = dict(graph)
    while pending:
        for node_id, entry in list(pending.items()):
            links = [v for v in entry["inputs"].values() if isinstance(v, list)]
            if all(src in done for src, _ in links):
                inputs = {k: (done[v[0]][v[1]] if isinstance(v, list) else v)
                          for k, v in entry["inputs"].items()}
                ctype = entry["class_type"]
                key = json.dumps(entry["inputs"], sort_keys=True)
                if ctype == "SelVAModelLoader" and key in _LOADED:
                    done[node_id] = _LOADED[key]
                else:
                    done[node_id] = (_core(ctype, inputs) if ctype in CORE
                                     else run_node(ctype, unique_id=node_id, **inputs))
                if ctype == "SelVAModelLoader":
                    _LOADED[key] = done[node_id]
                del pending[node_id]
                break
        else:
            raise AssertionError(f"unresolvable links in {sorted(pending)}")
    return done


@pytest.fixture(scope="module")
def comfy_inputs():
    """The example video, training clips and adapter the API copies name, in the stand-in
    ComfyUI folders."""
    from selva_core.data.synthetic import make_synthetic_dataset, synthetic_clip, write_video

    load_pack()
    frames, audio = synthetic_clip("bounce", 0, duration=2.0, fps=12, size=64)
    write_video(COMFY_ROOT / "input" / "selva_example.mp4", frames, fps=12, audio=audio)
    make_synthetic_dataset(COMFY_ROOT / "input" / "selva_training_clips", clips_per_class=1,
                           duration=1.0, size=32)
    return COMFY_ROOT


def _adapter_for(model) -> Path:
    from selva_core.model.lora import LoRAConfig, attach_lora, save_adapter, trainable_parameters

    fork = model.pipeline.fork()
    attach_lora(fork.generator, LoRAConfig(rank=4, targets=("attn",), seed=0),
                variant_name=model.pipeline.variant.name)
    with torch.no_grad():
        for p in trainable_parameters(fork.generator):
            p.normal_(0.0, 0.2, generator=torch.Generator().manual_seed(p.numel()))
    path = COMFY_ROOT / "models" / "loras" / "selva_example_adapter.safetensors"
    save_adapter(fork.generator, path, metadata={"prompt": "footsteps on gravel"})
    return path


def _audio_ok(audio: dict) -> None:
    wave = audio["waveform"]
    assert wave.ndim == 3 and wave.shape[:2] == (1, 1) and wave.dtype == torch.float32
    assert type(audio["sample_rate"]) is int and torch.isfinite(wave).all()


def test_video_to_audio_workflow_runs(comfy_inputs):
    RECORDED.clear()
    _run(_load("selva_video_to_audio", api=True))
    (saved,) = RECORDED["SaveAudio"]
    _audio_ok(saved["audio"])
    (video,) = RECORDED["SaveVideo"]
    assert video["video"].fps == pytest.approx(12.0) and video["video"].audio is saved["audio"]
    assert saved["audio"]["waveform"].shape[-1] == pytest.approx(2.0 * 16000, rel=0.02)


def test_two_strengths_workflow_gives_two_different_results(comfy_inputs):
    graph = _load("selva_lora_two_strengths", api=True)
    model = _run({"2": graph["2"]})["2"][0]
    _adapter_for(model)
    RECORDED.clear()
    _run(graph)
    a, b = RECORDED["SaveAudio"]
    _audio_ok(a["audio"])
    _audio_ok(b["audio"])
    assert not torch.equal(a["audio"]["waveform"], b["audio"]["waveform"])


def test_train_adapter_workflow_runs(comfy_inputs):
    RECORDED.clear()
    outputs = _run(_load("selva_train_adapter", api=True))
    adapter, curve, _ = outputs["2"]
    assert Path(adapter).is_file() and Path(adapter).is_relative_to(COMFY_ROOT / "output")
    (preview,) = RECORDED["PreviewImage"]
    assert preview["images"] is curve and curve.shape[-1] == 3
