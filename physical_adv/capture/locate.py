"""From detected markers to rectified tiles: one homography per page from every marker seen
on it, refined per tile where its own markers are seen, then a crop at the model's input size.

A flat sheet is one plane, so all the markers seen on a page constrain one homography
(page mm → frame px): it is fitted robustly (MAGSAC) from the corners of every unambiguous
marker of the page, which locates a tile even when none of its own four markers was
detected (a hand over them, glare, blur). Where at least :data:`OWN_MARKERS_TO_REFINE` of
a tile's own markers are seen and agree with the page, the tile gets its own homography from
them (``located_by = "tile"``): it follows the sheet's local shape — a bent page, lens
distortion — better than the page's single fit; otherwise the page's (``"page"``).

Which tiles get an observation in a frame (the denominator of every detection rate): a tile
is *observed* in a frame only when its page is in view, i.e. at least one marker of that page
was detected (an ambiguous, twice-seen marker counts: the page is there). An observed tile is
*found* when its page could be located from at least one unambiguous marker and the whole
tile lies inside the frame; otherwise it is observed but not found, with a reason.

Each located tile also says how it was seen (:class:`Seen`): its apparent side in pixels,
the viewing angle between the page normal and the line of sight to its centre, and its
distance from the camera in sheet millimetres — from the homography and a camera matrix
(:class:`Intrinsics`: calibrated focal length, or an assumed one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from physical_adv.markers import WEBCAM_FOCAL_WIDTHS, Detections, marker_corners_mm
from physical_adv.resample import area_downsample, pyramid_level

MAX_RECTIFY_LEVEL = 2  # rectify at up to 4× the crop size, then area-downsample
MAGSAC_THRESHOLD_PX = 3.0
OWN_MARKERS_TO_REFINE = 3  # a tile's own homography needs this many of its markers (else: the page's)
CORNER_NOISE_PX = 0.5  # the least corner noise assumed of a detected marker (σ, px)
MAX_CORNER_SD = 3.0  # a tile is found only when its corners are this precise (σ at CORNER_NOISE_PX, px of the model input)
ASSUMED_FOCAL = WEBCAM_FOCAL_WIDTHS  # focal length in frame widths when not calibrated (a 49° field of view)


@dataclass(frozen=True)
class Intrinsics:
    """A pinhole camera matrix for the viewing geometry: focal length ``focal_px`` (pixels)
    and the principal point at the frame's centre; ``calibrated`` says whether the focal
    length was measured or assumed (:data:`ASSUMED_FOCAL` frame widths)."""

    focal_px: float | None = None

    @property
    def calibrated(self) -> bool:
        return self.focal_px is not None

    def matrix(self, frame_size: tuple[int, int]) -> np.ndarray:
        """``K`` in index coordinates (pixel centres at integers) for a ``(w, h)`` frame."""
        w, h = frame_size
        f = self.focal_px if self.focal_px is not None else ASSUMED_FOCAL * w
        return np.array([[f, 0, (w - 1) / 2], [0, f, (h - 1) / 2], [0, 0, 1.0]])

    def describe(self) -> dict:
        return {"focal_px": self.focal_px, "calibrated": self.calibrated,
                "assumed_focal_frame_widths": None if self.calibrated else ASSUMED_FOCAL}


@dataclass(frozen=True)
class Seen:
    """How a tile was seen: apparent side (px, square root of its area in the frame), viewing
    angle (degrees between the page normal and the line of sight to its centre; 0 = face on)
    and distance from the camera to its centre (sheet mm; as exact as the camera matrix)."""

    size_px: float
    angle_deg: float | None
    distance_mm: float | None


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
    located_by: str | None = None  # "tile" (its own markers) or "page" (every marker of its page)
    seen: Seen | None = None
    corner_sd: float | None = None  # expected corner error (σ, px of the model's input), see corner_sd


@dataclass
class PageFit:
    """A homography from a set of markers (a page's, or a tile's own)."""

    homography: np.ndarray | None
    markers: list[int]  # the markers whose corners agree with it (MAGSAC inliers)
    error_px: float | None  # RMS reprojection error over those markers' corners


class Locator:
    """Precomputes each tile's marker geometry from the manifest (page millimetres).

    Args:
        manifest: the sheet manifest.
        page: only this page's tiles (default: all).
        camera: the camera matrix for the viewing geometry.
        input_sizes: tile id → the side of its model's input (default 64): a tile is found
            only when located to :data:`MAX_CORNER_SD` pixels of it.
    """

    def __init__(self, manifest: dict, page: int | None = None, camera: Intrinsics = Intrinsics(),
                 input_sizes: dict[str, int] | None = None) -> None:
        self.markers = {m["id"]: m for m in manifest["markers"]}
        self.tiles = [t for t in manifest["tiles"] if page is None or t["page"] == page]
        self.camera = camera
        self.input_sizes = input_sizes or {}
        self._corners_mm = {i: self.marker_corners_mm(i) for i in self.markers}

    def _correspondences(self, ids: list[int], seen: dict) -> tuple[np.ndarray, np.ndarray]:
        """The markers' corners on the page (mm) and in the frame (px), stacked: ``(4n, 2)`` each."""
        return (np.concatenate([self._corners_mm[i] for i in ids]),
                np.concatenate([seen[i].corners.astype(np.float64) for i in ids]))

    def marker_corners_mm(self, marker_id: int) -> np.ndarray:
        """The marker's corners TL TR BR BL on its page, in mm: ``(4, 2)`` float64."""
        return marker_corners_mm(self.markers[marker_id])

    def pages_in_view(self, detections: Detections) -> set[int]:
        """The pages with at least one marker detected (ambiguous ones included)."""
        return {self.markers[i]["page"] for i in detections.ids() if i in self.markers}

    def page_fits(self, detections: Detections) -> dict[int, PageFit]:
        """Each page in view's homography from every unambiguous marker seen on it."""
        seen = {d.marker_id: d for d in detections if d.marker_id in self.markers}
        return {p: self._fit_page(p, seen) for p in self.pages_in_view(detections)}

    def page_precision(self, detections: Detections, fit: PageFit, points_mm: np.ndarray) -> float:
        """How precisely (px, :func:`corner_sd`) ``fit`` places page points ``(m, 2)`` mm."""
        seen = {d.marker_id: d for d in detections}
        src, dst = self._correspondences(fit.markers, seen)
        return corner_sd(fit.homography, src, dst, points_mm)

    def locate(self, detections: Detections, frame_size: tuple[int, int] | None = None,
               fits: dict[int, PageFit] | None = None) -> list[TileView]:
        """A view of every tile whose page is in view (see the module docs).

        Args:
            detections: the frame's markers (from :func:`physical_adv.markers.detect`).
            frame_size: ``(w, h)``; with it, a tile not wholly inside the frame is not found,
                and each located tile says how it was seen (the camera matrix needs the frame).
            fits: :meth:`page_fits` of these detections, when the caller already has them.

        Returns:
            One :class:`TileView` per tile on a page in view, in manifest order.
        """
        seen = {d.marker_id: d for d in detections if d.marker_id in self.markers}
        ambiguous = set(detections.ambiguous)
        pages = self.pages_in_view(detections)
        fits = fits if fits is not None else self.page_fits(detections)
        k = self.camera.matrix(frame_size) if frame_size is not None else None
        return [self._locate_tile(tile, seen, ambiguous, fits[tile["page"]], frame_size, k)
                for tile in self.tiles if tile["page"] in pages]

    def _fit(self, ids: list[int], seen: dict) -> tuple[np.ndarray | None, np.ndarray, np.ndarray, np.ndarray | None]:
        src, dst = self._correspondences(ids, seen)
        hom, inliers = _homography(src, dst)
        return hom, src, dst, inliers

    def _fit_markers(self, ids: list[int], seen: dict) -> PageFit:
        """A robust homography from the markers ``ids``, refitted on those whose four corners all
        agree with it (a misread or badly localised marker is left out)."""
        if not ids:
            return PageFit(None, [], None)
        hom, src, dst, inliers = self._fit(ids, seen)
        if hom is None:
            return PageFit(None, [], None)
        agree = inliers.reshape(-1, 4).all(1) if inliers is not None else np.ones(len(ids), bool)
        used = [i for i, ok in zip(ids, agree) if ok] or ids
        if len(used) < len(ids):
            hom, src, dst, _ = self._fit(used, seen)
        return PageFit(hom, used, _rms(hom, src, dst))

    def _fit_page(self, page: int, seen: dict) -> PageFit:
        return self._fit_markers(sorted(i for i in seen if self.markers[i]["page"] == page), seen)

    def _locate_tile(self, tile: dict, seen: dict, ambiguous: set[int], page: PageFit, frame_size, k) -> TileView:
        amb = [i for i in tile["marker_ids"] if i in ambiguous]
        if page.homography is None:
            reason = ("its page's markers were seen more than once (ambiguous)" if amb or not page.markers and ambiguous
                      else "no homography")
            return TileView(tile["tile_id"], False, [], reason=reason, ambiguous=amb)
        hom, used, err, by = page.homography, page.markers, page.error_px, "page"
        own = [i for i in tile["marker_ids"] if i in seen]
        if len(own) >= OWN_MARKERS_TO_REFINE:
            local = self._fit_markers(own, seen)
            if local.homography is not None and len(local.markers) >= OWN_MARKERS_TO_REFINE:
                hom, used, err, by = local.homography, local.markers, local.error_px, "tile"
        x, y, w, h = tile["bbox_mm"]
        quad_mm = np.float64([[x, y], [x + w, y], [x + w, y + h], [x, y + h]])
        corners = cv2.perspectiveTransform(quad_mm[None], hom)[0]
        seen_as = viewing_geometry(hom, corners, (x + w / 2, y + h / 2), k) if k is not None else None
        src, dst = self._correspondences(used, seen)
        side = max(math.sqrt(abs(cv2.contourArea(corners.astype(np.float32)))), 1e-9)
        sd = corner_sd(hom, src, dst, quad_mm) * self.input_sizes.get(tile["tile_id"], 64) / side
        if frame_size is not None and not _inside(corners, frame_size):
            reason = "tile partly outside the frame"
        elif sd > MAX_CORNER_SD:
            reason = f"located too imprecisely (corner σ {sd:.1f} px at the model's input)"
        else:
            reason = None
        return TileView(tile["tile_id"], reason is None, used, err, corners, hom, reason, amb, by, seen_as, sd)


