"""Report: Wilson intervals, pooling, truncated logs, bad inputs, the HTML file, and the demo."""

import json
import shutil

import pytest

from helpers import assert_one_line_error, run_cli
from physical_adv.cli import main
from physical_adv.demo import DemoConfig, run_demo
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


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "d"
    report = run_demo(DemoConfig(out=out, steps=3, photos=8, device="cpu"))
    return out, report


def test_demo_writes_sheet_capture_and_report(demo):
    out, report = demo
    assert (out / "sheet.pdf").is_file() and (out / "sheet.json").is_file()
    assert (out / "capture" / "report.json").is_file() and (out / "capture" / "report.html").is_file()
    assert len(report["tiles"]) == 4 and report["schema"] == 1
    assert report["summary"]["clean"]["accuracy"]["rate"] >= 0.95


def test_report_json_has_documented_shape(demo):
    _, report = demo
    for t in report["tiles"]:
        assert {"tile_id", "kind", "run", "true_class", "target_class", "found", "frames",
                "targeted_success", "untargeted_success", "accuracy", "ci"} <= set(t)
    assert {"adversarial", "clean"} <= set(report["summary"])
    assert {"found", "targeted_success", "untargeted_success"} <= set(report["summary"]["adversarial"])
    assert report["runs"] and "destruction_top1" in report["runs"][0] and "destruction_top5" in report["runs"][0]


def test_pooling_two_sessions_equals_one_session_of_the_same_lines(demo, tmp_path):
    capture = demo[0] / "capture"
    lines = (capture / "detections.jsonl").read_text().splitlines(keepends=True)
    half = len(lines) // 2
    parts = []
    for name, chunk in (("a", lines[:half]), ("b", lines[half:])):
        d = tmp_path / name
        d.mkdir()
        shutil.copy(capture / "session.json", d / "session.json")
        (d / "detections.jsonl").write_text("".join(chunk))
        parts.append(d)
    one = compute_report(pool([capture]))
    two = compute_report(pool(parts))
    assert one["tiles"] == two["tiles"] and one["summary"] == two["summary"]


def test_truncated_log_still_reports_and_counts_skipped_lines(demo, tmp_path, capsys):
    capture = demo[0] / "capture"
    d = tmp_path / "cut"
    d.mkdir()
    shutil.copy(capture / "session.json", d / "session.json")
    text = (capture / "detections.jsonl").read_text()
    (d / "detections.jsonl").write_text(text[: len(text) - 40])  # killed in the middle of the last line
    with pytest.raises(SystemExit) as exc:
        main(["report", str(d)])
    assert exc.value.code == 0
    report = json.loads((d / "report.json").read_text())
    assert report["skipped_lines"] == 1
    assert sum(t["frames"] for t in report["tiles"]) == len(text.splitlines()) - 1
    assert "1 incomplete log line" in capsys.readouterr().out


def test_html_report_is_self_contained_and_shows_every_tile(demo):
    html = (demo[0] / "capture" / "report.html").read_text()
    assert "<script src" not in html and 'src="http' not in html
    for tile_id in ("01", "02", "03", "04"):
        assert f'data-tile="{tile_id}"' in html
    assert html.count("data:image/png;base64,") >= 3


def test_report_by_tag(demo):
    report = compute_report(pool([demo[0] / "capture"]), by="source")
    assert list(report["by"]["groups"]) == ["simulated"]






def test_not_a_capture_directory(capsys, tmp_path):
    code, _, err = run_cli(capsys, "report", str(tmp_path))
    assert_one_line_error(code, err, "not a capture directory")


def test_empty_log(capsys, demo, tmp_path):
    shutil.copy(demo[0] / "capture" / "session.json", tmp_path / "session.json")
    (tmp_path / "detections.jsonl").write_text("")
    code, _, err = run_cli(capsys, "report", str(tmp_path))
    assert_one_line_error(code, err, "no complete observation")


def test_manifest_that_does_not_match_the_log(capsys, demo, tmp_path):
    session = json.loads((demo[0] / "capture" / "session.json").read_text())
    session["manifest"]["tiles"] = session["manifest"]["tiles"][:2]
    (tmp_path / "session.json").write_text(json.dumps(session))
    shutil.copy(demo[0] / "capture" / "detections.jsonl", tmp_path / "detections.jsonl")
    code, _, err = run_cli(capsys, "report", str(tmp_path))
    assert_one_line_error(code, err, "does not have")


def test_demo_refuses_a_non_empty_folder_that_is_not_a_demo(capsys, tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    code, _, err = run_cli(capsys, "demo", "--out", str(tmp_path))
    assert_one_line_error(code, err, "not an earlier demo")
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_demo_records_its_headline(demo):
    record = json.loads((demo[0] / "demo.json").read_text())
    assert set(record["headline"]) == {"sticker_targeted_success", "linf_untargeted_success", "clean_accuracy"}


@pytest.mark.browser
def test_html_report_opens_in_headless_chromium(demo, tmp_path):
    import subprocess

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    html_path = demo[0] / "capture" / "report.html"
    proc = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--disable-component-update", "--disable-sync", "--no-first-run",
                           f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
                           "--dump-dom", html_path.as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    for tile_id in ("01", "02", "03", "04"):
        assert f'data-tile="{tile_id}"' in dom
    assert "Uncaught" not in proc.stderr


@pytest.mark.slow
def test_full_demo_meets_its_sticker_and_control_targets(tmp_path):
    report = run_demo(DemoConfig(out=tmp_path / "demo", device="cpu"))
    sticker = next(t for t in report["tiles"] if t["kind"] == "adversarial" and t["target_class"])
    assert sticker["targeted_success"] >= 0.9
    assert report["summary"]["clean"]["accuracy"]["rate"] >= 0.95
