"""``physical-adv sweep``: run a study plan — batched attacks, local worker processes or a Ray
cluster — into one study folder, resumably.

Layout of ``studies/NAME``::

    plan.toml       a copy of the plan the study was started with
    study.json      the plan, every job (options, id, batch, status, run directory, error), totals
    study.csv       one row per job: options, status, held-out success and interval, steps, queries, seconds
    runs/ID/        each finished job's run directory (exactly what ``attack`` writes)
    failed/ID.json  a job that failed: its error (retried on the next sweep)

A job is finished when ``runs/ID/attack.json`` exists; finished jobs are never recomputed.
Jobs are grouped into batches in plan order (:func:`make_batches`): batchable jobs sharing a
model and distributions go ``--batch`` at a time through one model pass per step
(:mod:`.batched`); the others run one by one as ``attack`` runs them. Each batch is one unit of
work for a worker (a local process or a Ray task); a worker writes its own run directories.
A failing batch is retried job by job so that one bad job cannot take its batch-mates down,
and the failing job is recorded with its error while the study goes on.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from physical_adv.artifacts import atomic_write_bytes, atomic_write_json, software_versions, utc_now
from physical_adv.errors import UserError
from physical_adv.sweep.plan import Job, Plan, load_plan

SCHEMA = 1
STUDY_JSON = "study.json"
CSV_COLUMNS = ("job", "status", "source", "target", "eps", "norm", "patch", "patch_area", "model", "eot", "seed", "steps",
               "batch", "batch_size", "eot_success", "ci_low", "ci_high", "eval_samples", "steps_run", "queries",
               "wall_seconds", "run", "error")


@dataclass(frozen=True)
class SweepConfig:
    """What ``sweep`` runs.

    Args:
        plan: the ``plan.toml``.
        out: the study folder.
        workers: local worker processes (``None`` = one per CUDA device, else one).
        batch: most jobs per batch (textures sharing a step).
        ray: ``None`` (local), ``"auto"`` (join a running cluster or start one) or a cluster address.
        threads: torch threads per worker (``None`` = the machine's cores shared among the workers).
    """

    plan: Path
    out: Path
    workers: int | None = None
    batch: int = 32
    ray: str | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be ≥ 1, got {self.workers}")
        if not 1 <= self.batch <= 4096:
            raise ValueError(f"batch must be in [1, 4096] jobs, got {self.batch}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be ≥ 1, got {self.threads}")


@dataclass(frozen=True)
class Batch:
    """One unit of work: jobs optimised together (``batched``) or one job alone."""

    id: str
    jobs: tuple[Job, ...]
    batched: bool


def make_batches(jobs: list[Job], size: int, runs: Path) -> list[Batch]:
    """Jobs grouped by :func:`~physical_adv.sweep.batched.batch_key` in plan order, ``size`` at a time."""
    from physical_adv.sweep.batched import batch_key

    groups: dict[tuple, list[Job]] = {}
    batches = []
    for job in jobs:
        key = batch_key(job.config(runs / job.id))
        if key is None:
            batches.append(Batch(f"single-{job.id}", (job,), False))
        else:
            groups.setdefault(key, []).append(job)
    for members in groups.values():
        for start in range(0, len(members), size):
            chunk = tuple(members[start : start + size])
            batches.append(Batch(f"batch-{chunk[0].id}-{len(chunk)}", chunk, True))
    return sorted(batches, key=lambda b: b.jobs[0].index)


def run_batch_in(study: Path, batch: Batch, threads: int | None) -> list[dict]:
    """Run ``batch`` into ``study/runs`` (the work of one worker, local or Ray); one status per job.

    Every job whose run directory is already finished is skipped. Errors are caught and
    returned per job (a batch that fails is retried job by job)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    runs = study / "runs"
    todo = [j for j in batch.jobs if not (runs / j.id / "attack.json").exists()]
    statuses = {j.id: {"job": j.id, "status": "done", "worker_pid": os.getpid()} for j in batch.jobs if j not in todo}
    if not todo:
        return list(statuses.values())
    _clear_partial(runs, todo)
    if batch.batched and len(todo) > 1:
        try:
            _batched(runs, todo)
            statuses.update({j.id: {"job": j.id, "status": "done", "worker_pid": os.getpid()} for j in todo})
            return [statuses[j.id] for j in batch.jobs]
        except Exception:  # noqa: BLE001 — isolate the failing job by running the batch's jobs one by one
            _clear_partial(runs, todo)
    for job in todo:
        statuses[job.id] = _single(study, job)
    return [statuses[j.id] for j in batch.jobs]


def _clear_partial(runs: Path, jobs: list[Job]) -> None:
    """Remove what an interrupted or failed attempt left of unfinished jobs (never a finished one)."""
    for job in jobs:
        d = runs / job.id
        if d.exists() and not (d / "attack.json").exists():
            shutil.rmtree(d, ignore_errors=True)
        for tmp in runs.glob(f".{job.id}.*"):  # a run directory a killed worker was writing
            shutil.rmtree(tmp, ignore_errors=True)


def _batched(runs: Path, jobs: list[Job]) -> None:
    from physical_adv.sweep.batched import run_batch

    runs.mkdir(parents=True, exist_ok=True)
    run_batch([j.config(runs / j.id) for j in jobs])


def _single(study: Path, job: Job) -> dict:
    """One job as ``attack`` runs it; its error recorded in ``failed/ID.json`` instead of raised."""
    from physical_adv.attack.runner import run_attack

    runs, failed = study / "runs", study / "failed" / f"{job.id}.json"
    runs.mkdir(parents=True, exist_ok=True)
    try:
        run_attack(job.config(runs / job.id), show_progress=False)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 — a failed job is recorded and the study goes on
        _clear_partial(runs, [job])
        message = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
        failed.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(failed, {"job": job.id, "error": message, "traceback": traceback.format_exc(), "at": utc_now()})
        return {"job": job.id, "status": "failed", "error": message, "worker_pid": os.getpid()}
    failed.unlink(missing_ok=True)
    return {"job": job.id, "status": "done", "worker_pid": os.getpid()}


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_workers() -> int:
    """One worker per CUDA device, else one (a CPU process already uses every core)."""
    import torch

    return max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1


def _local(study: Path, batches: list[Batch], workers: int, threads: int | None, progress) -> None:
    """Run the batches here (one worker) or in ``workers`` spawned processes."""
    if workers == 1:
        for b in batches:
            progress(run_batch_in(study, b, threads))
        return
    import concurrent.futures as cf
    import multiprocessing

    import torch

    threads = threads or max(1, _cores() // workers)
    ctx = multiprocessing.get_context("spawn")
    devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init,
                                initargs=(ctx.Value("i", 0), devices)) as pool:
        futures = [pool.submit(run_batch_in, study, b, threads) for b in batches]
        try:
            for f in cf.as_completed(futures):
                progress(f.result())
        except BaseException:
            for f in futures:
                f.cancel()
            raise


def _worker_init(counter, devices: int) -> None:
    """A local worker process takes the next CUDA device (round robin) before torch starts CUDA."""
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    if devices:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(index % devices)


def _import_ray():
    """The ``ray`` module, or the one-line error saying how to install it (the optional extra)."""
    try:
        import ray
    except ImportError:
        raise UserError("--ray needs Ray: pip install 'physical-adv[ray]'") from None
    return ray


def _ray(study: Path, batches: list[Batch], address: str, threads: int | None, progress) -> None:
    """Run each batch as a Ray task (retried on worker loss) on a joined or started cluster."""
    ray = _import_ray()
    from physical_adv.sweep.cluster import connect, remote_batch

    connect(ray, address)
    task = remote_batch(ray, threads or 1)
    pending = {task.remote(str(study.resolve()), b, threads or 1): b for b in batches}
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                b = pending.pop(ref)
                try:
                    progress(ray.get(ref))
                except ray.exceptions.RayError as exc:  # retries spent: the batch's unfinished jobs failed
                    message = f"Ray task failed after its retries: {str(exc).splitlines()[0]}"
                    progress([{"job": j.id, "status": "failed", "error": message} for j in b.jobs])
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise


def run_sweep(cfg: SweepConfig, show_progress: bool = True) -> dict:
    """Validate the plan, run every unfinished job, write ``study.json`` and ``study.csv``.

    Returns:
        The ``study.json`` record.
    """
    from physical_adv.ui import console, make_progress

    if cfg.ray is not None:
        _import_ray()  # before anything is loaded or written
    plan = load_plan(cfg.plan)
    study = Path(cfg.out)
    created = _check_same_plan(study, plan)
    study.mkdir(parents=True, exist_ok=True)
    if not (study / "plan.toml").exists():
        atomic_write_bytes(study / "plan.toml", Path(cfg.plan).read_bytes())
    runs = study / "runs"
    batches = make_batches(list(plan.jobs), cfg.batch, runs)
    todo = [b for b in batches if any(not (runs / j.id / "attack.json").exists() for j in b.jobs)]
    statuses: dict[str, dict] = {}
    workers = cfg.workers or default_workers()
    engine = {"ray": cfg.ray, "workers": workers, "batch": cfg.batch, "threads": cfg.threads}
    write_study(study, plan, batches, statuses, engine, created)
    done_before = len(plan.jobs) - sum(1 for b in todo for j in b.jobs if not (runs / j.id / "attack.json").exists())
    started = time.time()
    with make_progress(disable=not show_progress) as bar:
        task = bar.add_task("sweep", total=len(plan.jobs), completed=done_before,
                            info=f"{len(todo)} batches to run, {done_before} jobs already finished")

        def progress(results: list[dict]) -> None:
            fresh = [r for r in results if statuses.get(r["job"], {}).get("status") != "done"]
            statuses.update({r["job"]: r for r in results})
            bar.update(task, advance=sum(1 for r in fresh if r["status"] == "done"),
                       info=f"{sum(r['status'] == 'failed' for r in statuses.values())} failed")
            write_study(study, plan, batches, statuses, engine, created)

        try:
            if cfg.ray is not None:
                _ray(study, todo, cfg.ray, cfg.threads, progress)
            else:
                _local(study, todo, workers, cfg.threads, progress)
        except KeyboardInterrupt:
            write_study(study, plan, batches, statuses, engine, created)
            console.print(f"interrupted: every finished run is kept in {runs}; run the same sweep again to go on")
            raise
    record = write_study(study, plan, batches, statuses, engine, created, seconds=time.time() - started)
    return record


def _check_same_plan(study: Path, plan: Plan) -> str:
    """A study folder belongs to one plan: resuming it with a plan of other jobs is an error.

    Returns:
        When the study was created (now, for a new one).
    """
    record = study / STUDY_JSON
    if record.exists():
        try:
            before = json.loads(record.read_text())
            ids = [j["id"] for j in before["jobs"]]
        except (OSError, ValueError, KeyError, TypeError):
            raise UserError(f"{record} is damaged; give a new --out") from None
        if ids != [j.id for j in plan.jobs]:
            raise UserError(f"{study} holds a study of another plan (its jobs differ from {plan.path}'s); give a new --out")
        return before.get("created", utc_now())
    if study.exists() and (not study.is_dir() or any(study.iterdir())):
        raise UserError(f"{study} exists and is not a study folder; give a new --out")
    return utc_now()


def job_status(study: Path, job: Job, statuses: dict[str, dict]) -> dict:
    """A job's status: done (its run directory is finished), failed (with the error), or pending."""
    run = study / "runs" / job.id
    if (run / "attack.json").exists():
        return {"status": "done", "run": str(Path("runs") / job.id)}
    mine = statuses.get(job.id)
    failed = study / "failed" / f"{job.id}.json"
    if mine and mine.get("status") == "failed":
        return {"status": "failed", "error": mine.get("error")}
    if failed.exists():
        try:
            return {"status": "failed", "error": json.loads(failed.read_text()).get("error")}
        except (OSError, ValueError):
            return {"status": "failed", "error": "unreadable failure record"}
    return {"status": "pending"}


_RECORDS: dict[tuple[str, int], dict] = {}  # finished runs' records by (path, mtime): study.json is rewritten often


def _finished_record(path: Path) -> dict:
    key = (str(path), path.stat().st_mtime_ns)
    if key not in _RECORDS:
        _RECORDS[key] = json.loads(path.read_text())
    return _RECORDS[key]


def _row(study: Path, job: Job, batch_id: str, batch_size: int, status: dict) -> dict:
    o = job.options
    row = {"job": job.id, "status": status["status"], "source": o["source"], "target": o.get("target"),
           "eps": o.get("eps"), "norm": o.get("norm", "linf"), "patch": o.get("patch") or o.get("mask"),
           "patch_area": o.get("patch_area") if (o.get("patch") or o.get("mask")) else None,
           "model": o.get("model", "signs"), "eot": o.get("eot", "print-camera"), "seed": o.get("seed", 0),
           "steps": o.get("steps", 300), "batch": batch_id, "batch_size": batch_size,
           "error": status.get("error"), "run": status.get("run")}
    if status["status"] == "done":
        rec = _finished_record(study / status["run"] / "attack.json")
        m = rec["metrics"]
        ci = m.get("eot_success_ci95") or [None, None]
        row.update(eot_success=m["eot_success"], ci_low=ci[0], ci_high=ci[1], eval_samples=m["eot_samples"],
                   steps_run=m["steps_run"], queries=(rec.get("blackbox") or {}).get("queries"),
                   wall_seconds=m["wall_seconds"])
    return row


def write_study(study: Path, plan: Plan, batches: list[Batch], statuses: dict[str, dict], engine: dict, created: str,
                seconds: float | None = None) -> dict:
    """``study.json`` and ``study.csv`` from what is on disk now (atomically replaced)."""
    rows = []
    for b in batches:
        for job in b.jobs:
            rows.append(_row(study, job, b.id, len(b.jobs) if b.batched else 1, job_status(study, job, statuses)))
    order = {j.id: j.index for j in plan.jobs}
    rows.sort(key=lambda r: order[r["job"]])
    counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "failed", "pending")}
    record = {
        "schema": SCHEMA, "kind": "study", "created": created, "updated": utc_now(),
        "plan": plan.data, "plan_file": str(plan.path),
        "engine": engine,
        "counts": {"jobs": len(rows), **counts},
        "jobs": [{"id": j.id, "index": j.index, "options": {k: list(v) if isinstance(v, tuple) else v
                                                            for k, v in j.options.items()}} for j in plan.jobs],
        "rows": rows, "versions": software_versions(),
    }
    if seconds is not None:
        record["last_sweep_seconds"] = round(seconds, 1)
    atomic_write_json(study / STUDY_JSON, record)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(study / "study.csv", buf.getvalue().encode())
    return record


def study_status(study: Path) -> dict:
    """``sweep --status``: the study's counts and rows as on disk now (read only: a sweep may be running)."""
    study = Path(study)
    path = study / STUDY_JSON
    if not path.exists():
        raise UserError(f"{study} is not a study folder (no {STUDY_JSON}); start one with: sweep PLAN --out {study}")
    try:
        record = json.loads(path.read_text())
        jobs = [Job(j["index"], j["options"], j["id"]) for j in record["jobs"]]
        batch_of = {r["job"]: (r["batch"], r["batch_size"]) for r in record["rows"]}
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{path} is damaged") from None
    rows = []
    for job in jobs:
        name, size = batch_of.get(job.id, (f"single-{job.id}", 1))
        rows.append(_row(study, job, name, size or 1, job_status(study, job, {})))
    record["rows"] = rows
    record["counts"] = {"jobs": len(rows), **{s: sum(r["status"] == s for r in rows) for s in ("done", "failed", "pending")}}
    return record


def study_runs(study: Path) -> list[Path]:
    """The finished run directories of a study, in plan order (``sheet studies/NAME``)."""
    record = study_status(study)
    return [Path(study) / r["run"] for r in record["rows"] if r["status"] == "done"]
