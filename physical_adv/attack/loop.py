"""The one optimisation loop every attack runs: threat model, objective, regularisers and
an optional view renderer are pluggable pieces. FGSM is one step of it with no renderer;
PGD is many; EOT adds a ``render_views`` function that renders the texture through a fresh
batch of print-and-photograph transformations at every step. Where the gradient comes from
is the one seam between white-box and black-box attacks: autograd (:func:`autograd_source`,
the default) or a query-based estimate (``gradient_source``, :mod:`.estimators`). Between the
gradient and the step sit optional *gradient transforms* (momentum, translation invariance:
:mod:`.transfer`), applied in order."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from physical_adv.attack.threat import ThreatModel
from physical_adv.outcome import succeeded_mask

RenderViews = Callable[[torch.Tensor], torch.Tensor]  # texture (1, 3, S, S) → model batch (M, 3, h, w)
Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, labels) → scalar to maximise
Regulariser = tuple[float, Callable[[torch.Tensor], torch.Tensor]]  # (weight, x → scalar to minimise)


@dataclass
class StepReport:
    """What one step saw (before its update): objective, batch success rate, step size."""

    step: int
    objective: float
    success: float
    alpha: float
    margin: float


@dataclass
class LoopResult:
    x: torch.Tensor  # the returned iterate
    best_step: int
    history: list[StepReport] = field(default_factory=list)
    stopped_early: bool = False
    exhausted: bool = False  # the gradient source ran out (a black-box query budget was spent)


@dataclass
class Estimate:
    """What a gradient source says about the objective at ``x``: its gradient (or an estimate)
    and what the batch it looked at showed (objective, success rate, mean margin)."""

    grad: torch.Tensor
    objective: float
    success: float
    margin: float


class SourceExhausted(Exception):
    """A gradient source can pay for no more estimates (a black-box query budget is spent);
    the loop ends cleanly with what it has."""


GradientSource = Callable[[torch.Tensor], Estimate]  # x → Estimate (autograd, or an estimate from queries)
GradientTransform = Callable[[torch.Tensor], torch.Tensor]  # grad → the direction the step follows (same shape)


def autograd_source(
    model: torch.nn.Module,
    labels: torch.Tensor,
    objective: Objective,
    targeted: bool,
    render_views: RenderViews | None = None,
    regularisers: Sequence[Regulariser] = (),
) -> GradientSource:
    """The white-box gradient source: the exact gradient of ``objective − Σ w·reg`` by autograd.

    Args:
        model, labels, objective, targeted, render_views, regularisers: as in :func:`optimize`.

    Returns:
        A function ``x → Estimate``.
    """

    def estimate(x: torch.Tensor) -> Estimate:
        x = x.detach().requires_grad_(True)
        batch = render_views(x) if render_views is not None else x
        logits = model(batch)
        batch_labels = labels if render_views is None else labels.expand(logits.shape[0])
        goal = objective(logits, batch_labels)
        total = goal
        for weight, reg in regularisers:
            if weight:
                total = total - weight * reg(x)
        grad = torch.autograd.grad(total, x)[0]
        success, margin = batch_stats(logits, batch_labels, targeted)
        return Estimate(grad, float(goal.detach()), success, margin)

    return estimate


def batch_stats(logits: torch.Tensor, labels: torch.Tensor, targeted: bool) -> tuple[float, float]:
    """What a batch of views shows: the fraction on which the attack succeeds, and the mean
    margin toward the goal (target logit over the best other, or best other over the true one)."""
    with torch.no_grad():
        hit = succeeded_mask(logits.argmax(1), labels, targeted)
        own = logits.gather(1, labels.view(-1, 1)).squeeze(1)
        other = logits.scatter(1, labels.view(-1, 1), float("-inf")).amax(1)
        margin = float((own - other).mean() if targeted else (other - own).mean())
    return float(hit.float().mean()), margin


def with_regularisers(source: GradientSource, regularisers: Sequence[Regulariser]) -> GradientSource:
    """``source`` with the regularisers' exact gradients subtracted (they depend on ``x`` alone,
    so a black-box attacker computes them locally, at no query cost)."""
    active = [(w, reg) for w, reg in regularisers if w]
    if not active:
        return source

    def estimate(x: torch.Tensor) -> Estimate:
        est = source(x)
        xr = x.detach().requires_grad_(True)
        penalty = sum(w * reg(xr) for w, reg in active)
        grad = est.grad - torch.autograd.grad(penalty, xr)[0]
        return Estimate(grad, est.objective, est.success, est.margin)

    return estimate


def optimize(
    model: torch.nn.Module | None,
    clean: torch.Tensor,
    labels: torch.Tensor | None,
    *,
    threat: ThreatModel,
    objective: Objective | None,
    steps: int,
    alpha: float | Callable[[int], float],
    targeted: bool,
    render_views: RenderViews | None = None,
    regularisers: Sequence[Regulariser] = (),
    random_start: bool = False,
    generator: torch.Generator | None = None,
    keep_best: bool = False,
    early_stop: Callable[[list[StepReport]], bool] | None = None,
    callback: Callable[[StepReport], None] | None = None,
    gradient_source: GradientSource | None = None,
    gradient_transforms: Sequence[GradientTransform] = (),
) -> LoopResult:
    """Maximise ``objective(model(render_views(x)), labels) − Σ w·reg(x)`` over the threat model.

    Args:
        model: logits for ``(M, 3, h, w)`` in [0, 1] (unused with ``gradient_source``).
        clean: ``(N, 3, H, W)`` in [0, 1]: images (no renderer) or one texture (with ``render_views``).
        labels: ``(N,)`` true labels, or targets when ``targeted``; with ``render_views`` a
            single label that is repeated over the rendered batch.
        threat: the allowed set, its steps and projection.
        steps, alpha: number of steps and step size (a constant or a function of the step).
        render_views: renders ``x`` to a model batch of transformed views (EOT); ``None``
            feeds ``x`` directly.
        regularisers: ``(weight, function)`` pairs subtracted from the objective.
        random_start: start from a random point of the allowed set.
        keep_best: return the iterate with the best batch success (then objective), not the last.
        early_stop: called with the history after each step; ``True`` ends the loop.
        callback: called with each :class:`StepReport`.
        gradient_source: where the gradient comes from: ``None`` = autograd through ``model``
            (white-box); else a function ``x → Estimate`` (e.g. a query-based estimator of
            :mod:`physical_adv.attack.estimators`), which replaces ``model``, ``labels``,
            ``objective`` and ``render_views``. Raising :class:`SourceExhausted` ends the loop.
        gradient_transforms: applied in order to each gradient before the threat model's
            step (e.g. :class:`~physical_adv.attack.transfer.TranslationInvariance` then
            :class:`~physical_adv.attack.transfer.Momentum`); none by default.

    Returns:
        :class:`LoopResult` with the iterate, the step it came from and the history.
    """
    if gradient_source is None:
        source = autograd_source(model, labels, objective, targeted, render_views, regularisers)
    else:
        source = with_regularisers(gradient_source, regularisers)
    x = threat.random_start(clean, generator) if random_start else clean.clone()
    x = x.detach()
    best, best_key, best_step = x, None, 0
    history: list[StepReport] = []
    stopped = exhausted = False
    for step in range(steps):
        try:
            est = source(x)
        except SourceExhausted:
            stopped = exhausted = True
            break
        a = alpha(step) if callable(alpha) else alpha
        report = StepReport(step, est.objective, est.success, float(a), est.margin)
        history.append(report)
        if keep_best:
            key = (report.success, report.margin)
            if best_key is None or key > best_key:
                best, best_key, best_step = x.detach().clone(), key, step
        if callback is not None:
            callback(report)
        grad = est.grad
        for transform in gradient_transforms:
            grad = transform(grad)
        x = threat.project(threat.step(x.detach(), grad, a), clean).detach()
        if early_stop is not None and early_stop(history):
            stopped = True
            break
    if not keep_best:
        best, best_step = x, len(history)
    return LoopResult(best, best_step, history, stopped, exhausted)
