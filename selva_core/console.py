"""Output of the commands that live in the package (``python -m selva_core.download``,
``python -m selva_core.generate``, ``train_lora.py --sweep``): their tables, summaries and
one-line errors. Everything else in the library reports through :mod:`logging`."""

from __future__ import annotations

import sys
from typing import TextIO


def say(text: str = "", file: TextIO | None = None) -> None:
    """Write one line of command output to ``file`` (default: standard output)."""
    (file or sys.stdout).write(f"{text}\n")
