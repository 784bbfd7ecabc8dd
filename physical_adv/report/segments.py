"""Segments: the clusters of near-duplicate observations that the report's intervals respect.

Consecutive video frames of one pose see one tile almost identically, so their outcomes are
not independent trials. Within one capture session and for one tile, a *segment* is a run of
consecutive log lines that continue each other: a new segment starts when the tile is found
with its corners moved by more than a fraction of its apparent size since its previous found
frame (however long ago: a held pose is one pose), when more than a gap in time passed and
the pose cannot be compared (a miss, or no found frame yet in the segment), or when the
session changes; frames in which the tile was not found stay in the current segment. Each
photo of a folder is its own segment unless it repeats the previous one's pose.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SegmentRule:
    """When two consecutive observations of a tile belong to one segment.

    Erring towards long segments is the safe side: the ICC estimated over segments discounts
    a segment whose frames vary independently, but nothing can repair segments cut too short.

    Args:
        max_move: the largest corner displacement, as a fraction of the tile's apparent size
            (square root of its area in the frame), that still continues a segment.
        max_gap_s: the largest time between two lines that still continues a segment.
    """

    max_move: float = 0.05
    max_gap_s: float = 1.0

    def __post_init__(self):
        if not self.max_move > 0:
            raise ValueError(f"max_move must be > 0, got {self.max_move}")
        if not self.max_gap_s > 0:
            raise ValueError(f"max_gap_s must be > 0, got {self.max_gap_s}")


def apparent_size(corners) -> float:
    """The square root of the area of the quadrilateral ``corners`` ``(4, 2)`` in pixels."""
    c = np.asarray(corners, np.float64)
    x, y = c[:, 0], c[:, 1]
    return float(np.sqrt(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2))


def capture_times(lines: list[dict], source: dict | None) -> list[float | None]:
    """When each line's frame was taken, in seconds, for the time-gap rule.

    A camera's lines carry the wall-clock ``time`` of the frame. A video's frames are timed by
    their index and the video's frame rate, not by when capture processed them (a slow model
    would otherwise cut every frame into its own segment). Photos from a folder have no
    capture time (``None``): only their poses tell repeats apart.

    Args:
        lines: one session's log lines.
        source: the session's ``source`` record (``kind``, and ``fps`` for a video).
    """
    source = source if isinstance(source, dict) else {}
    kind = source.get("kind")
    if kind == "images":
        return [None] * len(lines)
    fps = source.get("fps")
    if kind == "video" and _number(fps) and fps > 0:
        return [_frame_index(l) / fps for l in lines]
    return [l.get("time") if _number(l.get("time")) else None for l in lines]


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _frame_index(line: dict) -> float:
    """The frame's index in its video (the log's ``source.frame_index``, else its ``frame``)."""
    ref = line.get("source")
    index = ref.get("frame_index") if isinstance(ref, dict) else None
    return index if _number(index) else line["frame"]


def continues(last_found: dict | None, line: dict, rule: SegmentRule = SegmentRule(), dt: float | None = None) -> bool:
    """Whether log line ``line`` continues the current segment of its tile.

    A frame in which the tile was not found stays in the segment: a miss (a blurred frame, a
    marker flickering out) says nothing about the pose, and cutting a held pose at every miss
    would split near-duplicates into separate clusters and make intervals too narrow. It also
    keeps the clusters from being defined by the detection outcome they are used to count.

    Args:
        last_found: the segment's latest found line, or ``None`` while it holds only misses.
        line: this line, of the same tile and session.
        rule: the thresholds.
        dt: seconds since the tile's previous line was taken, or ``None`` when unknown (then
            no time-gap rule).

    The pose decides first: a found line whose corners stayed within ``rule.max_move`` of the
    segment's latest found line continues it *whatever the time between them* (a camera
    processed at under 1 fps, or a video without a frame rate, still films one held pose);
    the time gap only decides where the pose cannot be compared (a miss, no earlier found
    line in the segment).

    Returns:
        ``False`` when the tile was found and its corners moved by more than ``rule.max_move``
        of its apparent size since ``last_found`` (or either line lacks ``corners_px``, as lines
        not written by ``capture`` may), or, where the pose cannot be compared, when more than
        ``rule.max_gap_s`` passed.
    """
    if line["found"] and last_found is not None:
        a, b = last_found.get("corners_px"), line.get("corners_px")
        if a is None or b is None:
            return False
        move = float(np.linalg.norm(np.asarray(b, np.float64) - np.asarray(a, np.float64), axis=1).max())
        return move <= rule.max_move * apparent_size(a)
    return dt is None or abs(dt) <= rule.max_gap_s


def assign_segments(lines: list[dict], rule: SegmentRule = SegmentRule(), times: list[float | None] | None = None) -> list[int]:
    """Number the segments of one session's log.

    Args:
        lines: one session's log lines in the order they were written (any mix of tiles).
        rule: when a line continues its tile's current segment (:func:`continues`).
        times: when each line's frame was taken (:func:`capture_times`); by default each
            line's ``time``.

    Returns:
        One segment number per line, unique within the session across tiles.
    """
    times = [l.get("time") for l in lines] if times is None else times
    current: dict[str, tuple[int, float | None, dict | None]] = {}  # tile → (segment, last time, last found line)
    out, count = [], 0
    for line, t in zip(lines, times):
        state = current.get(line["tile_id"])
        dt = None if state is None or state[1] is None or t is None else t - state[1]
        if state is not None and continues(state[2], line, rule, dt):
            seg, last_found = state[0], state[2]
        else:
            seg, last_found, count = count, None, count + 1
        current[line["tile_id"]] = (seg, t, line if line["found"] else last_found)
        out.append(seg)
    return out
