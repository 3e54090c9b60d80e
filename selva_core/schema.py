"""Declared fields: one declaration per setting gives its parsing, its error, its docs and --help.

A :class:`Schema` is a list of :class:`Field` s, each with a name, a type, a default, bounds or
choices and a help text. :meth:`Schema.parse` reads a mapping (a JSON spec, adapter metadata,
a config) and collects EVERY bad field into a list of problems, each naming the field, the bad
value and what is allowed; the caller raises its own one error from the list.
:meth:`Schema.markdown_table` renders the docs' table and :meth:`Schema.add_arguments` the
command line (``--help``) from the same declaration, so the docs, ``--help`` and the checks
cannot drift apart.

Two wordings, one per kind of artefact (``style``):

* ``"must_be"`` (specs and flags): ``field 'steps' must be a positive integer, got 0``;
* ``"is_not"`` (file metadata): ``metadata scale='two' is not a positive number``.

Stored forms that are not the value itself (metadata strings holding numbers or JSON) are
read by a field's ``decode``; a value ``decode`` cannot read is reported like any bad value.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

#: ``Field.default`` when the field has to be given.
REQUIRED = object()
_TYPES = ("str", "int", "float", "bool", "list", "dict", "any")
_BLANK = object()


@dataclass(frozen=True)
class Field:
    """One declared setting.

    ``type``: ``str``, ``int``, ``float`` (finite), ``bool``, ``list`` / ``dict`` (a JSON list /
    object) or ``any``; ``nullable``: ``None`` is accepted (and means the default's absence);
    ``low`` / ``high`` (with ``low_open`` / ``high_open``) bound numbers; ``choices`` lists the
    allowed strings; ``check(value)`` says what the type and bounds cannot: True / None when the
    value is allowed, False when it is not (the error then says ``want``), or a text of what is
    allowed that fits this value better; ``want`` replaces the generated description of what
    is allowed; ``shown_default`` replaces the default in docs and help. The CLI part (``flags``,
    ``metavar``, ``group``, ``primary``, ``nargs``) is used by :meth:`Schema.add_arguments`.
    """

    name: str
    type: str = "any"
    default: Any = None
    help: str = ""
    nullable: bool = False
    low: float | None = None
    low_open: bool = False
    high: float | None = None
    high_open: bool = False
    choices: Sequence[str] | None = None
    check: Callable[[Any], str | None] | None = None
    decode: Callable[[Any], Any] | None = None
    want: str | None = None
    shown_default: str | None = None
    flags: tuple[str, ...] = ()
    metavar: str | None = None
    group: str = ""
    primary: bool = False
    nargs: str | None = None

    def __post_init__(self) -> None:
        if self.type not in _TYPES:
            raise ValueError(f"field {self.name}: type {self.type!r} is not one of {_TYPES}")

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    # -- what is allowed ------------------------------------------------------------------------
    def allowed(self) -> str:
        """What the field accepts, in words (the end of every error about it)."""
        if self.want:
            return self.want
        if self.choices is not None:
            return "one of " + ", ".join(map(str, self.choices))
        if self.type in ("int", "float"):
            return _number_words(self.type == "int", self.low, self.low_open, self.high,
                                 self.high_open)
        return {"str": "a string", "bool": "true or false", "list": "a list",
                "dict": "an object", "any": "a value"}[self.type]

    def default_text(self) -> str:
        if self.shown_default is not None:
            return self.shown_default
        if self.required:
            return "required"
        value = self.default
        if value is None:
            return "none"
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (list, tuple)):
            return " ".join(map(str, value)) if value else "[]"
        if isinstance(value, str):
            return value if value else '""'
        return f"{value:g}" if isinstance(value, float) else str(value)

    # -- reading ---------------------------------------------------------------------------------
    def problem(self, value: Any) -> str | None:
        """``None`` when ``value`` (decoded) is allowed, else what is allowed."""
        if value is None:
            return None if self.nullable else self.allowed()
        ok = {
            "str": lambda v: isinstance(v, str),
            "int": is_int,
            "float": is_number,
            "bool": lambda v: isinstance(v, bool),
            "list": lambda v: isinstance(v, list),
            "dict": lambda v: isinstance(v, dict),
            "any": lambda v: True,
        }[self.type](value)
        if ok and self.type in ("int", "float"):
            ok = _within(value, self.low, self.low_open, self.high, self.high_open)
        if ok and self.choices is not None:
            ok = value in self.choices
        if not ok:
            return self.allowed()
        verdict = self.check(value) if self.check is not None else None
        if verdict is None or verdict is True:
            return None
        return self.allowed() if verdict is False else verdict


def is_int(v: Any) -> bool:
    """An integer that is not a bool (JSON's true is not a count)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """A finite int or float that is not a bool."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _within(v: float, low, low_open, high, high_open) -> bool:
    if low is not None and not (v > low if low_open else v >= low):
        return False
    return high is None or (v < high if high_open else v <= high)


def _number_words(integer: bool, low, low_open, high, high_open) -> str:
    noun = "an integer" if integer else "a number"
    if low == 0 and low_open and high is None:
        return "a positive integer" if integer else "a positive number"
    if integer and low == 1 and not low_open and high is None:
        return "a positive integer"
    if low is not None and high is not None:
        return (f"{noun} in {'(' if low_open else '['}{low:g}, {high:g}"
                f"{')' if high_open else ']'}")
    if low is not None:
        return f"{noun} {'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"{noun} {'<' if high_open else '<='} {high:g}"
    return noun if integer else "a finite number"


def cli_number(*, integer: bool = False, low: float | None = None, low_open: bool = False,
               high: float | None = None, high_open: bool = False) -> Callable[[str], Any]:
    """An argparse ``type`` for a command's own number flag: a finite int or float within the
    bounds, refused in a field's words (``must be a positive integer, got 0``)."""
    words = _number_words(integer, low, low_open, high, high_open)

    def read(text: str):
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) \
                or not _within(value, low, low_open, high, high_open):
            raise argparse.ArgumentTypeError(f"must be {words}, got {text}")
        return value

    read.__name__ = "integer" if integer else "number"
    return read


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class Schema:
    """Fields declared once; parsing that lists every bad field; tables and --help from them.

    ``label`` formats a field's name in messages (``"field {name!r}"``, ``"--{name}"``,
    ``"metadata {name}"``); ``style`` is ``"must_be"`` or ``"is_not"`` (module docstring).
    """

    def __init__(self, fields_: Iterable[Field], *, label: str = "field {name!r}",
                 style: str = "must_be") -> None:
        self.fields = tuple(fields_)
        self.by_name = {f.name: f for f in self.fields}
        if len(self.by_name) != len(self.fields):
            raise ValueError("a field is declared twice")
        if style not in ("must_be", "is_not"):
            raise ValueError(f"style {style!r} is not must_be or is_not")
        self.label, self.style = label, style

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.by_name)

    def __getitem__(self, name: str) -> Field:
        return self.by_name[name]

    def default(self, name: str) -> Any:
        value = self.by_name[name].default
        if isinstance(value, dict):
            return dict(value)
        return list(value) if isinstance(value, (list, tuple)) else value

    # -- messages --------------------------------------------------------------------------------
    def name_of(self, name: str) -> str:
        return self.label.format(name=name)

    def bad(self, name: str, value: Any, allowed: str) -> str:
        """The one line for a bad value of field ``name``."""
        who = self.name_of(name)
        if self.style == "is_not":
            return f"{who}={_shown(value)} is not {allowed}"
        if allowed.startswith("one of "):
            return f"{who} is {_shown(value)}; choose {allowed}"
        return f"{who} must be {allowed}, got {_shown(value)}"

    def missing(self, names: Sequence[str]) -> list[str]:
        """The lines for required fields that are absent."""
        if not names:
            return []
        if self.style == "is_not":
            prefix = self.label.format(name="").strip()
            return [f"{prefix + ' ' if prefix else ''}lacks the required fields {list(names)}"]
        return [f"{self.name_of(n)} is required"
                + (f": {self.by_name[n].help}" if self.by_name[n].help else "") for n in names]

    def unknown(self, names: Sequence[str]) -> list[str]:
        known = ", ".join(sorted(self.by_name))
        return [f"{self.name_of(n)} is unknown; known fields: {known}" for n in names]

    # -- parsing ---------------------------------------------------------------------------------
    def parse(self, data: Mapping[str, Any], problems: list[str], *,
              only: Iterable[str] | None = None, allow_unknown: bool = False) -> dict[str, Any]:
        """Every declared field of ``data`` (``only``: those named), checked and decoded; a bad
        or missing one adds its line to ``problems`` and reads as its default. Unknown keys
        are problems too unless ``allow_unknown``."""
        if not allow_unknown:
            problems.extend(self.unknown(sorted(k for k in data if k not in self.by_name)))
        chosen = [self.by_name[n] for n in only] if only is not None else self.fields
        problems.extend(self.missing([f.name for f in chosen
                                      if f.required and f.name not in data]))
        out: dict[str, Any] = {}
        for f in chosen:
            raw = data.get(f.name, _BLANK)
            fallback = None if f.required else self.default(f.name)
            if raw is _BLANK:
                out[f.name] = fallback
                continue
            value = raw
            if f.decode is not None and raw is not None:
                try:
                    value = f.decode(raw)
                except (TypeError, ValueError):
                    problems.append(self.bad(f.name, raw, f.allowed()))
                    out[f.name] = fallback
                    continue
            if value is None and f.required:
                problems.extend(self.missing([f.name]))
                out[f.name] = None
                continue
            allowed = f.problem(value)
            if allowed is not None:
                problems.append(self.bad(f.name, raw, allowed))
                out[f.name] = fallback
            else:
                out[f.name] = value
        return out

    def check_object(self, obj: Any, problems: list[str], *,
                     only: Iterable[str] | None = None) -> None:
        """:meth:`parse` over an object's attributes (a dataclass already built)."""
        names = list(only) if only is not None else list(self.names)
        self.parse({n: getattr(obj, n) for n in names}, problems, only=names)

    # -- documentation ---------------------------------------------------------------------------
    def markdown_table(self, *, heading: str = "field", prefix: str = "") -> str:
        """The docs' table: one row per field (name, default, allowed values, meaning)."""
        rows = [f"| {heading} | default | allowed | meaning |", "|---|---|---|---|"]
        for f in self.fields:
            names = ", ".join(f"`{n}`" for n in [f"{prefix}{f.name}", *(f.flags if prefix else ())])
            cells = (names, _cell(f.default_text()), _cell(f.allowed()),
                     _cell(f.help))
            rows.append("| " + " | ".join(cells) + " |")
        return "\n".join(rows) + "\n"

    def add_arguments(self, parser: argparse.ArgumentParser, *,
                      groups: Mapping[str, str] | None = None, defaults: Any = None) -> None:
        """One option per field: ``--name`` plus ``flags``, help from the declaration; a
        bool with default True gets ``--no-name`` too. ``groups`` titles argument groups by
        ``Field.group``; ``defaults`` (an object) overrides the declared defaults."""
        made = {key: parser.add_argument_group(title) for key, title in (groups or {}).items()}
        for f in self.fields:
            target = made.get(f.group, parser)
            names = [*f.flags, f"--{f.name}"] if f.primary else [f"--{f.name}", *f.flags]
            default = getattr(defaults, f.name) if defaults is not None else self.default(f.name)
            kwargs: dict[str, Any] = {"dest": f.name, "help": f.help, "default": default}
            if f.type == "bool":
                kwargs["action"] = (argparse.BooleanOptionalAction if default is True
                                    else "store_true")
            else:
                kwargs["type"] = {"int": int, "float": float}.get(f.type, str)
                if f.choices is not None:
                    kwargs["choices"] = tuple(f.choices)
                if f.metavar:
                    kwargs["metavar"] = f.metavar
                if f.nargs:
                    kwargs["nargs"] = f.nargs
            target.add_argument(*names, **kwargs)


