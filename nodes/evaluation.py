"""SelVA LoRA Evaluator and SelVA LoRA Sweep: ``eval_adapters.py`` and ``train_lora.py --sweep``
from nodes.

Both take their spec as JSON text or as the path of a JSON file, run exactly the library code
the command lines run (:func:`selva_core.evaluation.runner.run_evaluation`,
:func:`selva_core.sweep.run_sweep`), show progress, stop cleanly on Cancel (a rerun
continues where they stopped) and return the text summary and the comparison chart. Relative
folders in a spec: ``data_dir`` (and ``base.data_dir``) under ComfyUI's input folder,
``output_dir`` under its output folder, adapter paths under ``models/loras``, else under the
output folder (where the LoRA Trainer writes), else under the input folder: the first that
holds the file (the output folder's path when none does).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from comfy_api.latest import io

from selva_core.variants import CFG_STRENGTH, SAMPLING_STEPS

from .common import (
    CATEGORY,
    MODEL_TYPE,
    SelvaModel,
    hidden_node_id,
    node_error,
    on_device,
    raise_if_interrupted,
    reported,
    resolve_user_path,
    stop_requested,
)

SelvaModelType = io.Custom(MODEL_TYPE)
EVAL_NODE = "LoRA Evaluator"
SWEEP_NODE = "LoRA Sweep"
EXAMPLE_EVAL = json.dumps({
    "name": "my_lora", "data_dir": "selva_training_clips",
    "output_dir": "selva_eval/my_lora",
    "adapters": [{"id": "base", "path": ""},
                 {"id": "final", "path": "selva_lora/my_adapter/adapter_final.safetensors"}],
    "strengths": [0.5, 1.0], "seeds": [1, 2], "steps": SAMPLING_STEPS, "cfg": CFG_STRENGTH},
    indent=1)
EXAMPLE_SWEEP = json.dumps({
    "name": "ranks", "output_dir": "selva_sweeps/ranks",
    "base": {"data_dir": "selva_training_clips", "steps": 2000},
    "experiments": [{"id": "r8", "overrides": {"rank": 8}},
                    {"id": "r16", "overrides": {"rank": 16}}]}, indent=1)


def _read_spec(node: str, text: str) -> tuple[dict[str, Any], str]:
    """JSON text, or a path (absolute, or under the input folder) of a JSON file."""
    text = (text or "").strip()
    if not text:
        raise node_error(node, "spec", "no spec given", "paste the JSON or give a file path")
    if not text.startswith("{"):
        path = resolve_user_path(text, "input")
        if not os.path.isfile(path):
            raise node_error(node, "spec", f"{path} is not a file and the text is not JSON",
                             "paste the JSON spec or give the path of a .json file")
        text, source = Path(path).read_text(encoding="utf-8"), path
    else:
        source = "(spec text)"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise node_error(node, "spec", f"not valid JSON ({exc.msg} at line {exc.lineno} "
                         f"column {exc.colno})", "fix the JSON") from None
    if not isinstance(data, dict):
        raise node_error(node, "spec", "the spec must be a JSON object", "see the example")
    return data, source


def _adapter_path(path: str) -> str:
    if not path or os.path.isabs(os.path.expanduser(path)):
        return os.path.expanduser(path)
    try:
        import folder_paths

        found = folder_paths.get_full_path("loras", path)
        if found:
            return found
    except (ImportError, KeyError):
        pass
    for base in ("output", "input"):
        candidate = resolve_user_path(path, base)
        if os.path.isfile(candidate):
            return candidate
    return resolve_user_path(path, "output")


def _resolve_eval_paths(data: dict[str, Any]) -> dict[str, Any]:
    data = dict(data)
    for key in ("data_dir", "drift_dir"):
        if isinstance(data.get(key), str) and data[key]:
            data[key] = resolve_user_path(data[key], "input")
    if isinstance(data.get("output_dir"), str) and data["output_dir"]:
        data["output_dir"] = resolve_user_path(data["output_dir"], "output")
    elif "output_dir" not in data:
        data["output_dir"] = resolve_user_path(f"selva_eval/{data.get('name', 'eval')}",
                                               "output")
    if isinstance(data.get("adapters"), list):
        data["adapters"] = [dict(a, path=_adapter_path(a.get("path", "")))
                            if isinstance(a, dict) and isinstance(a.get("path", ""), str)
                            else a for a in data["adapters"]]
    return data


def _image(path: str | os.PathLike | None):
    """A PNG as an IMAGE (1, H, W, 3) float in [0, 1]; a grey tile when there is none."""
    import numpy as np
    import torch

    if not path or not os.path.isfile(path):
        return torch.full((1, 64, 64, 3), 0.5)
    from PIL import Image

    with Image.open(path) as img:
        array = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array.copy()).unsqueeze(0)


def _progress(node_id: str | None):
    from comfy.utils import ProgressBar

    bar: list[Any] = []

    def update(done: int, total: int) -> None:
        if not bar:
            bar.append(ProgressBar(max(1, int(total)), node_id=node_id))
        bar[0].update_absolute(int(done), max(1, int(total)))

    return update


class SelvaLoraEvaluator(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SelVALoraEvaluator",
            display_name="SelVA LoRA Evaluator",
            category=CATEGORY,
            description=(
                "Renders every clip x seed x adapter x strength (and the baseline), measures "
                "them (spectral metrics, distance to the reference, drift, DeSync) and writes "
                "WAVs, MP4s, eval_summary.json, metrics.csv, charts and an offline index.html "
                "listening grid, exactly as eval_adapters.py. Cancel stops after the current "
                "sampler step; run again to continue (nothing done is redone)."),
            inputs=[
                SelvaModelType.Input("model", tooltip="The model to render with (its variant "
                                                      "must match the adapters')."),
                io.String.Input("spec", multiline=True, default=EXAMPLE_EVAL,
                                tooltip="Evaluation spec as JSON, or the path of a .json file "
                                        "(eval_adapters.py --help lists every field). "
                                        "Relative data_dir: under input/; output_dir: under "
                                        "output/; adapters: models/loras/, output/ or input/."),
            ],
            outputs=[
                io.String.Output(display_name="summary"),
                io.Image.Output(display_name="chart"),
                io.String.Output(display_name="html_path"),
                io.String.Output(display_name="summary_path"),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model: SelvaModel, spec: str) -> io.NodeOutput:
        from selva_core.evaluation.report import format_summary
        from selva_core.evaluation.runner import run_evaluation
        from selva_core.evaluation.spec import EvalSpec

        data, source = _read_spec(EVAL_NODE, spec)
        with reported(EVAL_NODE, "spec"):
            eval_spec = EvalSpec.from_dict(_resolve_eval_paths(data), source)
        update = _progress(hidden_node_id(cls))
        with on_device(model) as pipe, reported(EVAL_NODE, None):
            result = run_evaluation(eval_spec, pipeline=pipe, progress=False,
                                    on_render=update, should_stop=stop_requested)
        if result.status == "interrupted":
            raise_if_interrupted()
        return io.NodeOutput(format_summary(result.summary), _image(result.chart_path),
                             str(result.html_path or ""), str(result.summary_path))


class SelvaLoraSweep(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SelVALoraSweep",
            display_name="SelVA LoRA Sweep",
            category=CATEGORY,
            description=(
                "Trains several LoRA experiments from one JSON spec (base settings + "
                "experiments with overrides), extracting the dataset's features once, exactly "
                "as train_lora.py --sweep. A rerun skips finished experiments and resumes an "
                "unfinished one; creating skip_current.flag in the output folder moves on to "
                "the next experiment; Cancel saves a checkpoint and stops."),
            inputs=[
                SelvaModelType.Input("model", tooltip="From a Model Loader with for_training "
                                                      "on (experiments train on forks)."),
                io.String.Input("sweep", multiline=True, default=EXAMPLE_SWEEP,
                                tooltip="Sweep spec as JSON or the path of a .json file. "
                                        "Relative base.data_dir: under input/; output_dir: "
                                        "under output/. Optional 'eval': an evaluation spec "
                                        "to evaluate every final adapter."),
            ],
            outputs=[
                io.String.Output(display_name="summary"),
                io.Image.Output(display_name="val_curves"),
                io.String.Output(display_name="summary_path"),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model: SelvaModel, sweep: str) -> io.NodeOutput:
        from selva_core.sweep import format_sweep_summary, parse_sweep, run_sweep

        data, source = _read_spec(SWEEP_NODE, sweep)
        data = dict(data)
        base = dict(data.get("base") or {}) if isinstance(data.get("base"), dict) else None
        if base is not None:
            if isinstance(base.get("data_dir"), str) and base["data_dir"]:
                base["data_dir"] = resolve_user_path(base["data_dir"], "input")
            base.setdefault("variant", model.pipeline.variant.name)
            base.setdefault("device", str(model.pipeline.device))
            base.setdefault("quiet", True)
            data["base"] = base
        data["output_dir"] = resolve_user_path(
            data.get("output_dir") or f"selva_sweeps/{data.get('name', 'sweep')}", "output")
        if isinstance(data.get("eval"), dict):
            evaluation = _resolve_eval_paths(data["eval"])
            if "output_dir" not in data["eval"]:
                evaluation.pop("output_dir")  # the sweep's default: OUTPUT_DIR/eval
            data["eval"] = evaluation
        with reported(SWEEP_NODE, "sweep"):
            parsed = parse_sweep(data, source)
        if getattr(model.pipeline.vae, "encoder", None) is None:
            raise node_error(SWEEP_NODE, "model", "the model was loaded without the VAE "
                             "encoder that training needs",
                             "turn on 'for_training' in the Model Loader")
        update = _progress(hidden_node_id(cls))
        total = len(parsed.experiments)
        with on_device(model) as pipe, reported(SWEEP_NODE, None):
            result = run_sweep(parsed, pipeline=pipe, progress=False,
                               should_stop=stop_requested,
                               on_experiment=lambda i, n, _id: update(i, n))
        update(total, total)
        if not result.completed:
            raise_if_interrupted()
        return io.NodeOutput(format_sweep_summary(result.summary), _image(result.chart_path),
                             str(result.summary_path))


NODES: list[type] = [SelvaLoraEvaluator, SelvaLoraSweep]
