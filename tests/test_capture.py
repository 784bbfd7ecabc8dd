"""Simulate and capture: tiles found and located on synthetic photos, controls recognised,
each tile read by its own model, duplicate markers and absent pages handled by one rule,
a log that survives being killed, one-line errors for bad inputs."""

import json
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from capture_sheets import install_swapped_model, make_test_sheet, shared_sheet, write_run
from helpers import assert_one_line_error, default_sigint, run_cli
from physical_adv.capture import CaptureConfig, run_capture
from physical_adv.errors import UserError
from physical_adv.sheet.render import render_pages
from physical_adv.sheet import SheetConfig, make_sheet
from physical_adv.simulate import SimulateConfig, simulate


@pytest.fixture(scope="module")
def sheet(tmp_path_factory):
    return shared_sheet(tmp_path_factory)


@pytest.fixture(scope="module")
def photos(sheet, tmp_path_factory):
    out = tmp_path_factory.mktemp("photos")
    record = simulate(SimulateConfig(pdf=sheet.pdf, out=out, n=40, seed=3), show_progress=False)
    return out, record


@pytest.fixture(scope="module")
def session(sheet, photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("session") / "s"
    run_capture(CaptureConfig(sheet=sheet.manifest_path, images=photos[0], out=out, window=False, device="cpu"), show_progress=False)
    lines = [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]
    return out, lines


def test_simulated_photos_are_720p_with_ground_truth(photos):
    folder, record = photos
    assert len(record["frames"]) == 40
    img = cv2.imread(str(folder / record["frames"][0]["file"]))
    assert img.shape == (720, 1280, 3)
    assert len(record["frames"][0]["tile_corners_px"]) == 4


def test_every_tile_is_found_in_95_percent_of_frames(session):
    _, lines = session
    for tile_id in {line["tile_id"] for line in lines}:
        rows = [line for line in lines if line["tile_id"] == tile_id]
        assert len(rows) == 40
        assert sum(r["found"] for r in rows) / len(rows) >= 0.95, tile_id


def test_rectified_corners_lie_within_2_px_at_model_size(session, photos):
    _, lines = session
    truth = {i: f["tile_corners_px"] for i, f in enumerate(photos[1]["frames"])}
    errors = []
    for line in lines:
        if not line["found"]:
            continue
        gt = np.array(truth[line["frame"]][line["tile_id"]])
        got = np.array(line["corners_px"])
        side = np.sqrt(cv2.contourArea(gt.astype(np.float32)))  # the tile's side in frame pixels
        errors.append(np.abs(got - gt).max() * 64 / side)  # in pixels of the 64 px model input
    assert np.mean(np.array(errors) <= 2.0) >= 0.95, np.percentile(errors, [50, 95, 100])


@pytest.fixture(scope="module")
def far(sheet, tmp_path_factory):
    """Photos as a webcam at arm's length or farther takes them (``simulate --conditions far``),
    captured."""
    photos = tmp_path_factory.mktemp("far")
    record = simulate(SimulateConfig(pdf=sheet.pdf, out=photos, n=40, seed=11, conditions="far"), show_progress=False)
    out = tmp_path_factory.mktemp("far-session") / "s"
    run_capture(CaptureConfig(sheet=sheet.manifest_path, images=photos, out=out, window=False, device="cpu"), show_progress=False)
    lines = {(line["frame"], line["tile_id"]): line for line in _lines(out)}
    return record, lines


def test_far_photos_every_tile_a_person_reads_is_found_with_corners_within_2_px(far):
    """≥ 98 % of the tiles wholly in frame and at least the model's input found, apart from
    photos with 9 px or more of motion blur (the markers' 3-4 px cells smeared across three
    cells: benchmarks/finding.py measures those separately); ≥ 90 % with them."""
    record, lines = far
    found, heavy, errors = [], [], []
    for i, frame in enumerate(record["frames"]):
        for tid in frame["tiles_in_frame"]:
            if frame["tiles_seen"][tid]["size_px"] < 64:
                continue  # smaller than the model's input: not in this denominator (see the undersampled test)
            line = lines.get((i, tid))
            found.append(bool(line and line["found"]))
            heavy.append(frame["camera"].get("motion_px", 0) >= 9)
            if found[-1]:
                gt = np.array(frame["tile_corners_px"][tid])
                side = np.sqrt(cv2.contourArea(gt.astype(np.float32)))
                errors.append(np.abs(np.array(line["corners_px"]) - gt).max() * 64 / side)
    found, heavy = np.array(found), np.array(heavy)
    assert len(found) >= 140 and heavy.sum() >= 8, (len(found), heavy.sum())  # the test sees heavy blur too
    assert found[~heavy].mean() >= 0.98 and found.mean() >= 0.90, (found[~heavy].mean(), found.mean())
    assert np.mean(np.array(errors) <= 2.0) >= 0.95, np.percentile(errors, [50, 95, 100])


def test_far_photos_log_how_each_tile_was_seen(far):
    record, lines = far
    size, angle, distance = [], [], []
    for (i, tid), line in lines.items():
        if not line["found"]:
            continue
        truth = record["frames"][i]["tiles_seen"][tid]
        size.append(line["size_px"] / truth["size_px"])
        angle.append(abs(line["angle_deg"] - truth["angle_deg"]))
        distance.append(line["distance_mm"] / truth["distance_mm"])
        assert line["undersampled"] == (line["size_px"] < 64)
        assert line["located_by"] in ("tile", "page")
    assert np.percentile(np.abs(np.log(size)), 95) < 0.03  # apparent size within 3 %
    assert np.median(angle) < 5 and np.percentile(angle, 90) < 12  # degrees, with an assumed focal length
    assert 0.8 < np.median(distance) < 1.25  # the assumed focal length is 1.1 frame widths, the photos' 0.8-1.4


def test_clean_controls_are_recognised(session):
    _, lines = session
    clean = [line for line in lines if line["found"] and line["tile_id"] in ("02", "04")]
    truth = {"02": "stop", "04": "speed limit 50"}
    accuracy = np.mean([line["pred"] == truth[line["tile_id"]] for line in clean])
    assert accuracy >= 0.95, accuracy


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_clean_controls_are_recognised_and_tiles_found_over_several_print_and_camera_seeds(sheet, tmp_path, seed):
    """The stochastic contracts (controls ≥ 95 %, tiles found ≥ 95 %) on three more prints and photo sets."""
    simulate(SimulateConfig(pdf=sheet.pdf, out=tmp_path / "p", n=20, seed=seed), show_progress=False)
    run_capture(CaptureConfig(sheet=sheet.manifest_path, images=tmp_path / "p", out=tmp_path / "s", window=False,
                              device="cpu"), show_progress=False)
    lines = [json.loads(line) for line in (tmp_path / "s" / "detections.jsonl").read_text().splitlines()]
    truth = {"02": "stop", "04": "speed limit 50"}
    controls = [line["pred"] == truth[line["tile_id"]] for line in lines if line["found"] and line["tile_id"] in truth]
    assert len(controls) >= 38 and np.mean(controls) >= 0.95, (len(controls), np.mean(controls))
    assert np.mean([line["found"] for line in lines]) >= 0.95


def test_session_records_source_model_and_totals(session):
    out, _ = session
    record = json.loads((out / "session.json").read_text())
    assert record["schema"] == 1 and record["ended"] == "source ended" and record["frames"] == 40
    assert record["manifest"]["sheet_id"] and "torch" in record["versions"]
    assert record["models"] == {"signs": {"input_size": 64, "tiles": ["01", "02", "03", "04"]}}
    assert record["model_override"] is None
    assert record["camera"] == {"focal_px": None, "calibrated": False, "assumed_focal_frame_widths": 1.1}
    assert any((out / "crops").rglob("*.png"))


def test_a_calibrated_focal_length_gives_the_true_distance(sheet, tmp_path):
    """One photo whose camera is known: --focal-px with its focal length puts each tile at its
    true distance; the assumed focal length is off by the ratio of the two."""
    photos = tmp_path / "p"
    record = simulate(SimulateConfig(pdf=sheet.pdf, out=photos, n=1, seed=4, max_tilt=30), show_progress=False)
    frame = record["frames"][0]
    f = frame["camera"]["focal_px"]
    for focal, ratio in ((f, 1.0), (None, 1.1 * 1280 / f)):
        out = tmp_path / f"c{focal}"
        run_capture(CaptureConfig(sheet=sheet.manifest_path, images=photos, out=out, window=False, device="cpu",
                                  focal_px=focal), show_progress=False)
        for line in _lines(out):
            truth = frame["tiles_seen"][line["tile_id"]]
            assert abs(line["distance_mm"] / truth["distance_mm"] - ratio) < 0.03, (focal, line, truth)
            if focal is not None:
                assert abs(line["angle_deg"] - truth["angle_deg"]) < 2.0, (line, truth)


def test_box_crops_classify_the_controls_correctly(sheet, photos, tmp_path):
    out = tmp_path / "b"
    result = run_capture(CaptureConfig(sheet=sheet.manifest_path, images=photos[0], out=out, window=False,
                                       crop="box", max_frames=10, device="cpu"), show_progress=False)
    assert result.frames == 10
    lines = [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]
    truth = {"02": "stop", "04": "speed limit 50"}
    controls = [line["pred"] == truth[line["tile_id"]] for line in lines if line["found"] and line["tile_id"] in truth]
    assert len(controls) >= 18 and np.mean(controls) >= 0.9


# --- each tile with its own model -----------------------------------------------------------


@pytest.fixture(scope="module")
def two_model_sheet(tmp_path_factory):
    """Tiles 01/02 (stop) name ``signs``; tiles 03/04 (speed limit 50) name a model that reads
    speed limit 50 as speed limit 30."""
    root = tmp_path_factory.mktemp("two-models")
    swapped = install_swapped_model(root / "modules")
    sheet = make_test_sheet(root, runs=(("stop", "signs"), ("speed limit 50", swapped)))
    frames = root / "sim"
    simulate(SimulateConfig(pdf=sheet.pdf, out=frames, n=4, seed=8), show_progress=False)
    return sheet, frames, swapped


def _lines(out):
    return [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]


def test_each_tile_is_classified_by_the_model_its_manifest_names(two_model_sheet, tmp_path):
    sheet, frames, swapped = two_model_sheet
    out = tmp_path / "s"
    run_capture(CaptureConfig(sheet=sheet.manifest_path, images=frames, out=out, window=False, device="cpu"), show_progress=False)
    found = [line for line in _lines(out) if line["found"]]
    assert {line["tile_id"] for line in found} == {"01", "02", "03", "04"}
    for line in found:
        assert line["model"] == ("signs" if line["tile_id"] in ("01", "02") else swapped)
    stop_control = [line["pred"] for line in found if line["tile_id"] == "02"]
    other_control = [line["pred"] for line in found if line["tile_id"] == "04"]
    assert stop_control.count("stop") >= 0.75 * len(stop_control)  # signs reads stop as stop
    assert other_control.count("speed limit 30") >= 0.75 * len(other_control)  # the swapped model's reading
    record = json.loads((out / "session.json").read_text())
    assert record["models"] == {"signs": {"input_size": 64, "tiles": ["01", "02"]}, swapped: {"input_size": 64, "tiles": ["03", "04"]}}
    assert record["model_override"] is None
    assert record["counts"]["04"]["fooled"] >= 0.75 * record["counts"]["04"]["found"]  # not its true class


def test_model_option_classifies_every_tile_and_is_recorded(two_model_sheet, tmp_path):
    sheet, frames, _ = two_model_sheet
    out = tmp_path / "s"
    run_capture(CaptureConfig(sheet=sheet.manifest_path, images=frames, out=out, window=False, device="cpu", model="signs"),
                show_progress=False)
    found = [line for line in _lines(out) if line["found"]]
    assert {line["model"] for line in found} == {"signs"}
    other_control = [line["pred"] for line in found if line["tile_id"] == "04"]
    assert other_control.count("speed limit 50") >= 0.75 * len(other_control)
    record = json.loads((out / "session.json").read_text())
    assert record["model_override"] == "signs" and list(record["models"]) == ["signs"]


def test_a_tile_class_its_model_lacks_is_an_error_naming_the_closest(sheet, photos, tmp_path):
    manifest = json.loads(sheet.manifest_path.read_text())
    manifest["tiles"][1]["true_class"] = "stpo"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="did you mean 'stop'"):
        run_capture(CaptureConfig(sheet=bad, images=photos[0], out=tmp_path / "s", window=False, device="cpu"), show_progress=False)


