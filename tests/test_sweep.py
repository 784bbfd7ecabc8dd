"""sweep: the study plan (expansion, validation, fuzz), batched attacks against single ones, and
a study's folder — resumed without recomputation, a failing job isolated, Ctrl-C keeping every
finished run, --status, and sheet of a whole study."""

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import assert_one_line_error, default_sigint, run_cli
from physical_adv.errors import UserError
from physical_adv.signs.designs import CLASS_NAMES
from physical_adv.sweep.plan import expand, load_plan
from physical_adv.sweep.study import SweepConfig, run_sweep

SMALL = 'steps = 4\nsamples = 4\neval_samples = 20\ndevice = "cpu"\n'


def _plan(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "plan.toml"
    path.write_text(text)
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_issue_example_is_four_jobs_and_jobs_tables_add_single_jobs(tmp_path):
    plan = load_plan(_plan(tmp_path, '[grid]\nsource = ["sign:stop", "sign:yield"]\nseed = [0, 1]\nsteps = 50\n'))
    assert [(j.options["source"], j.options["seed"], j.options["steps"]) for j in plan.jobs] == [
        ("sign:stop", 0, 50), ("sign:stop", 1, 50), ("sign:yield", 0, 50), ("sign:yield", 1, 50)]
    assert len({j.id for j in plan.jobs}) == 4
    plan = load_plan(_plan(tmp_path, '[grid]\nsource = "sign:stop"\nsteps = 9\n\n[[job]]\nsource = "sign:yield"\n'
                                     'target = "speed limit 80"\npatch = "square"\nnps = 0.5\n'))
    assert len(plan.jobs) == 1 and plan.jobs[0].options == {"source": "sign:yield", "steps": 9, "target": "speed limit 80",
                                                             "patch": "square", "nps_weight": 0.5}


def test_sources_expand_sign_star_and_folders_and_relative_files_follow_the_plan(tmp_path):
    plan = load_plan(_plan(tmp_path, '[grid]\nsource = "sign:*"\n'))
    assert [j.options["source"] for j in plan.jobs] == [f"sign:{n}" for n in CLASS_NAMES]
    images = tmp_path / "images"
    images.mkdir()
    for name in ("b.png", "a.jpg"):
        cv2.imwrite(str(images / name), np.full((40, 40, 3), 128, np.uint8))
    (images / "notes.txt").write_text("not an image")
    mask = tmp_path / "mask.png"
    cv2.imwrite(str(mask), np.full((8, 8), 255, np.uint8))
    plan = load_plan(_plan(tmp_path, '[grid]\nsource = "images"\nmask = "mask.png"\n'))
    assert [Path(j.options["source"]).name for j in plan.jobs] == ["a.jpg", "b.png"]
    assert all(j.options["mask"] == str(mask) for j in plan.jobs)


@pytest.mark.parametrize("text, fragment", [
    ('[grid]\nsource = "sign:stop"\nepss = 3\n', "unknown key 'epss' (did you mean 'eps'?)"),
    ('[grids]\nsource = "sign:stop"\n', "unknown table 'grids'"),
    ('[grid]\nsource = "sign:stop"\neps = 300\n', "eps must be in (0, 255]"),
    ('[grid]\nsource = "sign:stop"\nseed = []\n', "axis 'seed' is an empty list"),
    ('[grid]\nsource = "sign:nothing"\n', "sign"),
    ('[grid]\nsource = "missing.png"\n', "source not found: missing.png"),
    ('[grid]\nsource = "sign:stop"\nmask = "nomask.png"\n', "mask file not found"),
    ('[grid]\nsource = "sign:stop"\ntarget = "speed limit 90"\n', "unknown target class 'speed limit 90'"),
    ('[grid]\nsource = "sign:stop"\neot = "nowhere.toml"\n', "nowhere.toml"),
    ('[grid]\nsource = "sign:stop"\nout = "x"\n', "'out' is not a plan key"),
    ('[[job]]\nsource = "sign:stop"\nseed = [0, 1]\n', "axes belong in [grid]"),
    ('[[job]]\nsource = "sign:stop"\n\n[[job]]\nsource = "sign:stop"\n', "are the same attack"),
    ('[grid]\nseed = 1\n', "no source"),
    ("[grid\n", "cannot read plan"),
])
def test_a_bad_plan_is_one_error_line_before_anything_runs(capsys, tmp_path, text, fragment):
    plan = _plan(tmp_path / "p", text)
    code, _, err = run_cli(capsys, "sweep", plan, "--out", tmp_path / "study")
    assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "study").exists()


_values = st.one_of(st.integers(-5, 400), st.floats(-1, 300, allow_nan=False), st.booleans(),
                    st.sampled_from(["sign:stop", "sign:*", "square", "linf", "l2", "print-camera", "none", "speed limit 80",
                                     "x.png", ""]),
                    st.lists(st.sampled_from(["sign:stop", 0, 1, 0.5, "square"]), max_size=3))
