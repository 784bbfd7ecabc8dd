"""Reading sheet manifests (written by :mod:`physical_adv.sheet`, read by simulate and capture)."""

from __future__ import annotations

from pathlib import Path

from physical_adv.artifacts import read_json
from physical_adv.errors import UserError


def read_manifest(path: str | Path) -> dict:
    """Load and sanity-check a sheet manifest; a :class:`UserError` when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"manifest not found: {path}")
    manifest = read_json(path, "sheet manifest")
    if not isinstance(manifest, dict) or manifest.get("schema") != 1 or not {"tiles", "markers", "page", "aruco_dictionary"} <= set(manifest):
        raise UserError(f"{path} is not a physical-adv sheet manifest (schema 1 with tiles, markers, page)")
    return manifest
