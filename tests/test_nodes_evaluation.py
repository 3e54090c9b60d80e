"""LoRA Evaluator and LoRA Sweep nodes on the ComfyUI stand-ins: same code as the CLIs."""

from __future__ import annotations

import json
import sys

import pytest

from tests.eval_data import make_adapter, make_clips, tiny_pipeline
from tests.node_harness import COMFY_ROOT, clean_comfy_state, load_pack, run_node


@pytest.fixture(scope="module")
def model():
    pack = load_pack()
    common = sys.modules[f"{pack.__name__}.nodes.common"]
    return common.SelvaModel(pipeline=tiny_pipeline(), label="tiny_16k")


@pytest.fixture(autouse=True)
def _clean_comfy_state():
    yield from clean_comfy_state()


def test_both_nodes_are_registered():
    pack = load_pack()
    assert pack.NODE_DISPLAY_NAME_MAPPINGS["SelVALoraEvaluator"] == "SelVA LoRA Evaluator"
    assert pack.NODE_DISPLAY_NAME_MAPPINGS["SelVALoraSweep"] == "SelVA LoRA Sweep"


def test_a_relative_adapter_path_finds_the_trainers_output_before_the_input_folder():
    pack = load_pack()
    evaluation = sys.modules[f"{pack.__name__}.nodes.evaluation"]
    relative = "selva_lora/h10_run/adapter_final.safetensors"
    for base in ("output", "input"):
        (COMFY_ROOT / base / relative).parent.mkdir(parents=True, exist_ok=True)
        (COMFY_ROOT / base / relative).write_bytes(b"adapter")
    assert evaluation._adapter_path(relative) == str(COMFY_ROOT / "output" / relative)
    (COMFY_ROOT / "output" / relative).unlink()
    assert evaluation._adapter_path(relative) == str(COMFY_ROOT / "input" / relative)
    (COMFY_ROOT / "input" / relative).unlink()
    missing = evaluation._adapter_path(relative)  # named where the trainer would have put it
    assert missing == str(COMFY_ROOT / "output" / relative)


def test_the_evaluator_node_renders_the_grid_with_progress_and_returns_summary_and_chart(model):
    import comfy.utils

    clips = make_clips(COMFY_ROOT / "input" / "eval_clips", silent=False)
    adapter = make_adapter(COMFY_ROOT / "models" / "loras" / "eval_a.safetensors",
                           model.pipeline)
    spec = json.dumps({"name": "node", "data_dir": "eval_clips", "output_dir": "node_eval",
                       "steps": 1, "clips": ["hum_000"], "adapters": [
                           {"id": "a", "path": adapter.name}]})
    summary, chart, html_path, summary_path = run_node("SelVALoraEvaluator", model=model,
                                                       spec=spec)
    assert "completed" in summary and "a × 1" in summary
    assert chart.ndim == 4 and chart.shape[0] == 1 and chart.shape[-1] == 3
    assert html_path.startswith(str(COMFY_ROOT / "output" / "node_eval"))
    data = json.loads(open(summary_path).read())
    assert [a["id"] for a in data["adapters"]] == ["baseline", "a"]
    assert data["adapters"][1]["status"] == "ok" and clips.is_dir()
    assert comfy.utils.PROGRESS_CALLS  # the bar moved
    assert not model.pipeline.adapters  # the connected model is left as it was


def test_the_evaluator_node_stops_on_cancel_and_reports_bad_specs_in_one_message(model):
    import comfy.model_management as mm

    from selva_core.evaluation.runner import SUMMARY_FILE

    make_clips(COMFY_ROOT / "input" / "eval_clips2", silent=False)
    spec = json.dumps({"data_dir": "eval_clips2", "output_dir": "node_cancel", "steps": 1})
    mm.interrupt_current_processing(True)
    with pytest.raises(mm.InterruptProcessingException):
        run_node("SelVALoraEvaluator", model=model, spec=spec)
    saved = json.loads((COMFY_ROOT / "output" / "node_cancel" / SUMMARY_FILE).read_text())
    assert saved["status"] == "interrupted"
    with pytest.raises(ValueError) as err:
        run_node("SelVALoraEvaluator", model=model, spec='{"steps": 0}')
    message = str(err.value)
    assert message.startswith("SelVA LoRA Evaluator: spec:") and "'steps'" in message
    assert "'data_dir' is required" in message


def test_the_sweep_node_reports_a_bad_sweep_in_one_message(model):
    with pytest.raises(ValueError) as err:
        run_node("SelVALoraSweep", model=model, sweep='{"base": {"rank": 0}, "experiments": []}')
    message = str(err.value)
    assert message.startswith("SelVA LoRA Sweep: sweep:") and "experiments" in message


def test_the_sweep_node_trains_every_experiment_and_returns_summary_and_curves(model):
    from selva_core.data.synthetic import make_synthetic_dataset

    make_synthetic_dataset(COMFY_ROOT / "input" / "sweep_clips", clips_per_class=2,
                           duration=1.0, seed=0)
    sweep = json.dumps({
        "name": "node_sweep", "output_dir": "node_sweep",
        "base": {"data_dir": "sweep_clips", "duration": 1.0, "steps": 1, "warmup_steps": 0,
                 "batch_size": 1, "save_every": 1, "val_every": 1, "val_clips": 1,
                 "samples": False, "surgery": False},
        "experiments": [{"id": "r2", "rank": 2}, {"id": "r4", "rank": 4}]})
    summary, curves, summary_path = run_node("SelVALoraSweep", model=model, sweep=sweep)
    assert "node_sweep: completed" in summary
    assert curves.ndim == 4 and curves.shape[-1] == 3
    data = json.loads(open(summary_path).read())
    assert [(e["id"], e["status"]) for e in data["experiments"]] == [
        ("r2", "finished"), ("r4", "finished")]
    out = COMFY_ROOT / "output" / "node_sweep"
    assert (out / "r2" / "adapter_final.safetensors").is_file()
    assert json.loads((out / "r4" / "config.json").read_text())["variant"] == "tiny_16k"
    assert not model.pipeline.adapters  # experiments trained on forks
