"""Evaluation of LoRA adapters: render grids, metrics, DeSync, reports (``eval_adapters.py``).

Submodules: ``spec`` (the JSON spec), ``metrics`` (no-download audio metrics), ``desync``
(Synchformer audio-visual offset), ``embeddings`` (optional CLAP / FAD-style scores behind
explicit weight paths), ``runner`` (the render grid with resume) and ``report`` (charts and the
offline HTML listening grid). Imported explicitly so that importing this package stays cheap.
"""