_keys = st.sampled_from(["source", "target", "eps", "seed", "steps", "patch", "patch_area", "norm", "eot", "samples",
                         "tv", "nps", "patch_pos", "no_early_stop", "true_class", "bogus", "out", "texture_size"])


def _toml_value(v) -> str:
    return json.dumps(v) if not isinstance(v, bool) else ("true" if v else "false")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(grid=st.dictionaries(_keys, _values, max_size=6), jobs=st.lists(st.dictionaries(_keys, _values, max_size=4), max_size=2))
def test_fuzzed_plans_give_jobs_or_one_clear_error(tmp_path, grid, jobs):
    """Fuzz the plan reader: any mix of keys and values expands and validates, or is a UserError."""
    text = "[grid]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in grid.items())
    for job in jobs:
        text += "\n[[job]]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in job.items())
    path = tmp_path / "fuzz.toml"
    path.write_text(text)
    try:
        plan = load_plan(path)
    except UserError as exc:
        assert "\n" not in str(exc)
        return
    assert plan.jobs and all(j.options["source"] for j in plan.jobs)


def test_batched_attacks_match_the_same_attacks_run_one_by_one(tmp_path):
    """Same seeds: each texture draws its own transformations, so the batched result is the
    single run's — held-out success within its interval (and here the very same texture)."""
    from physical_adv.attack.runner import AttackConfig, run_attack
    from physical_adv.sweep.batched import run_batch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        jobs = [dict(source="sign:stop", eps=24.0, seed=3), dict(source="sign:yield", target="speed limit 80", eps=32.0, seed=4),
                dict(source="sign:stop", target="speed limit 80", patch="square", patch_area=0.15, seed=5)]
        common = dict(steps=20, samples=8, eval_samples=100, device="cpu")
        batched = run_batch([AttackConfig(out=tmp_path / f"b{i}", **j, **common) for i, j in enumerate(jobs)])
        for i, j in enumerate(jobs):
            single = run_attack(AttackConfig(out=tmp_path / f"s{i}", **j, **common), show_progress=False).record
            b, s = batched[i]["metrics"], single["metrics"]
            assert s["eot_success_ci95"][0] <= b["eot_success"] <= s["eot_success_ci95"][1]
            assert b["steps_run"] == s["steps_run"] and batched[i]["seeds"] == single["seeds"]
            assert _sha(tmp_path / f"b{i}" / "adversarial.png") == _sha(tmp_path / f"s{i}" / "adversarial.png")
            assert batched[i]["sweep"]["batch_size"] == 3
    finally:
        torch.set_num_threads(threads)


def test_a_texture_that_stops_early_leaves_the_batch_and_the_rest_go_on(tmp_path):
    from physical_adv.attack.runner import AttackConfig
    from physical_adv.sweep.batched import run_batch

    easy = dict(source="sign:stop", target="speed limit 80", patch="square", patch_area=0.3, seed=0)  # held in ~25 steps
    hard = dict(source="sign:stop", eps=4.0, seed=0)  # never held at 4/255
    recs = run_batch([AttackConfig(out=tmp_path / n, steps=60, samples=8, eval_samples=20, device="cpu", **o)
                      for n, o in (("easy", easy), ("hard", hard))])
    assert recs[0]["metrics"]["stopped_early"] and recs[0]["metrics"]["steps_run"] < 60
    assert recs[1]["metrics"]["steps_run"] == 60 and not recs[1]["metrics"]["stopped_early"]
    rows = list(csv.DictReader((tmp_path / "easy" / "progress.csv").open()))
    assert len(rows) == recs[0]["metrics"]["steps_run"]


def test_a_study_runs_resumes_without_recomputing_and_reports(capsys, tmp_path):
    plan = _plan(tmp_path, '[grid]\nsource = ["sign:stop", "sign:yield"]\nseed = [0, 1]\n' + SMALL +
                 '\n[[job]]\nsource = "sign:stop"\ntarget = "speed limit 80"\npatch = "square"\n')
    study = tmp_path / "studies" / "first"
    code, out, err = run_cli(capsys, "sweep", plan, "--out", study, "--batch", "3")
    assert code in (0, None), err
    assert "5 of 5 jobs done, 0 failed, 0 pending" in out
    record = json.loads((study / "study.json").read_text())
    assert record["counts"] == {"jobs": 5, "done": 5, "failed": 0, "pending": 0}
    assert record["plan"]["grid"]["seed"] == [0, 1] and "torch" in json.dumps(record["versions"])
    assert {r["batch_size"] for r in record["rows"]} == {3, 2}  # five batchable jobs, three at a time
    rows = list(csv.DictReader((study / "study.csv").open()))
    assert [r["job"] for r in rows] == [j["id"] for j in record["jobs"]]
    assert all(0 <= float(r["eot_success"]) <= 1 and float(r["ci_low"]) <= float(r["ci_high"]) for r in rows)
    runs = sorted((study / "runs").iterdir())
    assert len(runs) == 5 and all((r / "attack.json").exists() and (r / "adversarial.png").exists() for r in runs)
    stamps = {r.name: (r / "attack.json").stat().st_mtime_ns for r in runs}
    code, out, _ = run_cli(capsys, "sweep", plan, "--out", study)
    assert code in (0, None) and "5 of 5 jobs done" in out
    assert stamps == {r.name: (r / "attack.json").stat().st_mtime_ns for r in sorted((study / "runs").iterdir())}
    code, out, _ = run_cli(capsys, "sweep", "--status", "--out", study)
    assert code in (0, None) and "5 of 5 jobs done, 0 failed, 0 pending" in out
    code, out, err = run_cli(capsys, "sheet", study, "--no-controls", "--out", tmp_path / "study.pdf")
    assert code in (0, None), err
    manifest = json.loads((tmp_path / "study.json").read_text())
    assert [Path(t["run"]).name for t in manifest["tiles"]] == [j["id"] for j in record["jobs"]]
    other = _plan(tmp_path / "other", '[grid]\nsource = "sign:yield"\n' + SMALL)
    code, _, err = run_cli(capsys, "sweep", other, "--out", study)
    assert_one_line_error(code, err, "holds a study of another plan")


