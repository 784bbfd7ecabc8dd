"""``simulate``: its output folder (replaced whole, never mixed with what was there), poses
that cut tiles (``--allow-partial``), occluders, and the rectified crops capture makes from
its photos compared pixel by pixel with the sheet itself."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

import physical_adv.simulate as simulate_module
from capture_sheets import shared_sheet
from helpers import assert_one_line_error, run_cli
from physical_adv.capture import CaptureConfig, run_capture
from physical_adv.sheet.render import render_pages
from physical_adv.simulate import RENDER_DPI, SimulateConfig, simulate


@pytest.fixture(scope="module")
def sheet(tmp_path_factory):
    return shared_sheet(tmp_path_factory)


def _capture(sheet, folder: Path, out: Path) -> list[dict]:
    run_capture(CaptureConfig(sheet=sheet.manifest_path, images=folder, out=out, window=False, device="cpu"), show_progress=False)
    return [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]


def _listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# --- the output folder ------------------------------------------------------------------


def test_a_smaller_run_replaces_a_previous_output_without_stale_frames(sheet, tmp_path):
    out = tmp_path / "sim"
    simulate(SimulateConfig(pdf=sheet.pdf, out=out, n=4, seed=1), show_progress=False)
    simulate(SimulateConfig(pdf=sheet.pdf, out=out, n=2, seed=2), show_progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["frame_0000.jpg", "frame_0001.jpg", "ground_truth.json"]
    assert json.loads((out / "ground_truth.json").read_text())["seed"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sim"]  # no temporary folder left beside it


def test_a_non_empty_folder_that_is_not_a_simulate_output_is_refused_untouched(capsys, sheet, tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"not ours")
    code, _, err = run_cli(capsys, "simulate", sheet.pdf, "--out", out, "--n", "2")
    assert_one_line_error(code, err, "not a previous simulate output")
    assert _listing(out) == {"holiday.jpg": b"not ours"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]


def test_a_simulate_output_with_a_user_file_added_is_refused(capsys, sheet, tmp_path):
    out = tmp_path / "sim"
    simulate(SimulateConfig(pdf=sheet.pdf, out=out, n=1), show_progress=False)
    (out / "notes.txt").write_text("mine")
    before = _listing(out)
    code, _, err = run_cli(capsys, "simulate", sheet.pdf, "--out", out, "--n", "1")
    assert_one_line_error(code, err, "not a previous simulate output")
    assert _listing(out) == before


def test_a_crash_mid_way_leaves_the_previous_output_intact(sheet, tmp_path, monkeypatch):
    out = tmp_path / "sim"
    simulate(SimulateConfig(pdf=sheet.pdf, out=out, n=3, seed=1), show_progress=False)
    before = _listing(out)
    real_write, calls = simulate_module.atomic_write_bytes, []

    def disk_full_on_the_third_photo(path, data):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(simulate_module, "atomic_write_bytes", disk_full_on_the_third_photo)
    with pytest.raises(OSError):
        simulate(SimulateConfig(pdf=sheet.pdf, out=out, n=5, seed=2), show_progress=False)
    assert _listing(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sim"]


def test_a_video_inside_the_output_folder_is_kept_and_replaced_with_it(sheet, tmp_path):
    out = tmp_path / "sim"
    simulate(SimulateConfig(pdf=sheet.pdf, out=out, n=2, video=out / "v.mp4"), show_progress=False)
    simulate(SimulateConfig(pdf=sheet.pdf, out=out, n=1, video=out / "v.mp4"), show_progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["frame_0000.jpg", "ground_truth.json", "v.mp4"]
    cap = cv2.VideoCapture(str(out / "v.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 1
    cap.release()


def test_a_video_in_a_subfolder_of_the_output_does_not_make_it_foreign(sheet, tmp_path):
    out = tmp_path / "sim"
    simulate(SimulateConfig(pdf=sheet.pdf, out=out, n=1, video=out / "video" / "v.mp4"), show_progress=False)
    simulate(SimulateConfig(pdf=sheet.pdf, out=out, n=1, seed=1, video=out / "video" / "v.mp4"), show_progress=False)
    assert (out / "video" / "v.mp4").is_file()


def test_a_failure_after_the_photos_leaves_an_outside_video_as_it_was(sheet, tmp_path, monkeypatch):
    out, video = tmp_path / "sim", tmp_path / "v.mp4"
    simulate(SimulateConfig(pdf=sheet.pdf, out=out, n=2, video=video), show_progress=False)
    before, photos = video.read_bytes(), _listing(out)

    def ground_truth_fails(path, obj):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(simulate_module, "atomic_write_json", ground_truth_fails)
    with pytest.raises(OSError):
        simulate(SimulateConfig(pdf=sheet.pdf, out=out, n=1, seed=3, video=video), show_progress=False)
    assert video.read_bytes() == before and _listing(out) == photos  # no new video beside the old photos
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sim", "v.mp4"]


def test_simulate_help_documents_partial_poses_and_occluders(capsys):
    code, out, _ = run_cli(capsys, "simulate", "--help")
    assert code == 0
    text = " ".join(out.split())
    assert "--allow-partial" in text and "--occluders" in text and "hand-like" in text


def test_too_many_occluders_is_a_one_line_error(capsys, sheet, tmp_path):
    code, _, err = run_cli(capsys, "simulate", sheet.pdf, "--out", tmp_path / "o", "--occluders", "11")
    assert_one_line_error(code, err, "occluders must be in [0, 10]")


WASHED_OUT = """[printer]
saturation = 0.8
black = 0.2
white = 0.85
tone = 5.0
tint = [0.0, 0.01, 0.02]

