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
        UserError: the file is missing, unreadable, not a schema-1 sheet manifest, or names
            an ArUco dictionary OpenCV does not have.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"manifest not found: {path}")
    manifest = read_json(path, "sheet manifest")
    if not isinstance(manifest, dict) or manifest.get("schema") != 1 or not {"tiles", "markers", "page", "aruco_dictionary"} <= set(manifest):
        raise UserError(f"{path} is not a physical-adv sheet manifest (schema 1 with tiles, markers, page)")
    try:
        dictionary(manifest["aruco_dictionary"])
    except ValueError as exc:
        raise UserError(f"{path}: {exc} (aruco_dictionary must name a cv2.aruco dictionary such as DICT_4X4_250)") from None
    return manifest
