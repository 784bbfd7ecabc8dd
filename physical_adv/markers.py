"""ArUco markers shared by the sheet writer (drawing) and capture (detection)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

DEFAULT_DICTIONARY = "DICT_4X4_250"


def dictionary(name: str = DEFAULT_DICTIONARY):
    """The OpenCV predefined ArUco dictionary named like its ``cv2.aruco`` constant."""
    if not name.startswith("DICT_") or not hasattr(cv2.aruco, name):
        raise ValueError(f"unknown ArUco dictionary {name!r}")
    return cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, name))


def dictionary_size(name: str = DEFAULT_DICTIONARY) -> int:
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


def make_detector(name: str = DEFAULT_DICTIONARY):
    """An ``ArucoDetector`` with sub-pixel corner refinement (homographies need accurate corners)."""
    params = cv2.aruco.DetectorParameters()
    params.cornerRefinementMethod = cv2.aruco.CORNER_REFINE_SUBPIX
    return cv2.aruco.ArucoDetector(dictionary(name), params)


def detect(image: np.ndarray, detector=None, name: str = DEFAULT_DICTIONARY) -> list[Detection]:
    """Detect markers in a BGR/RGB or grey uint8 image; returns them sorted by id."""
    grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    detector = detector or make_detector(name)
    corners, ids, _ = detector.detectMarkers(grey)
    if ids is None:
        return []
    found = [Detection(int(i), c.reshape(4, 2).astype(np.float32)) for c, i in zip(corners, ids.ravel())]
    return sorted(found, key=lambda d: d.marker_id)
