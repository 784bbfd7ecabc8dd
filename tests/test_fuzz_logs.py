"""Fuzzing the parsers a user's files reach: whatever bytes a capture log or a session record
holds (a crash mid-write, a hand edit, another tool's file), ``report`` either reports or says
what is wrong in one line — never an internal error."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import run_cli

TILES = [{"tile_id": "01", "page": 1, "kind": "adversarial", "run": "r", "model": "signs", "true_class": "stop",
          "target_class": None, "bbox_mm": [0, 0, 40, 40], "marker_ids": [0, 1, 2, 3], "digital": None},
         {"tile_id": "02", "page": 1, "kind": "clean", "run": "r", "model": "signs", "true_class": "stop",
          "target_class": None, "bbox_mm": [50, 0, 40, 40], "marker_ids": [4, 5, 6, 7], "digital": None}]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, width=32) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)

# log lines that look like capture's: the right keys with values of any type, or missing
# what capture measured of the view (report.by_seen): in range, out of range, NaN, infinite or not numbers
geometry = {**{key: st.floats(-10, 400) | st.floats() | json_values for key in ("size_px", "angle_deg", "distance_mm")},
            "undersampled": st.booleans() | json_values, "located_by": st.sampled_from(["tile", "page"]) | json_values}

line_dicts = st.fixed_dictionaries({}, optional={
    "frame": json_values, "time": json_values, "tile_id": st.sampled_from(["01", "02", "03"]) | json_values,
    "found": st.booleans() | json_values, "pred": st.sampled_from(["stop", "yield"]) | json_values,
    "confidence": json_values, "top5": json_values, "corners_px": json_values, "markers_used": json_values,
    "reason": json_values, "source": json_values | st.fixed_dictionaries({"frame_index": json_values}), **geometry})
raw_lines = st.one_of(line_dicts.map(json.dumps), st.text(max_size=40), json_values.map(json.dumps))


def _check(capsys, tmp_path, session_text: str, lines: list[str]) -> None:
    folder = tmp_path / "cap"
    folder.mkdir(exist_ok=True)
    (folder / "session.json").write_text(session_text)
    (folder / "detections.jsonl").write_text("\n".join(lines) + "\n")
    for stale in ("report.json", "report.html"):
        (folder / stale).unlink(missing_ok=True)
    code, _, err = run_cli(capsys, "report", str(folder))
    assert code in (0, 2), err
    assert "internal error" not in err and "Traceback" not in err, err
    if code == 2:
        assert len(err.strip().splitlines()) == 1 and err.startswith("physical-adv: error: "), err


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(raw_lines, max_size=12),
       source=st.sampled_from([{"kind": "images"}, {"kind": "video", "fps": 30.0}, {"kind": "video", "fps": 0},
                               {"kind": "camera"}, "camera", None]))
def test_any_log_lines_give_a_report_or_one_line_error(capsys, tmp_path, lines, source):
    session = json.dumps({"manifest": {"sheet_id": "fuzz", "tiles": TILES, "markers": []}, "tags": {}, "source": source})
    _check(capsys, tmp_path, session, lines)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(session=st.one_of(st.text(max_size=60), json_values.map(json.dumps),
                         st.fixed_dictionaries({"manifest": json_values, "tags": json_values}).map(json.dumps),
                         st.fixed_dictionaries({"manifest": st.just({"sheet_id": "f", "tiles": TILES}),
                                                "model_override": json_values}).map(json.dumps)))
def test_any_session_record_gives_a_report_or_one_line_error(capsys, tmp_path, session):
    line = {"frame": 0, "time": 1.0, "tile_id": "01", "found": True, "pred": "stop", "confidence": 0.9,
            "top5": [{"class": "stop", "prob": 0.9}], "corners_px": [[0, 0], [1, 0], [1, 1], [0, 1]], "markers_used": [0]}
    _check(capsys, tmp_path, session, [json.dumps(line)])


# complete lines, found or not, whose view measurements and the session's model input sizes are fuzzed
complete_lines = st.fixed_dictionaries(
    {"frame": st.integers(0, 6), "tile_id": st.sampled_from(["01", "02"]), "found": st.booleans(),
     "pred": st.sampled_from(["stop", "yield"]), "confidence": st.just(0.9), "markers_used": st.just([0]),
     "top5": st.just([{"class": "stop", "prob": 0.9}])}, optional=geometry).map(json.dumps)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(complete_lines, min_size=1, max_size=12),
       models=json_values | st.fixed_dictionaries({"signs": st.fixed_dictionaries({"input_size": json_values})}))
def test_any_view_measurements_give_a_report(capsys, tmp_path, lines, models):
    session = json.dumps({"manifest": {"sheet_id": "fuzz", "tiles": TILES, "markers": []}, "tags": {},
                          "source": {"kind": "images"}, "models": models}, allow_nan=True)
    _check(capsys, tmp_path, session, lines)
