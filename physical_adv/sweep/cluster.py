"""Ray as the sweep's engine beyond one machine (``sweep --ray auto|ADDRESS``; the ``ray`` extra).

One Ray task per batch (:func:`physical_adv.sweep.study.run_batch_in`), asking for the CPUs its
torch threads use and, when the cluster has GPUs, one GPU. A task whose worker process dies
(killed, out of memory, its node lost) is retried by Ray (``max_retries``); the retry skips
every job whose run directory was already finished, so nothing finished is lost or redone.
Workers write their run directories straight into the study folder, which must therefore be
on storage every node sees (one machine, or a shared file system).
"""

from __future__ import annotations

MAX_RETRIES = 3


def connect(ray, address: str) -> None:
    """Join the cluster at ``address``; ``auto``: a running one if there is one, else start one here."""
    if ray.is_initialized():
        return
    if address == "auto":
        try:
            ray.init(address="auto", include_dashboard=False, log_to_driver=False)
            return
        except ConnectionError:
            pass
        ray.init(include_dashboard=False, log_to_driver=False)
        return
    ray.init(address=address, include_dashboard=False, log_to_driver=False)


def remote_batch(ray, cpus: int):
    """The batch task with its resource request (a GPU when the cluster has one)."""
    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    return ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=MAX_RETRIES, retry_exceptions=False)(_run)


def _run(study: str, batch, threads: int) -> list[dict]:
    from pathlib import Path

    from physical_adv.sweep.study import run_batch_in

    return run_batch_in(Path(study), batch, threads)
