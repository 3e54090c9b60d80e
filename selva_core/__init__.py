"""selva_core: a pure-PyTorch SelVA (text-steered video-to-audio) library with LoRA adapters.

Never imports ComfyUI. The ComfyUI nodes (``nodes/``) and the CLIs (``train_lora.py``,
``eval_adapters.py``) call the same functions from here.
"""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
