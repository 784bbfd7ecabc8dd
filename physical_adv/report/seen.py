"""Survival against what the camera saw: apparent size, viewing angle and distance (``by_seen``).

Eykholt et al.'s RP2 (2018) and Kurakin et al. (2016) ask at what distance and angle a printed
attack stops working. Capture logs, on each line where it located the tile, the tile's apparent
side in the frame (``size_px``, the square root of its quadrilateral's area), the viewing angle
(``angle_deg``: between the page normal and the line of sight to the tile centre, 0 = face on),
the camera's distance to the tile centre (``distance_mm``, in sheet millimetres), whether the
tile was *undersampled* (its side below its model's input size) and ``located_by`` (its own
markers, or only other markers of its page). This module bins the lines by each quantity and
gives per bin the survival of each kind of tile, pooled over the tiles of that kind: untargeted
(and targeted) success of the adversarial tiles, accuracy of the clean controls, over the found
observations in the bin, with the report's clustered intervals (segments of held poses).

Bins are fixed and half-open, ``[lo, hi)``, the last one open-ended (``hi`` null): apparent size
at 0, 32, 48, 64, 96, 128, 192 and 256 px plus each classifying model's input size (so the bins
below a model's input size hold exactly its undersampled views), viewing angle every 10° from 0
to 70°, distance at 0, 250, 500, 750, 1000, 1500, 2000 and 3000 mm. Bins holding no line are
left out.

Malformed values: a value that is not a finite number in its quantity's range (size and distance
> 0, angle in [0, 90]) keeps its line out of that quantity's bins only — the line's
classification still counts in every other rate — and is counted as ``malformed``; found lines
without the field are counted as ``missing``. A quantity that no line records (a log from before
capture measured it) is ``{"recorded": false, …}``, shown as "not recorded".
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from physical_adv.report import Observations, _is_number, _kind_summary, _rate, goal_outcome, tile_model

SEEN_TEXT = ("survival per bin of what the camera saw (apparent size, viewing angle, distance), over the found "
             "observations in the bin, pooled over the tiles of each kind; bins [lo, hi), the last open-ended "
             "(hi null); the same clustered intervals as every other rate")
NOT_RECORDED = "not recorded (capture logs from before capture measured it)"


@dataclass(frozen=True)
class Seen:
    """One quantity of the view that capture logs per line, and how the report bins it.

    Args:
        key: the log line's field.
        label: what it is, in words.
        unit: its unit as printed after a number.
        edges: the bins' lower edges in increasing order, the first 0; the last bin is open-ended.
        valid: whether a (finite) value is in the quantity's range.
    """

    key: str
    label: str
    unit: str
    edges: tuple[float, ...]
    valid: Callable[[float], bool]

    def value(self, line: dict) -> float | None:
        """The line's value when it is a valid measurement, else ``None``."""
        v = line.get(self.key)
        return float(v) if _is_number(v) and self.valid(v) else None


SIZE = Seen("size_px", "apparent size", "px", (0, 32, 48, 64, 96, 128, 192, 256), lambda v: v > 0)
ANGLE = Seen("angle_deg", "viewing angle", "°", (0, 10, 20, 30, 40, 50, 60, 70), lambda v: 0 <= v <= 90)
DISTANCE = Seen("distance_mm", "distance", "mm", (0, 250, 500, 750, 1000, 1500, 2000, 3000), lambda v: v > 0)
QUANTITIES = (SIZE, ANGLE, DISTANCE)


def bin_label(lo: float, hi: float | None, unit: str) -> str:
    """A bin in words: ``32–48 px``, or ``≥ 256 px`` for the open-ended last bin."""
    sep = "" if unit == "°" else " "
    return f"≥ {lo:g}{sep}{unit}" if hi is None else f"{lo:g}–{hi:g}{sep}{unit}"


def input_sizes(obs: Observations) -> dict[str, int]:
    """Each classifying model's input side in pixels, from the sessions' ``models`` records, else
    from the manifest's; a model whose size neither records is left out."""
    records = [s.record.get("models") for s in obs.sessions] + [obs.sessions[0].record["manifest"].get("models")]
    out = {}
    for spec in sorted({str(tile_model(t)) for t in obs.tiles.values()}):
        for record in records:
            entry = record.get(spec) if isinstance(record, dict) else None
            size = entry.get("input_size") if isinstance(entry, dict) else None
            if isinstance(size, int) and not isinstance(size, bool) and size > 0:
                out[spec] = size
                break
    return out


