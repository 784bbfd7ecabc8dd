"""The colour calibration chart printed on a sheet: patches of known RGB at known places.

The chart fills the free band below the tiles of the first page that has room for it
(at least :data:`MIN_ROWS` rows of patches), and is located in a photo by the same ArUco
markers as the tiles (the page's homography). Its colours span the RGB cube — a 5×5×5
grid — plus greys, dense near black and white where printers and cameras bend their tone
curves most, and the rest of the band filled with a deterministic low-discrepancy (Halton)
sample of the cube, so the same layout always carries the same colours.
"""

from __future__ import annotations

import itertools

import numpy as np

PATCH_MM = 5.0  # side of a patch
GAP_MM = 1.0  # white between patches (their edges blur into each other otherwise)
MIN_ROWS = 2
CAPTION_MM = 4.0  # room above the chart for its caption
GREYS = 24


def chart_colours(n: int) -> list[list[int]]:
    """``n`` RGB colours (0–255 integers): greys first, then the 5×5×5 cube, then Halton
    points (bases 2, 3, 5); truncated to ``n``."""
    t = np.linspace(0, 1, GREYS)
    greys = np.round(255 * (0.5 - 0.5 * np.cos(np.pi * t))).astype(int)  # dense near 0 and 255
    colours = [[int(g)] * 3 for g in greys]
    colours += [list(c) for c in itertools.product((0, 64, 128, 191, 255), repeat=3)]
    k = 1
    while len(colours) < n:
        colours.append([int(round(255 * _halton(k, b))) for b in (2, 3, 5)])
        k += 1
    return colours[:n]


def _halton(index: int, base: int) -> float:
    f, r = 1.0, 0.0
    while index > 0:
        f /= base
        r += f * (index % base)
        index //= base
    return r


def layout_chart(region_mm: tuple[float, float, float, float], page: int) -> dict | None:
    """The chart in the band ``(x, y, w, h)`` (mm) of ``page``, or ``None`` when the band holds
    fewer than :data:`MIN_ROWS` rows.

    Returns:
        The manifest's ``calibration`` entry: ``page``, ``bbox_mm`` (the patches' extent),
        ``patch_mm`` and ``patches`` (each ``{"id", "rgb", "bbox_mm"}``, row by row).
    """
    x, y, w, h = region_mm
    pitch = PATCH_MM + GAP_MM
    cols, rows = int((w + GAP_MM) // pitch), int((h - CAPTION_MM + GAP_MM) // pitch)
    if rows < MIN_ROWS or cols < 1:
        return None
    x0 = x + (w - (cols * pitch - GAP_MM)) / 2
    y0 = y + CAPTION_MM
    colours = chart_colours(rows * cols)
    patches = [{"id": i, "rgb": colours[i],
                "bbox_mm": [round(x0 + (i % cols) * pitch, 3), round(y0 + (i // cols) * pitch, 3), PATCH_MM, PATCH_MM]}
               for i in range(rows * cols)]
    return {"page": page, "bbox_mm": [round(x0, 3), round(y0, 3), round(cols * pitch - GAP_MM, 3), round(rows * pitch - GAP_MM, 3)],
            "patch_mm": PATCH_MM, "rows": rows, "cols": cols, "patches": patches}
