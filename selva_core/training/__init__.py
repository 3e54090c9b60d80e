"""LoRA training for SelVA: the trainer loop, checkpoints/resume, schedules and reports used by
``train_lora.py`` (the features it trains on come from :mod:`selva_core.feature_cache`).

Submodules are imported explicitly (``from selva_core.training.run import ...``) so importing
this package stays cheap.
"""