def bin_lines(obs: Observations, quantity: Seen, edges: tuple[float, ...]) -> dict:
    """The lines binned by one quantity, with each bin's survival per kind.

    Args:
        obs: the pooled observations.
        quantity: what to bin by.
        edges: the bins' lower edges (increasing, the first 0); the last bin is open-ended.

    Returns:
        ``recorded``, ``label``, ``unit``, ``missing`` (found lines without the field) and
        ``malformed`` (lines whose value is not valid); when recorded, also ``edges``, ``lines``,
        ``found`` and ``undersampled`` (totals over the binned lines) and ``bins``: per non-empty
        bin ``lo``, ``hi`` (null for the last), ``label``, ``frames`` (lines), ``found``,
        ``undersampled`` and ``located_by_page`` (found lines), and ``adversarial`` / ``clean``:
        the kind's pooled rates over the bin's found lines (as in the report's ``summary``), and
        ``per_tile``: each adversarial tile's own rate over its found lines in the bin — its
        goal's, targeted success for a targeted tile and untargeted success otherwise (``goal``
        says which) — since tiles of different attacks pooled say little about any one of them.
    """
    groups: dict[int, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    missing = malformed = 0
    for line in obs.lines:
        value = quantity.value(line)
        if value is None:
            if quantity.key in line:
                malformed += 1
            elif line["found"]:
                missing += 1
            continue
        groups[bisect.bisect_right(edges, value) - 1][line["tile_id"]].append(line)
    out = {"recorded": bool(groups), "label": quantity.label, "unit": quantity.unit, "missing": missing, "malformed": malformed}
    if not groups:
        return {**out, "note": NOT_RECORDED}
    bins = []
    for i in sorted(groups):
        lines_by_tile = groups[i]
        found = [l for lines in lines_by_tile.values() for l in lines if l["found"]]
        tiles = {tid: obs.tiles[tid] for tid in lines_by_tile}
        lo, hi = edges[i], edges[i + 1] if i + 1 < len(edges) else None
        bins.append({"lo": lo, "hi": hi, "label": bin_label(lo, hi, quantity.unit),
                     "frames": sum(map(len, lines_by_tile.values())), "found": len(found),
                     "undersampled": sum(l.get("undersampled") is True for l in found),
                     "located_by_page": sum(l.get("located_by") == "page" for l in found),
                     "adversarial": _kind_summary(tiles, lines_by_tile, "adversarial"),
                     "clean": _kind_summary(tiles, lines_by_tile, "clean"),
                     "per_tile": {tid: _goal_rate(tile, lines_by_tile[tid]) for tid, tile in tiles.items()
                                  if tile["kind"] == "adversarial"}})
    return {**out, "edges": list(edges), "lines": sum(b["frames"] for b in bins), "found": sum(b["found"] for b in bins),
            "undersampled": sum(b["undersampled"] for b in bins), "bins": bins}


def _goal_rate(tile: dict, lines: list[dict]) -> dict:
    """One adversarial tile's success at its own goal over its found lines: ``{"goal", **rate}``."""
    name, outcome = goal_outcome(tile)
    return {"goal": name.removesuffix("_success"), **_rate([l for l in lines if l["found"]], outcome)}


def by_seen(obs: Observations) -> dict:
    """``report.json``'s ``by_seen``: survival binned by apparent size, viewing angle and distance.

    Args:
        obs: the pooled observations.

    Returns:
        ``description`` and, per quantity key (``size_px``, ``angle_deg``, ``distance_mm``),
        :func:`bin_lines`'s result; ``size_px`` also holds ``input_sizes`` (model spec → input
        side), whose sizes are edges of its bins.
    """
    sizes = input_sizes(obs)
    out: dict = {"description": SEEN_TEXT}
    for q in QUANTITIES:
        edges = tuple(sorted(set(q.edges) | set(sizes.values()))) if q is SIZE else q.edges
        out[q.key] = bin_lines(obs, q, edges)
    out[SIZE.key]["input_sizes"] = sizes
    return out
