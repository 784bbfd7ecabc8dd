"""Many white-box EOT attacks optimised together: K textures × M transformation samples in
one forward and backward per step.

Each texture keeps everything its own single ``attack`` run has: its labels (true class or
target), threat model and projection, step-size schedule, regularisers, early stop and best
iterate, and its own random generator seeded exactly as ``attack --seed`` seeds it — so it
draws the same transformations, step by step, as the single run. Only the model pass is
shared: the K·M rendered views go through the model as one batch, and the summed per-texture
objectives (each the mean over its own M views) give every texture its own gradient. The
results therefore equal the single runs' up to floating-point differences of a larger batch
(which sign steps can amplify); ``tests/test_sweep.py`` checks that the held-out success of
batched and single runs with the same seeds agree within their intervals.

A texture that stops (early stop or its step budget) leaves the batch; the rest go on.
Batchable jobs are white-box EOT attacks that share a model and distributions
(:func:`batch_key`); black-box, transfer-technique and ``--transfer-to`` jobs run singly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from physical_adv.attack import eot
from physical_adv.attack.loop import LoopResult, StepReport, batch_stats

BATCH_KEY_FIELDS = ("model", "classes", "eot", "eval_eot", "samples", "texture_size", "loss", "device", "eval_samples")


def batchable(cfg) -> bool:
    """Whether a job can share its steps with others (white-box EOT, no transfer techniques)."""
    return (cfg.oracle is None and not cfg.transfer_to and not cfg.momentum and not cfg.ti_sigma and not cfg.di_prob)


def batch_key(cfg) -> tuple | None:
    """Jobs with equal keys can be optimised together; ``None`` = run alone."""
    if not batchable(cfg):
        return None
    return tuple(getattr(cfg, f) for f in BATCH_KEY_FIELDS)


@dataclass
class _Texture:
    """One job's state in the batch."""

    cfg: object
    clean: torch.Tensor  # (1, 3, S, S)
    label: torch.Tensor  # (1,) target or true class
    targeted: bool
    threat: object
    alpha: Callable[[int], float]
    generator: torch.Generator
    regularisers: list
    early_stop: Callable[[list[StepReport]], bool]
    x: torch.Tensor | None = None  # the current iterate (set by prepare)
    best: torch.Tensor | None = None
    best_key: tuple | None = None
    best_step: int = 0
    history: list[StepReport] = field(default_factory=list)
    stopped_early: bool = False
    done: bool = False
    seconds: float = 0.0


def optimise_batch(textures: list[_Texture], model, dist: eot.EOTDistribution, views: int,
                   objective, callback: Callable[[int, int], None] | None = None) -> list[LoopResult]:
    """Run every texture's EOT loop, all active textures in one model pass per step.

    Args:
        textures: the jobs' states (their ``x`` set to the start point).
        model: the shared model.
        dist: the shared distribution optimised over.
        views: transformation samples per texture per step.
        objective: ``(logits, labels, targeted) → scalar`` (mean over the batch it is given).
        callback: called with ``(step, active textures)`` after each step.

    Returns:
        One :class:`LoopResult` per texture (its best iterate, best step, history).
    """
    device = textures[0].clean.device
    size = textures[0].clean.shape[-1]
    step = 0
    while True:
        active = [t for t in textures if not t.done]
        if not active:
            break
        t0 = time.perf_counter()
        # one leaf per texture: slices of one (K, 3, S, S) leaf would each back-propagate a full-size
        # zero-filled gradient, K² texture copies per step
        xs = [t.x.detach().requires_grad_(True) for t in active]
        batch = torch.cat([eot.render(x, eot.sample(dist, views, size, model.input_size, t.generator, device))
                           for x, t in zip(xs, active)])
        logits = model(batch)
        total = 0.0
        goals, stats = [], []
        for i, t in enumerate(active):
            lg = logits[i * views : (i + 1) * views]
            labels = t.label.expand(views)
            goal = objective(lg, labels, t.targeted)
            term = goal
            for weight, reg in t.regularisers:
                if weight:
                    term = term - weight * reg(xs[i])
            total = total + term
            goals.append(goal)
            stats.append(batch_stats(lg, labels, t.targeted))
        grads = torch.autograd.grad(total, xs)
        share = (time.perf_counter() - t0) / len(active)
        for i, t in enumerate(active):
            a = t.alpha(step)
            report = StepReport(step, float(goals[i].detach()), stats[i][0], float(a), stats[i][1])
            t.history.append(report)
            key = (report.success, report.margin)
            if t.best_key is None or key > t.best_key:
                t.best, t.best_key, t.best_step = t.x.detach().clone(), key, step
            t.x = t.threat.project(t.threat.step(t.x.detach(), grads[i], a), t.clean).detach()
            t.seconds += share
            if t.early_stop(t.history):
                t.done = t.stopped_early = True
            elif len(t.history) >= t.cfg.steps:
                t.done = True
        step += 1
        if callback is not None:
            callback(step, sum(not t.done for t in textures))
    return [LoopResult(t.best, t.best_step, t.history, t.stopped_early) for t in textures]