def viewing_geometry(hom: np.ndarray, corners_px: np.ndarray, centre_mm, k: np.ndarray) -> Seen:
    """How a tile looks through ``hom`` (page mm → frame px) to a camera ``k``.

    ``K⁻¹ H = λ [r₁ r₂ t]`` for a plane seen by a pinhole camera: the page normal is
    ``r₁ × r₂`` and a page point ``(x, y)`` sits at ``(x r₁ + y r₂ + t)`` mm from the camera.

    Args:
        hom: page mm → frame px (index coordinates).
        corners_px: the tile's corners in the frame, ``(4, 2)``.
        centre_mm: the tile's centre on its page.
        k: the camera matrix (:meth:`Intrinsics.matrix`).

    Returns:
        The tile's :class:`Seen`; angle and distance ``None`` when the homography is degenerate.
    """
    size = math.sqrt(abs(cv2.contourArea(corners_px.astype(np.float32))))
    m = np.linalg.solve(k, hom)
    scale = 0.5 * (np.linalg.norm(m[:, 0]) + np.linalg.norm(m[:, 1]))
    if not np.isfinite(scale) or scale <= 0:
        return Seen(round(size, 2), None, None)
    point = m @ np.array([centre_mm[0], centre_mm[1], 1.0]) / scale
    if point[2] < 0:  # the overall sign of a homography is arbitrary: the page is in front of the camera
        point, m = -point, -m
    normal = np.cross(m[:, 0], m[:, 1])
    cos = abs(float(normal @ point)) / max(float(np.linalg.norm(normal) * np.linalg.norm(point)), 1e-12)
    return Seen(round(size, 2), round(math.degrees(math.acos(min(1.0, cos))), 2), round(float(np.linalg.norm(point)), 1))