def test_a_failing_job_is_recorded_and_the_study_goes_on(capsys, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")  # passes validation (the file exists), fails when read
    plan = _plan(tmp_path, f'[grid]\nsource = ["sign:stop", "{broken}", "sign:yield"]\n' + SMALL)
    study = tmp_path / "study"
    code, out, err = run_cli(capsys, "sweep", plan, "--out", study)
    assert code in (0, None), err
    assert "2 of 3 jobs done, 1 failed, 0 pending" in out
    record = json.loads((study / "study.json").read_text())
    failed = [r for r in record["rows"] if r["status"] == "failed"]
    assert len(failed) == 1 and "broken.png" in failed[0]["error"] and failed[0]["source"] == str(broken)
    assert (study / "failed" / f"{failed[0]['job']}.json").exists()
    assert not (study / "runs" / failed[0]["job"]).exists()
    cv2.imwrite(str(broken), np.full((64, 64, 3), 200, np.uint8))  # mended: the next sweep runs only it
    before = {p.name: (p / "attack.json").stat().st_mtime_ns for p in (study / "runs").iterdir()}
    code, out, _ = run_cli(capsys, "sweep", plan, "--out", study)
    assert "3 of 3 jobs done, 0 failed" in out and not (study / "failed" / f"{failed[0]['job']}.json").exists()
    assert all((study / "runs" / n / "attack.json").stat().st_mtime_ns == t for n, t in before.items())


def test_ctrl_c_keeps_every_finished_run_and_the_next_sweep_goes_on(tmp_path):
    plan = _plan(tmp_path, '[grid]\nsource = "sign:stop"\nseed = [0, 1, 2, 3, 4, 5]\nsteps = 40\nsamples = 8\n'
                           'eval_samples = 20\ndevice = "cpu"\nno_early_stop = true\n')
    study = tmp_path / "study"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "physical_adv", "sweep", str(plan), "--out", str(study), "--batch", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, preexec_fn=default_sigint)
    deadline = time.time() + 120
    while time.time() < deadline and not list((study / "runs").glob("*/attack.json")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    finished = list((study / "runs").glob("*/attack.json"))
    assert 1 <= len(finished) < 6
    assert not [p for p in (study / "runs").iterdir() if p.name.startswith(".")]  # no half-written run directory
    assert [p for p in (study / "runs").iterdir() if not (p / "attack.json").exists()] == []
    record = json.loads((study / "study.json").read_text())
    assert record["counts"]["done"] == len(finished)
    stamps = {p: p.stat().st_mtime_ns for p in finished}
    run_sweep(SweepConfig(plan=plan, out=study, batch=1), show_progress=False)
    assert len(list((study / "runs").glob("*/attack.json"))) == 6
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())


def test_status_of_a_folder_that_is_no_study_is_one_error(capsys, tmp_path):
    code, _, err = run_cli(capsys, "sweep", "--status", "--out", tmp_path)
    assert_one_line_error(code, err, "is not a study folder")
    code, _, err = run_cli(capsys, "sweep", "--out", tmp_path)
    assert_one_line_error(code, err, "give the plan file")
    with pytest.raises(UserError, match="not found"):
        expand({"grid": {"source": "nowhere"}}, tmp_path)


def test_two_local_worker_processes_make_the_same_runs_as_one(tmp_path):
    plan = _plan(tmp_path, '[grid]\nsource = ["sign:stop", "sign:yield"]\nseed = [0, 1]\n' + SMALL)
    one, two = tmp_path / "one", tmp_path / "two"
    run_sweep(SweepConfig(plan=plan, out=one, workers=1, batch=2, threads=1), show_progress=False)
    record = run_sweep(SweepConfig(plan=plan, out=two, workers=2, batch=2, threads=1), show_progress=False)
    assert record["counts"]["done"] == 4 and record["engine"]["workers"] == 2
    for run in (one / "runs").iterdir():
        assert _sha(run / "adversarial.png") == _sha(two / "runs" / run.name / "adversarial.png")
