"""ArUco markers shared by the sheet writer (drawing) and capture (detection)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import cv2
import numpy as np

DEFAULT_DICTIONARY = "DICT_4X4_250"
# The farthest a sheet's markers can be read from: a 720p webcam (1280 px wide, focal length
# WEBCAM_FOCAL_WIDTHS frame widths, a 49° horizontal field of view) sees a marker of side
# s mm at d mm as f·s/d px wide, and the tuned detector finds markers down to MIN_MARKER_PX
# (benchmarks/marker_detection.py).
WEBCAM_WIDTH_PX = 1280
WEBCAM_FOCAL_WIDTHS = 1.1
MIN_MARKER_PX = 10.0


def dictionary(name: str = DEFAULT_DICTIONARY):
    """The OpenCV predefined ArUco dictionary named like its ``cv2.aruco`` constant."""
    if not isinstance(name, str) or not name.startswith("DICT_") or not hasattr(cv2.aruco, name):
        raise ValueError(f"unknown ArUco dictionary {name!r}")
    return cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, name))


def dictionary_size(name: str = DEFAULT_DICTIONARY) -> int:
    """How many distinct marker ids the dictionary has."""
    return int(dictionary(name).bytesList.shape[0])


def marker_cells(marker_id: int, name: str = DEFAULT_DICTIONARY) -> np.ndarray:
    """The marker's cell pattern including its one-cell black border: ``(k, k)`` bool, True = black."""
    d = dictionary(name)
    k = d.markerSize + 2
    img = cv2.aruco.generateImageMarker(d, int(marker_id), k, borderBits=1)
    return img == 0


@dataclass(frozen=True)
class Detection:
    """One detected marker: its id and corners (TL, TR, BR, BL) in image pixels, float32 (4, 2)."""

    marker_id: int
    corners: np.ndarray

    @property
    def centre(self) -> np.ndarray:
        return self.corners.mean(0)


@dataclass(frozen=True)
class Detections:
    """The markers found in one image.

    An id detected more than once (a second printed copy of the sheet in view, or a marker
    of another sheet from the same dictionary) cannot say which copy it belongs to: such ids
    are *ambiguous* for that image, listed in ``ambiguous`` and left out of ``markers``.
    Iterating yields ``markers``.

    Attributes:
        markers: the markers seen exactly once, sorted by id.
        ambiguous: ids seen more than once, sorted.
    """

    markers: tuple[Detection, ...] = ()
    ambiguous: tuple[int, ...] = ()

    def __iter__(self):
        return iter(self.markers)

    def __len__(self) -> int:
        return len(self.markers)

    def ids(self) -> set[int]:
        """Every id detected in the image, ambiguous ones included."""
        return {d.marker_id for d in self.markers} | set(self.ambiguous)


def marker_px(marker_mm: float, distance_mm: float) -> float:
    """How many pixels wide a marker of ``marker_mm`` looks, face on, from ``distance_mm`` to a 720p webcam."""
    return WEBCAM_FOCAL_WIDTHS * WEBCAM_WIDTH_PX * marker_mm / distance_mm


def readable_problem(marker_mm: float, distance_mm: float) -> str | None:
    """Why markers of ``marker_mm`` cannot be found from ``distance_mm`` (``None`` when they can)."""
    px = marker_px(marker_mm, distance_mm)
    if px >= MIN_MARKER_PX:
        return None
    need = MIN_MARKER_PX * distance_mm / (WEBCAM_FOCAL_WIDTHS * WEBCAM_WIDTH_PX)
    return (f"{marker_mm:g} mm markers look {px:.1f} px wide from {distance_mm:g} mm to a 720p webcam, and the "
            f"detector needs {MIN_MARKER_PX:g} px: use marker_mm ≥ {math.ceil(need * 10) / 10:g} or "
            f"distance_mm ≤ {math.floor(WEBCAM_FOCAL_WIDTHS * WEBCAM_WIDTH_PX * marker_mm / MIN_MARKER_PX):g}")


def make_detector(name: str = DEFAULT_DICTIONARY):
    """An ``ArucoDetector`` with sub-pixel corner refinement (homographies need accurate corners)."""
    params = cv2.aruco.DetectorParameters()
    params.cornerRefinementMethod = cv2.aruco.CORNER_REFINE_SUBPIX
    if hasattr(params, "relativeCornerRefinmentWinSize"):  # (sic) OpenCV ≥ 4.9
        # a window of 0.8 of a marker cell (default 0.3, capped at cornerRefinementWinSize px):
        # 40 % less corner error on simulated 720p photos (0.40 px mean vs 0.66)
        params.relativeCornerRefinmentWinSize = 0.8
    return cv2.aruco.ArucoDetector(dictionary(name), params)


def detect(image: np.ndarray, detector=None, name: str = DEFAULT_DICTIONARY) -> Detections:
    """Detect markers in an image: the one place that runs the ArUco detector.

    Args:
        image: ``(H, W, 3)`` BGR/RGB or ``(H, W)`` grey, uint8.
        detector: from :func:`make_detector` (made from ``name`` when ``None``; pass one when
            detecting in many images).
        name: the ArUco dictionary, when ``detector`` is ``None``.

    Returns:
        :class:`Detections`: the markers seen once (sorted by id, corners float32 ``(4, 2)``)
        and the ids seen more than once.
    """
    grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    detector = detector or make_detector(name)
    corners, ids, _ = detector.detectMarkers(grey)
    if ids is None:
        return Detections()
    found = [Detection(int(i), c.reshape(4, 2).astype(np.float32)) for c, i in zip(corners, ids.ravel())]
    counts = Counter(d.marker_id for d in found)
    unique = sorted((d for d in found if counts[d.marker_id] == 1), key=lambda d: d.marker_id)
    return Detections(tuple(unique), tuple(sorted(i for i, c in counts.items() if c > 1)))
