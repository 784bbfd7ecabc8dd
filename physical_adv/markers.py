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
# (benchmarks/finding.py, held-out far photos: tiles with 12 mm markers, 14 px at 1.2 m, found
# in 84.9 %; with 18 mm, 21 px, in 94.2 %, and 100 % apart from heavy motion blur).
WEBCAM_WIDTH_PX = 1280
WEBCAM_FOCAL_WIDTHS = 1.1
MIN_MARKER_PX = 18.0


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


def make_detector(name: str = DEFAULT_DICTIONARY, relaxed: bool = False):
    """An ``ArucoDetector`` tuned for small, blurred markers, with sub-pixel corner refinement
    (homographies need accurate corners); the settings were chosen by
    ``benchmarks/marker_detection.py`` on ``simulate --conditions far`` photos.

    A ``relaxed`` one accepts markers with more bit errors (every error-correctable bit, and
    a border up to 60 % wrong): it reads motion-blurred markers the strict one rejects, and
    sometimes misreads one, so :func:`detect` uses it only as a second pass whose markers
    must agree with each other on one page.
    """
    params = cv2.aruco.DetectorParameters()
    params.cornerRefinementMethod = cv2.aruco.CORNER_REFINE_SUBPIX
    if hasattr(params, "relativeCornerRefinmentWinSize"):  # (sic) OpenCV ≥ 4.9
        # a window of 0.8 of a marker cell (default 0.3, capped at cornerRefinementWinSize px):
        # 40 % less corner error on simulated 720p photos (0.40 px mean vs 0.66)
        params.relativeCornerRefinmentWinSize = 0.8
    # read each cell from 8×8 pixels of the un-warped marker, its outer quarter ignored (defaults
    # 4 and 0.13): blur spreads a cell's edges into its neighbours
    params.perspectiveRemovePixelPerCell = 8
    params.perspectiveRemoveIgnoredMarginPerCell = 0.25
    # (wider adaptive-threshold windows, 7/17/27 px, decode 2 % more markers but found no more
    # tiles end to end, with slightly worse corners: left at the defaults)
    if relaxed:
        params.errorCorrectionRate = 1.0
        params.maxErroneousBitsInBorderRate = 0.6
    return cv2.aruco.ArucoDetector(dictionary(name), params)


_UNIT_CORNERS = np.float64([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]])  # TL TR BR BL, in marker sides


def marker_corners_mm(marker: dict) -> np.ndarray:
    """A manifest marker's corners TL TR BR BL on its page, in mm: ``(4, 2)`` float64."""
    return np.asarray(marker["center_mm"], np.float64) + _UNIT_CORNERS * marker["size_mm"]


def page_boards(manifest: dict) -> dict[int, object]:
    """One ``cv2.aruco.Board`` per page of a sheet: its markers' corners in page mm (z = 0)
    and ids, for :func:`detect` to recover markers the first pass did not decode."""
    d = dictionary(manifest["aruco_dictionary"])
    pages: dict[int, list[dict]] = {}
    for m in manifest["markers"]:
        pages.setdefault(m["page"], []).append(m)
    return {page: cv2.aruco.Board([np.column_stack([marker_corners_mm(m), np.zeros(4)]).astype(np.float32) for m in ms],
                                  d, np.int32([m["id"] for m in ms]))
            for page, ms in pages.items()}


def detect(image: np.ndarray, detector=None, name: str = DEFAULT_DICTIONARY, boards: dict | None = None,
           relaxed=None) -> Detections:
    """Detect markers in an image: the one place that runs the ArUco detector.

    With ``boards`` (:func:`page_boards`) the sheet's layout helps in two ways:

    - when the strict pass decodes no marker of the sheet and a ``relaxed`` detector is
      given, a second pass with it (:func:`make_detector`) is kept for each page on which at
      least two of its markers agree with one homography (a misread id lands where the
      layout does not put it, and is dropped);
    - a page of which at least one marker was decoded is searched again for the rest
      (``refineDetectedMarkers``): the decoded markers predict where the others must be, and
      square candidates the first pass rejected (too blurred or small to decode with
      certainty) are taken there when their bits match that marker's within the refine
      step's tolerance. A page with an ambiguous id (a second copy in view) is not refined.

    Args:
        image: ``(H, W, 3)`` BGR/RGB or ``(H, W)`` grey, uint8.
        detector: from :func:`make_detector` (made from ``name`` when ``None``; pass one when
            detecting in many images).
        name: the ArUco dictionary, when ``detector`` is ``None``.
        boards: page → board of the sheet being looked for.
        relaxed: a relaxed detector for the second pass (with ``boards`` only).

    Returns:
        :class:`Detections`: the markers seen once (sorted by id, corners float32 ``(4, 2)``)
        and the ids seen more than once.
    """
    grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    detector = detector or make_detector(name)
    corners, ids, rejected = detector.detectMarkers(grey)
    boards = boards or {}
    ours = set().union(*(set(b.getIds().ravel().tolist()) for b in boards.values())) if boards else set()
    if relaxed is not None and boards and (ids is None or not ours & set(ids.ravel().tolist())):
        second, second_ids, second_rejected = relaxed.detectMarkers(grey)
        keep = _agreeing(second, second_ids, boards)
        if keep:
            corners, ids, rejected = tuple(second[k] for k in keep), np.int32([[second_ids.ravel()[k]] for k in keep]), second_rejected
    if ids is None or not len(ids):
        return Detections()
    for board in boards.values():
        on_board = set(board.getIds().ravel().tolist())
        seen = Counter(int(i) for i in ids.ravel() if int(i) in on_board)
        if seen and max(seen.values()) == 1 and len(rejected):
            corners, ids, rejected, _ = detector.refineDetectedMarkers(grey, board, corners, ids, rejected)
    found = [Detection(int(i), c.reshape(4, 2).astype(np.float32)) for c, i in zip(corners, ids.ravel())]
    counts = Counter(d.marker_id for d in found)
    unique = sorted((d for d in found if counts[d.marker_id] == 1), key=lambda d: d.marker_id)
    return Detections(tuple(unique), tuple(sorted(i for i, c in counts.items() if c > 1)))


AGREE_PX = 3.0  # a relaxed-pass marker agrees with its page when its corners are within this of one homography


def _agreeing(corners, ids, boards: dict) -> list[int]:
    """Indices of the markers (of a relaxed pass) that lie where their page's layout puts
    them: per page, at least two markers whose corners fit one homography (MAGSAC) to
    :data:`AGREE_PX`; ids seen twice are left out."""
    if ids is None or len(ids) < 2:
        return []
    flat = [int(i) for i in ids.ravel()]
    counts = Counter(flat)
    keep = []
    for board in boards.values():
        layout = {int(i): np.asarray(p, np.float64)[:, :2] for i, p in zip(board.getIds().ravel(), board.getObjPoints())}
        mine = [k for k, i in enumerate(flat) if i in layout and counts[i] == 1]
        if len(mine) < 2:
            continue
        src = np.concatenate([layout[flat[k]] for k in mine])
        dst = np.concatenate([np.asarray(corners[k], np.float64).reshape(4, 2) for k in mine])
        hom, mask = cv2.findHomography(src, dst, cv2.USAC_MAGSAC, AGREE_PX)
        if hom is None:  # (MAGSAC's sample check also refuses a mirrored fit: no view of a printed page)
            continue
        agree = [k for k, ok in zip(mine, mask.ravel().astype(bool).reshape(-1, 4).all(1)) if ok]
        if len(agree) >= 2:
            keep += agree
    return sorted(keep)
