"""The Comfy Registry metadata in pyproject.toml is complete and points at files that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from PIL import Image

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_tool_comfy_has_publisher_name_icon_and_comfyui_requirement():
    comfy = _pyproject()["tool"]["comfy"]
    assert re.fullmatch(r"[a-z][a-z0-9-]*", comfy["PublisherId"])
    assert comfy["DisplayName"].strip()
    spec = SpecifierSet(comfy["requires-comfyui"])
    assert "0.3.64" in spec and "0.8.0" in spec and "0.3.47" not in spec


def test_icon_url_is_a_square_image_of_this_repository_at_most_400_px():
    data = _pyproject()
    repo = data["project"]["urls"]["Repository"].removeprefix("https://github.com/")
    prefix = f"https://raw.githubusercontent.com/{repo}/main/"
    icon = data["tool"]["comfy"]["Icon"]
    assert icon.startswith(prefix)
    with Image.open(ROOT / icon.removeprefix(prefix)) as image:
        assert image.width == image.height <= 400



def test_project_name_follows_the_registry_rules():
    name = _pyproject()["project"]["name"]
    assert re.fullmatch(r"[A-Za-z_.-][A-Za-z0-9_.-]{0,99}", name)
    assert "comfyui" not in name.lower()
