"""The schema helper: fields declared once give the checks (every bad field in one list), the
command line and the docs' tables; the tables in docs/ are those the declarations give."""

from __future__ import annotations

import argparse
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from selva_core.schema import (
    REQUIRED,
    Field,
    Schema,
    cli_number,
    dataclass_schema,
    device_problem,
    generated_block,
    markers,
    option,
    replace_generated,
)

ROOT = Path(__file__).resolve().parents[1]

SPEC = Schema([
    Field("steps", "int", 25, low=1, help="Euler steps"),
    Field("cfg", "float", 4.5, low=0, help="guidance | strength"),
    Field("mode", "str", "a", choices=("a", "b")),
    Field("path", "str", REQUIRED, help="where it is"),
    Field("flag", "bool", True),
    Field("seed", "int", None, nullable=True),
])


def test_every_bad_field_is_one_line_naming_it_its_value_and_what_is_allowed():
    problems: list[str] = []
    values = SPEC.parse({"steps": 0, "cfg": float("nan"), "mode": "c", "flag": "yes",
                         "colour": 1}, problems)
    assert problems == [
        "field 'colour' is unknown; known fields: cfg, flag, mode, path, seed, steps",
        "field 'path' is required: where it is",
        "field 'steps' must be a positive integer, got 0",
        "field 'cfg' must be a number >= 0, got nan",
        "field 'mode' is 'c'; choose one of a, b",
        "field 'flag' must be true or false, got 'yes'",
    ]
    # bad fields read as their defaults, so later checks see usable values
    assert values == {"steps": 25, "cfg": 4.5, "mode": "a", "path": None, "flag": True,
                      "seed": None}


def test_booleans_are_not_integers_and_none_only_where_declared():
    problems: list[str] = []
    SPEC.parse({"path": "p", "steps": True, "seed": None, "mode": None}, problems)
    assert problems == ["field 'steps' must be a positive integer, got True",
                        "field 'mode' is None; choose one of a, b"]


def test_stored_forms_are_decoded_and_an_unreadable_one_is_reported_as_stored():
    meta = Schema([Field("scale", "float", REQUIRED, decode=float, low=0, low_open=True),
                   Field("user", "dict", {}, decode=json.loads, want="a JSON object"),
                   Field("layers", "list", REQUIRED, decode=json.loads)],
                  label="metadata {name}", style="is_not")
    problems: list[str] = []
    values = meta.parse({"scale": "0.5", "user": "[1]"}, problems)
    assert values["scale"] == 0.5
    assert problems == ["metadata lacks the required fields ['layers']",
                        "metadata user='[1]' is not a JSON object"]
    problems.clear()
    meta.parse({"scale": "two", "layers": "[", "user": "{}"}, problems)
    assert problems == ["metadata scale='two' is not a positive number",
                        "metadata layers='[' is not a list"]


def test_a_check_adds_what_the_type_and_bounds_cannot_say():
    schema = Schema([Field("device", "str", "auto", check=device_problem)],
                    label="--{name}")
    problems: list[str] = []
    assert schema.parse({"device": "cuda:1"}, problems) == {"device": "cuda:1"}
    schema.parse({"device": "tpu"}, problems)
    assert problems == ["--device is 'tpu'; choose one of auto, cpu, cuda, cuda:N (a GPU's "
                        "index)"]


def test_the_command_line_comes_from_the_declaration():
    parser = argparse.ArgumentParser()
    SPEC.add_arguments(parser)
    ns = parser.parse_args(["--steps", "3", "--mode", "b", "--no-flag", "--path", "x"])
    assert (ns.steps, ns.mode, ns.flag, ns.path, ns.cfg) == (3, "b", False, "x", 4.5)
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "c"])


@dataclass
class _Config:
    rank: int = field(default=4, metadata=option("rank", "--r", low=1))
    alpha: float | None = field(default=None, metadata=option("alpha", low=0, low_open=True))
    names: list[str] = field(default_factory=lambda: ["a"], metadata=option("names", nargs="+"))


def test_a_dataclass_declares_its_fields_in_their_metadata():
    schema = dataclass_schema(_Config, label="--{name}")
    assert [(f.name, f.type, f.nullable) for f in schema.fields] == [
        ("rank", "int", False), ("alpha", "float", True), ("names", "list", False)]
    problems: list[str] = []
    schema.check_object(_Config(rank=0, alpha=-1.0), problems)
    assert problems == ["--rank must be a positive integer, got 0",
                        "--alpha must be a positive number, got -1.0"]
    parser = argparse.ArgumentParser()
    schema.add_arguments(parser)
    assert parser.parse_args(["--r", "8", "--names", "x", "y"]).names == ["x", "y"]


def test_the_markdown_table_has_one_row_per_field_and_escapes_pipes():
    table = SPEC.markdown_table()
    rows = table.splitlines()
    assert rows[0] == "| field | default | allowed | meaning |" and len(rows) == 2 + 6
    assert "| `cfg` | 4.5 | a number >= 0 | guidance \\| strength |" in rows
    assert "| `path` | required | a string | where it is |" in rows


def test_a_generated_block_is_replaced_between_its_markers_only():
    begin, end = markers("t")
    text = f"intro\n{begin}\nold\n{end}\noutro\n"
    new = replace_generated(text, "t", "| new |\n")
    assert new == f"intro\n{begin}\n| new |\n{end}\noutro\n"
    assert generated_block(new, "t") == "| new |\n"
    with pytest.raises(ValueError, match="markers of the generated table 'u' are missing"):
        replace_generated(text, "u", "x")


def _tables_script():
    spec = importlib.util.spec_from_file_location("schema_tables",
                                                  ROOT / "scripts" / "schema_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_docs_tables_are_those_the_declarations_give():
    stale = _tables_script().stale_tables()
    assert not stale, f"run python scripts/schema_tables.py: {stale}"


def test_every_declared_spec_has_a_docs_table():
    keys = set(_tables_script().TABLES)
    assert keys == {"eval-spec", "sweep-file", "train-flags", "adapter-metadata", "peft-config"}


@pytest.mark.parametrize("kwargs, good, bad, words", [
    ({"integer": True, "low": 1}, ("3", 3), ["0", "2.5", "x"], "must be a positive integer"),
    ({}, ("-1.5", -1.5), ["nan", "inf", "x"], "must be a finite number"),
    ({"low": 0, "low_open": True, "high": 1}, ("1", 1.0), ["0", "1.01"],
     "must be a number in (0, 1]"),
])
def test_a_commands_number_flag_reads_in_bounds_values_and_refuses_others_in_a_fields_words(
        kwargs, good, bad, words):
    read = cli_number(**kwargs)
    assert read(good[0]) == good[1] and type(read(good[0])) is type(good[1])
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError) as info:
            read(text)
        assert str(info.value) == f"{words}, got {text}"
