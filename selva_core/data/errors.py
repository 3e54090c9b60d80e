"""Errors and the skipped-clip report of the dataset side of LoRA training.

Every problem with one clip (unreadable video, silent audio, bad ``prompts.txt`` line, ...)
goes through :func:`handle_bad_clip`, which applies the user's ``on_bad_clip`` choice in one
place: ``'stop'`` raises :class:`BadClipError`, ``'skip'`` logs one warning line and records
the clip with its reason in a :class:`SkipReport` the trainer can print at the end.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

OnBadClip = Literal["skip", "stop"]
ON_BAD_CLIP_CHOICES: tuple[str, ...] = ("skip", "stop")


class BadClipError(ValueError):
    """One clip (or dataset file) cannot be used; the message names the file and the fix."""

    _name_path_first = True

    def __init__(self, path: str | Path | None, problem: str, fix: str = ""):
        self.path = None if path is None else Path(path)
        self.problem = problem
        self.fix = fix
        where = f"{self.path}: " if self.path is not None and self._name_path_first else ""
        message = f"{where}{problem}" + (f"; {fix}" if fix else "")
        super().__init__(message)


class EmptyDatasetError(BadClipError):
    """The data folder holds no usable clip (always an error, whatever ``on_bad_clip`` says).

    The message itself names the folder (``no clips found in X; expected ...``).
    """

    _name_path_first = False


@dataclass(frozen=True)
class SkippedClip:
    """A clip (or a dataset line) left out of training, with the one-line reason."""

    path: Path | None
    reason: str

    def __str__(self) -> str:
        return self.reason


@dataclass
class SkipReport:
    """Everything skipped while scanning and extracting, in order; printable by the trainer."""

    skipped: list[SkippedClip] = field(default_factory=list)

    def add(self, error: BadClipError) -> None:
        self.skipped.append(SkippedClip(error.path, str(error)))

    def __len__(self) -> int:
        return len(self.skipped)

    def __iter__(self):
        return iter(self.skipped)

    def lines(self) -> list[str]:
        return [s.reason for s in self.skipped]

    def format(self) -> str:
        """A short human-readable block: ``N clip(s) skipped:`` then one line each."""
        if not self.skipped:
            return "no clips skipped"
        head = f"{len(self.skipped)} clip(s) skipped:"
        return "\n".join([head, *(f"  - {s.reason}" for s in self.skipped)])


def check_on_bad_clip(on_bad_clip: str) -> None:
    """Reject an unknown ``on_bad_clip`` value up front (not at the first bad clip)."""
    if on_bad_clip not in ON_BAD_CLIP_CHOICES:
        raise ValueError(
            f"on_bad_clip must be one of {ON_BAD_CLIP_CHOICES}, got {on_bad_clip!r}"
        )


def handle_bad_clip(error: BadClipError, on_bad_clip: str, report: SkipReport | None) -> None:
    """Apply the user's choice: raise (``'stop'``) or warn, record and continue (``'skip'``)."""
    check_on_bad_clip(on_bad_clip)
    if on_bad_clip == "stop":
        raise error
    log.warning("skipping: %s", error)
    if report is not None:
        report.add(error)
