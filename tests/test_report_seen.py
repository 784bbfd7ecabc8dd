"""Report ``by_seen``: survival against apparent size, viewing angle and distance, on a capture log
written by hand with lines at known sizes, angles and distances and known outcomes; an old log
without these fields; malformed values; the plots in a headless browser."""

import json

import pytest

from helpers import dump_dom, run_cli
from physical_adv.report import compute_report, pool
from physical_adv.stats import wilson_interval
from test_report import RUNS, _hand_log, _line, _tile, _top5, write_capture

TILES = [_tile("01", "adversarial", "runs/a", _top5("yield"), target="speed limit 80"),
         _tile("02", "clean", "runs/a", _top5("stop")),
         _tile("03", "adversarial", "runs/b", _top5("yield"))]
INPUT = 56  # the model's input side: not one of the default size edges, so it must be added as one

# (tile, size_px, angle_deg, distance_mm, top-1 predictions); true class "stop", tile 01's target "speed limit 80"
VIEWS = [
    ("01", 40, 65, 1200, ["stop", "stop", "stop", "yield"]),
    ("02", 40, 65, None, ["stop", "stop", "yield", "give way"]),
    ("01", 100, 5, 400, ["yield", "yield", "speed limit 80", "speed limit 80", "stop"]),
    ("03", 100, 5, None, ["yield", "yield"]),
    ("02", 100, 5, None, ["stop"] * 5),
    ("01", 300, 25, 150, ["speed limit 80"] * 3),
    ("02", 300, 25, None, ["stop"] * 3),
    ("01", 50, 70, 3000, ["yield"]),
    ("01", INPUT, 70, 3000, ["stop"]),
]
# found lines of tile 01 whose geometry is malformed (each fooled) or absent (not fooled)
MALFORMED = [{"size_px": "big"}, {"size_px": float("nan")}, {"size_px": -5, "angle_deg": 120, "distance_mm": 0},
             {"size_px": True}]


def _seen_log():
    lines = []
    for tile, size, angle, distance, preds in VIEWS:
        for pred in preds:
            geometry = {"size_px": float(size), "angle_deg": float(angle), "undersampled": size < INPUT,
                        "located_by": "page" if tile == "02" and size == 40 else "tile"}
            if distance is not None:
                geometry["distance_mm"] = float(distance)
            lines.append({**_line(len(lines), tile, _top5(pred)), **geometry})
    # located from one marker but not found (partly outside the frame)
    lines.append({**_line(len(lines), "01", None, reason="partly outside the frame"), "markers_used": [0],
                  "size_px": 40.0, "angle_deg": 65.0})
    lines += [{**_line(len(lines) + i, "01", _top5("yield")), **bad} for i, bad in enumerate(MALFORMED)]
    lines.append(_line(len(lines), "01", _top5("stop")))
    return lines


def _capture(folder, models=True):
    capture = write_capture(folder, TILES, _seen_log())
    record = json.loads((capture / "session.json").read_text())
    if models:
        record["models"] = {"signs": {"input_size": INPUT, "tiles": ["01", "02", "03"]}}
    (capture / "session.json").write_text(json.dumps(record))
    return capture


def _kn(rate):
    return rate["k"], rate["n"]


def _bins(quantity):
    """``{label: (found/frames, untargeted k/n, targeted k/n, clean accuracy k/n, undersampled)}``."""
    return {b["label"]: (b["found"], b["frames"], _kn(b["adversarial"]["untargeted_success"]),
                         _kn(b["adversarial"]["targeted_success"]), _kn(b["clean"]["accuracy"]), b["undersampled"])
            for b in quantity["bins"]}


@pytest.fixture
def seen(tmp_path):
    return compute_report(pool([_capture(tmp_path / "c")]))["by_seen"]


