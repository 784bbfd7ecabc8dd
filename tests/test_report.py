"""Report: clustered intervals, destruction rates, denominators, pooling, truncated logs, bad inputs and the
HTML file, on capture folders written by hand (the demo's own report is tested in test_demo.py)."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import assert_one_line_error, dump_dom, run_cli
from physical_adv.report import compute_report, pool
from physical_adv.stats import wilson_interval


@pytest.mark.parametrize(
    "k, n, expected",
    [
        (0, 10, (0.0, 0.2775)),      # hand-computed: z = 1.96
        (10, 10, (0.7225, 1.0)),
        (5, 10, (0.2366, 0.7634)),
        (81, 100, (0.7222, 0.8749)),
    ],
)
def test_wilson_interval_matches_hand_computed_values(k, n, expected):
    lo, hi = wilson_interval(k, n)
    assert abs(lo - expected[0]) < 5e-4 and abs(hi - expected[1]) < 5e-4


def test_wilson_interval_of_nothing_is_everything():
    assert wilson_interval(0, 0) == (0.0, 1.0)


# --- synthetic capture folders: a manifest and a log written by hand ---------------------------

SQUARE = [[0.0, 0.0], [100.0, 0.0], [100.0, 100.0], [0.0, 100.0]]
FILLER = ["give way", "no entry", "one way", "pedestrians", "roadworks"]


def _tile(tile_id, kind, run, digital_top5, true="stop", target=None):
    return {"tile_id": tile_id, "page": 1, "kind": kind, "run": run, "model": "signs", "true_class": true,
            "target_class": target, "bbox_mm": [0, 0, 40, 40], "marker_ids": [4 * int(tile_id) + i for i in range(4)],
            "digital": None if digital_top5 is None else {"pred": digital_top5[0], "top5": digital_top5}}


def _top5(*first):
    return list(first) + [c for c in FILLER if c not in first][: 5 - len(first)]


def _line(frame, tile_id, top5=None, pose=None, reason="no marker visible", time=None):
    """One log line as capture writes it; ``top5=None`` is a tile not found. ``pose`` shifts the
    tile's corners by 50 px per unit (a distinct view); by default each frame is its own pose."""
    line = {"frame": frame, "time": round(1000.0 + 0.04 * frame, 3) if time is None else time, "tile_id": tile_id}
    if top5 is None:
        return {**line, "found": False, "markers_used": [], "reason": reason}
    shift = 50.0 * (frame if pose is None else pose)
    return {**line, "found": True, "markers_used": [0, 1, 2, 3], "corners_px": [[x + shift, y] for x, y in SQUARE],
            "pred": top5[0], "confidence": 0.9, "top5": [{"class": c, "prob": round(0.9 / (i + 1), 3)} for i, c in enumerate(top5)]}


