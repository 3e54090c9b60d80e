"""prompts.txt lines that cannot be used: the clip they name is skipped (never trained with
another prompt), lines naming no clip are ignored lines, and the report's counts are true."""

from __future__ import annotations

import pytest

from selva_core.data import BadClipError, SkipReport, scan_dataset
from selva_core.data.synthetic import write_tone_clip


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "dogs"
    d.mkdir()
    for name in ("a", "b", "c", "d", "e"):
        write_tone_clip(d / f"{name}.mp4", duration=1.0)
    return d


def test_every_clip_is_either_trained_with_its_own_prompt_or_counted_as_skipped(folder):
    (folder / "prompts.txt").write_bytes(
        b"a.mp4: a dog barking\n"
        b"b.mp4: a caf\xe9 latin-1 line\n"          # not UTF-8, names b
        b"c.mp4 no colon here\n"                    # no ':', first word names c
        b"d: first prompt\n"
        b"d.mp4: another prompt\n"                  # conflicting repeat of d
        b"e.mp4: a dog growling\n"
        b"e: a dog growling\n"                      # same prompt again: harmless
        b"ghost.mp4: nothing\n"                     # names no clip
        b"just some words\n"                        # no ':' and names no clip
    )
    report = SkipReport()
    clips = scan_dataset(folder, on_bad_clip="skip", report=report)
    trained = {c.name: c.prompt for c in clips}
    assert trained == {"a": "a dog barking", "e": "a dog growling"}
    assert all(c.prompt_source == "prompts.txt" for c in clips)
    skipped = report.lines()
    assert len(report) == 3 == len(skipped)
    for name, needle in (("b", "line 2 'b.mp4: a caf\ufffd latin-1 line' is not valid UTF-8"),
                         ("c", "line 3 'c.mp4 no colon here' has no ':'"),
                         ("d", "line 5 'd.mp4: another prompt' gives the clip 'd' a second, "
                               "different prompt (first given on line 4)")):
        (line,) = [s for s in skipped if s.startswith(str(folder / f"{name}.mp4"))]
        assert "skipped because prompts.txt" in line and needle in line
    assert len(report.ignored) == 2
    assert "no video or .npz named 'ghost'" in report.ignored_lines()[1]
    assert "line 9 'just some words' has no ':'" in report.ignored_lines()[0]
    text = report.format().splitlines()
    assert text[0] == "3 clip(s) skipped:"
    assert text[4] == "2 dataset line(s) ignored (no clip skipped for them):"


def test_stop_raises_at_the_first_unusable_line(folder):
    (folder / "prompts.txt").write_text("a.mp4: fine\nb.mp4\n")
    with pytest.raises(BadClipError, match=r"b.mp4: skipped because prompts.txt line 2 "
                                           r"'b.mp4' has no ':'"):
        scan_dataset(folder, on_bad_clip="stop")


def test_utf16_prompts_file_with_a_byte_order_mark_is_read(folder):
    (folder / "prompts.txt").write_bytes("a.mp4: un café\n".encode("utf-16"))
    clips = scan_dataset(folder, on_bad_clip="stop")
    assert {c.name: c.prompt for c in clips}["a"] == "un café"


def test_prompts_file_that_cannot_be_read_is_one_error(folder, monkeypatch):
    (folder / "prompts.txt").write_text("a.mp4: fine\n")
    from pathlib import Path

    real = Path.read_bytes

    def refuse(self):
        if self.name == "prompts.txt":
            raise PermissionError(13, "Permission denied")
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(BadClipError, match="prompts.txt: cannot be read \\(Permission denied\\)"):
        scan_dataset(folder, on_bad_clip="skip")
