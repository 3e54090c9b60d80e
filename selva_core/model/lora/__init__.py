"""LoRA library for SelVA's generator: adapters on ``nn.Linear`` and ``nn.Conv1d``.

Kinds ``lora``, ``dora`` and ``loraxs`` (``kinds/``), inits standard / gaussian / PiSSA exact or
randomized (``init.py``), alpha/r or rsLoRA scaling with evidence-based defaults
(``config.py``), targets by presets and name patterns (``targets.py``), named stacked adapters
with runtime strength and bit-exact merge / unmerge / removal (``layers.py``, ``runtime.py``),
safetensors files with metadata and validated loading (``io.py``: every bad file is one
``AdapterLoadError`` naming it, the model unchanged) in exact float32 or compact q16
storage (``storage.py``), PEFT folders both ways
(``peft_io.py``), spectral surgery (``surgery.py``) and the intruder-dimension diagnostic
(``intruders.py``). Each module's docstring gives the math and the reasons for its defaults.

Typical use::

    handle = attach_lora(gen, LoRAConfig(rank=16, targets=("qkv+linear1",)))
    ...train trainable_parameters(gen) (or lora_plus_param_groups(gen, lr, ratio))...
    save_adapter(gen, "style.safetensors", metadata={"steps": 2000})
    load_adapter(other_gen, "style.safetensors", name="style", strength=0.8)
"""

from .config import LoRAConfig, compute_scale
from .intruders import IntruderReport, LayerIntruders, intruder_report, reduce_intruders
from .io import (
    STRENGTH_RANGE,
    AdapterFileInfo,
    AdapterLoadError,
    AdapterNotFoundError,
    adapter_metadata,
    adapter_state_dict,
    adapter_storage,
    base_fingerprint,
    load_adapter,
    load_adapter_tensors,
    load_training_state_dict,
    parse_adapter_metadata,
    read_adapter_file,
    resolve_adapter_path,
    save_adapter,
    training_state_dict,
)
from .kind import get_kind, kind_names, register_kind
from .layers import AdapterState, LoRAConv1d, LoRALayer, LoRALinear
from .lowrank import delta_svd, lowrank_svd
from .peft_io import export_peft, import_peft, read_peft_folder
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
    merged_state_dict,
    remove_adapter,
    remove_all_adapters,
    set_strength,
    trainable_parameters,
    unmerge_adapters,
)
from .storage import STORAGES
from .surgery import (
    SurgeryConfig,
    SurgeryOutcome,
    SurgeryResult,
    reweight,
    spectral_surgery,
    surgery_with_validation,
)
from .targets import PRESETS, adaptable_modules, resolve_targets