def write_capture(folder, tiles, lines, sheet_id="synthetic", tags=None, crops=False, source=None):
    """A capture folder as ``capture`` writes it; with ``crops``, a small PNG for each found tile of frame 0."""
    folder.mkdir(parents=True, exist_ok=True)
    if crops:
        lines = [dict(l) for l in lines]
        for l in lines:
            if l["found"] and l["frame"] == 0:
                l["crop"] = f"crops/{l['tile_id']}/frame_000000.png"
                (folder / l["crop"]).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((8, 8, 3), 30 * int(l["tile_id"]), np.uint8)).save(folder / l["crop"])
    (folder / "session.json").write_text(json.dumps({
        "manifest": {"sheet_id": sheet_id, "tiles": tiles, "markers": []}, "tags": tags or {}, "source": source or {"kind": "images"}}))
    (folder / "detections.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
    return folder


def _copies_log(copies, photos=10, fooled=7):
    """``photos`` distinct photos of one adversarial tile and its control, each logged ``copies``
    times in a row with identical corners (a still pose filmed for ``copies`` frames)."""
    lines = []
    for frame in range(photos * copies):
        photo = frame // copies if copies > 1 else frame
        adv = _top5("yield") if photo % photos < fooled else _top5("stop")
        lines += [_line(frame, "01", adv, pose=photo), _line(frame, "02", _top5("stop"), pose=photo)]
    return lines


PAIR = [_tile("01", "adversarial", "runs/a", _top5("yield")), _tile("02", "clean", "runs/a", _top5("stop"))]


def _width(ci):
    return ci[1] - ci[0]


def test_copied_frames_give_the_interval_of_the_distinct_photos_not_of_the_frames(tmp_path):
    report = compute_report(pool([write_capture(tmp_path / "c", PAIR, _copies_log(copies=30))]))
    adv = report["tiles"][0]
    assert adv["frames"] == 300 and adv["untargeted_success"] == pytest.approx(0.7)  # the per-frame point estimate
    ten_photos = _width(wilson_interval(7, 10))
    assert abs(_width(adv["ci"]["untargeted_success"]) - ten_photos) <= 0.1 * ten_photos
    assert _width(wilson_interval(210, 300)) < 0.5 * ten_photos  # what treating frames as trials would give
    rate = adv["rates"]["untargeted_success"]
    assert rate["clusters"] == 10 and rate["n_eff"] == pytest.approx(10.0) and rate["method"] == "wilson-design-effect"
    assert report["intervals"]["method"] == "wilson-design-effect"


def test_a_flickering_detection_does_not_split_a_held_pose(tmp_path):
    # every 7th frame tile 01 is lost (a marker flickers out); the held poses are still 10 trials
    lines = [_line(l["frame"], "01", None) if l["tile_id"] == "01" and l["frame"] % 7 == 3 else l
             for l in _copies_log(copies=30)]
    tile = compute_report(pool([write_capture(tmp_path / "c", PAIR, lines)]))["tiles"][0]
    assert tile["found"] < 300 and tile["rates"]["untargeted_success"]["clusters"] == 10
    assert tile["rates"]["untargeted_success"]["n_eff"] < 11


def test_a_video_of_held_poses_processed_slowly_still_counts_each_pose_once(tmp_path):
    # capture took 2 s per frame (wall clock), but the video was filmed at 30 fps
    lines = [{**l, "time": 1000.0 + 2.0 * l["frame"], "source": {"file": "v.mp4", "frame_index": l["frame"]}}
             for l in _copies_log(copies=30)]
    capture = write_capture(tmp_path / "c", PAIR, lines, source={"kind": "video", "file": "v.mp4", "fps": 30.0})
    rate = compute_report(pool([capture]))["tiles"][0]["rates"]["untargeted_success"]
    assert rate["clusters"] == 10 and rate["n_eff"] == pytest.approx(10.0)


def test_distinct_frames_keep_the_plain_wilson_interval(tmp_path):
    report = compute_report(pool([write_capture(tmp_path / "c", PAIR, _copies_log(copies=1, photos=300, fooled=210))]))
    adv = report["tiles"][0]
    plain = _width(wilson_interval(210, 300))
    assert adv["rates"]["untargeted_success"]["n_eff"] == pytest.approx(300.0)
    assert abs(_width(adv["ci"]["untargeted_success"]) - plain) <= 0.1 * plain


def test_all_successes_over_copied_frames_count_each_photo_once(tmp_path):
    report = compute_report(pool([write_capture(tmp_path / "c", PAIR, _copies_log(copies=30, fooled=10))]))
    assert report["tiles"][0]["ci"]["untargeted_success"] == pytest.approx(list(wilson_interval(10, 10)), abs=1e-4)
    assert report["summary"]["adversarial"]["untargeted_success"]["n_eff"] == pytest.approx(10.0)


def test_by_tag_breakdown_uses_clustered_intervals(tmp_path, capsys):
    a = write_capture(tmp_path / "a", PAIR, _copies_log(copies=30), tags={"light": "office"})
    b = write_capture(tmp_path / "b", PAIR, _copies_log(copies=30, fooled=3), tags={"light": "dim"})
    report = compute_report(pool([a, b]), by="light")
    office = report["by"]["groups"]["office"][0]
    assert office["rates"]["untargeted_success"]["n_eff"] == pytest.approx(10.0)
    assert office["ci"]["untargeted_success"] == pytest.approx(list(wilson_interval(7, 10)), abs=1e-4)
    code, out, err = run_cli(capsys, "report", a, b, "--by", "light", "--out", tmp_path / "pooled")
    assert code == 0, err
    lo, hi = wilson_interval(7, 10)
    assert f"70.0 % [{100 * lo:.1f}, {100 * hi:.1f}]" in out  # office, tile 01, in the terminal breakdown


# Destruction rate, by hand. True class "stop" everywhere. Digital top-5 on the sheet:
#   run A: clean [stop, …]      adv [yield, …]          → eligible top-1 and top-5
#   run B: clean [stop, …]      adv [yield, stop, …]    → eligible top-1; top-5 not (stop in the adv top-5)
#   run C: clean [yield, …]     adv [yield, …]          → not eligible (clean wrong digitally)
#   run D: clean [stop, …]      adv [yield, …]          → eligible, but its adversarial tile is never found
# Photos (5 frames; ✓1 = top-1 stop, ✓5 = stop in top-5):
#   frame:     0              1                2                3                4
#   A adv   [stop] ✓1✓5   [yield,stop] ✓5  [yield] ✗       [yield] ✗        [stop] ✓1✓5
#   A clean [stop] ✓1✓5   [yield,stop] ✓5  not found       [stop] ✓1✓5     [pedestrians…] ✗
#   B adv   [stop] ✓1     [stop] ✓1        [yield,stop] ✗1 [stop] ✓1        not found
#   B clean [stop] ✓      [stop] ✓         [stop] ✓        [stop] ✓         [stop] ✓
#   C adv   [stop]        …  (ineligible: never counted)
#   D adv   never found;  D clean [stop] every frame
# Top-1: A 2/5 = 0.4; paired (clean ✓1 in frames 0, 3): adv ✓1 in frame 0 only → 1/2.
#        B 3/4 = 0.75; paired (clean ✓1 in all, adv found in 0–3) → 3/4.  D undefined (0 photos).
#        per photo over A, B, D: (2 + 3 + 0) / (5 + 4 + 0) = 5/9; per run mean (0.4 + 0.75) / 2 = 0.575
#        paired per photo (1 + 3) / (2 + 4) = 4/6; per run mean (0.5 + 0.75) / 2 = 0.625
# Top-5: eligible A and D. A 3/5 = 0.6; paired (clean ✓5 in frames 0, 1, 3): adv ✓5 in 0, 1 → 2/3.
#        per photo 3/5; per run mean 0.6 (one run with a rate); paired 2/3.
STOP_ADV = {
    "01": [_top5("stop", "yield"), _top5("yield", "stop"), _top5("yield"), _top5("yield"), _top5("stop")],
    "02": [_top5("stop"), _top5("yield", "stop"), None, _top5("stop"), ["pedestrians", "yield", "give way", "no entry", "one way"]],
    "03": [_top5("stop"), _top5("stop"), _top5("yield", "stop"), _top5("stop"), None],
    "04": [_top5("stop")] * 5,
    "05": [_top5("stop")] * 5,
    "06": [_top5("yield")] * 5,
    "07": [None] * 5,
    "08": [_top5("stop")] * 5,
}
RUNS = [
    _tile("01", "adversarial", "runs/A", _top5("yield")), _tile("02", "clean", "runs/A", _top5("stop")),
    _tile("03", "adversarial", "runs/B", _top5("yield", "stop")), _tile("04", "clean", "runs/B", _top5("stop")),
    _tile("05", "adversarial", "runs/C", _top5("yield")), _tile("06", "clean", "runs/C", _top5("yield")),
    _tile("07", "adversarial", "runs/D", _top5("yield")), _tile("08", "clean", "runs/D", _top5("stop")),
]


def _hand_log():
    return [_line(frame, tid, tops[frame]) for frame in range(5) for tid, tops in STOP_ADV.items()]


def test_destruction_rate_matches_hand_computed_values(tmp_path):
    report = compute_report(pool([write_capture(tmp_path / "c", RUNS, _hand_log())]))
    runs = {r["run"]: r for r in report["runs"]}
    a1, b1, c1, d1 = (runs[f"runs/{x}"]["destruction_top1"] for x in "ABCD")
    assert (a1["k"], a1["n"], a1["rate"]) == (2, 5, pytest.approx(0.4))
    assert (a1["paired"]["k"], a1["paired"]["n"]) == (1, 2)
    assert (b1["k"], b1["n"], b1["paired"]["k"], b1["paired"]["n"]) == (3, 4, 3, 4)
    assert c1["eligible"] is False and c1["rate"] is None and "clean image is misclassified" in c1["reason"]
    assert d1["eligible"] is True and d1["rate"] is None and d1["paired"]["rate"] is None and "never found" in d1["reason"]
    s1 = report["summary"]["destruction_top1"]
    assert s1["runs"] == 3 and (s1["k"], s1["n"]) == (5, 9) and s1["rate"] == pytest.approx(5 / 9)
    assert s1["ci95"] == pytest.approx(list(wilson_interval(5, 9)), abs=1e-4)  # every photo a distinct pose
    assert s1["per_run"] == {"mean": pytest.approx(0.575), "runs": 2}
    assert (s1["paired"]["k"], s1["paired"]["n"]) == (4, 6) and s1["paired"]["per_run"]["mean"] == pytest.approx(0.625)

    a5, b5, d5 = (runs[f"runs/{x}"]["destruction_top5"] for x in "ABD")
    assert b5["eligible"] is False and "does not fool" in b5["reason"] and b5["rate"] is None
    assert (a5["k"], a5["n"], a5["paired"]["k"], a5["paired"]["n"]) == (3, 5, 2, 3)
    assert d5["eligible"] is True and d5["rate"] is None
    s5 = report["summary"]["destruction_top5"]
    assert s5["runs"] == 2 and (s5["k"], s5["n"]) == (3, 5) and s5["per_run"] == {"mean": pytest.approx(0.6), "runs": 1}
    assert (s5["paired"]["k"], s5["paired"]["n"]) == (2, 3)


def test_report_prints_undefined_rates_instead_of_crashing(tmp_path, capsys):
    # only run D is eligible and its adversarial tile was never found: every destruction rate is undefined
    capture = write_capture(tmp_path / "c", RUNS[4:], [l for l in _hand_log() if l["tile_id"] in {"05", "06", "07", "08"}])
    code, out, err = run_cli(capsys, "report", capture)
    assert code == 0, err
    assert "undefined (the adversarial tile was never found)" in out
    report = json.loads((capture / "report.json").read_text())
    d1 = report["summary"]["destruction_top1"]
    assert d1["runs"] == 1 and d1["rate"] is None and d1["paired"]["rate"] is None
    never = next(t for t in report["tiles"] if t["tile_id"] == "07")
    assert never["untargeted_success"] is None and never["found"] == 0
    html_text = (capture / "report.html").read_text()
    assert "undefined: the adversarial tile was never found" in html_text
    assert "Wilson interval on the effective sample size" in html_text


def test_table_title_states_the_interval_method(tmp_path, capsys):
    code, out, _ = run_cli(capsys, "report", write_capture(tmp_path / "c", PAIR, _copies_log(copies=3)))
    assert code == 0 and "effective sample size" in out


def test_pooling_several_sessions_needs_out_and_leaves_the_sessions_alone(tmp_path, capsys):
    a = write_capture(tmp_path / "a", PAIR, _copies_log(copies=2))
    b = write_capture(tmp_path / "b", PAIR, _copies_log(copies=2, fooled=3))
    (a / "report.json").write_text('{"mine": 1}')
    code, _, err = run_cli(capsys, "report", a, b)
    assert_one_line_error(code, err, "--out")
    code, _, err = run_cli(capsys, "report", a, b, "--out", tmp_path / "pooled")
    assert code == 0, err
    pooled = json.loads((tmp_path / "pooled" / "report.json").read_text())
    assert len(pooled["sessions"]) == 2 and (tmp_path / "pooled" / "report.html").is_file()
    assert (a / "report.json").read_text() == '{"mine": 1}' and not (b / "report.json").exists()
    assert not (a / "report.html").exists()


def test_frames_with_the_page_out_of_view_are_not_in_the_denominator(tmp_path):
    lines = [_line(0, "01", _top5("yield")), _line(0, "02", _top5("stop")),
             # a line for a tile whose page was not in view (not an observation)
             _line(1, "01", None, reason="page not in view"), _line(1, "02", _top5("stop")),
             # no marker of the sheet seen at all: older captures logged every tile not found
             _line(2, "01", None), _line(2, "02", None),
             # the page in view but tile 01's markers hidden: a real miss
             {**_line(3, "01", None), "markers_used": []}, _line(3, "02", _top5("stop")),
             # the page in view, but every marker seen twice (a second copy of the sheet): real misses
             _line(4, "01", None, reason="its markers were seen more than once (ambiguous)"),
             _line(4, "02", None, reason="its markers were seen more than once (ambiguous)")]
    report = compute_report(pool([write_capture(tmp_path / "c", PAIR, lines)]))
    adv, clean = report["tiles"]
    assert (adv["found"], adv["frames"]) == (1, 3) and adv["detection_rate"] == pytest.approx(1 / 3)
    assert (clean["found"], clean["frames"], clean["detection_rate"]) == (3, 4, 0.75)
    assert report["sessions"][0]["not_in_view_lines"] == 3


def test_report_json_has_documented_shape(tmp_path):
    report = compute_report(pool([write_capture(tmp_path / "c", RUNS, _hand_log())]))
    for t in report["tiles"]:
        assert {"tile_id", "kind", "run", "true_class", "target_class", "found", "frames",
                "targeted_success", "untargeted_success", "accuracy", "ci", "rates"} <= set(t)
        for rate in t["rates"].values():
            assert {"k", "n", "rate", "clusters", "n_eff", "ci95", "method"} <= set(rate)
    assert {"adversarial", "clean", "destruction_top1", "destruction_top5"} <= set(report["summary"])
    assert {"found", "targeted_success", "untargeted_success"} <= set(report["summary"]["adversarial"])
    assert report["runs"] and "destruction_top1" in report["runs"][0] and "destruction_top5" in report["runs"][0]


def test_pooling_two_sessions_equals_one_session_of_the_same_lines(tmp_path):
    lines = _hand_log()
    one = compute_report(pool([write_capture(tmp_path / "all", RUNS, lines)]))
    half = len(lines) // 2
    two = compute_report(pool([write_capture(tmp_path / "a", RUNS, lines[:half]), write_capture(tmp_path / "b", RUNS, lines[half:])]))
    # every count and rate is the same; an interval may widen where a segment (here tile 07's run
    # of misses) is cut in two by the session boundary, since segments never span sessions
    assert _counts(one["tiles"]) == _counts(two["tiles"]) and _counts(one["summary"]) == _counts(two["summary"])
    assert one["tiles"][0]["ci"] == two["tiles"][0]["ci"]  # tile 01: every frame its own segment either way


def _counts(value):
    """``value`` without what depends on the clustering (intervals, clusters, ICC, n_eff)."""
    if isinstance(value, dict):
        return {k: _counts(v) for k, v in value.items() if k not in {"ci", "ci95", "clusters", "icc", "n_eff"}}
    if isinstance(value, list):
        return [_counts(v) for v in value]
    return value


def test_truncated_log_still_reports_and_counts_skipped_lines(tmp_path, capsys):
    capture = write_capture(tmp_path / "cut", RUNS, _hand_log())
    text = (capture / "detections.jsonl").read_text()
    (capture / "detections.jsonl").write_text(text[: len(text) - 40])  # killed in the middle of the last line
    code, out, err = run_cli(capsys, "report", capture)
    assert code == 0, err
    report = json.loads((capture / "report.json").read_text())
    assert report["skipped_lines"] == 1
    assert sum(t["frames"] for t in report["tiles"]) == len(text.splitlines()) - 1
    assert "1 incomplete log line" in out


@pytest.fixture
def html_report(tmp_path, capsys):
    capture = write_capture(tmp_path / "c", RUNS, _hand_log(), crops=True, tags={"light": "office"})
    code, _, err = run_cli(capsys, "report", capture, "--by", "light")
    assert code == 0, err
    return capture / "report.html"


def test_html_report_is_self_contained_and_shows_every_tile(html_report):
    html = html_report.read_text()
    assert "<script src" not in html and 'src="http' not in html
    for tile_id in ("01", "02", "03", "04", "05", "06", "07", "08"):
        assert f'data-tile="{tile_id}"' in html
    assert html.count("data:image/png;base64,") >= 3
    assert "By light" in html and "not eligible: the clean image is misclassified digitally" in html


def test_html_report_states_the_counting_rule_and_the_interval_method(html_report):
    html = html_report.read_text()
    assert "detection rate = found / lines logged" in html and "survival rates are over found observations only" in html
    assert "one-way ANOVA" in html


def test_not_a_capture_directory(capsys, tmp_path):
    code, _, err = run_cli(capsys, "report", str(tmp_path))
    assert_one_line_error(code, err, "not a capture directory")


def test_empty_log(capsys, tmp_path):
    capture = write_capture(tmp_path / "c", RUNS, [])
    code, _, err = run_cli(capsys, "report", capture)
    assert_one_line_error(code, err, "no complete observation")


def test_manifest_that_does_not_match_the_log(capsys, tmp_path):
    capture = write_capture(tmp_path / "c", RUNS[:2], _hand_log())
    code, _, err = run_cli(capsys, "report", capture)
    assert_one_line_error(code, err, "does not have")


@pytest.mark.browser
def test_html_report_opens_in_headless_chromium(html_report, tmp_path):
    dom, stderr = dump_dom(html_report, tmp_path / "profile")
    for tile_id in ("01", "02", "03", "04"):
        assert f'data-tile="{tile_id}"' in dom
    assert "Uncaught" not in stderr


def test_class_names_spelled_differently_in_manifest_and_model_count_as_the_same_class(tmp_path):
    """A manifest written with ``Stop`` / ``Speed_Limit_80`` and a model that says ``stop`` /
    ``speed limit 80``: the report compares names by the one lookup's key, not by spelling."""
    tiles = [_tile("01", "adversarial", "r", None, true="Stop", target="Speed_Limit_80"),
             _tile("02", "clean", "r", None, true="Stop")]
    lines = [_line(0, "01", _top5("speed limit 80", "stop")), _line(0, "02", _top5("stop"))]
    report = compute_report(pool([write_capture(tmp_path / "c", tiles, lines)]))
    by_id = {t["tile_id"]: t for t in report["tiles"]}
    assert by_id["01"]["targeted_success"] == 1.0 and by_id["01"]["untargeted_success"] == 1.0
    assert by_id["02"]["accuracy"] == 1.0


def test_a_capture_folder_given_twice_is_refused(tmp_path, capsys):
    tiles = [_tile("01", "clean", "r", None)]
    folder = write_capture(tmp_path / "c", tiles, [_line(0, "01", _top5("stop"))])
    code, _, err = run_cli(capsys, "report", str(folder), str(tmp_path / "." / "c"), "--out", str(tmp_path / "out"))
    assert_one_line_error(code, err, "given twice")


def _override_capture(folder, override):
    tiles = [_tile("01", "adversarial", "r", _top5("yield")), _tile("02", "clean", "r", _top5("stop"))]
    folder = write_capture(folder, tiles, [_line(0, "01", _top5("stop")), _line(0, "02", _top5("stop"))])
    record = json.loads((folder / "session.json").read_text())
    record["model_override"] = override
    (folder / "session.json").write_text(json.dumps(record))
    return folder


def test_photos_classified_by_another_model_do_not_enter_the_destruction_rate(tmp_path):
    report = compute_report(pool([_override_capture(tmp_path / "c", "torchvision:resnet18")]))
    run = report["runs"][0]["destruction_top1"]
    assert run["eligible"] is False and "capture --model" in run["reason"]
    assert report["summary"]["destruction_top1"]["runs"] == 0
    same = compute_report(pool([_override_capture(tmp_path / "d", "signs")]))  # the tiles' own model: still eligible
    assert same["runs"][0]["destruction_top1"]["eligible"] is True


def test_sessions_classified_by_different_models_are_not_pooled(tmp_path, capsys):
    a = _override_capture(tmp_path / "a", None)
    b = _override_capture(tmp_path / "b", "torchvision:resnet18")
    code, _, err = run_cli(capsys, "report", str(a), str(b), "--out", str(tmp_path / "out"))
    assert_one_line_error(code, err, "different models")


# --- black-box tiles (issue 11 item 4): the report says which attacks were black-box and at what query count ----

NES_10K = {"method": "nes", "queries": 10000, "budget": 10000, "budget_exhausted": True,
           "oracle": {"kind": "model", "spec": "signs", "mode": "scores", "top_k": 5, "budget": 10000, "queries": 10000}}


def _blackbox_tiles():
    """RUNS with run A black-box (NES, 10,000 queries), run B white-box, runs C and D from an older
    manifest that does not say."""
    tiles = [dict(t) for t in RUNS]
    tiles[0]["blackbox"], tiles[1]["blackbox"] = NES_10K, None
    tiles[2]["blackbox"], tiles[3]["blackbox"] = None, None
    return tiles


def test_report_says_per_tile_which_attack_was_black_box_and_its_queries(tmp_path, capsys):
    capture = write_capture(tmp_path / "c", _blackbox_tiles(), _hand_log())
    code, out, err = run_cli(capsys, "report", capture)
    assert code == 0, err
    tiles = {t["tile_id"]: t for t in json.loads((capture / "report.json").read_text())["tiles"]}
    assert [tiles[k]["attack"] for k in ("01", "02", "03", "05", "07")] == [
        "black-box NES, 10,000 queries", None, "white-box", "not recorded", "not recorded"]
    assert tiles["01"]["blackbox"] == NES_10K and tiles["03"]["blackbox"] is None and tiles["05"]["blackbox"] is None
    assert "attack" in out and "white-box" in out and "black-box" in out and "10,000" in out  # the table may wrap a cell
    html_text = (capture / "report.html").read_text()
    assert '<td class="attack">black-box NES, 10,000 queries</td>' in html_text
    assert html_text.count('<td class="attack">white-box</td>') == 1
    assert html_text.count('<td class="attack">not recorded</td>') == 2


def test_a_malformed_blackbox_entry_in_the_session_is_one_line_error(tmp_path, capsys):
    tiles = _blackbox_tiles()
    tiles[0]["blackbox"] = {"method": "nes"}  # no query count
    code, _, err = run_cli(capsys, "report", write_capture(tmp_path / "c", tiles, _hand_log()))
    assert_one_line_error(code, err, "blackbox entry")


def test_a_black_box_run_on_a_simulated_photo_is_reported_as_black_box(tmp_path, capsys):
    """End to end on real parts: a tiny black-box run (40 queries) and a white-box run on one sheet,
    one simulated photo (the held-out renderer), capture, report."""
    from physical_adv.attack.runner import AttackConfig, run_attack
    from physical_adv.capture import CaptureConfig, run_capture
    from physical_adv.report import ReportConfig, run_report
    from physical_adv.sheet import SheetConfig, make_sheet
    from physical_adv.simulate import SimulateConfig, simulate

    common = dict(source="sign:stop", target="speed limit 80", patch="square", patch_area=0.1, samples=4,
                  eval_samples=10, texture_size=128, device="cpu")
    bb = run_attack(AttackConfig(out=tmp_path / "bb", oracle="signs", budget=40, **common), show_progress=False)
    wb = run_attack(AttackConfig(out=tmp_path / "wb", steps=2, **common), show_progress=False)
    sheet = make_sheet(SheetConfig(runs=(str(bb.out), str(wb.out)), out=tmp_path / "s.pdf", previews=False))
    simulate(SimulateConfig(pdf=sheet.pdf, out=tmp_path / "photos", n=1, seed=0, max_tilt=10))
    capture = run_capture(CaptureConfig(sheet=sheet.manifest_path, images=tmp_path / "photos", out=tmp_path / "cap",
                                        window=False, device="cpu"))
    report, *_ = run_report(ReportConfig(captures=(capture.out,)))
    attack = {Path(t["run"]).name + ":" + t["kind"]: t["attack"] for t in report["tiles"]}
    assert attack == {"bb:adversarial": "black-box NES, 40 queries", "bb:clean": None,
                      "wb:adversarial": "white-box", "wb:clean": None}
    assert all(t["found"] == 1 for t in report["tiles"])  # the labelled sheet is still located in the photo
    assert next(t for t in report["tiles"] if t["attack"] and t["attack"].startswith("black-box"))["blackbox"]["queries"] == 40


def test_a_sheet_holding_two_models_is_compared_before_vs_after(tmp_path, capsys):
    """Runs against signs and signs-hardened on one sheet: a per-model breakdown pools each model's tiles."""
    hardened = [dict(t, model="signs-hardened", tile_id=f"0{int(t['tile_id']) + 2}", run="runs/h") for t in PAIR]
    lines = _copies_log(copies=1, photos=10, fooled=7)
    # the hardened model's adversarial tile fools it in 2 of the 10 photos, its control never
    lines += [_line(f, "03", _top5("yield" if f < 2 else "stop")) for f in range(10)]
    lines += [_line(f, "04", _top5("stop")) for f in range(10)]
    capture = write_capture(tmp_path / "c", PAIR + hardened, lines)
    code, out, err = run_cli(capsys, "report", capture)
    assert code == 0, err
    report = json.loads((capture / "report.json").read_text())
    before, after = report["by_model"]["signs"], report["by_model"]["signs-hardened"]
    assert before["adversarial"]["untargeted_success"]["rate"] == pytest.approx(0.7)
    assert after["adversarial"]["untargeted_success"]["rate"] == pytest.approx(0.2)
    assert before["clean"]["accuracy"]["rate"] == after["clean"]["accuracy"]["rate"] == 1.0
    assert {t["tile_id"]: t["model"] for t in report["tiles"]} == {"01": "signs", "02": "signs", "03": "signs-hardened",
                                                                     "04": "signs-hardened"}
    assert "by model" in out and "signs-hardened" in out
    assert "<h2>By model</h2>" in (capture / "report.html").read_text()
    single = compute_report(pool([write_capture(tmp_path / "one", PAIR, _copies_log(copies=1))]))
    assert "by_model" not in single
