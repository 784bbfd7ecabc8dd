"""Statistics: the Wilson interval by statsmodels, the ANOVA ICC, the design effect, and the
segmenting rule that decides which frames are near-duplicates."""

import numpy as np
import pytest

from physical_adv.report.segments import SegmentRule, apparent_size, assign_segments, capture_times, continues
from physical_adv.stats import clustered_rate, effective_sample_size, icc_anova, wilson_interval


def test_wilson_interval_accepts_effective_counts():
    # 3.5 of 7 effective trials is a rate of 0.5 on 7 trials: symmetric around 0.5
    lo, hi = wilson_interval(3.5, 7.0)
    assert abs((lo + hi) / 2 - 0.5) < 1e-12 and hi - lo > wilson_interval(5, 10)[1] - wilson_interval(5, 10)[0]


def test_icc_anova_matches_hand_computed_value():
    # clusters {1,1,0} {0,0,0} {1,1,1}: means 2/3, 0, 1; p = 5/9; sizes 3, so n0 = 3
    # MSB = 3·((1/9)² + (5/9)² + (4/9)²) / 2 = 7/9;  MSW = 3·(2/3)(1/3) / (9 − 3) = 1/9
    # ICC = (7/9 − 1/9) / (7/9 + 2·1/9) = 2/3
    y = np.array([1, 1, 0, 0, 0, 0, 1, 1, 1])
    icc = icc_anova(y, np.repeat(np.arange(3), 3))
    assert icc == pytest.approx(2 / 3)
    # n_eff = 9 / (1 + (3 − 1)·2/3) = 27/7
    assert effective_sample_size([3, 3, 3], icc) == pytest.approx(27 / 7)
    # but 3 segments are too few to trust the estimate: the rate uses ρ = 1, each segment once
    assert clustered_rate(y.astype(bool), np.repeat(np.arange(3), 3)).n_eff == pytest.approx(3.0)