def prepare(cfg, model, device) -> tuple[_Texture, dict]:
    """A job's texture state, drawn in the order ``attack`` draws (clean prediction, then the
    random start, then the EOT samples, all from the job's own generator), plus what its
    record needs."""
    from physical_adv.attack.runner import (_clean_prediction, _goal_owner, _seeds, _square_texture, _texture_tensor,
                                            build_mask, build_regularisers, build_threat, held_with_margin,
                                            resolve_distributions, resolve_goal)
    from physical_adv.images import load_image

    dists = resolve_distributions(cfg)
    texture_np = _square_texture(load_image(cfg.source), cfg.texture_size)
    mask_np = build_mask(cfg, cfg.texture_size)
    opt_seed, held_seed = _seeds(cfg.seed)
    generator = torch.Generator(device=device).manual_seed(opt_seed)
    clean = _texture_tensor(texture_np, device)
    clean_pred = _clean_prediction(model, clean, generator)
    goal = resolve_goal(cfg, list(model.class_names), model.spec, clean_pred, _goal_owner(cfg, model.spec))
    threat, alpha = build_threat(cfg, mask_np, model.input_size, device)
    label = torch.tensor([goal.target_idx if goal.targeted else goal.true_idx], device=device)
    tex = _Texture(cfg, clean, label, goal.targeted, threat, alpha, generator, build_regularisers(cfg, device),
                   held_with_margin(cfg, 20))
    tex.x = (threat.random_start(clean, generator) if cfg.patch_mode else clean.clone()).detach()
    return tex, {"dists": dists, "mask": mask_np, "seeds": (opt_seed, held_seed), "goal": goal, "clean_pred": clean_pred}


def run_batch(cfgs: list, show_progress: bool = False, on_done: Callable[[object, dict], None] | None = None) -> list[dict]:
    """Optimise ``cfgs`` (one :func:`batch_key`) together, check each on its held-out draws
    and write each run directory exactly as ``attack`` does, plus ``record["sweep"]``.

    Returns:
        Each job's ``attack.json`` record, in order.
    """
    from physical_adv.attack.objectives import OBJECTIVES
    from physical_adv.attack.runner import _record, _write_run_dir, check_new_run_dir, evaluate, views_per_step
    from physical_adv.models import load_model
    from physical_adv.ui import make_progress

    keys = {batch_key(c) for c in cfgs}
    if len(keys) != 1 or None in keys:
        raise ValueError("run_batch takes batchable jobs that share one batch key")
    started = time.time()
    for cfg in cfgs:
        check_new_run_dir(cfg.out)
    first = cfgs[0]
    model = load_model(first.model, first.device, classes=first.classes)
    device = model.device
    torch.manual_seed(int(np.random.SeedSequence([c.seed for c in cfgs]).generate_state(1)[0]))
    prepared = [prepare(cfg, model, device) for cfg in cfgs]
    textures = [p[0] for p in prepared]
    dist = prepared[0][1]["dists"].optimise
    loss_fn = OBJECTIVES[first.loss]
    setup = time.time() - started
    with make_progress(disable=not show_progress) as progress:
        task = progress.add_task("batch", total=max(c.steps for c in cfgs), info=f"{len(cfgs)} attacks")

        def report(step: int, active: int) -> None:
            progress.update(task, completed=step, info=f"{active} of {len(cfgs)} attacks still running")

        results = optimise_batch(textures, model, dist, views_per_step(first, dist), loss_fn, report)
    records = []
    for cfg, (tex, extra), result in zip(cfgs, prepared, results):
        t0 = time.time()
        adv = result.x.detach()
        metrics, preview_imgs, preview_probs = evaluate(cfg, model, adv, tex.clean, extra["dists"].evaluate,
                                                        extra["seeds"][1], extra["goal"])
        wall = setup / len(cfgs) + tex.seconds + (time.time() - t0)
        metrics.update(optimise_seconds=round(tex.seconds, 2), steps_run=len(result.history), best_step=result.best_step,
                       stopped_early=result.stopped_early, wall_seconds=round(wall, 2))
        record = _record(cfg, model, extra["goal"], extra["clean_pred"], extra["dists"], extra["seeds"], extra["mask"],
                         metrics)
        record["sweep"] = {"batch_size": len(cfgs), "position": len(records),
                           "note": "optimised in one model pass per step with the other jobs of its batch; each "
                                   "texture drew its own transformations from its own seed, as attack does"}
        goal = extra["goal"]
        _write_run_dir(cfg.out, record, tex.clean, adv, extra["mask"], result, preview_imgs, preview_probs,
                       model.class_names, goal.true_idx, goal.target_idx)
        records.append(record)
        if on_done is not None:
            on_done(cfg, record)
    return records
