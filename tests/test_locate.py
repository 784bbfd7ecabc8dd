"""Marker detection and tile location against geometry we construct: markers we draw, a
homography we choose."""

import json

import cv2
import numpy as np
import pytest

from physical_adv.capture.locate import Locator
from physical_adv.errors import UserError
from physical_adv.manifest import read_manifest
from physical_adv.markers import Detection, Detections, detect, dictionary

# two pages, one tile each, framed by four 10 mm markers (TL TR BR BL) like a real sheet
MANIFEST = {
    "markers": [{"id": 4 * p + k, "page": p + 1, "center_mm": c, "size_mm": 10.0}
                for p in range(2) for k, c in enumerate([[34, 34], [96, 34], [96, 96], [34, 96]])],
    "tiles": [{"tile_id": f"0{p + 1}", "page": p + 1, "bbox_mm": [40, 40, 50, 50], "marker_ids": [4 * p + k for k in range(4)]}
              for p in range(2)],
}
# page mm → frame px: 5 px/mm, tilted (perspective) and shifted
HOM = np.array([[5.2, 0.6, 300.0], [-0.4, 4.8, 120.0], [0.0006, -0.0004, 1.0]])


def _project(pts_mm):
    return cv2.perspectiveTransform(np.float64(pts_mm).reshape(1, -1, 2), HOM)[0]


def _marker(marker_id, shift=(0.0, 0.0)):
    corners = Locator(MANIFEST).marker_corners_mm(marker_id)
    return Detection(marker_id, (_project(corners) + np.float64(shift)).astype(np.float32))


def _tile_truth(tile=0):
    x, y, w, h = MANIFEST["tiles"][tile]["bbox_mm"]
    return _project([[x, y], [x + w, y], [x + w, y + h], [x, y + h]])


def test_a_tile_is_located_from_one_marker():
    (view,) = Locator(MANIFEST).locate(Detections((_marker(2),)), (1280, 720))
    assert view.found and view.markers_used == [2]
    np.testing.assert_allclose(view.corners_px, _tile_truth(), atol=0.05)


def test_magsac_ignores_a_marker_whose_corners_are_displaced():
    detections = Detections((_marker(0), _marker(1, shift=(14.0, -9.0)), _marker(2), _marker(3)))
    (view,) = Locator(MANIFEST).locate(detections, (1280, 720))
    assert view.found and view.markers_used == [0, 1, 2, 3]
    np.testing.assert_allclose(view.corners_px, _tile_truth(), atol=0.1)
    # the same corners by least squares are pulled off by the outlier: the test can tell the difference
    src = np.concatenate([Locator(MANIFEST).marker_corners_mm(i) for i in range(4)])
    dst = np.concatenate([d.corners for d in detections]).astype(np.float64)
    least_squares, _ = cv2.findHomography(src, dst, 0)
    x, y, w, h = MANIFEST["tiles"][0]["bbox_mm"]
    off = cv2.perspectiveTransform(np.float64([[[x, y], [x + w, y], [x + w, y + h], [x, y + h]]]), least_squares)[0]
    assert np.abs(off - _tile_truth()).max() > 2.0


def test_a_tile_partly_outside_the_frame_is_not_found_and_says_why():
    truth = _tile_truth()
    frame = (int(truth[:, 0].max()) - 20, 720)  # the frame's right edge cuts the tile
    (view,) = Locator(MANIFEST).locate(Detections(tuple(_marker(i) for i in range(4))), frame)
    assert not view.found and view.reason == "tile partly outside the frame"


def test_a_tile_gets_a_view_only_when_its_page_is_in_view():
    locator = Locator(MANIFEST)
    assert locator.locate(Detections(), (1280, 720)) == []  # no marker seen: no observation at all
    views = locator.locate(Detections((_marker(5),)), (1280, 720))  # one marker of page 2
    assert [v.tile_id for v in views] == ["02"]


def test_ambiguous_marker_ids_are_not_used_for_locating():
    locator = Locator(MANIFEST)
    (view,) = locator.locate(Detections((_marker(0), _marker(1)), ambiguous=(2, 3)), (1280, 720))
    assert view.found and view.markers_used == [0, 1] and view.ambiguous == [2, 3]
    (only_ambiguous,) = locator.locate(Detections(ambiguous=(0,)), (1280, 720))  # the page is in view ...
    assert not only_ambiguous.found and "ambiguous" in only_ambiguous.reason  # ... but the tile cannot be placed


def _draw(canvas, marker_id, x, y, side=60):
    img = cv2.aruco.generateImageMarker(dictionary("DICT_4X4_250"), marker_id, side)
    canvas[y : y + side, x : x + side] = img


def test_detect_reports_ids_seen_twice_as_ambiguous():
    canvas = np.full((300, 700), 255, np.uint8)
    for k, marker_id in enumerate([0, 1, 2]):
        _draw(canvas, marker_id, 40 + 110 * k, 40)
    for k, marker_id in enumerate([1, 2]):  # a second copy of two of them
        _draw(canvas, marker_id, 40 + 110 * k, 180)
    found = detect(canvas)
    assert [d.marker_id for d in found] == [0] and found.ambiguous == (1, 2)
    assert found.ids() == {0, 1, 2}


def test_a_bad_aruco_dictionary_in_a_manifest_is_a_user_error(tmp_path):
    path = tmp_path / "sheet.json"
    path.write_text(json.dumps({"schema": 1, "tiles": [], "markers": [], "page": {"size_mm": [210, 297]},
                                "aruco_dictionary": "DICT_NOPE_99"}))
    with pytest.raises(UserError, match="DICT_NOPE_99"):
        read_manifest(path)
