"""From raw footage to a training folder: ``python -m selva_core.dataset prepare|inspect``.

One job per module: :mod:`.cutting` (shot cuts, active windows, the plan), :mod:`.loudness`
(BS.1770 loudness, compressor, limiter), :mod:`.checks` (per-clip figures and thresholds),
:mod:`.roundtrip` (the VAE round trip), :mod:`.prepare` (writing clips), :mod:`.inspect`
(running the checks over a folder), :mod:`.report` (JSON, HTML, console summary, the
trainer's warning) and :mod:`.cli`.
"""
