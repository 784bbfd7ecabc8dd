"""From detected markers to rectified tiles: one homography per tile from whichever of its
markers are visible, then a crop at the model's input size.

Which tiles get an observation in a frame (the denominator of every detection rate): a tile
is *observed* in a frame only when its page is in view, i.e. at least one marker of that
page was detected (an ambiguous, twice-seen marker counts: the page is there). An observed
tile is *found* when its homography comes from at least one unambiguous marker and the
whole tile lies inside the frame; otherwise it is observed but not found, with a reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from physical_adv.markers import Detections
from physical_adv.resample import area_downsample, pyramid_level

# marker corner offsets (TL, TR, BR, BL) from its centre, in units of its side
_CORNERS = np.float64([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]])
MAX_RECTIFY_LEVEL = 2  # rectify at up to 4× the crop size, then area-downsample
MAGSAC_THRESHOLD_PX = 3.0


@dataclass
class TileView:
    """How one tile was seen in one frame."""

    tile_id: str
    found: bool
    markers_used: list[int]
    reprojection_px: float | None = None
    corners_px: np.ndarray | None = None  # tile corners TL TR BR BL in the frame (index coordinates)
    homography: np.ndarray | None = None  # page mm → frame px
    reason: str | None = None  # why a tile was not found
    ambiguous: list[int] = field(default_factory=list)  # its marker ids seen more than once in the frame


class Locator:
    """Precomputes each tile's marker geometry from the manifest (page millimetres)."""

    def __init__(self, manifest: dict, page: int | None = None) -> None:
        self.markers = {m["id"]: m for m in manifest["markers"]}
        self.tiles = [t for t in manifest["tiles"] if page is None or t["page"] == page]

    def marker_corners_mm(self, marker_id: int) -> np.ndarray:
        """The marker's corners TL TR BR BL on its page, in mm: ``(4, 2)`` float64."""
        m = self.markers[marker_id]
        return np.asarray(m["center_mm"], np.float64) + _CORNERS * m["size_mm"]

    def pages_in_view(self, detections: Detections) -> set[int]:
        """The pages with at least one marker detected (ambiguous ones included)."""
        return {self.markers[i]["page"] for i in detections.ids() if i in self.markers}

    def locate(self, detections: Detections, frame_size: tuple[int, int] | None = None) -> list[TileView]:
        """A view of every tile whose page is in view (see the module docs).

        Args:
            detections: the frame's markers (from :func:`physical_adv.markers.detect`).
            frame_size: ``(w, h)``; with it, a tile not wholly inside the frame is not found.

        Returns:
            One :class:`TileView` per tile on a page in view, in manifest order.
        """
        seen = {d.marker_id: d for d in detections if d.marker_id in self.markers}
        ambiguous = set(detections.ambiguous)
        pages = self.pages_in_view(detections)
        return [self._locate_tile(tile, seen, ambiguous, frame_size) for tile in self.tiles if tile["page"] in pages]

    def _locate_tile(self, tile: dict, seen: dict, ambiguous: set[int], frame_size) -> TileView:
        used = [i for i in tile["marker_ids"] if i in seen]
        amb = [i for i in tile["marker_ids"] if i in ambiguous]
        if not used:
            reason = "its markers were seen more than once (ambiguous)" if amb else "no marker visible"
            return TileView(tile["tile_id"], False, [], reason=reason, ambiguous=amb)
        src = np.concatenate([self.marker_corners_mm(i) for i in used])
        dst = np.concatenate([seen[i].corners.astype(np.float64) for i in used])
        hom = _homography(src, dst)
        if hom is None:
            return TileView(tile["tile_id"], False, used, reason="no homography", ambiguous=amb)
        proj = cv2.perspectiveTransform(src.reshape(-1, 1, 2), hom).reshape(-1, 2)
        err = float(np.sqrt(((proj - dst) ** 2).sum(1).mean()))
        x, y, w, h = tile["bbox_mm"]
        corners = cv2.perspectiveTransform(np.float64([[[x, y], [x + w, y], [x + w, y + h], [x, y + h]]]), hom)[0]
        inside = frame_size is None or _inside(corners, frame_size)
        return TileView(tile["tile_id"], inside, used, err, corners, hom,
                        None if inside else "tile partly outside the frame", amb)


def _homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray | None:
    """Page mm → frame px from marker corners: exact from one marker's four, MAGSAC from more
    (robust to a badly localised marker), least squares when MAGSAC gives up."""
    if len(src) == 4:
        hom, _ = cv2.findHomography(src, dst, 0)
        return hom
    hom, _ = cv2.findHomography(src, dst, cv2.USAC_MAGSAC, MAGSAC_THRESHOLD_PX)
    if hom is None:
        hom, _ = cv2.findHomography(src, dst, 0)
    return hom


def _inside(corners: np.ndarray, frame_size: tuple[int, int]) -> bool:
    """Whether all corners (index coordinates) lie in the frame, within a pixel's tolerance."""
    w, h = frame_size
    return bool((corners[:, 0] >= -1).all() and (corners[:, 1] >= -1).all()
                and (corners[:, 0] <= w).all() and (corners[:, 1] <= h).all())


def rectify(frame: np.ndarray, view: TileView, bbox_mm, size: int) -> np.ndarray:
    """The tile un-warped to ``size``×``size``: page-mm bbox → crop pixels via the homography.

    The crop's pixel centres map to the tile's interior. ``warpPerspective`` only
    interpolates, it does not integrate, so when the tile covers many more frame pixels than
    the crop has, it is rectified at ``2**level`` times the size and area-downsampled, the
    level chosen by :func:`physical_adv.resample.pyramid_level` (at most 4×).

    Args:
        frame: ``(H, W, 3)`` uint8 BGR.
        view: a found tile's view (``homography`` and ``corners_px`` set).
        bbox_mm: the tile's ``(x, y, w, h)`` on its page.
        size: the crop's side (the model's input size).

    Returns:
        ``(size, size, 3)`` uint8 BGR.
    """
    x, y, w, h = bbox_mm
    footprint = float(np.sqrt(abs(cv2.contourArea(view.corners_px.astype(np.float32)))))
    level = pyramid_level(footprint / size, MAX_RECTIFY_LEVEL)
    work = size << level
    crop_to_mm = np.array([[w / work, 0, x + 0.5 * w / work], [0, h / work, y + 0.5 * h / work], [0, 0, 1.0]])
    crop_to_frame = view.homography @ crop_to_mm
    out = cv2.warpPerspective(frame, crop_to_frame, (work, work), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_REPLICATE)
    return area_downsample(out, level)


def box_crop(frame: np.ndarray, view: TileView, size: int) -> np.ndarray:
    """The tile's axis-aligned bounding box in the raw frame, resized to ``size``² (no un-warping)."""
    x0, y0 = np.floor(view.corners_px.min(0)).astype(int)
    x1, y1 = np.ceil(view.corners_px.max(0)).astype(int)
    h, w = frame.shape[:2]
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1 + 1), min(h, y1 + 1)
    if x1 <= x0 or y1 <= y0:
        return np.zeros((size, size, 3), np.uint8)
    crop = frame[y0:y1, x0:x1]
    interp = cv2.INTER_AREA if min(crop.shape[:2]) > size else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interp)
