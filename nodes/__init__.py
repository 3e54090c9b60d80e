"""ComfyUI nodes of the SelVA pack: thin V3 (``comfy_api.latest``) wrappers over selva_core.

Registers Model Loader, Feature Extractor, Sampler, LoRA Loader, Embedding Loader, LoRA
Trainer and the dataset nodes (Dataset Prepare, Dataset Inspector, VAE Round Trip), plus the
evaluation nodes of ``nodes/evaluation.py`` (``NODES``) when that module imports. Outside
ComfyUI (no ``comfy_api``) nothing is registered and the import still succeeds. Importing
this package loads no torch-heavy code: the library is imported when a node runs.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("selva.nodes")

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
NODE_LIST: list = []

try:
    from comfy_api.latest import ComfyExtension
except ImportError:  # not inside ComfyUI (plain import, test collection)
    ComfyExtension = None

if ComfyExtension is not None:
    from . import dataset, embedding, features, loader, lora, sampler, trainer
    from .common import register_model_folder

    register_model_folder()
    NODE_LIST = [*loader.NODES, *features.NODES, *sampler.NODES, *lora.NODES, *embedding.NODES,
                 *trainer.NODES, *dataset.NODES]
    try:
        from .evaluation import NODES as _EVALUATION_NODES
    except ImportError as exc:  # the evaluation nodes are optional; the others still load
        logger.warning("SelVA: evaluation nodes not loaded (%s)", exc)
        _EVALUATION_NODES = []
    NODE_LIST += list(_EVALUATION_NODES)
    for _cls in NODE_LIST:
        _schema = _cls.define_schema()
        NODE_CLASS_MAPPINGS[_schema.node_id] = _cls
        NODE_DISPLAY_NAME_MAPPINGS[_schema.node_id] = _schema.display_name

    class SelvaExtension(ComfyExtension):
        """The V3 entry point (ComfyUI uses NODE_CLASS_MAPPINGS when both exist)."""

        async def get_node_list(self) -> list:
            return list(NODE_LIST)

    async def comfy_entrypoint() -> SelvaExtension:
        return SelvaExtension()


__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "NODE_LIST"]