#: Devices every front end accepts (``cuda:N`` too: :func:`device_problem`).
DEVICE_CHOICES = ("auto", "cpu", "cuda")


def device_problem(value: str) -> str | None:
    """``Field.check`` of a device setting: auto, cpu, cuda or cuda:N."""
    if value in DEVICE_CHOICES or re.fullmatch(r"cuda:\d+", value):
        return None
    return "one of " + ", ".join(DEVICE_CHOICES) + ", cuda:N (a GPU's index)"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# -- dataclasses declared with fields' metadata ----------------------------------------------------
def option(help_text: str, *flags: str, type: str | None = None, **declared: Any
           ) -> dict[str, Any]:
    """Dataclass field metadata that declares the field (``dataclasses.field(metadata=...)``);
    :func:`dataclass_schema` reads it. Keywords are those of :class:`Field`."""
    return {"schema": {"help": help_text, "flags": flags, "type": type, **declared}}


def dataclass_schema(cls: type, **schema_args: Any) -> Schema:
    """The :class:`Schema` of a dataclass whose fields carry :func:`option` metadata; the
    type is read from the annotation when not declared, ``None`` allowed where it says so."""
    if not is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    instance_defaults = cls()
    declared = []
    for f in fields(cls):
        meta = dict(f.metadata["schema"])
        annotation = str(f.type)
        kind = meta.pop("type") or _annotation_type(annotation, f.name)
        meta.setdefault("nullable", "None" in annotation)
        declared.append(Field(name=f.name, type=kind, default=getattr(instance_defaults, f.name),
                              **meta))
    return Schema(declared, **schema_args)


