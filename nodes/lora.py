"""SelVA LoRA Loader: a model with one more adapter; the input model never changes.

``pipeline.with_adapters`` gives a new pipeline whose generator is a structural copy sharing
every base tensor, so the cached base model (and every other branch using it) is untouched
and chaining loaders stacks adapters.
"""

from __future__ import annotations

import json
import logging
import os

from comfy_api.latest import io

from selva_core.variants import STRENGTH_RANGE

from .common import (
    CATEGORY,
    LORA_FOLDER,
    MODEL_TYPE,
    SelvaModel,
    chosen_file,
    library_mode,
    list_files,
    node_error,
    reported,
)

log = logging.getLogger("selva.nodes")

NODE = "LoRA Loader"
# Advice for a refusal whose message carries none (a damaged file, or not an adapter at all);
# a file for another variant says so itself.
ADAPTER_FIX = ("the file is damaged or is not a SelVA adapter: choose an adapter .safetensors "
               "written by the SelVA trainer (or re-copy this one)")
NONE = "(none)"
SelvaModelType = io.Custom(MODEL_TYPE)


class SelvaLoraLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SelVALoraLoader",
            display_name="SelVA LoRA Loader",
            category=CATEGORY,
            description=(
                "Applies a SelVA LoRA adapter at a strength, on a copy: the input model stays "
                "as it is, so a branch without the adapter keeps giving the base output. Chain "
                "loaders to stack adapters."),
            inputs=[
                SelvaModelType.Input("model", tooltip="The SelVA model to adapt; it stays "
                                                      "unchanged (the output is an adapted "
                                                      "copy)."),
                # a short label leaves the widget room for the file name it shows
                io.Combo.Input("lora_name", display_name="adapter",
                               options=[NONE] + list_files(LORA_FOLDER), default=NONE,
                               tooltip="lora_name: the adapter file under models/loras (a "
                                       "SelVA adapter: .safetensors written by the trainer); "
                                       "the list shows each file's full name."),
                io.Float.Input("strength", default=1.0, min=STRENGTH_RANGE[0],
                               max=STRENGTH_RANGE[1], step=0.05,
                               tooltip="0 = no effect, 1 = as trained; negative values "
                                       "subtract the adapter."),
                io.String.Input("lora_path", default="", optional=True,
                                tooltip="Explicit adapter file; overrides lora_name when not "
                                        "empty."),
            ],
            outputs=[
                SelvaModelType.Output(display_name="model"),
                io.String.Output(display_name="training_prompt"),
                io.String.Output(display_name="training_settings"),
            ],
        )

    @classmethod
    def execute(cls, model: SelvaModel, lora_name: str, strength: float,
                lora_path: str = "") -> io.NodeOutput:
        import math

        from selva_core.prompting import adapter_training_info

        strength = float(strength)
        if not math.isfinite(strength):
            raise node_error(NODE, "strength", f"must be a finite number, got {strength!r}")
        path, input_name = _adapter_path(lora_name, lora_path)
        if path is None:
            log.warning("SelVA %s: no adapter chosen (lora_name is %s, lora_path is empty); "
                        "the model passes through unchanged", NODE, NONE)
            return io.NodeOutput(model, "", "{}")
        with library_mode(), reported(NODE, input_name, fix=ADAPTER_FIX):
            pipeline = model.pipeline.with_adapters([(path, strength)])
        applied = pipeline.adapters[-1]
        prompt, settings = adapter_training_info(applied.metadata, applied.source)
        label = f"{model.label} + {os.path.basename(path)} @ {strength:g}"
        return io.NodeOutput(model.derived(pipeline, label), prompt,
                             json.dumps(settings, indent=1, sort_keys=True, default=str))


def _adapter_path(lora_name: str, lora_path: str) -> tuple[str | None, str]:
    """(file, the input it came from); (None, ...) when no adapter is chosen."""
    return chosen_file(NODE, "lora_name", "lora_path", lora_name, lora_path, NONE,
                       "an adapter")


NODES = [SelvaLoraLoader]
