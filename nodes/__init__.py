"""ComfyUI nodes (thin wrappers over selva_core). Populated by the nodes issue."""

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