# --- which (frame, tile) pairs get a line ---------------------------------------------------


@pytest.fixture(scope="module")
def composed(sheet, tmp_path_factory):
    """Three photos made from the rendered page: one copy of the sheet, two copies side by
    side, and an empty table."""
    page = render_pages(sheet.pdf, 61)[0]  # A4 at 61 dpi: 504 x 713 px
    h, w = page.shape[:2]
    folder = tmp_path_factory.mktemp("composed")
    one = np.full((720, 1280, 3), 90, np.uint8)
    one[3 : 3 + h, 380 : 380 + w] = page
    two = np.full((720, 1280, 3), 90, np.uint8)
    two[3 : 3 + h, 80 : 80 + w] = page
    two[3 : 3 + h, 680 : 680 + w] = page
    cv2.imwrite(str(folder / "a_one_copy.png"), one)
    cv2.imwrite(str(folder / "b_two_copies.png"), two)
    cv2.imwrite(str(folder / "c_no_sheet.png"), np.full((720, 1280, 3), 90, np.uint8))
    out = folder / "cap"
    run_capture(CaptureConfig(sheet=sheet.manifest_path, images=folder, out=out, window=False, device="cpu"), show_progress=False)
    return out, _lines(out)


def test_one_copy_of_the_sheet_is_found(composed):
    _, lines = composed
    first = [line for line in lines if line["frame"] == 0]
    assert len(first) == 4 and all(line["found"] for line in first)


