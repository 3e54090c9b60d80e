"""Built-in LoRA kinds (one file each); ``kind.py`` registers :data:`BUILTIN_KINDS`."""

from .dora import DoRA
from .hra import HRA
from .ia3 import IA3
from .lora import LoRA
from .loraxs import LoRAXS

BUILTIN_KINDS = (LoRA, DoRA, LoRAXS, IA3, HRA)
