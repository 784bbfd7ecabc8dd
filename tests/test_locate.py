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


def test_one_marker_places_a_tile_but_too_imprecisely_to_find_it_two_diagonal_ones_find_it():
    (view,) = Locator(MANIFEST).locate(Detections((_marker(2),)), (1280, 720))
    assert view.markers_used == [2] and not view.found and "imprecisely" in view.reason
    np.testing.assert_allclose(view.corners_px, _tile_truth(), atol=0.05)  # exact here, but not to be trusted
    (view,) = Locator(MANIFEST).locate(Detections((_marker(0), _marker(2))), (1280, 720))
    assert view.found and view.markers_used == [0, 2]
    np.testing.assert_allclose(view.corners_px, _tile_truth(), atol=0.05)


def test_magsac_ignores_a_marker_whose_corners_are_displaced():
    detections = Detections((_marker(0), _marker(1, shift=(14.0, -9.0)), _marker(2), _marker(3)))
    (view,) = Locator(MANIFEST).locate(detections, (1280, 720))
    assert view.found and view.markers_used == [0, 2, 3]  # the displaced marker disagrees with the page: left out
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


# one page, four tiles in a 2 × 2 grid, each framed by its own four 10 mm markers
PAGE = {
    "markers": [{"id": 4 * t + k, "page": 1, "center_mm": [34 + 80 * (t % 2) + dx, 34 + 80 * (t // 2) + dy], "size_mm": 10.0}
                for t in range(4) for k, (dx, dy) in enumerate([(0, 0), (62, 0), (62, 62), (0, 62)])],
    "tiles": [{"tile_id": f"0{t + 1}", "page": 1, "bbox_mm": [40 + 80 * (t % 2), 40 + 80 * (t // 2), 50, 50],
               "marker_ids": [4 * t + k for k in range(4)]} for t in range(4)],
}


def _page_marker(marker_id, hom=HOM):
    corners = Locator(PAGE).marker_corners_mm(marker_id)
    return Detection(marker_id, cv2.perspectiveTransform(corners[None], hom)[0].astype(np.float32))


def _quad(tile, hom=HOM):
    x, y, w, h = tile["bbox_mm"]
    return cv2.perspectiveTransform(np.float64([[[x, y], [x + w, y], [x + w, y + h], [x, y + h]]]), hom)[0]


def test_a_tile_none_of_whose_markers_was_seen_is_located_from_the_rest_of_its_page():
    # tile 01's four markers are hidden (a hand); the other twelve markers of the page are seen
    detections = Detections(tuple(_page_marker(i) for i in range(4, 16)))
    views = {v.tile_id: v for v in Locator(PAGE).locate(detections, (1280, 720))}
    assert views["01"].found and views["01"].located_by == "page" and views["01"].markers_used == list(range(4, 16))
    np.testing.assert_allclose(views["01"].corners_px, _quad(PAGE["tiles"][0]), atol=0.05)
    assert all(views[t].located_by == "tile" and views[t].markers_used == [4 * i + k for k in range(4)]
               for i, t in ((1, "02"), (2, "03"), (3, "04")))


def test_a_tile_is_refined_by_its_own_markers_where_the_page_is_not_flat():
    # the page's right half is bent: its markers follow another homography; tile 01 (left) keeps its own
    bent = HOM @ np.array([[1.02, 0, 0], [0.01, 1, 0], [0, 0, 1]])
    detections = Detections(tuple(_page_marker(i, HOM if i < 4 or 8 <= i < 12 else bent) for i in range(16)))
    views = {v.tile_id: v for v in Locator(PAGE).locate(detections, (1280, 720))}
    assert views["01"].located_by == "tile"
    np.testing.assert_allclose(views["01"].corners_px, _quad(PAGE["tiles"][0]), atol=0.05)
    np.testing.assert_allclose(views["02"].corners_px, _quad(PAGE["tiles"][1], bent), atol=0.05)


def test_one_far_marker_locates_a_tile_too_imprecisely_to_be_found():
    # only the far corner marker of tile 04 is seen: tile 01, 120 mm away, cannot be placed to 3 px
    views = {v.tile_id: v for v in Locator(PAGE).locate(Detections((_page_marker(14),)), (1280, 720))}
    assert not views["01"].found and "imprecisely" in views["01"].reason and views["01"].corner_sd > 3.0
    assert views["04"].corner_sd < views["01"].corner_sd


def test_the_corner_sd_predicts_the_spread_of_corners_under_marker_noise():
    from physical_adv.capture.locate import CORNER_NOISE_PX, corner_sd

    locator = Locator(PAGE)
    ids = [0, 1]
    src = np.concatenate([locator.marker_corners_mm(i) for i in ids])
    dst = cv2.perspectiveTransform(src[None], HOM)[0]
    quad = np.float64([[40, 40], [90, 40], [90, 90], [40, 90]])
    rng = np.random.default_rng(0)
    draws = []
    for _ in range(400):
        noisy = dst + rng.normal(0, CORNER_NOISE_PX, dst.shape)
        hom, _ = cv2.findHomography(src, noisy, 0)
        draws.append(cv2.perspectiveTransform(quad[None], hom)[0])
    spread = np.sqrt(np.var(np.array(draws), 0).sum(-1)).max()  # σ of the worst corner
    predicted = corner_sd(HOM, src, dst, quad)
    assert 0.7 < predicted / spread < 1.4, (predicted, spread)


def test_viewing_angle_and_distance_come_from_the_homography_and_the_camera():
    from physical_adv.capture.locate import Intrinsics, viewing_geometry

    # a camera 800 mm from the page centre, the page turned 35° about its vertical axis
    f, w, h = 1400.0, 1280, 720
    k = Intrinsics(f).matrix((w, h))
    r, _ = cv2.Rodrigues(np.array([0.0, np.radians(35), 0.0]))
    centre = np.array([0.0, 0.0, 800.0])
    to_centre = np.array([[1, 0, -105], [0, 1, -148.5], [0, 0, 1.0]])  # page mm → mm from the page centre
    hom = k @ np.column_stack([r[:, 0], r[:, 1], centre]) @ to_centre
    quad = cv2.perspectiveTransform(np.float64([[[80, 123.5], [130, 123.5], [130, 173.5], [80, 173.5]]]), hom)[0]
    seen = viewing_geometry(hom, quad, (105, 148.5), k)  # the tile at the page centre, on the optical axis
    assert abs(seen.angle_deg - 35) < 0.01 and abs(seen.distance_mm - 800) < 0.1
    assert abs(seen.size_px - np.sqrt(abs(cv2.contourArea(quad.astype(np.float32))))) < 0.01
    # a wrong focal length (the assumed one) moves the distance, much less the angle
    rough = viewing_geometry(hom, quad, (105, 148.5), Intrinsics(None).matrix((w, h)))
    assert abs(rough.distance_mm / 800 - 1.1 * w / f) < 0.01 and abs(rough.angle_deg - 35) < 12


def _board_page():
    """PAGE as a sheet manifest for :func:`physical_adv.markers.page_boards`."""
    return {**PAGE, "aruco_dictionary": "DICT_4X4_250"}


def test_a_relaxed_pass_keeps_only_markers_that_agree_on_one_page():
    from physical_adv.markers import _agreeing, page_boards

    boards = page_boards(_board_page())
    right = [_page_marker(i).corners for i in (0, 5, 10)]
    misread = _page_marker(3).corners  # id 3 read where marker 15 is printed
    misread_at = _page_marker(15).corners
    ids = np.int32([[0], [5], [10], [3]])
    assert _agreeing((*right, misread_at), ids, boards) == [0, 1, 2]  # the misread id is dropped
    assert _agreeing((right[0], misread), np.int32([[0], [3]]), boards) == [0, 1]  # two that agree are kept
    assert _agreeing((right[0],), np.int32([[0]]), boards) == []  # one marker alone proves nothing
    assert _agreeing((right[0], misread_at), np.int32([[0], [3]]), boards) == []  # two that disagree: neither
    mirrored = [c * np.float32([-1, 1]) + np.float32([2000, 0]) for c in right]  # x → 2000 − x, corner labels kept
    assert _agreeing(tuple(mirrored), ids[:3], boards) == []  # a mirror image of the page is no view of it


def test_the_page_layout_recovers_markers_the_first_pass_rejected(tmp_path):
    """A rendered page of real markers, shrunk and motion-blurred until the detector alone
    misses some: the board (the page's layout) brings them back, at their true places."""
    from physical_adv.markers import make_detector, page_boards
    from physical_adv.sheet import SheetConfig, make_sheet
    from physical_adv.sheet.render import render_pages

    from capture_sheets import write_run

    runs = [str(write_run(tmp_path / f"r{i}", sign, seed=i)) for i, sign in enumerate(("stop", "yield"))]
    sheet = make_sheet(SheetConfig(runs=tuple(runs), out=tmp_path / "s.pdf", previews=False))
    page = render_pages(sheet.pdf, 200)[0]
    small = cv2.resize(page, None, fx=0.135, fy=0.135, interpolation=cv2.INTER_AREA)  # ≈ 20 px markers
    kernel = np.zeros((5, 5), np.float32)
    kernel[2] = 1 / 5  # 5 px of horizontal motion blur
    frame = np.full((720, 1280, 3), 120, np.uint8)
    h, w = small.shape[:2]
    frame[100:100 + h, 400:400 + w] = cv2.filter2D(small, -1, kernel)
    detector = make_detector()
    plain = detect(frame, detector)
    helped = detect(frame, detector, boards=page_boards(sheet.manifest))
    assert 0 < len(plain) < 8 and len(helped) == 16  # 4 and 16 when written
    px_per_mm = 200 / 25.4 * 0.135
    truth = {m["id"]: np.array(m["center_mm"]) * px_per_mm + [400, 100] for m in sheet.manifest["markers"]}
    for d in helped:
        assert np.linalg.norm(d.centre - truth[d.marker_id]) < 2.0, d.marker_id