def test_a_second_copy_of_the_sheet_makes_its_markers_ambiguous(composed, sheet):
    _, lines = composed
    second = [line for line in lines if line["frame"] == 1]
    assert len(second) == 4
    ids = {t["tile_id"]: t["marker_ids"] for t in sheet.manifest["tiles"]}
    for line in second:
        assert not line["found"] and "ambiguous" in line["reason"]
        assert line["ambiguous_markers"] == ids[line["tile_id"]] and line["markers_used"] == []


def test_a_frame_without_the_sheet_adds_no_line(composed):
    out, lines = composed
    assert not [line for line in lines if line["frame"] == 2]
    record = json.loads((out / "session.json").read_text())
    assert record["frames"] == 3
    assert {c["frames"] for c in record["counts"].values()} == {2}  # frames with its page in view


def test_a_capture_in_which_every_marker_is_ambiguous_is_a_one_line_error_and_writes_nothing(capsys, composed, tmp_path):
    folder = composed[0].parent
    only_two = tmp_path / "two"
    only_two.mkdir()
    (only_two / "b_two_copies.png").write_bytes((folder / "b_two_copies.png").read_bytes())
    (only_two / "c_no_sheet.png").write_bytes((folder / "c_no_sheet.png").read_bytes())
    out = tmp_path / "cap"
    code, _, err = run_cli(capsys, "capture", "--sheet", str(composed_sheet_manifest(composed)), "--images", str(only_two),
                           "--out", str(out), "--no-window", "--device", "cpu")
    assert_one_line_error(code, err, "every one was seen more than once")
    assert not out.exists()


