"""SelVA Embedding Loader: a model whose prompts understand a textual-inversion token.

``pipeline.with_embeddings`` gives a fork that splices the token's vectors into prompts that
use it; no network changes, so the input model and every other branch keep their meaning, and
chaining loaders (or LoRA loaders) stacks them.
"""

from __future__ import annotations

import logging
import os

from comfy_api.latest import io

from .common import (
    CATEGORY,
    LORA_FOLDER,
    MODEL_TYPE,
    SelvaModel,
    chosen_file,
    library_mode,
    list_files,
    reported,
)

log = logging.getLogger("selva.nodes")

NODE = "Embedding Loader"
EMBEDDING_FIX = ("choose an embedding_final.safetensors written by train_lora.py --method "
                 "textual_inversion for this model variant")
NONE = "(none)"
SelvaModelType = io.Custom(MODEL_TYPE)


class SelvaEmbeddingLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SelVAEmbeddingLoader",
            display_name="SelVA Embedding Loader",
            category=CATEGORY,
            description=(
                "Teaches the model a trained word (textual inversion): prompts that use the "
                "token mean the learned sound. The input model stays as it is; chain with LoRA "
                "loaders to stack."),
            inputs=[
                SelvaModelType.Input("model", tooltip="The SelVA model; it stays unchanged."),
                io.Combo.Input("embedding_name", display_name="embedding",
                               options=[NONE] + list_files(LORA_FOLDER), default=NONE,
                               tooltip="embedding_name: the embedding file under models/loras "
                                       "(written by the trainer with --method "
                                       "textual_inversion)."),
                io.String.Input("embedding_path", default="", optional=True,
                                tooltip="Explicit embedding file; overrides embedding_name "
                                        "when not empty."),
            ],
            outputs=[
                SelvaModelType.Output(display_name="model"),
                io.String.Output(display_name="token"),
            ],
        )

    @classmethod
    def execute(cls, model: SelvaModel, embedding_name: str,
                embedding_path: str = "") -> io.NodeOutput:
        path, input_name = chosen_file(NODE, "embedding_name", "embedding_path",
                                       embedding_name, embedding_path, NONE, "an embedding")
        if path is None:
            log.warning("SelVA %s: no embedding chosen; the model passes through unchanged",
                        NODE)
            return io.NodeOutput(model, "")
        with library_mode(), reported(NODE, input_name, fix=EMBEDDING_FIX):
            pipeline = model.pipeline.with_embeddings([path])
        token = pipeline.embeddings[-1].token
        label = f"{model.label} + {token} ({os.path.basename(path)})"
        return io.NodeOutput(model.derived(pipeline, label), token)


NODES = [SelvaEmbeddingLoader]