def _annotation_type(annotation: str, name: str) -> str:
    head = re.split(r"[\[ |]", annotation.strip(), maxsplit=1)[0]
    kind = {"str": "str", "int": "int", "float": "float", "bool": "bool", "list": "list",
            "dict": "dict"}.get(head)
    if kind is None:
        raise TypeError(f"field {name}: no schema type for annotation {annotation!r}")
    return kind


# -- docs tables generated from declarations -------------------------------------------------------
_BEGIN = "<!-- generated: {key} (python scripts/schema_tables.py) -->"
_END = "<!-- /generated: {key} -->"


def replace_generated(text: str, key: str, table: str) -> str:
    """``text`` with the block between the ``key`` markers replaced by ``table``; ValueError
    naming the key when the markers are missing."""
    begin, end = _BEGIN.format(key=key), _END.format(key=key)
    i, j = text.find(begin), text.find(end)
    if i < 0 or j < i:
        raise ValueError(f"the markers of the generated table {key!r} are missing: add the "
                         f"lines {begin!r} and {end!r} where the table goes")
    return text[: i + len(begin)] + "\n" + table + text[j:]


def generated_block(text: str, key: str) -> str | None:
    """The table between ``key``'s markers (None when they are missing)."""
    begin, end = _BEGIN.format(key=key), _END.format(key=key)
    i, j = text.find(begin), text.find(end)
    if i < 0 or j < i:
        return None
    return text[i + len(begin) + 1: j]


def markers(key: str) -> tuple[str, str]:
    return _BEGIN.format(key=key), _END.format(key=key)


__all__ = ["DEVICE_CHOICES", "Field", "REQUIRED", "Schema", "cli_number", "dataclass_schema",
           "device_problem", "generated_block", "is_int", "is_number", "markers", "option",
           "replace_generated"]
