"""Dataset side of LoRA training: clip discovery and pairing (``clips``), ``prompts.txt``
(``prompts``), PyAV video decoding (``video``), audio loading, downmix, alignment and
validation (``audio``), the one PyAV seam that turns every demuxer/decoder failure into a
bad-clip error and measures what files really hold (``container``), window planning
(``windows``), ``.npz`` feature import (``npz_import``), the synthetic demo dataset
(``synthetic``) and the errors/skip report (``errors``).
"""

from selva_core.data.clips import ClipSource, scan_dataset
from selva_core.data.errors import BadClipError, EmptyDatasetError, SkipReport

__all__ = ["BadClipError", "ClipSource", "EmptyDatasetError", "SkipReport", "scan_dataset"]
