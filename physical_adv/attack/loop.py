"""The one optimisation loop every attack runs: threat model, objective, regularisers and
an optional view renderer are pluggable pieces. FGSM is one step of it with no renderer;
PGD is many; EOT adds a ``render_views`` function that renders the texture through a fresh
batch of print-and-photograph transformations at every step."""

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


def optimize(
    model: torch.nn.Module,
    clean: torch.Tensor,
    labels: torch.Tensor,
    *,
    threat: ThreatModel,
    objective: Objective,
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
) -> LoopResult:
    """Maximise ``objective(model(render_views(x)), labels) − Σ w·reg(x)`` over the threat model.

    Args:
        model: logits for ``(M, 3, h, w)`` in [0, 1].
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

    Returns:
        :class:`LoopResult` with the iterate, the step it came from and the history.
    """
    x = threat.random_start(clean, generator) if random_start else clean.clone()
    x = x.detach()
    best, best_key, best_step = x, None, 0
    history: list[StepReport] = []
    stopped = False
    for step in range(steps):
        x.requires_grad_(True)
        batch = render_views(x) if render_views is not None else x
        logits = model(batch)
        batch_labels = labels if render_views is None else labels.expand(logits.shape[0])
        goal = objective(logits, batch_labels)
        total = goal
        for weight, reg in regularisers:
            if weight:
                total = total - weight * reg(x)
        grad = torch.autograd.grad(total, x)[0]
        with torch.no_grad():
            pred = logits.argmax(1)
            hit = succeeded_mask(pred, batch_labels, targeted)
            own = logits.gather(1, batch_labels.view(-1, 1)).squeeze(1)
            other = logits.scatter(1, batch_labels.view(-1, 1), float("-inf")).amax(1)
            margin = float((own - other).mean() if targeted else (other - own).mean())
        a = alpha(step) if callable(alpha) else alpha
        report = StepReport(step, float(goal.detach()), float(hit.float().mean()), float(a), margin)
        history.append(report)
        if keep_best:
            key = (report.success, report.margin)
            if best_key is None or key > best_key:
                best, best_key, best_step = x.detach().clone(), key, step
        if callback is not None:
            callback(report)
        x = threat.project(threat.step(x.detach(), grad, a), clean).detach()
        if early_stop is not None and early_stop(history):
            stopped = True
            break
    if not keep_best:
        best, best_step = x, len(history)
    return LoopResult(best, best_step, history, stopped)
