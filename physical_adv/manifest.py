"""Reading sheet manifests (written by :mod:`physical_adv.sheet`, read by simulate, capture and report).

An adversarial tile's ``blackbox`` entry says how its run was optimised: ``null`` for a
white-box run (gradients of the model), else the run's black-box record (``attack.json``'s
``blackbox``): ``{"method", "queries", "budget", "budget_exhausted", "oracle"}``. Manifests
written before the entry existed lack it; they still load, and :func:`attack_label` says
"not recorded" for them.
"""

from __future__ import annotations

from pathlib import Path

from physical_adv.artifacts import read_json
from physical_adv.errors import UserError
from physical_adv.markers import dictionary


def read_manifest(path: str | Path) -> dict:
    """Load and sanity-check a sheet manifest.

    Args:
        path: the manifest ``NAME.json`` written by ``sheet``.

    Returns:
        The manifest as a dict.

    Raises:
        UserError: the file is missing, unreadable, not a schema-1 sheet manifest, names
            an ArUco dictionary OpenCV does not have, or lacks a field capture and simulate read.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"manifest not found: {path}")
    manifest = read_json(path, "sheet manifest")
    if not isinstance(manifest, dict) or manifest.get("schema") != 1 or not {"tiles", "markers", "page", "aruco_dictionary"} <= set(manifest):
        raise UserError(f"{path} is not a physical-adv sheet manifest (schema 1 with tiles, markers, page)")
    try:
        dictionary(manifest["aruco_dictionary"])
    except (ValueError, TypeError) as exc:
        raise UserError(f"{path}: {exc} (aruco_dictionary must name a cv2.aruco dictionary such as DICT_4X4_250)") from None
    problem = _shape_problem(manifest)
    if problem:
        raise UserError(f"{path} is not a valid sheet manifest: {problem}")
    return manifest


BLACKBOX_METHOD_NAMES = {"nes": "NES", "square": "Square"}
NOT_RECORDED = "not recorded"


def blackbox_entry(record: dict) -> dict | None:
    """A tile's ``blackbox`` manifest entry from its run's ``attack.json`` record (``None``: white-box)."""
    bb = record.get("blackbox")
    if not isinstance(bb, dict):
        return None
    oracle = bb.get("oracle") if isinstance(bb.get("oracle"), dict) else {}
    return {"method": bb.get("method"), "queries": bb.get("queries"), "budget": oracle.get("budget"),
            "budget_exhausted": bb.get("budget_exhausted"), "oracle": oracle}


def blackbox_problem(tile: dict) -> str | None:
    """What is wrong with a tile's ``blackbox`` entry, or ``None`` (absent and ``null`` are fine)."""
    bb = tile.get("blackbox")
    if bb is None:
        return None
    if not (isinstance(bb, dict) and isinstance(bb.get("method"), str) and isinstance(bb.get("queries"), int)
            and not isinstance(bb.get("queries"), bool) and bb["queries"] >= 0):
        return f"tile {tile.get('tile_id')}'s blackbox entry lacks a method name or a whole number of queries"
    return None


def attack_label(tile: dict) -> str | None:
    """How a tile's image was made, in words: ``"black-box NES, 10,000 queries"``, ``"white-box"``,
    ``"white-box on models/sub (transfer)"`` when the sheet scores it with another model than the
    one attacked, :data:`NOT_RECORDED` (a manifest from before the entry existed), or ``None`` for
    a clean control."""
    if tile.get("kind") == "clean":
        return None
    if "blackbox" not in tile:
        return NOT_RECORDED
    bb = tile["blackbox"]
    if bb is None:
        label = "white-box"
    else:
        method = BLACKBOX_METHOD_NAMES.get(bb["method"], bb["method"])
        label = f"black-box {method}, {bb['queries']:,} queries"
    attacked = tile.get("attacked_model")
    if isinstance(attacked, str) and attacked != tile.get("model"):
        label += f" on {attacked} (transfer)"
    return label


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _chart_problem(chart, pages: int) -> str | None:
    """What is wrong with a manifest's ``calibration`` entry (``None``: absent, or fine)."""
    if chart is None:
        return None
    if not (isinstance(chart, dict) and isinstance(chart.get("page"), int) and 1 <= chart["page"] <= pages
            and _is_num(chart.get("patch_mm")) and isinstance(chart.get("bbox_mm"), list) and len(chart["bbox_mm"]) == 4
            and all(map(_is_num, chart["bbox_mm"])) and isinstance(chart.get("patches"), list) and chart["patches"]):
        return "calibration must give page, patch_mm, bbox_mm and patches"
    for p in chart["patches"]:
        if not (isinstance(p, dict) and isinstance(p.get("rgb"), list) and len(p["rgb"]) == 3
                and all(isinstance(v, int) and 0 <= v <= 255 for v in p["rgb"])
                and isinstance(p.get("bbox_mm"), list) and len(p["bbox_mm"]) == 4 and all(map(_is_num, p["bbox_mm"]))):
            return f"calibration patch {p!r:.60} lacks rgb (0-255) or bbox_mm"
    return None


def _shape_problem(m: dict) -> str | None:
    """What simulate and capture would trip over in a manifest, or ``None``."""
    if not isinstance(m.get("sheet_id"), str):
        return "no sheet_id"
    if not (isinstance(m.get("pages"), int) and m["pages"] >= 1):
        return "pages must be a whole number ≥ 1"
    size = (m.get("page") or {}).get("size_mm") if isinstance(m.get("page"), dict) else None
    if not (isinstance(size, list) and len(size) == 2 and all(_is_num(v) and v > 0 for v in size)):
        return "page.size_mm must be [width, height] in mm"
    if not isinstance(m["markers"], list) or not isinstance(m["tiles"], list) or not (m["tiles"] or m.get("calibration")):
        return "markers and tiles must be lists, with at least one tile (or a calibration chart)"
    problem = _chart_problem(m.get("calibration"), m["pages"])
    if problem:
        return problem
    for mk in m["markers"]:
        if not (isinstance(mk, dict) and isinstance(mk.get("id"), int) and isinstance(mk.get("page"), int)
                and isinstance(mk.get("center_mm"), list) and len(mk["center_mm"]) == 2 and all(map(_is_num, mk["center_mm"]))
                and _is_num(mk.get("size_mm"))):
            return f"marker {mk!r:.60} lacks id, page, center_mm or size_mm"
    ids = {mk["id"] for mk in m["markers"]}
    for t in m["tiles"]:
        if not (isinstance(t, dict) and isinstance(t.get("tile_id"), str) and isinstance(t.get("page"), int)
                and isinstance(t.get("model"), str) and isinstance(t.get("true_class"), str)
                and t.get("kind") in ("adversarial", "clean")
                and isinstance(t.get("bbox_mm"), list) and len(t["bbox_mm"]) == 4 and all(map(_is_num, t["bbox_mm"]))
                and isinstance(t.get("marker_ids"), list) and all(isinstance(i, int) for i in t["marker_ids"])):
            return f"tile {t.get('tile_id') if isinstance(t, dict) else t!r} lacks tile_id, page, kind, model, true_class, bbox_mm or marker_ids"
        if not set(t["marker_ids"]) <= ids:
            return f"tile {t['tile_id']} names markers the manifest does not place"
        problem = blackbox_problem(t)
        if problem:
            return problem
    return None
