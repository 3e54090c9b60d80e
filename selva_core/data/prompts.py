"""``prompts.txt``: one ``name: prompt`` per line for the clips of a data folder.

Format: UTF-8 text; blank lines and lines whose first non-blank character is ``#`` are
ignored (a ``#`` inside a prompt is kept); the name is everything before the first ``:`` and may
be given with or without its extension (``dog``, ``dog.mp4`` and ``dog.npz`` all name the clip
with stem ``dog``). A line without ``:``, with an empty name or prompt, or repeating a name is
malformed. Priority of a clip's prompt: ``prompts.txt`` > prompt stored in its ``.npz`` > the
folder name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from selva_core.data.errors import BadClipError

PROMPTS_FILENAME = "prompts.txt"
_LINE_FIX = "write it as `name: prompt` (e.g. `dog.mp4: a dog barking`) or start it with #"


@dataclass(frozen=True)
class PromptEntry:
    """One parsed line: the clip key (stem), the prompt, and where it came from."""

    key: str
    name: str
    prompt: str
    line: int


def clip_key(name: str, known_extensions: tuple[str, ...]) -> str:
    """The stem a prompts.txt name refers to: a known extension is dropped."""
    name = name.strip()
    lower = name.lower()
    for ext in known_extensions:
        if lower.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)]
    return name


def parse_prompts(
    path: str | Path, known_extensions: tuple[str, ...]
) -> tuple[dict[str, PromptEntry], list[BadClipError]]:
    """Parse ``path``; returns the valid entries by key and one error per malformed line.

    The caller decides (``on_bad_clip``) whether an error stops the run. A file that cannot
    be decoded as UTF-8 raises BadClipError directly.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise BadClipError(path, f"is not UTF-8 text ({e})", "save it as UTF-8") from None
    entries: dict[str, PromptEntry] = {}
    errors: list[BadClipError] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"line {number} {line[:60]!r}"
        name, sep, prompt = line.partition(":")
        name, prompt = name.strip(), prompt.strip()
        if not sep:
            errors.append(BadClipError(path, f"{where} has no ':'", _LINE_FIX))
            continue
        if not name:
            errors.append(BadClipError(path, f"{where} has no clip name before ':'", _LINE_FIX))
            continue
        if not prompt:
            errors.append(BadClipError(path, f"{where} has an empty prompt", _LINE_FIX))
            continue
        key = clip_key(name, known_extensions)
        if key in entries:
            first = entries[key].line
            errors.append(BadClipError(
                path, f"{where} repeats the clip {key!r} (first given on line {first})",
                "keep one prompt per clip"))
            continue
        entries[key] = PromptEntry(key, name, prompt, number)
    return entries, errors


def folder_prompt(data_dir: Path) -> str:
    """The fallback prompt: the folder name with ``_`` and ``-`` read as spaces."""
    return " ".join(data_dir.resolve().name.replace("_", " ").replace("-", " ").split())
