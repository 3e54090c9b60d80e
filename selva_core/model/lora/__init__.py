"""LoRA library for SelVA's generator: adapters on ``nn.Linear`` and ``nn.Conv1d``.

Variants (``lora``, ``dora``), inits (standard, gaussian, PiSSA exact / randomized), alpha/r or
rsLoRA scaling, named stacked adapters with runtime strength, bit-exact merge/unmerge/remove,
safetensors files with metadata, PEFT import/export, spectral surgery and the intruder-dimension
diagnostic. See the module docstrings for the math and the reasons behind each default.
"""

from .config import LoRAConfig, compute_scale
from .intruders import IntruderReport, LayerIntruders, intruder_report, reduce_intruders
from .io import (
    adapter_metadata,
    adapter_state_dict,
    base_fingerprint,
    load_adapter,
    load_training_state_dict,
    read_adapter_file,
    save_adapter,
    training_state_dict,
)
from .layers import AdapterState, LoRAConv1d, LoRALayer, LoRALinear
from .lowrank import delta_svd, lowrank_svd
from .peft_io import export_peft, import_peft
from .runtime import (
    AdapterHandle,
    AdapterSpec,
    adapter_layers,
    adapter_names,
    attach_lora,
    base_state_dict,
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
from .surgery import (
    SurgeryConfig,
    SurgeryOutcome,
    SurgeryResult,
    reweight,
    spectral_surgery,
    surgery_with_validation,
)
from .targets import PRESETS, adaptable_modules, resolve_targets
from .variant import get_variant, register_variant, variant_names
