"""Phone videos with a display rotation decode upright, as players show them."""

from __future__ import annotations

import av
import numpy as np
import pytest

from selva_core.data.video import decode_frames


def marked() -> np.ndarray:
    """A 48x32 (W x H) frame with a white top-left block and a grey top-right one."""
    image = np.zeros((32, 48, 3), np.uint8)
    image[:8, :8] = 255
    image[:8, -8:] = 128
    return image


def write_rotated(path, degrees: int, hflip: bool = False) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264rgb", rate=25, options={"qp": "0"})
        stream.width, stream.height, stream.pix_fmt = 48, 32, "rgb24"
        stream.set_display_rotation(degrees, hflip=hflip)
        for _ in range(3):
            for packet in stream.encode(av.VideoFrame.from_ndarray(marked(), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


@pytest.mark.parametrize(("degrees", "hflip"), [(0, False), (90, False), (-90, False),
                                                (180, False), (90, True), (0, True)])
def test_frames_come_out_as_the_display_matrix_shows_them(tmp_path, degrees, hflip):
    # PyAV's display rotation: counter-clockwise degrees, then the mirror
    path = tmp_path / "phone.mp4"
    write_rotated(path, degrees, hflip)
    frames = decode_frames(path, num_frames=2)
    expected = np.rot90(marked(), degrees // 90)
    expected = expected[:, ::-1] if hflip else expected
    assert frames.shape == (2, 3, *expected.shape[:2])
    assert np.array_equal(frames[0].permute(1, 2, 0).numpy(), expected)


def test_a_portrait_phone_clip_is_taller_than_wide(tmp_path):
    path = tmp_path / "portrait.mp4"
    write_rotated(path, -90)  # what phones write for a portrait recording
    frames = decode_frames(path, num_frames=1)
    assert frames.shape[2] > frames.shape[3]
    # the top-left marker of the stored picture is now at the top right (turned clockwise)
    assert frames[0, 0, :8, -8:].float().mean() > 250
