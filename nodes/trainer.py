"""SelVA LoRA Trainer: the CLI trainer (``run_training``) from a node.

Same code, same outputs in the output folder (checkpoints, resume, samples, curves, summary)
as ``train_lora.py``. Training runs on a fork of the connected model, so the cached inference
model is not disturbed. Cancel in ComfyUI finishes the current step and writes a resumable
checkpoint; run again with ``resume`` on to continue.
"""

from __future__ import annotations

import os
from pathlib import Path

from comfy_api.latest import io

from .common import (
    CATEGORY,
    MODEL_TYPE,
    SelvaModel,
    hidden_node_id,
    library_mode,
    node_error,
    on_device,
    raise_if_interrupted,
    reported,
    resolve_user_path,
    stop_requested,
)

NODE = "LoRA Trainer"
# copies of the library's choices (the pack imports without the library; a test keeps them equal)
TARGET_PRESETS = ("attn", "qkv", "ffn", "attn+ffn", "all")
INIT_MODES = ("standard", "gaussian", "pissa")
LORA_KINDS = ("lora", "dora", "loraxs", "ia3", "hra")
BASE_DTYPES = ("auto", "fp32", "bf16", "fp16")
SelvaModelType = io.Custom(MODEL_TYPE)


class SelvaLoraTrainer(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SelVALoraTrainer",
            display_name="SelVA LoRA Trainer",
            category=CATEGORY,
            description=(
                "Trains a LoRA adapter on a folder of clips (videos with their sound, optional "
                "prompts.txt), exactly as train_lora.py does. The connected model is not "
                "changed. Cancel writes a resumable checkpoint; run again with resume on."),
            inputs=[
                SelvaModelType.Input("model", tooltip="From a Model Loader with for_training "
                                                      "on."),
                io.String.Input("data_dir", default="selva_training_clips",
                                tooltip="Folder of training clips (relative: under ComfyUI's "
                                        "input folder)."),
                io.String.Input("output_dir", default="selva_lora/my_adapter",
                                tooltip="Run folder (relative: under ComfyUI's output folder): "
                                        "adapter_final.safetensors, checkpoints/, samples/, "
                                        "curves."),
                io.Int.Input("steps", default=2000, min=1, max=1_000_000,
                             tooltip="Optimiser steps to train (each sees batch_size "
                                     "windows)."),
                io.Int.Input("rank", default=16, min=1, max=512,
                             tooltip="Adapter rank: its capacity and file size (8-32 is "
                                     "typical)."),
                io.Float.Input("lr", default=1e-4, min=1e-7, max=1.0, step=1e-5, round=1e-7,
                               tooltip="Learning rate of the adapter weights (AdamW)."),
                io.Combo.Input("target", options=list(TARGET_PRESETS), default="attn",
                               tooltip="Layers to adapt (attn = q/k/v + output projection)."),
                io.Combo.Input("init", options=list(INIT_MODES), default="standard",
                               tooltip="How the adapter starts: standard or gaussian (a "
                                       "zero change), pissa (the weights' principal "
                                       "directions)."),
                io.Int.Input("batch_size", default=4, min=1, max=256,
                             tooltip="Training windows per step; lower it if memory runs "
                                     "out."),
                io.Int.Input("warmup_steps", default=100, min=0, max=100_000,
                             tooltip="Must be smaller than steps."),
                io.Float.Input("duration", default=8.0, min=0.64, max=60.0, step=0.01,
                               tooltip="Training window in seconds (the models were trained "
                                       "on 8 s)."),
                io.Int.Input("save_every", default=500, min=1, max=1_000_000,
                             tooltip="Checkpoint (with a sample and the curves) every N "
                                     "steps."),
                # no 'control after generate': a re-queued run must not re-seed and start over
                io.Int.Input("seed", default=42, min=0, max=2**31 - 1,
                             control_after_generate=False,
                             tooltip="Seed of the adapter's start, the data order and the "
                                     "noise; a resumed run must keep it."),
                io.Boolean.Input("resume", default=False,
                                 tooltip="Continue the run in output_dir from its newest "
                                         "checkpoint."),
                io.Combo.Input("lora_kind", options=list(LORA_KINDS), default="lora",
                               optional=True,
                               tooltip="lora, dora (a learned per-output magnitude), "
                                       "loraxs (frozen SVD basis of W, only an r x r core "
                                       "trained), ia3 (learned per-channel scales: the "
                                       "fewest parameters; rank unused) or hra (rank "
                                       "Householder reflections of W's input space; even "
                                       "rank)."),
                io.Boolean.Input("gradient_checkpointing", default=False, optional=True,
                                 tooltip="Recompute most of each block in the backward "
                                         "pass: about a fifth of the activation memory per "
                                         "clip for about a third more step time, the same "
                                         "adapter."),
                io.Combo.Input("base_dtype", options=list(BASE_DTYPES), default="auto",
                               optional=True,
                               tooltip="Storage of the frozen generator weights while training "
                                       "(auto: bf16 on a GPU with native bf16, else fp32). "
                                       "The adapter is the same either way."),
            ],
            outputs=[
                io.String.Output(display_name="adapter_path"),
                io.Image.Output(display_name="loss_curve"),
                SelvaModelType.Output(display_name="model"),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model: SelvaModel, data_dir: str, output_dir: str, steps: int, rank: int,
                lr: float, target: str, init: str, batch_size: int, warmup_steps: int,
                duration: float, save_every: int, seed: int,
                resume: bool = False, lora_kind: str = "lora",
                gradient_checkpointing: bool = False,
                base_dtype: str = "auto") -> io.NodeOutput:
        from selva_core.run_folder import RunFolder
        from selva_core.training.config import TrainConfig
        from selva_core.training.run import run_training
        from selva_core.training.trainer import TrainHooks

        pipeline = model.pipeline
        if getattr(pipeline, "adapters", ()):
            raise node_error(NODE, "model", "this model already carries adapters",
                             "connect the Model Loader's output directly")
        if getattr(pipeline.vae, "encoder", None) is None:
            raise node_error(NODE, "model", "the model was loaded without the VAE encoder "
                             "that training needs", "turn on 'for_training' in the Model Loader")
        if not data_dir or not data_dir.strip():
            raise node_error(NODE, "data_dir", "no training folder given",
                             "set data_dir to a folder of clips")
        data = resolve_user_path(data_dir, "input")
        if not os.path.isdir(data):
            raise node_error(NODE, "data_dir", f"{data} is not a folder",
                             "put the training clips there or give the folder's full path")
        if not output_dir or not output_dir.strip():
            raise node_error(NODE, "output_dir", "no run folder given",
                             "set output_dir (e.g. selva_lora/my_adapter)")
        out = resolve_user_path(output_dir, "output")
        if warmup_steps >= steps:
            raise node_error(NODE, "warmup_steps", f"{warmup_steps} warm-up steps for a "
                             f"{steps}-step run", "make warmup_steps smaller than steps")
        if not resume:
            # The library's own message names CLI flags (--resume, --overwrite): say it in
            # this node's inputs instead.
            from selva_core.training.run import holds_a_run

            found = holds_a_run(Path(out)) if os.path.isdir(out) else []
            if found:
                raise node_error(NODE, "output_dir", f"{out} already holds a training run "
                                 f"({', '.join(found)})", "turn on 'resume' to continue it, or "
                                 "choose a new output_dir")
        with reported(NODE):
            cfg = TrainConfig(
                data_dir=data, output_dir=out, variant=pipeline.variant.name, rank=int(rank),
                lr=float(lr), target=[target], init=init, batch_size=int(batch_size),
                warmup_steps=int(warmup_steps), steps=int(steps), duration=float(duration),
                save_every=int(save_every), seed=int(seed), resume=bool(resume),
                lora_kind=lora_kind, gradient_checkpointing=bool(gradient_checkpointing),
                base_dtype=base_dtype, device=str(pipeline.device), quiet=True,
            ).validate()
        with library_mode():
            _make_trainable_tensors(pipeline)
        bar = _ProgressTo(int(steps), hidden_node_id(cls))
        hooks = TrainHooks(after_step=bar.after_step, should_stop=stop_requested)
        with on_device(model) as pipe, reported(NODE, None, fix=_fix_for(resume)):
            result = run_training(cfg, pipeline=pipe, hooks=hooks)
        if result.status != "completed":
            raise_if_interrupted()  # Cancel: ComfyUI reports the interruption
            raise node_error(NODE, None, f"training ended with status {result.status!r}",
                             f"see {RunFolder(out).summary_path} and the ComfyUI log")
        adapter = str(result.adapter_path)
        with library_mode(), reported(NODE, "output_dir"):
            trained = pipeline.with_adapters([(adapter, 1.0)])
        curve = _curve_image(str(RunFolder(result.output_dir).curve_path))
        return io.NodeOutput(adapter, curve,
                             model.derived(trained, f"{model.label} + {os.path.basename(out)}"))


def _make_trainable_tensors(pipeline) -> None:
    """Replace inference tensors in the pipeline's networks by equal ordinary tensors.

    Tensors a module gets while ComfyUI runs under ``torch.inference_mode`` (e.g. when its
    model management moves SelVA off the GPU and back) can never take part in autograd; the
    values stay the same, only the tensor kind changes.
    """
    import torch

    with torch.no_grad():
        for module in pipeline.networks().values():
            for sub in module.modules():
                for p in sub._parameters.values():
                    if p is not None and p.is_inference():
                        p.data = p.data.clone()
                for name, b in sub._buffers.items():
                    if b is not None and b.is_inference():
                        sub._buffers[name] = b.clone()


def _fix_for(resume: bool) -> str:
    return ("check output_dir holds the run to continue" if resume else
            "turn on 'resume' to continue a run in output_dir, or choose a new output_dir")


class _ProgressTo:
    """ComfyUI progress bar over optimiser steps (no interruption raised here: the trainer
    polls ``should_stop`` and saves a checkpoint first)."""

    def __init__(self, total: int, node_id: str | None):
        from comfy.utils import ProgressBar

        self.total = total
        self.bar = ProgressBar(total, node_id=node_id)

    def after_step(self, trainer, steps_done: int) -> None:
        import comfy.model_management as mm

        if stop_requested():
            return  # the trainer polls should_stop next and saves a checkpoint
        try:
            self.bar.update_absolute(min(int(steps_done), self.total), self.total)
        except mm.InterruptProcessingException:
            # ComfyUI's progress hook consumed a Cancel that arrived just now: put it back so
            # the trainer's should_stop sees it and checkpoints before stopping.
            mm.interrupt_current_processing(True)


def _curve_image(path: str):
    """The loss-curve PNG as an IMAGE (1, H, W, 3) float in [0, 1]; a grey tile if absent."""
    import numpy as np
    import torch

    if not os.path.isfile(path):
        return torch.full((1, 64, 64, 3), 0.5)
    from PIL import Image

    with Image.open(path) as img:
        array = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array.copy()).unsqueeze(0)


NODES = [SelvaLoraTrainer]
