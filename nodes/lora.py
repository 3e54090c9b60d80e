"""SelVA LoRA Loader: a model with one more adapter; the input model never changes.
SelVA LoRA Merge: several adapter files merged into one new file in models/loras.

``pipeline.with_adapters`` gives a new pipeline whose generator is a structural copy sharing
every base tensor, so the cached base model (and every other branch using it) is untouched
and chaining loaders stacks adapters. The merge node is a thin wrapper over
``selva_core.model.lora.merge`` (the same code as ``python -m selva_core.merge``).
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
MERGE_NODE = "LoRA Merge"
NONE = "(none)"
# copies of the library's choices (the pack imports without the library; a test keeps them equal)
MERGE_METHODS = ("linear", "svd", "ties", "dare")
MERGE_DENSITY = 0.2
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


def _lora_combo(name: str, label: str, tooltip: str, optional: bool = False):
    return io.Combo.Input(name, display_name=label, options=[NONE] + list_files(LORA_FOLDER),
                          default=NONE, optional=optional, tooltip=tooltip)


class SelvaLoraMerge(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        weight_tip = ("{}: how much of this adapter's change goes into the merge (1 = as "
                      "trained; negative subtracts it).")
        return io.Schema(
            node_id="SelVALoraMerge",
            display_name="SelVA LoRA Merge",
            category=CATEGORY,
            description=(
                "Merges two or three SelVA adapters (same model variant, lora kind; PiSSA "
                "included) into one new adapter file in models/loras, ready for the LoRA "
                "Loader. linear keeps the weighted sum exactly (the ranks add up); svd, ties "
                "and dare re-factorise it to a chosen rank."),
            is_output_node=True,
            inputs=[
                _lora_combo("lora_a", "adapter a", "lora_a: the first adapter file under "
                            "models/loras."),
                io.Float.Input("weight_a", default=0.5, min=-2.0, max=2.0, step=0.05,
                               tooltip=weight_tip.format("weight_a")),
                _lora_combo("lora_b", "adapter b", "lora_b: the second adapter file under "
                            "models/loras."),
                io.Float.Input("weight_b", default=0.5, min=-2.0, max=2.0, step=0.05,
                               tooltip=weight_tip.format("weight_b")),
                io.Combo.Input("method", options=list(MERGE_METHODS), default="linear",
                               tooltip="linear: the weighted sum kept exactly (factors "
                                       "concatenated, rank a + b); svd: that sum cut to "
                                       "'rank' per layer by a truncated SVD; ties: each change "
                                       "trimmed to 'density' by magnitude, signs elected, "
                                       "agreeing entries averaged, then 'rank'; dare: random "
                                       "entries dropped (keep 'density', rescaled), summed, "
                                       "then 'rank'."),
                io.Int.Input("rank", default=0, min=0, max=1024,
                             tooltip="Rank of svd / ties / dare; 0 = the largest rank among "
                                     "the adapters. Ignored by linear."),
                io.Float.Input("density", default=MERGE_DENSITY, min=0.01, max=1.0, step=0.01,
                               tooltip="ties / dare: the fraction of each change's entries "
                                       "kept."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1,
                             tooltip="dare: seed of the random drop masks (the same seed "
                                     "gives the same file)."),
                io.String.Input("filename", default="selva_merged.safetensors",
                                tooltip="Name of the new file in models/loras (.safetensors "
                                        "is added when missing; no folders)."),
                io.Boolean.Input("overwrite", default=False,
                                 tooltip="Replace a file of that name; off: an existing file "
                                         "is an error and nothing is written."),
                _lora_combo("lora_c", "adapter c", "lora_c: an optional third adapter file.",
                            optional=True),
                io.Float.Input("weight_c", default=0.0, min=-2.0, max=2.0, step=0.05,
                               optional=True, tooltip=weight_tip.format("weight_c")),
            ],
            outputs=[
                io.String.Output(display_name="lora_name"),
                io.String.Output(display_name="report"),
            ],
        )

    @classmethod
    def execute(cls, lora_a: str, weight_a: float, lora_b: str, weight_b: float, method: str,
                rank: int, density: float, seed: int, filename: str, overwrite: bool,
                lora_c: str = NONE, weight_c: float = 0.0) -> io.NodeOutput:
        import folder_paths

        sources = []
        for input_name, name, weight in (("lora_a", lora_a, weight_a),
                                         ("lora_b", lora_b, weight_b),
                                         ("lora_c", lora_c, weight_c)):
            if not name or name == NONE:
                if input_name != "lora_c":
                    raise node_error(MERGE_NODE, input_name, "no adapter chosen",
                                     "choose an adapter file from models/loras")
                continue
            path = folder_paths.get_full_path(LORA_FOLDER, name)
            if path is None:
                raise node_error(MERGE_NODE, input_name, f"{name} is not in models/loras",
                                 "refresh the node list (R) or put the file there")
            sources.append((path, float(weight)))
        name = (filename or "").strip()
        if not name or os.path.basename(name) != name or name.startswith("."):
            raise node_error(MERGE_NODE, "filename", f"{filename!r} is not a plain file name",
                             "give a name such as merged.safetensors (no folders)")
        if not name.endswith(".safetensors"):
            name += ".safetensors"
        out = os.path.join(folder_paths.get_folder_paths(LORA_FOLDER)[0], name)
        if os.path.exists(out) and not overwrite:
            raise node_error(MERGE_NODE, "filename", f"{name} already exists in models/loras",
                             "choose another name or turn overwrite on")
        if os.path.realpath(out) in {os.path.realpath(p) for p, _ in sources}:
            raise node_error(MERGE_NODE, "filename", f"{name} is one of the adapters merged",
                             "choose another name")
        from selva_core.atomic import save_safetensors_atomic
        from selva_core.model.lora.merge import merge_adapter_files

        with library_mode(), reported(MERGE_NODE, None, fix="merge adapters of one model "
                                      "variant and of the lora kind"):
            result = merge_adapter_files(sources, method, rank=int(rank) or None,
                                         density=float(density), seed=int(seed))
            save_safetensors_atomic(out, result.tensors, result.metadata)
        report = (f"{name}: {len(result.tensors) // 2} layers, rank "
                  f"{result.metadata['file_rank']}, method {method}")
        if result.worst is not None:
            report += f"; worst relative error {result.worst[1]:.3e} ({result.worst[0]})"
        log.info("SelVA %s: wrote %s (%s)", MERGE_NODE, out, report)
        return io.NodeOutput(name, report)


NODES = [SelvaLoraLoader, SelvaLoraMerge]
