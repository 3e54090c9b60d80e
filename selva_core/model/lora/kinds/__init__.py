"""Built-in LoRA kinds (one file each); importing this package registers them."""

from . import dora, hra, ia3, lora, loraxs

__all__ = ["dora", "hra", "ia3", "lora", "loraxs"]
