"""Errors and the skipped-clip report of the dataset side of LoRA training.

Every problem with one clip (unreadable video, silent audio, unusable ``prompts.txt`` line
for it, ...) goes through :func:`handle_bad_clip`, which applies the user's ``on_bad_clip``
choice in one place: ``'stop'`` raises :class:`BadClipError`, ``'skip'`` logs one warning line
and records the clip with its reason in a :class:`SkipReport` the trainer can print at the
end. A dataset line that concerns no clip (a ``prompts.txt`` line naming no clip of the
folder) goes through :func:`handle_bad_line`: the same choice, but under ``'skip'`` it is
recorded as an ignored line, so the report's count of skipped clips stays true.
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
    """Everything skipped while scanning and extracting, in order; printable by the trainer.

    ``len()`` and iteration cover the skipped clips only; ``ignored`` holds the dataset lines
    left out that concern no clip (they are not counted as skipped clips).
    """

    skipped: list[SkippedClip] = field(default_factory=list)
    ignored: list[SkippedClip] = field(default_factory=list)

    def add(self, error: BadClipError) -> None:
        self.skipped.append(SkippedClip(error.path, str(error)))

    def add_ignored(self, error: BadClipError) -> None:
        self.ignored.append(SkippedClip(error.path, str(error)))

    def __len__(self) -> int:
        return len(self.skipped)

    def __iter__(self):
        return iter(self.skipped)

    def lines(self) -> list[str]:
        return [s.reason for s in self.skipped]

    def ignored_lines(self) -> list[str]:
        return [s.reason for s in self.ignored]

    def format(self) -> str:
        """A short human-readable block: ``N clip(s) skipped:`` then one line each, and the
        ignored dataset lines, if any, the same way."""
        if not self.skipped and not self.ignored:
            return "no clips skipped"
        parts = [f"{len(self.skipped)} clip(s) skipped" + (":" if self.skipped else "")]
        parts += [f"  - {s.reason}" for s in self.skipped]
        if self.ignored:
            parts.append(f"{len(self.ignored)} dataset line(s) ignored (no clip skipped for "
                         "them):")
            parts += [f"  - {s.reason}" for s in self.ignored]
        return "\n".join(parts)


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


def handle_bad_line(error: BadClipError, on_bad_clip: str, report: SkipReport | None) -> None:
    """A dataset line that concerns no clip: raise (``'stop'``) or warn, record as ignored
    (not as a skipped clip) and continue (``'skip'``)."""
    check_on_bad_clip(on_bad_clip)
    if on_bad_clip == "stop":
        raise error
    log.warning("ignoring: %s", error)
    if report is not None:
        report.add_ignored(error)
