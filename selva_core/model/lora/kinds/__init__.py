"""Built-in LoRA kinds (one file each); importing this package registers them."""

from . import dora, lora, loraxs

__all__ = ["dora", "lora", "loraxs"]
