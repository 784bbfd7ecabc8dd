"""``sweep --ray``: a real local Ray cluster (2 CPU worker processes, no mocks) runs an 8-job
plan in two batches to the same adversarial images as the local run; a worker process killed
mid-job is retried by Ray and the study still finishes with nothing lost; a second sweep of the
same plan recomputes nothing; without Ray, ``--ray`` is one clear error that writes nothing.

Worker processes are found in ``/proc`` (Linux, as CI) by the process title Ray gives a worker
while it runs a task (``ray::_run``, the batch task's function) among this test's descendants."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import ray
import torch

from helpers import assert_one_line_error, run_cli
from physical_adv.sweep import cluster as sweep_cluster
from physical_adv.sweep.study import SweepConfig, run_sweep

# 4 untargeted L∞ jobs ([grid]: 2 signs × 2 seeds) and 4 stickers (two targeted): with --batch 4,
# two batches of 4 textures sharing one model pass per step
PLAN = """\
[grid]
source = ["sign:stop", "sign:yield"]
seed = [0, 1]
steps = {steps}
samples = 4
eval_samples = 20
texture_size = 128
device = "cpu"
{extra}
[[job]]
source = "sign:stop"
patch = "square"

[[job]]
source = "sign:yield"
patch = "square"
seed = 1

[[job]]
source = "sign:stop"
patch = "circle"
target = "speed limit 80"

[[job]]
source = "sign:yield"
patch = "square"
target = "stop"
"""
JOBS, BATCH = 8, 4
KILL_STEPS = 100  # no early stop: a batch task is still optimising a second of CPU time in, when its worker is killed
TASK_TITLE = f"ray::{sweep_cluster._run.__name__}"  # a Ray worker's process title while it runs the batch task


def _plan(folder: Path, steps: int, extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "plan.toml"
    path.write_text(PLAN.format(steps=steps, extra=extra))
    return path


def _sweep(plan: Path, out: Path, ray_address: str | None) -> dict:
    """The same plan, batching and torch threads (1) on Ray or locally (one worker: this process)."""
    cfg = SweepConfig(plan=plan, out=out, workers=1, batch=BATCH, threads=1, ray=ray_address)
    if ray_address is not None:
        return run_sweep(cfg, show_progress=False)
    threads = torch.get_num_threads()
    try:
        return run_sweep(cfg, show_progress=False)
    finally:
        torch.set_num_threads(threads)  # the local worker set this process's threads; give them back


def _digests(study: Path) -> dict[str, str]:
    return {d.name: hashlib.sha256((d / "adversarial.png").read_bytes()).hexdigest()
            for d in sorted((study / "runs").iterdir())}


def _stamps(study: Path) -> dict[str, int]:
    return {d.name: (d / "attack.json").stat().st_mtime_ns for d in sorted((study / "runs").iterdir())}


def _processes() -> dict[int, tuple[int, str, str, float]]:
    """Every process now: pid → (parent pid, state, command line or title, CPU seconds used)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state, ppid, …, utime (12th), stime
        out[int(name)] = (int(fields[1]), fields[0], cmdline.replace(b"\0", b" ").decode(errors="replace").strip(),
                          (int(fields[11]) + int(fields[12])) / tick)
    return out


def _descendants(procs: dict, root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, *_) in procs.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pids: set[int]) -> set[int]:
    procs = _processes()
    return {p for p in pids if p in procs and procs[p][1] not in "ZX"}


