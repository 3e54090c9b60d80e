"""The library and the nodes stay readable: no file over 700 lines, no function of 100 lines
or more (a longer one is split where its jobs part, not at an arbitrary line)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("selva_core", "nodes")
MAX_FILE_LINES = 700
MAX_FUNCTION_LINES = 99


def _sources():
    for package in PACKAGES:
        yield from sorted((ROOT / package).rglob("*.py"))


def test_no_library_or_node_file_is_over_700_lines():
    long = {str(p.relative_to(ROOT)): n for p in _sources()
            if (n := p.read_text(encoding="utf-8").count("\n")) > MAX_FILE_LINES}
    assert not long, f"split these by job: {long}"


def test_no_library_or_node_function_is_100_lines_or_more():
    long = {}
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"] = lines
    assert not long, f"split these where their jobs part: {long}"
