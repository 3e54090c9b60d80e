"""Dataset Prepare, Dataset Inspector and VAE Round Trip nodes on the ComfyUI stand-ins."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from tests.dataset_sources import SR, clip, noise
from tests.node_harness import COMFY_ROOT, clean_comfy_state, load_pack, node, run_node

NODE_IDS = ("SelVADatasetPrepare", "SelVADatasetInspector", "SelVAVaeRoundTrip")


@pytest.fixture(scope="module")
def model():
    from selva_core.pipeline import SelvaPipeline

    pack = load_pack()
    common = sys.modules[f"{pack.__name__}.nodes.common"]
    return common.SelvaModel(pipeline=SelvaPipeline.tiny(seed=0, trained=False), label="tiny")


@pytest.fixture(autouse=True)
def _clean_comfy_state():
    yield from clean_comfy_state()


@pytest.mark.parametrize("node_id", NODE_IDS)
def test_the_dataset_nodes_are_registered_with_a_tooltip_on_every_input(node_id):
    schema = node(node_id).define_schema()
    assert load_pack().NODE_DISPLAY_NAME_MAPPINGS[node_id].startswith("SelVA ")
    assert all(getattr(i, "tooltip", None) for i in schema.inputs)


def test_prepare_then_inspect_from_nodes(model):
    import comfy.utils

    source = COMFY_ROOT / "input" / "node_footage"
    source.mkdir(parents=True, exist_ok=True)
    clip(source / "take.avi", noise(4.5, 0.1))
    summary, folder = run_node("SelVADatasetPrepare", sources="node_footage",
                               output_folder="node_clips", variant="tiny_16k", duration=2.0)
    assert "2 clip(s) written" in summary and folder == str(COMFY_ROOT / "output" / "node_clips")
    assert comfy.utils.PROGRESS_CALLS
    report, image, html_path = run_node("SelVADatasetInspector", folder="node_clips",
                                        duration=2.0, model=model, max_round_trip_lsd=1e6)
    assert "2 clip(s)" in report and "round-trip LSD" in report
    assert image.ndim == 4 and image.shape[-1] == 3
    data = json.loads((COMFY_ROOT / "output" / "node_clips" / "dataset_report.json").read_text())
    assert [c["name"] for c in data["clips"]] == ["take_0000000", "take_0002000"]
    assert html_path.endswith("dataset_report.html")


def test_cancel_stops_prepare_between_clips_and_a_rerun_continues():
    import comfy.model_management as mm

    source = COMFY_ROOT / "input" / "cancel_footage"
    source.mkdir(parents=True, exist_ok=True)
    clip(source / "long.avi", noise(6.5, 0.1))
    mm.interrupt_current_processing(True)
    with pytest.raises(mm.InterruptProcessingException):
        run_node("SelVADatasetPrepare", sources="cancel_footage", output_folder="cancel_clips",
                 variant="tiny_16k", duration=2.0)
    out = COMFY_ROOT / "output" / "cancel_clips"
    assert sorted(p.name for p in out.glob("*.wav")) == ["long_0000000.wav"]
    summary, _ = run_node("SelVADatasetPrepare", sources="cancel_footage",
                          output_folder="cancel_clips", variant="tiny_16k", duration=2.0)
    assert "2 clip(s) written, 1 already there" in summary


def test_the_round_trip_node_returns_audio_at_the_models_rate(model):
    wave = torch.from_numpy(noise(1.0, 0.1, sr=22050)).reshape(1, 1, -1).repeat(2, 2, 1)
    audio, lsd = run_node("SelVAVaeRoundTrip", model=model,
                          audio={"waveform": wave, "sample_rate": 22050})
    assert audio["sample_rate"] == SR and audio["waveform"].shape == (2, 1, SR)
    assert len(lsd.split(", ")) == 2


def test_the_inspector_names_a_missing_folder():
    pack = load_pack()
    common = sys.modules[f"{pack.__name__}.nodes.common"]
    with pytest.raises(common.SelvaNodeError, match="Dataset Inspector: folder"):
        run_node("SelVADatasetInspector", folder="no_such_folder")
