"""From detected markers to rectified tiles: one homography per tile from whichever of its
markers are visible, then a crop at the model's input size."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from physical_adv.markers import Detection

# marker corner offsets (TL, TR, BR, BL) from its centre, in units of its side
_CORNERS = np.float64([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]])


@dataclass
class TileView:
    tile_id: str
    found: bool
    markers_used: list[int]
    reprojection_px: float | None = None
    corners_px: np.ndarray | None = None  # tile corners TL TR BR BL in the frame (index coordinates)
    homography: np.ndarray | None = None  # page mm → frame px
    reason: str | None = None  # why a tile was not found


class Locator:
    """Precomputes each tile's marker geometry from the manifest (page millimetres)."""

    def __init__(self, manifest: dict, page: int | None = None) -> None:
        self.markers = {m["id"]: m for m in manifest["markers"]}
        self.tiles = [t for t in manifest["tiles"] if page is None or t["page"] == page]

    def marker_corners_mm(self, marker_id: int) -> np.ndarray:
        m = self.markers[marker_id]
        return np.asarray(m["center_mm"], np.float64) + _CORNERS * m["size_mm"]

    def locate(self, detections: list[Detection], frame_size: tuple[int, int] | None = None) -> list[TileView]:
        """Locate every tile; with ``frame_size`` (w, h), a tile not wholly inside the frame
        counts as not found (its markers may be visible, but part of the tile is not)."""
        seen = {d.marker_id: d for d in detections if d.marker_id in self.markers}
        # a multi-page sheet: only the pages whose markers are in view can have tiles in view
        pages = {self.markers[i]["page"] for i in seen}
        views = []
        for tile in self.tiles:
            if pages and tile["page"] not in pages:
                continue
            used = [i for i in tile["marker_ids"] if i in seen]
            if not used:
                views.append(TileView(tile["tile_id"], False, [], reason="no marker visible"))
                continue
            src = np.concatenate([self.marker_corners_mm(i) for i in used])
            dst = np.concatenate([seen[i].corners.astype(np.float64) for i in used])
            if len(used) == 1:
                hom, _ = cv2.findHomography(src, dst, 0)
            else:  # more points than needed: robust to one badly localised marker
                hom, _ = cv2.findHomography(src, dst, cv2.USAC_MAGSAC, 3.0)
                if hom is None:
                    hom, _ = cv2.findHomography(src, dst, 0)
            if hom is None:
                views.append(TileView(tile["tile_id"], False, used, reason="no homography"))
                continue
            proj = cv2.perspectiveTransform(src.reshape(-1, 1, 2), hom).reshape(-1, 2)
            err = float(np.sqrt(((proj - dst) ** 2).sum(1).mean()))
            x, y, w, h = tile["bbox_mm"]
            corners = cv2.perspectiveTransform(np.float64([[[x, y], [x + w, y], [x + w, y + h], [x, y + h]]]), hom)[0]
            inside = frame_size is None or bool(
                (corners[:, 0] >= -1).all() and (corners[:, 1] >= -1).all()
                and (corners[:, 0] <= frame_size[0]).all() and (corners[:, 1] <= frame_size[1]).all())
            views.append(TileView(tile["tile_id"], inside, used, err, corners, hom,
                                  None if inside else "tile partly outside the frame"))
        return views


def rectify(frame: np.ndarray, view: TileView, bbox_mm, size: int) -> np.ndarray:
    """The tile un-warped to ``size``×``size``: page-mm bbox → crop pixels via the homography.

    The crop's pixel centres map to the tile's interior; when the tile covers many more frame
    pixels than the crop has, it is first rectified at a larger size and area-downsampled
    (``warpPerspective`` only interpolates, it does not integrate).
    """
    x, y, w, h = bbox_mm
    footprint = float(np.sqrt(cv2.contourArea(view.corners_px.astype(np.float32))))
    work = int(min(4 * size, max(size, 2 ** np.ceil(np.log2(max(footprint, 1) / size)) * size)))
    crop_to_mm = np.array([[w / work, 0, x + 0.5 * w / work], [0, h / work, y + 0.5 * h / work], [0, 0, 1.0]])
    crop_to_frame = view.homography @ crop_to_mm
    out = cv2.warpPerspective(frame, crop_to_frame, (work, work), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_REPLICATE)
    return cv2.resize(out, (size, size), interpolation=cv2.INTER_AREA) if work != size else out


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