def test_icc_is_undefined_without_variance_and_then_each_cluster_counts_once():
    assert icc_anova(np.ones(300), np.arange(300) // 30) is None
    rate = clustered_rate([True] * 300, list(np.arange(300) // 30))
    assert rate.icc is None and rate.n_eff == pytest.approx(10.0)
    assert rate.ci95 == pytest.approx(wilson_interval(10, 10))


def test_independent_outcomes_within_clusters_keep_nearly_the_frame_count():
    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.5
    rate = clustered_rate(list(y), list(np.arange(300) // 30))
    assert rate.n_eff > 200  # ICC ≈ 0: the segments do not shrink independent frames much


def test_effective_sample_size_with_unequal_clusters_is_not_floored_at_the_cluster_count():
    # sizes 1 and 9, ρ = 1: the per-frame rate weights the big cluster 9:1, so it has the
    # variance of n² / Σ m² = 100 / 82 trials, fewer than the 2 clusters
    assert effective_sample_size([1, 9], 1.0) == pytest.approx(100 / 82)
    assert effective_sample_size([1, 9], 0.0) == pytest.approx(10.0)


def test_singleton_clusters_give_the_plain_wilson_interval():
    y = [i % 3 == 0 for i in range(300)]
    rate = clustered_rate(y, list(range(300)))
    assert rate.n_eff == 300 and rate.ci95 == pytest.approx(wilson_interval(100, 300))


def test_no_observation_is_an_undefined_rate():
    rate = clustered_rate([], [])
    assert rate.rate is None and rate.ci95 == (0.0, 1.0) and rate.to_json()["rate"] is None


SQUARE = [[0.0, 0.0], [100.0, 0.0], [100.0, 100.0], [0.0, 100.0]]


def _found(tile, frame, dx=0.0, time=None):
    return {"tile_id": tile, "frame": frame, "time": 100.0 + 0.04 * frame if time is None else time, "found": True,
            "corners_px": [[x + dx, y] for x, y in SQUARE]}


def _missed(tile, frame, time=None):
    return {"tile_id": tile, "frame": frame, "time": 100.0 + 0.04 * frame if time is None else time, "found": False}


def test_apparent_size_is_the_square_root_of_the_area():
    assert apparent_size(SQUARE) == pytest.approx(100.0)


def test_segments_break_on_movement_and_time_gap_but_not_on_a_miss():
    rule = SegmentRule(max_move=0.05, max_gap_s=1.0)  # 5 px for this 100 px tile
    lines = [
        _found("01", 0),                 # segment a
        _found("02", 0, dx=500),         # tile 02 interleaved: its own segment b
        _found("01", 1, dx=3.0),         # moved 3 px ≤ 5 px: still a
        _found("01", 2, dx=3.0 + 6.0),   # moved 6 px from the previous found frame: new c
        _missed("01", 3),                # lost for a frame: a miss says nothing of the pose, c
        _missed("01", 4),                # c
        _found("01", 5, dx=9.0),         # found again where it was at frame 2: c
        _found("01", 6, dx=9.0, time=100.0 + 0.04 * 5 + 1.5),  # 1.5 s later but the same pose: c
        _found("02", 7, dx=500),         # tile 02 unchanged since frame 0, 0.28 s later: b
        _found("01", 8, dx=40.0, time=100.0 + 0.04 * 5 + 1.5),  # moved 31 px: new d
        _missed("01", 9, time=110.0),    # 8 s later, not found (no pose to compare): new e
        _found("01", 10, dx=400.0, time=110.04),  # the first pose seen in e: e
    ]
    a, b, c, d, e = range(5)
    assert assign_segments(lines, rule) == [a, b, a, c, c, c, c, c, b, d, e, e]


def test_a_slow_camera_filming_held_poses_counts_each_pose_once():
    """Capture processing a camera at 0.5 fps: lines 2 s apart, 10 poses held for 30 frames each."""
    lines = [_found("01", i, dx=100.0 * (i // 30), time=100.0 + 2.0 * i) for i in range(300)]
    assert len(set(assign_segments(lines))) == 10


def test_a_slow_drift_stays_one_segment_but_a_jump_does_not():
    drift = [_found("01", i, dx=4.0 * i) for i in range(10)]  # 4 px a frame: 36 px in all
    assert len(set(assign_segments(drift))) == 1
    assert not continues(_found("01", 0), _found("01", 1, dx=20.0))


def test_segment_rule_validates_itself():
    with pytest.raises(ValueError, match="max_move"):
        SegmentRule(max_move=0)


def test_video_frames_are_timed_by_frame_index_not_by_processing_time():
    # a slow model: capture processed these 30 fps frames 2 s apart, but they were filmed 1/30 s apart
    lines = [{**_found("01", i, time=100.0 + 2.0 * i), "source": {"file": "v.mp4", "frame_index": i}} for i in range(5)]
    times = capture_times(lines, {"kind": "video", "fps": 30.0})
    assert times == pytest.approx([i / 30 for i in range(5)])
    assert len(set(assign_segments(lines, times=times))) == 1
    # where only the time can tell (the tile lost in every later frame), the video's own clock keeps
    # one segment and the processing clock would cut one at every 2 s gap
    lost = lines[:1] + [{**_missed("01", i, time=100.0 + 2.0 * i), "source": {"file": "v.mp4", "frame_index": i}}
                        for i in range(1, 5)]
    assert len(set(assign_segments(lost, times=capture_times(lost, {"kind": "video", "fps": 30.0})))) == 1
    assert len(set(assign_segments(lost, times=capture_times(lost, {"kind": "camera"})))) == 5
    assert capture_times(lines, {"kind": "images"}) == [None] * 5  # a folder of photos: no capture time


def test_two_long_segments_count_as_two_trials_not_as_their_frames():
    """Two held poses of 150 frames each at about 50 %: the ANOVA estimate of ρ from two segments
    can come out 0, which would give the plain 300-frame interval; under 5 segments each counts once."""
    successes = [i % 2 == 0 for i in range(150)] + [i % 2 == 1 for i in range(150)]
    rate = clustered_rate(successes, [0] * 150 + [1] * 150)
    assert rate.n_eff == pytest.approx(2.0)
    assert rate.ci95[1] - rate.ci95[0] > 0.5
