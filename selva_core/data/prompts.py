"""``prompts.txt``: one ``name: prompt`` per line for the clips of a data folder.

Format: UTF-8 text (a UTF-16 file with a byte-order mark is read too); blank lines and lines
whose first non-blank character is ``#`` are ignored (a ``#`` inside a prompt is kept); the
name is everything before the first ``:`` and may be given with or without its extension
(``dog``, ``dog.mp4`` and ``dog.npz`` all name the clip with stem ``dog``). Priority of a
clip's prompt: ``prompts.txt`` > prompt stored in its ``.npz`` > the folder name.

A line that cannot be used -- not valid UTF-8, no ``:``, an empty name or prompt, a second
*different* prompt for a clip (repeating the same prompt is harmless) -- never lets the clip
it was meant for train silently with another prompt: when the line can be tied to a clip
(its name, or for a line without ``:`` its first word, names one), that clip is the bad clip
(skipped or stopping the run per ``on_bad_clip``); a line that names no clip of the folder is
reported as an ignored line, not as a skipped clip.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from pathlib import Path

from selva_core.data.errors import BadClipError

PROMPTS_FILENAME = "prompts.txt"
_LINE_FIX = "write it as `name: prompt` (e.g. `dog.mp4: a dog barking`) or start it with #"
_UTF8_FIX = f"save {PROMPTS_FILENAME} as UTF-8 text"


@dataclass(frozen=True)
class PromptEntry:
    """One parsed line: the clip key (stem), the prompt, and where it came from."""

    key: str
    name: str
    prompt: str
    line: int


class PromptLineError(BadClipError):
    """A ``prompts.txt`` line that cannot be used; ``key`` is the clip it names (None when it
    names none that could be recognised) and ``line`` its 1-based number."""

    def __init__(self, path: Path, line: int, key: str | None, problem: str, fix: str):
        self.line = line
        self.key = key
        super().__init__(path, problem, fix)


def clip_key(name: str, known_extensions: tuple[str, ...]) -> str:
    """The stem a prompts.txt name refers to: a known extension is dropped."""
    name = name.strip()
    lower = name.lower()
    for ext in known_extensions:
        if lower.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)]
    return name


def _read_lines(path: Path) -> list[str | bytes]:
    """The file's lines, decoded; a line that is not valid UTF-8 stays ``bytes``."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BadClipError(path, f"cannot be read ({getattr(e, 'strerror', None) or e})",
                           "check the file and its permissions") from None
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16").splitlines()
        except UnicodeDecodeError as e:
            raise BadClipError(path, f"is not valid UTF-16 text ({e})", _UTF8_FIX) from None
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    lines: list[str | bytes] = []
    for raw in data.splitlines():
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            lines.append(raw)
    return lines


def parse_prompts(
    path: str | Path,
    known_extensions: tuple[str, ...],
    clip_keys: set[str] | frozenset[str] = frozenset(),
) -> tuple[dict[str, PromptEntry], list[PromptLineError]]:
    """Parse ``path``; returns the usable entries by key and one error per unusable line.

    ``clip_keys`` (the stems of the folder's clips) lets a line without ``:`` be tied to the
    clip its first word names. The caller decides (``on_bad_clip``) what an error does; a
    file that cannot be read at all raises BadClipError directly. A clip named by an
    unusable line has no entry, even if another line gives it a prompt.
    """
    path = Path(path)
    entries: dict[str, PromptEntry] = {}
    errors: list[PromptLineError] = []
    for number, raw in enumerate(_read_lines(path), start=1):
        if isinstance(raw, bytes):
            name = raw.partition(b":")[0].decode("utf-8", errors="replace").strip()
            key = clip_key(name, known_extensions) if "\ufffd" not in name and name else None
            shown = raw.decode("utf-8", errors="replace").strip()[:60]
            errors.append(PromptLineError(
                path, number, key, f"line {number} {shown!r} is not valid UTF-8 text",
                _UTF8_FIX))
            continue
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"line {number} {line[:60]!r}"
        name, sep, prompt = line.partition(":")
        name, prompt = name.strip(), prompt.strip()
        if not sep:
            first = clip_key(line.split()[0], known_extensions)
            key = first if first in clip_keys else None
            errors.append(PromptLineError(path, number, key, f"{where} has no ':'", _LINE_FIX))
            continue
        if not name:
            errors.append(PromptLineError(path, number, None,
                                          f"{where} has no clip name before ':'", _LINE_FIX))
            continue
        key = clip_key(name, known_extensions)
        if not prompt:
            errors.append(PromptLineError(path, number, key, f"{where} has an empty prompt",
                                          _LINE_FIX))
            continue
        if key in entries:
            first = entries[key]
            if first.prompt != prompt:
                errors.append(PromptLineError(
                    path, number, key, f"{where} gives the clip {key!r} a second, different "
                    f"prompt (first given on line {first.line})", "keep one prompt per clip"))
            continue
        entries[key] = PromptEntry(key, name, prompt, number)
    for error in errors:
        if error.key is not None:
            entries.pop(error.key, None)
    return entries, errors


def folder_prompt(data_dir: Path) -> str:
    """The fallback prompt: the folder name with ``_`` and ``-`` read as spaces."""
    return " ".join(data_dir.resolve().name.replace("_", " ").replace("-", " ").split())
