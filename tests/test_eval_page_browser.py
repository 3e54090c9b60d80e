"""The listening page in a real browser: every player gets its metadata, every video a
picture, nothing logs an error, and the grid fits a phone.

Drives headless Chromium (Debian's ``chromium`` package or Playwright's own) through
Playwright; skipped, with the reason, where either is missing. ``SELVA_PAGE_SHOTS=DIR`` keeps
screenshots of the page at both widths in DIR for a person to look at.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from selva_core.evaluation.runner import run_evaluation
from selva_core.evaluation.spec import load_spec
from tests.eval_data import make_adapter, make_clips, spec_text, tiny_pipeline

sync_api = pytest.importorskip("playwright.sync_api",
                               reason="playwright is not installed (pip install playwright)")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WIDTHS = {"laptop": (1366, 800), "phone": (390, 844)}

# What each media element reports once the browser has read the file's header.
_MEDIA_STATE = """() => Array.from(document.querySelectorAll('video, audio')).map(m => ({
  tag: m.tagName, src: m.getAttribute('src'), ready: m.readyState,
  duration: m.duration, width: m.videoWidth || 0, height: m.videoHeight || 0,
  error: m.error ? m.error.code : null}))"""
_ALL_LOADED = """() => Array.from(document.querySelectorAll('video, audio'))
  .every(m => m.readyState >= 1 || m.error)"""


@pytest.fixture(scope="module")
def page_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("page")
    clips = make_clips(root / "clips")  # the synthetic clips are MPEG-4 Part 2, as the demo's
    pipe = tiny_pipeline()
    adapter = make_adapter(root / "a.safetensors", pipe)
    spec = load_spec(spec_text(clips, root / "out", [{"id": "a", "path": str(adapter)}],
                               strengths=[0.5, 1.0], seeds=[3, 4], batch_size=2))
    result = run_evaluation(spec, pipeline=pipe, progress=False)
    assert result.completed
    return result.output_dir


@pytest.fixture(scope="module")
def browser():
    try:
        with sync_api.sync_playwright() as pw:
            try:
                chrome = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
            except Exception as exc:  # no browser binary on this machine
                pytest.skip(f"headless Chromium cannot start ({str(exc).splitlines()[0]}); "
                            "install Debian's chromium or run `playwright install chromium`")
            yield chrome
            chrome.close()
    except sync_api.Error as exc:
        pytest.skip(f"playwright cannot start: {exc}")


@pytest.mark.parametrize("width", sorted(WIDTHS))
def test_every_player_loads_and_every_video_has_a_picture(page_dir, browser, width):
    w, h = WIDTHS[width]
    page = browser.new_page(viewport={"width": w, "height": h})
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto((page_dir / "index.html").as_uri())
    page.wait_for_function(_ALL_LOADED, timeout=30_000)
    media = page.evaluate(_MEDIA_STATE)
    shots = os.environ.get("SELVA_PAGE_SHOTS")
    if shots:
        Path(shots).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(shots) / f"index_{width}.png"), full_page=True)
    videos = [m for m in media if m["tag"] == "VIDEO"]
    assert videos and len(media) > len(videos)
    broken = [m for m in media if m["error"] is not None or m["ready"] < 1
              or not m["duration"] > 0]
    assert not broken, f"media without metadata: {broken[:3]}"
    blank = [m["src"] for m in videos if m["width"] == 0 or m["height"] == 0]
    assert not blank, f"videos without a picture: {blank[:3]}"
    assert not errors, errors
    # nothing is wider than the window: no cut columns, no sideways scrolling of the page
    assert page.evaluate("document.documentElement.scrollWidth") <= w
    if width == "phone":
        grid = page.evaluate("() => Math.max(...Array.from(document.querySelectorAll("
                             "'table.grid')).map(t => t.getBoundingClientRect().width))")
        assert grid <= w
    page.close()


def test_the_page_says_which_column_is_closest(page_dir, browser):
    page = browser.new_page(viewport={"width": 1366, "height": 800})
    page.goto((page_dir / "index.html").as_uri())
    verdict = page.inner_text(".verdict")
    assert "Closest to the reference by log-spectral distance" in verdict
    assert "listening decides" in verdict
    guide = page.inner_text("details")
    assert "lower is better" in guide
    assert "DeSync" in guide and "random" in guide  # the tiny Synchformer: unavailable
    page.close()