def corner_sd(hom: np.ndarray, src: np.ndarray, dst: np.ndarray, points_mm: np.ndarray) -> float:
    """How uncertain (px) the points ``hom`` puts ``points_mm`` at are, from the noise of the
    detected marker corners it was fitted to: the largest over the points of
    ``√(σx² + σy²)``, the root of a point's summed x and y variances.

    Gauss–Newton propagation: with ``J`` the Jacobian of the fitted corners with respect to the
    homography's eight parameters, ``cov(h) = σ² (JᵀJ)⁻¹`` and a point's covariance is
    ``Jₚ cov(h) Jₚᵀ``. σ is the fit's own residual (when it has residual degrees of freedom),
    never less than :data:`CORNER_NOISE_PX`. One marker seen 15 px wide locates a tile five of
    its sides away only to several pixels; four markers around the tile, to a fraction of one.

    Args:
        hom: page mm → frame px, fitted to ``src`` → ``dst``.
        src, dst: the marker corners it was fitted to, page mm and frame px, ``(n, 2)``.
        points_mm: page points to locate (a tile's corners), ``(m, 2)``.
    """
    h = hom / hom[2, 2]
    jac = _homography_jacobian(h, src)
    dof = len(src) * 2 - 8
    sigma = CORNER_NOISE_PX
    if dof > 0:
        proj = cv2.perspectiveTransform(src.reshape(-1, 1, 2), h).reshape(-1, 2)
        sigma = max(sigma, float(np.sqrt(((proj - dst) ** 2).sum() / dof)))
    try:
        cov = np.linalg.inv(jac.T @ jac) * sigma**2
    except np.linalg.LinAlgError:
        return math.inf
    jp = _homography_jacobian(h, points_mm).reshape(-1, 2, 8)
    var = np.einsum("pij,jk,pik->pi", jp, cov, jp)  # (m, 2): variance of x and y of each point
    return float(np.sqrt(var.sum(1).max()))


