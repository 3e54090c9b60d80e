"""Window planning: first/all windows, the kept last partial window, padding and drop policy."""

from __future__ import annotations

import pytest

from selva_core.data.windows import plan_windows, window_hop


def spans(windows):
    return [(w.index, round(w.start, 4), round(w.content, 4), w.full) for w in windows]


def test_first_policy_gives_one_window_from_the_start():
    assert spans(plan_windows(30.0, 8.0, "first")) == [(0, 0.0, 8.0, True)]


def test_all_policy_cuts_back_to_back_windows_and_keeps_a_long_enough_tail():
    # 21 s: 0-8, 8-16, then 5 s left (>= half of 8 s) -> kept as a padded window
    assert spans(plan_windows(21.0, 8.0, "all")) == [
        (0, 0.0, 8.0, True), (1, 8.0, 8.0, True), (2, 16.0, 5.0, False)]


def test_all_policy_drops_a_tail_shorter_than_half_a_window():
    assert spans(plan_windows(19.0, 8.0, "all")) == [(0, 0.0, 8.0, True), (1, 8.0, 8.0, True)]


def test_exact_multiple_has_no_empty_extra_window():
    assert len(plan_windows(16.0, 8.0, "all")) == 2
    assert len(plan_windows(16.01, 8.0, "all")) == 2  # 0.01 s tail is not a window


def test_a_window_short_by_less_than_one_frame_counts_as_full():
    assert plan_windows(7.99, 8.0, "first")[0].full
    assert not plan_windows(7.9, 8.0, "first")[0].full


def test_short_clip_is_one_padded_window_or_nothing_with_drop():
    assert spans(plan_windows(3.0, 8.0, "all")) == [(0, 0.0, 3.0, False)]
    assert plan_windows(3.0, 8.0, "all", pad_policy="drop") == []
    assert spans(plan_windows(21.0, 8.0, "all", pad_policy="drop")) == [
        (0, 0.0, 8.0, True), (1, 8.0, 8.0, True)]


def test_clip_shorter_than_one_sync_window_gives_no_window():
    assert plan_windows(0.5, 8.0, "all") == []
    assert len(plan_windows(0.64, 8.0, "all")) == 1


def test_window_starts_snap_to_the_sync_stride_grid():
    assert window_hop(8.0) == 8.0  # 200 frames = 25 strides of 8
    assert window_hop(5.0) == pytest.approx(4.8)  # 125 frames -> 120
    starts = [w.start for w in plan_windows(20.0, 5.0, "all")]
    assert starts == pytest.approx([0.0, 4.8, 9.6, 14.4])
    assert all(w.start_frame % 8 == 0 for w in plan_windows(20.0, 5.0, "all"))


@pytest.mark.parametrize("kwargs, needle", [
    ({"window_policy": "middle"}, "window_policy"),
    ({"pad_policy": "zeros"}, "pad_policy"),
    ({"duration": 0.5}, "shorter than one sync window"),
])
def test_bad_policy_values_are_rejected(kwargs, needle):
    args = {"length": 10.0, "duration": 8.0, **kwargs}
    with pytest.raises(ValueError, match=needle):
        plan_windows(**args)