def composed_sheet_manifest(composed):
    return json.loads((composed[0] / "session.json").read_text())["sheet"]


def test_video_source(sheet, tmp_path):
    video = tmp_path / "v.mp4"
    simulate(SimulateConfig(pdf=sheet.pdf, out=tmp_path / "frames", n=6, video=video), show_progress=False)
    result = run_capture(CaptureConfig(sheet=sheet.manifest_path, video=video, out=tmp_path / "cap", window=False, device="cpu"),
                         show_progress=False)
    assert result.frames == 6
    lines = (tmp_path / "cap" / "detections.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["source"] == {"file": str(video), "frame_index": 5}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_killed_capture_leaves_a_readable_log(sheet, photos, tmp_path, sig):
    many = tmp_path / "many"
    many.mkdir()
    for i in range(400):  # enough frames to still be running when the signal arrives
        os.symlink(photos[0] / f"frame_{i % 40:04d}.jpg", many / f"f{i:04d}.jpg")
    out = tmp_path / "s"
    proc = subprocess.Popen([sys.executable, "-m", "physical_adv", "capture", "--sheet", str(sheet.manifest_path),
                             "--images", str(many), "--out", str(out), "--no-window", "--device", "cpu"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=default_sigint)
    log = out / "detections.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and (not log.exists() or log.stat().st_size < 20_000):
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.wait(timeout=30)
    text = log.read_text()
    complete = text.splitlines() if text.endswith("\n") else text.splitlines()[:-1]
    assert len(complete) >= 8
    for line in complete:
        json.loads(line)
    if sig == signal.SIGINT:
        assert proc.returncode == 0
        assert json.loads((out / "session.json").read_text())["ended"] == "interrupted"






def test_missing_manifest(capsys, tmp_path):
    code, _, err = run_cli(capsys, "capture", "--sheet", str(tmp_path / "none.json"), "--images", str(tmp_path), "--no-window")
    assert_one_line_error(code, err, "manifest not found")


def test_corrupt_manifest(capsys, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": 1, "tiles": [')
    code, _, err = run_cli(capsys, "capture", "--sheet", str(bad), "--images", str(tmp_path), "--no-window")
    assert_one_line_error(code, err, "cannot read sheet manifest")


def test_empty_folder(capsys, sheet, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hi")
    code, _, err = run_cli(capsys, "capture", "--sheet", str(sheet.manifest_path), "--images", str(tmp_path / "empty"), "--no-window",
                        "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, "no images")


def test_unreadable_video(capsys, sheet, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all")
    code, _, err = run_cli(capsys, "capture", "--sheet", str(sheet.manifest_path), "--video", str(bad), "--no-window",
                        "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, "cannot read")


def test_camera_that_cannot_be_opened(capsys, sheet, tmp_path):
    code, _, err = run_cli(capsys, "capture", "--sheet", str(sheet.manifest_path), "--camera", "97", "--no-window",
                        "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, "cannot open camera 97")


def test_a_bad_aruco_dictionary_in_the_manifest_is_a_one_line_error(capsys, sheet, tmp_path):
    manifest = json.loads(sheet.manifest_path.read_text())
    manifest["aruco_dictionary"] = "DICT_9X9_7"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(manifest))
    code, _, err = run_cli(capsys, "capture", "--sheet", bad, "--images", tmp_path, "--no-window", "--out", tmp_path / "o")
    assert_one_line_error(code, err, "unknown ArUco dictionary 'DICT_9X9_7'")


def test_simulate_missing_pdf(capsys, tmp_path):
    code, _, err = run_cli(capsys, "simulate", str(tmp_path / "none.pdf"), "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, "not found")


@pytest.mark.gui
def test_live_window_runs_on_a_virtual_display(sheet, photos, tmp_path):
    import shutil

    if not shutil.which("xvfb-run"):
        pytest.skip("xvfb-run is not installed (apt-get install xvfb)")
    out = tmp_path / "w"
    proc = subprocess.run(["xvfb-run", "-a", "-s", "-screen 0 1600x900x24", sys.executable, "-m", "physical_adv", "capture",
                           "--sheet", str(sheet.manifest_path), "--images", str(photos[0]), "--out", str(out),
                           "--max-frames", "5", "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "without the live window" not in proc.stderr  # the window really opened
    assert json.loads((out / "session.json").read_text())["frames"] == 5


@pytest.mark.parametrize("damage", [
    lambda m: m["tiles"][0].pop("model"),
    lambda m: m.pop("pages"),
    lambda m: m.pop("sheet_id"),
    lambda m: m["tiles"][0].__setitem__("marker_ids", [9999]),
    lambda m: m["markers"][0].pop("center_mm"),
    lambda m: m["page"].__setitem__("size_mm", "A4"),
])
def test_a_manifest_missing_a_field_is_a_one_line_error_for_capture_and_simulate(capsys, sheet, tmp_path, damage):
    manifest = json.loads(sheet.manifest_path.read_text())
    damage(manifest)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(manifest))
    code, _, err = run_cli(capsys, "capture", "--sheet", bad, "--images", tmp_path, "--no-window", "--out", tmp_path / "o")
    assert_one_line_error(code, err, "not a valid sheet manifest")
    code, _, err = run_cli(capsys, "simulate", sheet.pdf, "--manifest", bad, "--out", tmp_path / "s", "--n", "1")
    assert_one_line_error(code, err, "not a valid sheet manifest")


# --- the calibration chart ----------------------------------------------------------------

CHANNEL = {"saturation": 0.8, "black": 0.12, "white": 0.9, "tone": 5.0, "tint": (0.0, 0.01, 0.02),
           "exposure": 1.0, "white_balance": (1.0, 1.0, 1.0), "gamma": 1.0, "lighting": 0.0}


def _printed_grey(v: float, c: int) -> float:
    """simulate's print of grey ``v`` (0-1) in channel ``c`` (RGB) under CHANNEL, seen by its camera (0-255)."""
    k, black, white = CHANNEL["tone"], CHANNEL["black"], CHANNEL["white"]
    lo, hi = 1 / (1 + np.exp(k * 0.5)), 1 / (1 + np.exp(-k * 0.5))
    curve = 1 / (1 + np.exp(-k * (v - 0.5)))
    return 255 * (black + (white - black) * (0.5 * v + 0.5 / (hi - lo) * (curve - lo))) * (1 - CHANNEL["tint"][c])


def test_the_chart_is_read_in_the_photos_and_its_greys_are_the_printed_ones(sheet, tmp_path):
    from physical_adv.simulate import Channel

    photos = tmp_path / "p"
    simulate(SimulateConfig(pdf=sheet.pdf, out=photos, n=12, seed=9, channel=Channel(**CHANNEL)), show_progress=False)
    out = tmp_path / "c"
    run_capture(CaptureConfig(sheet=sheet.manifest_path, images=photos, out=out, window=False, device="cpu"), show_progress=False)
    readings = [json.loads(line) for line in (out / "chart.jsonl").read_text().splitlines()]
    chart = sheet.manifest["calibration"]
    assert len(readings) >= 10 and all(len(r["rgb"]) == len(chart["patches"]) for r in readings)
    errors = []
    for r in readings:
        for patch, seen in zip(chart["patches"], r["rgb"]):
            if seen is not None and len(set(patch["rgb"])) == 1:  # a grey patch
                errors += [seen[c] - _printed_grey(patch["rgb"][0] / 255, c) for c in range(3)]
    assert len(errors) > 500 and np.median(np.abs(errors)) < 3.0 and np.percentile(np.abs(errors), 95) < 8.0, (
        np.median(np.abs(errors)), np.percentile(np.abs(errors), 95))


def test_a_sheet_without_the_chart_writes_no_chart_log(tmp_path):
    sheet = make_sheet(SheetConfig(runs=tuple(str(write_run(tmp_path / f"r{i}", s, seed=i)) for i, s in enumerate(("stop",))),
                                   out=tmp_path / "s.pdf", previews=False, calibration=False))
    assert sheet.manifest["calibration"] is None
    photos = tmp_path / "p"
    simulate(SimulateConfig(pdf=sheet.pdf, out=photos, n=2, seed=1), show_progress=False)
    run_capture(CaptureConfig(sheet=sheet.manifest_path, images=photos, out=tmp_path / "c", window=False, device="cpu"),
                show_progress=False)
    assert not (tmp_path / "c" / "chart.jsonl").exists()