def _homography_jacobian(h: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """``(2n, 8)``: derivatives of the projections of ``pts`` ``(n, 2)`` with respect to
    ``h₁₁ … h₃₂`` (``h₃₃ = 1``), rows x₀ y₀ x₁ y₁ …"""
    x, y = pts[:, 0], pts[:, 1]
    w = h[2, 0] * x + h[2, 1] * y + 1.0
    u = (h[0, 0] * x + h[0, 1] * y + h[0, 2]) / w
    v = (h[1, 0] * x + h[1, 1] * y + h[1, 2]) / w
    one, zero = np.ones_like(x), np.zeros_like(x)
    du = np.stack([x, y, one, zero, zero, zero, -u * x, -u * y], 1) / w[:, None]
    dv = np.stack([zero, zero, zero, x, y, one, -v * x, -v * y], 1) / w[:, None]
    return np.stack([du, dv], 1).reshape(-1, 8)


def _rms(hom: np.ndarray, src: np.ndarray, dst: np.ndarray) -> float:
    """RMS distance (px) between ``dst`` and ``src`` projected through ``hom``."""
    proj = cv2.perspectiveTransform(src.reshape(-1, 1, 2), hom).reshape(-1, 2)
    return float(np.sqrt(((proj - dst) ** 2).sum(1).mean()))


def _homography(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Page mm → frame px from marker corners, and which corners are inliers (``None``: all):
    exact from one marker's four; from more, least squares when every corner lies within
    :data:`MAGSAC_THRESHOLD_PX` of that fit (the usual case, and 50× cheaper), else MAGSAC
    (robust to a badly localised or misread marker), least squares again when MAGSAC gives up."""
    if len(src) == 4:
        hom, _ = cv2.findHomography(src, dst, 0)
        return hom, None
    hom, _ = cv2.findHomography(src, dst, 0)
    if hom is not None:
        proj = cv2.perspectiveTransform(src.reshape(-1, 1, 2), hom).reshape(-1, 2)
        if float(((proj - dst) ** 2).sum(1).max()) <= MAGSAC_THRESHOLD_PX**2:
            return hom, None
    robust, mask = cv2.findHomography(src, dst, cv2.USAC_MAGSAC, MAGSAC_THRESHOLD_PX)
    if robust is None:
        return hom, None
    return robust, mask.ravel().astype(bool)


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