def _task_workers() -> dict[int, float]:
    """This test's Ray worker processes that are running a batch task now: pid → CPU seconds used."""
    procs = _processes()
    return {p: procs[p][3] for p in _descendants(procs, os.getpid()) if procs[p][2].startswith(TASK_TITLE)}


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of 2 CPUs (so 2 worker processes run batch tasks), shut down at the end
    of the module with none of its processes left behind."""
    # children this process had before the cluster (e.g. multiprocessing's resource tracker) are not Ray's
    before = _descendants(_processes(), os.getpid())
    # address="local": always a new cluster of this test's own, never one found on the machine or in RAY_ADDRESS
    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    try:
        resources = ray.cluster_resources()
        assert resources.get("CPU") == 2 and not resources.get("GPU"), resources  # a batch task asks 1 CPU (threads=1)
        yield
    finally:
        # gcs, raylet, agents and workers, taken before they lose their parent
        started = _descendants(_processes(), os.getpid()) - before
        ray.shutdown()
        deadline = time.time() + 30
        while _alive(started) and time.time() < deadline:
            time.sleep(0.2)
        left = {p: _processes().get(p, (0, "", "?", 0))[2][:80] for p in _alive(started)}
        assert not left, f"Ray processes left after ray.shutdown(): {left}"


@pytest.fixture(scope="module")
def studies(cluster, tmp_path_factory):
    """The 8-job plan swept on the cluster and, meanwhile, locally: ``(plan, local study, Ray study)``."""
    from concurrent.futures import ThreadPoolExecutor

    root = tmp_path_factory.mktemp("sweep-ray")
    plan = _plan(root, steps=8)
    local, on_ray = root / "local", root / "ray"
    with ThreadPoolExecutor(1) as pool:  # the Ray driver only waits on its tasks: the local run shares the time
        ray_run = pool.submit(_sweep, plan, on_ray, "auto")
        assert _sweep(plan, local, None)["counts"]["done"] == JOBS
        ray_run.result()
    return plan, local, on_ray


def test_the_ray_study_equals_the_local_one_image_for_image(studies):
    _, local, on_ray = studies
    record = json.loads((on_ray / "study.json").read_text())
    assert record["counts"] == {"jobs": JOBS, "done": JOBS, "failed": 0, "pending": 0}, record["counts"]
    assert record["engine"]["ray"] == "auto"
    batches = {r["batch"]: r["batch_size"] for r in record["rows"]}
    assert sorted(batches.values()) == [BATCH, BATCH], batches  # 2 Ray tasks of 4 textures each
    assert {r["patch"] for r in record["rows"]} == {None, "square", "circle"}
    assert len(_digests(local)) == JOBS
    assert _digests(on_ray) == _digests(local)


def test_a_second_sweep_of_the_same_plan_recomputes_nothing(studies, capsys):
    plan, _, on_ray = studies
    stamps, digests = _stamps(on_ray), _digests(on_ray)
    code, out, err = run_cli(capsys, "sweep", plan, "--out", on_ray, "--ray", "auto", "--batch", BATCH, "--threads", 1)
    assert code in (0, None), err
    assert f"{JOBS} of {JOBS} jobs done, 0 failed, 0 pending" in out
    assert _stamps(on_ray) == stamps and _digests(on_ray) == digests


def test_a_worker_killed_mid_job_is_retried_and_the_study_loses_nothing(cluster, tmp_path):
    plan = _plan(tmp_path, steps=KILL_STEPS, extra="no_early_stop = true\n")
    study = tmp_path / "study"
    outcome: dict = {}

    def sweep() -> None:
        try:
            outcome["record"] = _sweep(plan, study, "auto")
        except BaseException as exc:  # noqa: BLE001 — reported by the test below
            outcome["error"] = exc

    runner = threading.Thread(target=sweep, daemon=True)
    runner.start()
    seen: dict[int, float] = {}  # worker pid → its CPU seconds when first seen running a task
    victim = None
    deadline = time.time() + 120
    while victim is None and runner.is_alive() and time.time() < deadline:
        for pid, cpu in _task_workers().items():
            seen.setdefault(pid, cpu)
            if cpu - seen[pid] >= 1.0:  # a second of work into its batch
                victim = pid
        time.sleep(0.05)
    assert victim is not None, f"no batch task was seen running (sweep: {outcome})"
    finished_before = sorted(p.parent.name for p in (study / "runs").glob("*/attack.json"))
    os.kill(victim, signal.SIGKILL)
    assert not finished_before, finished_before  # killed mid-job: no job of the study had finished yet
    runner.join(240)
    assert not runner.is_alive(), "the sweep did not finish after the worker was killed"
    assert "error" not in outcome, outcome.get("error")
    assert victim not in _alive({victim})
    record = outcome["record"]
    errors = [(r["job"], r["status"], r["error"]) for r in record["rows"] if r["status"] != "done"]
    assert record["counts"] == {"jobs": JOBS, "done": JOBS, "failed": 0, "pending": 0}, errors
    runs = sorted(p.name for p in (study / "runs").iterdir())
    assert len(runs) == JOBS and runs == sorted(r["job"] for r in record["rows"]), runs  # no partial or stray dirs
    for run in runs:
        rec = json.loads((study / "runs" / run / "attack.json").read_text())
        assert rec["metrics"]["steps_run"] == KILL_STEPS and (study / "runs" / run / "adversarial.png").is_file()
    assert not (study / "failed").exists() or not any((study / "failed").iterdir())
    assert json.loads((study / "study.json").read_text())["counts"]["done"] == JOBS


def test_without_ray_the_ray_option_is_one_error_that_says_how_to_install_it(capsys, monkeypatch, tmp_path):
    plan = _plan(tmp_path / "plan", steps=8)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if Ray were not installed
    out = tmp_path / "study"
    code, _, err = run_cli(capsys, "sweep", plan, "--out", out, "--ray", "auto")
    assert_one_line_error(code, err, "pip install 'physical-adv[ray]'")
    assert not out.exists()