def test_size_bins_count_found_observations_pooled_per_kind(seen):
    size = seen["size_px"]
    assert size["recorded"] and size["input_sizes"] == {"signs": INPUT}
    assert size["edges"] == [0, 32, 48, INPUT, 64, 96, 128, 192, 256]
    assert _bins(size) == {
        "32–48 px": (8, 9, (1, 4), (0, 4), (2, 4), 8),  # the line not found counts in frames only
        "48–56 px": (1, 1, (1, 1), (0, 1), (0, 0), 1),
        "56–64 px": (1, 1, (0, 1), (0, 1), (0, 0), 0),
        "96–128 px": (12, 12, (6, 7), (2, 5), (5, 5), 0),  # tiles 01 and 03 pooled; targeted over tile 01 only
        "≥ 256 px": (6, 6, (3, 3), (3, 3), (3, 3), 0),
    }
    wide = next(b for b in size["bins"] if b["lo"] == 96)
    assert wide["adversarial"]["tiles"] == 2 and wide["clean"]["tiles"] == 1 and wide["hi"] == 128
    assert next(b for b in size["bins"] if b["lo"] == 32)["located_by_page"] == 4
    assert size["bins"][-1]["hi"] is None and size["undersampled"] == 9


def test_each_adversarial_tile_has_its_own_goal_rate_per_bin(seen):
    wide = next(b for b in seen["size_px"]["bins"] if b["lo"] == 96)
    # tile 01 (targeted: speed limit 80) read as speed limit 80 in 2 of 5; tile 03 (untargeted) fooled in 2 of 2
    assert {tid: (r["goal"], r["k"], r["n"]) for tid, r in wide["per_tile"].items()} == {
        "01": ("targeted", 2, 5), "03": ("untargeted", 2, 2)}
    assert set(next(b for b in seen["size_px"]["bins"] if b["lo"] == 256)["per_tile"]) == {"01"}


def test_angle_and_distance_bins_use_the_same_bucketing(seen):
    assert _bins(seen["angle_deg"]) == {
        "0–10°": (12, 12, (6, 7), (2, 5), (5, 5), 0),
        "20–30°": (6, 6, (3, 3), (3, 3), (3, 3), 0),
        "60–70°": (8, 9, (1, 4), (0, 4), (2, 4), 8),
        "≥ 70°": (2, 2, (1, 2), (0, 2), (0, 0), 1),  # 70° itself opens the last bin: [lo, hi)
    }
    assert _bins(seen["distance_mm"]) == {
        "0–250 mm": (3, 3, (3, 3), (3, 3), (0, 0), 0),
        "250–500 mm": (5, 5, (4, 5), (2, 5), (0, 0), 0),
        "1000–1500 mm": (4, 4, (1, 4), (0, 4), (0, 0), 4),
        "≥ 3000 mm": (2, 2, (1, 2), (0, 2), (0, 0), 1),
    }


def test_bin_intervals_are_the_clustered_intervals(seen):
    # every line of the hand log is its own pose, so each bin's interval is the plain Wilson interval
    wide = next(b for b in seen["size_px"]["bins"] if b["lo"] == 96)
    rate = wide["adversarial"]["untargeted_success"]
    assert rate["clusters"] == 7 and rate["method"] == "wilson-design-effect"
    assert rate["ci95"] == pytest.approx(list(wilson_interval(6, 7)), abs=1e-4)


def test_malformed_values_leave_the_bins_but_not_the_tile_rates(tmp_path, seen):
    assert (seen["size_px"]["malformed"], seen["angle_deg"]["malformed"], seen["distance_mm"]["malformed"]) == (4, 1, 1)
    assert (seen["size_px"]["missing"], seen["angle_deg"]["missing"]) == (1, 4)
    assert seen["distance_mm"]["missing"] == 12 + 2 + 4  # clean and tile 03 lines never had it, nor four of tile 01's
    tile = compute_report(pool([_capture(tmp_path / "again")]))["tiles"][0]
    assert (tile["found"], tile["rates"]["untargeted_success"]["k"]) == (19, 13)  # the malformed lines still count here


