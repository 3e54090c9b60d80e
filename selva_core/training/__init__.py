"""LoRA training for SelVA: the on-disk feature cache (``feature_cache``), the trainer loop,
checkpoints/resume, schedules and reports used by ``train_lora.py``.

Submodules are imported explicitly (``from selva_core.training.feature_cache import ...``) so
importing this package stays cheap.
"""
