"""LoRA library for SelVA's generator: adapters on ``nn.Linear`` and ``nn.Conv1d``.

Variants (``lora``, ``dora``), inits (standard, gaussian, PiSSA exact / randomized), alpha/r or
rsLoRA scaling, named stacked adapters with runtime strength, bit-exact merge/unmerge/remove,
safetensors files with metadata, PEFT import/export, spectral surgery and the intruder-dimension
diagnostic. See the module docstrings for the math and the reasons behind each default.
"""

from .config import LoRAConfig, compute_scale
from .layers import AdapterState, LoRAConv1d, LoRALayer, LoRALinear
from .runtime import (
    AdapterHandle,
    AdapterSpec,
    adapter_layers,
    adapter_names,
    attach_lora,
    get_strength,
    iter_lora_layers,
    lora_plus_param_groups,
    merge_adapters,
    remove_adapter,
    remove_all_adapters,
    set_strength,
    trainable_parameters,
    unmerge_adapters,
)
from .targets import PRESETS, adaptable_modules, resolve_targets
from .variant import get_variant, register_variant, variant_names
