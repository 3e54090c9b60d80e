"""MP4s for web pages: pictures browsers cannot play are re-encoded; playable ones copied."""

from __future__ import annotations

import numpy as np

from selva_core.data.synthetic import write_video
from selva_core.media import (
    BROWSER_CODECS,
    browser_video,
    mux_audio,
    picture_codec,
    write_poster,
)

SR = 16000


def _clip(path, seconds=1.0):
    frames = np.zeros((int(seconds * 25), 48, 64, 3), np.uint8)
    frames[:, 10:30, 20:40] = 200
    write_video(path, frames, fps=25)  # MPEG-4 Part 2, as the demo's clips
    return path


def test_a_picture_browsers_cannot_play_is_re_encoded_for_the_page(tmp_path):
    src = _clip(tmp_path / "clip.mp4")
    assert picture_codec(src) not in BROWSER_CODECS
    wave = np.zeros(SR, np.float32)
    mux_audio(src, wave, SR, tmp_path / "plain.mp4", trim=False)
    mux_audio(src, wave, SR, tmp_path / "page.mp4", trim=False, browser=True)
    assert picture_codec(tmp_path / "plain.mp4") == picture_codec(src)  # copied as it was
    assert picture_codec(tmp_path / "page.mp4") in BROWSER_CODECS


def test_a_playable_picture_is_copied_even_for_the_page(tmp_path):
    h264 = tmp_path / "h264.mp4"
    mux_audio(_clip(tmp_path / "clip.mp4"), np.zeros(SR, np.float32), SR, h264, trim=False,
              browser=True)
    out = browser_video(h264, tmp_path / "copy.mp4")
    assert out.read_bytes() == h264.read_bytes()


def test_the_page_copy_of_a_clip_plays_and_a_poster_is_a_small_jpeg(tmp_path):
    src = _clip(tmp_path / "clip.avi")
    out = browser_video(src, tmp_path / "page.mp4")
    assert picture_codec(out) in BROWSER_CODECS
    poster = write_poster(src, tmp_path / "poster.jpg", width=32)
    data = poster.read_bytes()
    assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"
