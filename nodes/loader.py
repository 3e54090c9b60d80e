"""SelVA Model Loader: one variant's networks as a ``SELVA_MODEL`` (``SelvaPipeline.build``)."""

from __future__ import annotations

import os

from comfy_api.latest import io

from selva_core.variants import DEFAULT_VARIANT, VARIANTS

from .common import (
    CATEGORY,
    MODEL_TYPE,
    SelvaModel,
    library_mode,
    model_folders,
    node_error,
    reported,
)

NODE = "Model Loader"
# copies of the library's choices (the pack imports without the library; a test keeps them equal)
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
OFFLOADS = ("auto", "gpu", "cpu")
DEFAULT_FOLDER = "(ComfyUI models/selva)"

SelvaModelType = io.Custom(MODEL_TYPE)


def _variant_options() -> list[str]:
    official = [n for n, v in VARIANTS.items() if not v.is_tiny]
    return official + [n for n, v in VARIANTS.items() if v.is_tiny]


def _folder_options() -> list[str]:
    try:
        folders = model_folders()
    except ImportError:
        folders = []
    return [DEFAULT_FOLDER] + [f for f in folders[1:]]


class SelvaModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SelVAModelLoader",
            display_name="SelVA Model Loader",
            category=CATEGORY,
            description=(
                "Loads a SelVA variant (generator, video encoder, text encoders, VAE, vocoder) "
                "from models/selva. Weights are checked to belong together; nothing is "
                "downloaded unless 'download' is on. tiny_16k is a small random model for "
                "trying workflows without weights."),
            inputs=[
                io.Combo.Input("variant", options=_variant_options(), default=DEFAULT_VARIANT,
                               tooltip="Model variant; its weight files must be in the models "
                                       "folder (or turn on 'download')."),
                io.Combo.Input("precision", options=list(PRECISIONS), default="auto",
                               tooltip="auto: bf16 on a GPU that supports it, else fp32."),
                io.Combo.Input("offload", options=list(OFFLOADS), default="auto",
                               tooltip="Where the networks rest between runs: gpu (stay loaded; "
                                       "ComfyUI unloads them when another model needs the "
                                       "memory), cpu (moved to the GPU for each run), auto "
                                       "(gpu when they fill at most half of its memory)."),
                io.Combo.Input("weights_folder", options=_folder_options(),
                               default=DEFAULT_FOLDER,
                               tooltip="Which registered models/selva folder holds the "
                                       "weights and the text-encoder folders (extra folders "
                                       "come from extra_model_paths.yaml)."),
                io.String.Input("models_dir", default="", optional=True,
                                tooltip="Explicit weights folder (absolute, or relative to "
                                        "ComfyUI's models folder); overrides weights_folder "
                                        "when not empty."),
                io.Boolean.Input("download", default=False,
                                 tooltip="Download missing weight files from the hub into the "
                                         "models folder (off: a missing file is an error "
                                         "listing every file and the download command)."),
                io.Boolean.Input("for_training", default=False,
                                 tooltip="Keep the VAE encoder, which the LoRA Trainer needs "
                                         "to encode the training audio (more memory)."),
            ],
            outputs=[
                SelvaModelType.Output(display_name="model"),
                io.String.Output(display_name="info"),
            ],
        )

    @classmethod
    def execute(cls, variant: str, precision: str, offload: str, weights_folder: str,
                models_dir: str = "", download: bool = False,
                for_training: bool = False) -> io.NodeOutput:
        import comfy.model_management as mm

        from selva_core.pipeline import SelvaPipeline

        if variant not in VARIANTS:
            raise node_error(NODE, "variant", f"unknown variant {variant!r}",
                             f"choose one of {', '.join(_variant_options())}")
        if precision not in PRECISIONS:
            raise node_error(NODE, "precision", f"unknown precision {precision!r}",
                             f"choose one of {', '.join(PRECISIONS)}")
        if offload not in OFFLOADS:
            raise node_error(NODE, "offload", f"unknown offload policy {offload!r}",
                             f"choose one of {', '.join(OFFLOADS)}")
        folder_input = "models_dir" if (models_dir or "").strip() else "weights_folder"
        folder = _weights_folder(weights_folder, models_dir)
        with library_mode(), reported(
                NODE, folder_input if not VARIANTS[variant].is_tiny else "variant",
                fix="put the files there or turn on 'download'"):
            pipeline = SelvaPipeline.build(
                variant, models_dir=folder, device=mm.get_torch_device(), precision=precision,
                offload=offload, download=bool(download), need_vae_encoder=bool(for_training),
            )
        dtype = str(pipeline.dtype).replace("torch.", "")
        info = (f"{variant}, {dtype} on {pipeline.device}, rests on "
                f"{'the compute device' if pipeline.offload == 'gpu' else 'the cpu'}")
        return io.NodeOutput(SelvaModel(pipeline=pipeline, label=variant), info)


def _weights_folder(choice: str, explicit: str | None) -> str:
    """The folder passed to the library: the explicit path, else the chosen registered one."""
    if explicit and explicit.strip():
        import folder_paths

        path = os.path.expanduser(explicit.strip())
        return path if os.path.isabs(path) else os.path.join(folder_paths.models_dir, path)
    folders = model_folders()
    if choice in folders:
        return choice
    return folders[0]


NODES = [SelvaModelLoader]
