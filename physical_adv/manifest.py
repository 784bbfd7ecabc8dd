"""Reading sheet manifests (written by :mod:`physical_adv.sheet`, read by simulate and capture)."""

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


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _shape_problem(m: dict) -> str | None:
    """What simulate and capture would trip over in a manifest, or ``None``."""
    if not isinstance(m.get("sheet_id"), str):
        return "no sheet_id"
    if not (isinstance(m.get("pages"), int) and m["pages"] >= 1):
        return "pages must be a whole number ≥ 1"
    size = (m.get("page") or {}).get("size_mm") if isinstance(m.get("page"), dict) else None
    if not (isinstance(size, list) and len(size) == 2 and all(_is_num(v) and v > 0 for v in size)):
        return "page.size_mm must be [width, height] in mm"
    if not isinstance(m["markers"], list) or not isinstance(m["tiles"], list) or not m["tiles"]:
        return "markers and tiles must be lists, with at least one tile"
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
    return None