def test_input_size_falls_back_to_the_manifest(tmp_path):
    capture = _capture(tmp_path / "c", models=False)
    record = json.loads((capture / "session.json").read_text())
    record["manifest"]["models"] = {"signs": {"class_names": ["stop"], "input_size": 48}}
    (capture / "session.json").write_text(json.dumps(record))
    size = compute_report(pool([capture]))["by_seen"]["size_px"]
    assert size["input_sizes"] == {"signs": 48} and size["edges"] == [0, 32, 48, 64, 96, 128, 192, 256]


def test_terminal_shows_one_short_line_per_quantity(tmp_path, capsys):
    code, out, err = run_cli(capsys, "report", _capture(tmp_path / "c"))
    assert code == 0, err
    assert "by apparent size: " in out and "32–48 px 25/50 % (4/4)" in out and "≥ 256 px 100/100 % (3/3)" in out
    assert "9 undersampled (below the model input, 56 px)" in out
    assert "by viewing angle: 0–10° 86/100 % (7/5)" in out
    assert "not recorded" not in out


def test_an_old_log_without_the_fields_says_not_recorded(tmp_path, capsys):
    capture = write_capture(tmp_path / "old", RUNS, _hand_log())
    code, out, err = run_cli(capsys, "report", capture)
    assert code == 0, err
    seen = json.loads((capture / "report.json").read_text())["by_seen"]
    for key in ("size_px", "angle_deg", "distance_mm"):
        assert seen[key]["recorded"] is False and "not recorded" in seen[key]["note"] and "bins" not in seen[key]
    assert "apparent size, viewing angle, distance: not recorded in these capture logs" in out
    html = (capture / "report.html").read_text()
    assert '<section id="seen" data-recorded="">' in html and html.count('class="not-recorded"') == 3
    assert 'class="seen-plot"' not in html


def test_html_section_has_a_plot_and_a_table_per_quantity(tmp_path, capsys):
    capture = _capture(tmp_path / "c")
    code, _, err = run_cli(capsys, "report", capture)
    assert code == 0, err
    html = (capture / "report.html").read_text()
    assert '<section id="seen" data-recorded="size_px angle_deg distance_mm">' in html
    for key in ("size_px", "angle_deg", "distance_mm"):
        assert f'<img class="seen-plot" data-quantity="{key}" alt="survival against ' in html
    assert "dashed line: the model&#x27;s input size" in html
    assert '<tr data-lo="96"><td>96–128 px</td><td>12/12</td><td>0</td>' in html


# marks each image with its decoded width once the page has loaded (added to a copy of the report
# only: the report itself holds no script)
DECODED = ("<script>addEventListener('load', () => document.querySelectorAll('img').forEach("
           "i => i.dataset.decoded = i.complete ? i.naturalWidth : 0))</script>")


@pytest.mark.browser
def test_seen_plots_decode_in_headless_chromium(tmp_path, capsys):
    capture = _capture(tmp_path / "c")
    code, _, err = run_cli(capsys, "report", capture)
    assert code == 0, err
    page = tmp_path / "probe.html"
    page.write_text((capture / "report.html").read_text().replace("</body>", DECODED + "</body>"))
    dom, stderr = dump_dom(page, tmp_path / "profile")
    assert 'id="seen" data-recorded="size_px angle_deg distance_mm"' in dom
    for key, name in (("size_px", "apparent size"), ("angle_deg", "viewing angle")):
        start = dom.index(f'<img class="seen-plot" data-quantity="{key}"')
        img = dom[start:dom.index(">", start)]
        assert f'alt="survival against {name}' in img
        width = int(img.split('data-decoded="')[1].split('"')[0])
        assert width > 300, img[:300]  # the PNG decoded (a broken image has naturalWidth 0)
    assert "Uncaught" not in stderr