[camera]
exposure = 1.0
white_balance = [1.0, 1.0, 1.0]
gamma = 1.0
lighting = 0.0
"""


def test_a_printer_file_fixes_the_print_and_camera_colour(capsys, sheet, tmp_path):
    printer = tmp_path / "washed.toml"
    printer.write_text(WASHED_OUT)
    out = tmp_path / "o"
    code, _, _ = run_cli(capsys, "simulate", sheet.pdf, "--out", out, "--n", "2", "--printer", printer)
    assert code in (0, None)
    record = json.loads((out / "ground_truth.json").read_text())
    assert record["prints"] == [{"saturation": 0.8, "black": 0.2, "white": 0.85, "tone": 5.0, "tint": [0.0, 0.01, 0.02]}]
    assert record["channel"]["lighting"] == 0.0 and record["channel"]["white_balance"] == [1.0, 1.0, 1.0]
    # the paper between the tile columns photographs at white × (1 − tint), without a lighting ramp
    frame = record["frames"][0]
    img = cv2.imread(str(out / frame["file"]))
    hom = np.array(frame["homography_mm_to_px"])
    x, y = cv2.perspectiveTransform(np.float64([[[105.0, 120.0]]]), hom)[0, 0].round().astype(int)
    expect = 255 * 0.85 * (1 - np.array([0.02, 0.01, 0.0]))  # BGR
    assert np.abs(img[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3).mean(0) - expect).max() < 8


@pytest.mark.parametrize("text, fragment", [
    ("[printer]\nblack = 0.6\n", "black must be a number in [0, 0.5]"),
    ("[printer]\nink = 1\n", "unknown [printer] key 'ink'"),
    ("[lens]\nk1 = 0\n", "unknown table 'lens'"),
    ("[camera]\nwhite_balance = [1, 1]\n", "white_balance must be three numbers"),
])
def test_a_bad_printer_file_is_a_one_line_error(capsys, sheet, tmp_path, text, fragment):
    printer = tmp_path / "p.toml"
    printer.write_text(text)
    code, _, err = run_cli(capsys, "simulate", sheet.pdf, "--out", tmp_path / "o", "--printer", printer)
    assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "o").exists()


# --- tiles cut by the frame's edges -------------------------------------------------------


@pytest.fixture(scope="module")
def partial(sheet, tmp_path_factory):
    folder = tmp_path_factory.mktemp("partial") / "sim"
    record = simulate(SimulateConfig(pdf=sheet.pdf, out=folder, n=12, seed=5, allow_partial=True), show_progress=False)
    return record, _capture(sheet, folder, folder.parent / "cap")


def _outside_by(corners, w=1280, h=720) -> float:
    """How far (px) the farthest corner lies outside the frame (index coordinates; ≤ 0 inside)."""
    c = np.asarray(corners)
    return float(max((-0.5 - c[:, 0]).max(), (-0.5 - c[:, 1]).max(), (c[:, 0] - w + 0.5).max(), (c[:, 1] - h + 0.5).max()))


def test_partial_poses_cut_tiles_and_the_ground_truth_says_which(partial):
    record, _ = partial
    cut = [(i, tid) for i, f in enumerate(record["frames"]) for tid, c in f["tile_corners_px"].items() if _outside_by(c) > 0]
    assert len(cut) >= 8
    for i, tid in cut:
        assert tid not in record["frames"][i]["tiles_in_frame"]
    whole = sum(len(f["tiles_in_frame"]) for f in record["frames"])
    assert whole >= 16


def test_a_tile_cut_by_the_frame_is_never_found(partial):
    record, lines = partial
    reasons = []
    for line in lines:
        outside = _outside_by(record["frames"][line["frame"]]["tile_corners_px"][line["tile_id"]])
        if outside > 1.5:  # clearly cut (the locator allows a pixel of slack at the edge)
            assert not line["found"], line
            reasons.append(line["reason"])
    assert reasons.count("tile partly outside the frame") >= 5


def test_tiles_wholly_in_frame_are_still_found_in_partial_poses(partial):
    record, lines = partial
    inside = [line for line in lines if line["tile_id"] in record["frames"][line["frame"]]["tiles_in_frame"]]
    assert len(inside) >= 16
    assert np.mean([line["found"] for line in inside]) >= 0.9


# --- occluders ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def occluded(sheet, tmp_path_factory):
    folder = tmp_path_factory.mktemp("occluded") / "sim"
    record = simulate(SimulateConfig(pdf=sheet.pdf, out=folder, n=10, seed=6, occluders=2), show_progress=False)
    return record, _capture(sheet, folder, folder.parent / "cap")


def test_occluders_cover_markers_and_the_ground_truth_records_them(occluded):
    record, _ = occluded
    covered = [(i, int(m)) for i, f in enumerate(record["frames"]) for m, frac in f["markers_occluded"].items() if frac >= 0.25]
    assert len(covered) >= 20
    assert sum(bool(f["tiles_occluded"]) for f in record["frames"]) >= 6


def test_capture_never_locates_with_a_covered_marker(occluded):
    record, lines = occluded
    for line in lines:
        cover = record["frames"][line["frame"]]["markers_occluded"]
        assert not [m for m in line["markers_used"] if cover.get(str(m), 0) >= 0.25], line


def test_occluders_are_drawn_over_the_sheet(sheet, tmp_path):
    plain = simulate(SimulateConfig(pdf=sheet.pdf, out=tmp_path / "a", n=1, seed=9), show_progress=False)
    hands = simulate(SimulateConfig(pdf=sheet.pdf, out=tmp_path / "b", n=1, seed=9, occluders=3), show_progress=False)
    assert plain["frames"][0]["homography_mm_to_px"] == hands["frames"][0]["homography_mm_to_px"]  # same pose
    a = cv2.imread(str(tmp_path / "a" / "frame_0000.jpg")).astype(float)
    b = cv2.imread(str(tmp_path / "b" / "frame_0000.jpg")).astype(float)
    changed = (np.abs(a - b).max(2) > 60).mean()
    assert changed > 0.01


# --- the rectified crop itself --------------------------------------------------------------


def _truth_crop(page: np.ndarray, bbox_mm, size: int) -> np.ndarray:
    """What a perfect rectifier returns: the tile's region of the sheet page, area-resampled
    (rectifying inverts the photo's homography, so the page itself is the ground truth)."""
    x, y, w, h = (v * RENDER_DPI / 25.4 for v in bbox_mm)
    return cv2.resize(page[round(y) : round(y + h), round(x) : round(x + w)], (size, size), interpolation=cv2.INTER_AREA)


def _colour_fitted_error(crop: np.ndarray, truth: np.ndarray) -> float:
    """Mean absolute difference (0–255) after the best per-channel gain and offset: printer
    and camera change colours, not where things are."""
    a, b = truth.reshape(-1, 3).astype(float), crop.reshape(-1, 3).astype(float)
    err = []
    for c in range(3):
        design = np.stack([a[:, c], np.ones(len(a))], 1)
        coef, *_ = np.linalg.lstsq(design, b[:, c], rcond=None)
        err.append(np.abs(b[:, c] - design @ coef))
    return float(np.mean(err))


@pytest.fixture(scope="module")
def rectified(sheet, tmp_path_factory):
    folder = tmp_path_factory.mktemp("crops") / "sim"
    simulate(SimulateConfig(pdf=sheet.pdf, out=folder, n=12, seed=4), show_progress=False)
    out = folder.parent / "cap"
    lines = _capture(sheet, folder, out)
    page = render_pages(sheet.pdf, RENDER_DPI)[0]
    tiles = {t["tile_id"]: t for t in sheet.manifest["tiles"]}
    pairs = []
    for line in lines:
        if line.get("crop"):
            crop = cv2.imread(str(out / line["crop"]))
            x, y, w, h = tiles[line["tile_id"]]["bbox_mm"]
            pairs.append((crop, _truth_crop(page, (x, y, w, h), crop.shape[0]), _truth_crop(page, (x + w / 16, y, w, h), crop.shape[0])))
    return pairs


def test_rectified_crops_match_the_sheet_pixel_for_pixel(rectified):
    errors = [_colour_fitted_error(crop, truth) for crop, truth, _ in rectified]
    assert len(errors) >= 20
    assert np.median(errors) <= 8 and np.mean(np.array(errors) <= 12) >= 0.9, np.percentile(errors, [50, 90, 100])


def test_a_crop_off_by_a_sixteenth_of_the_tile_is_measurably_worse(rectified):
    good = np.median([_colour_fitted_error(crop, truth) for crop, truth, _ in rectified])
    shifted = np.median([_colour_fitted_error(crop, off) for crop, _, off in rectified])
    assert shifted >= 2.5 * good


def test_simulate_output_gets_the_usual_folder_permissions(sheet, tmp_path):
    simulate(SimulateConfig(pdf=sheet.pdf, out=tmp_path / "sim", n=1, seed=0), show_progress=False)
    mode = (tmp_path / "sim").stat().st_mode & 0o777
    assert mode & 0o055 == 0o055, oct(mode)  # readable and listable by others, like any folder a user makes
