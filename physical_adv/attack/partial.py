"""The partial-information attack (Ilyas et al. 2018 §3.2): targeted, when the target answers
only its top k (k may be 1).

Start from an image of the target class, so the target is in the top k from the first query,
and alternate two moves: a step along an estimated gradient of the target's log-probability
(any gradient source: NES on scores, or on the label-only proxy of §3.3), and a shrink of the
L∞ box around the *source* image by δε. Each candidate (the step taken inside the shrunk box)
is checked with one query: kept when the target is still among the answered labels; else the
step size is halved, and when it reaches its floor δε is halved and the step size restarts
(their line search). The step size itself follows the plateau schedule
(:class:`~physical_adv.attack.schedules.Plateau`). Success = ε has reached the threat's ε and the
target is top-1. Every check counts as a query.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from physical_adv.attack import eot
from physical_adv.attack.loop import GradientSource, LoopResult, SourceExhausted, StepReport
from physical_adv.attack.schedules import Plateau
from physical_adv.attack.threat import LinfBall
from physical_adv.blackbox.target import BudgetExhausted, QueryTarget
from physical_adv.errors import UserError
from physical_adv.outcome import same_class


@dataclass(frozen=True)
class PartialConfig:
    """The ε and step-size schedule (defaults after Ilyas et al.'s ``partial-info.sh``, in [0, 1] units,
    but for ``lr_hi``).

    ``start_eps``: the box around the source at the start (1 = the whole image);
    ``delta_eps``: the first shrink tried; ``min_delta_eps``: the shrink after a successful one
    is at least this; ``conservative``: ε recorded drops by shrink / conservative;
    ``lr_hi``/``lr_lo``: the sign-step size, its plateau schedule's start and floor;
    ``plateau_length``/``plateau_drop``: the plateau window and divisor;
    ``shrink_when``: ε shrinks only after an estimate in which this fraction of the perturbed
    queries had the target top-1 (their ``adv_thresh`` on the loss);
    ``check_views``: transformations each candidate is checked on under a random ``dist``
    (kept when the target is answered on most of them).
    """

    start_eps: float = 1.0
    delta_eps: float = 0.5
    min_delta_eps: float = 0.1
    conservative: float = 2.0
    lr_hi: float = 3e-2  # measured on signs (3 stop scenes, ε 32/255, k = 1): fewer queries than their 1e-2
    lr_lo: float = 1e-3
    plateau_length: int = 20
    plateau_drop: float = 2.0
    shrink_when: float = 0.9
    min_shrink: float = 2e-3
    check_views: int = 8

    def __post_init__(self) -> None:
        if not 0 < self.start_eps <= 1 or not 0 < self.delta_eps <= 1 or not 0 <= self.min_delta_eps <= 1:
            raise ValueError("partial-information ε settings must be fractions in (0, 1]")
        if self.conservative < 1:
            raise ValueError(f"conservative must be ≥ 1, got {self.conservative:g}")
        if not 0 < self.lr_lo <= self.lr_hi:
            raise ValueError(f"need 0 < lr_lo ≤ lr_hi, got {self.lr_lo:g}, {self.lr_hi:g}")
        if not 0 <= self.shrink_when <= 1 or self.check_views < 1:
            raise ValueError("shrink_when must be in [0, 1] and check_views ≥ 1")


@dataclass
class PartialResult(LoopResult):
    """A :class:`LoopResult` plus the ε schedule: per step the ε recorded, the last ε, and
    whether the goal was reached (ε at the threat's ε with the target top-1)."""

    eps_history: list[float] = field(default_factory=list)
    final_eps: float = 1.0
    reached: bool = False


def _box(x: torch.Tensor, clean: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.min(torch.max(x, clean - eps), clean + eps).clamp(0, 1)


def partial_information(target: QueryTarget, objective, source: GradientSource, clean: torch.Tensor,
                        start: torch.Tensor, threat: LinfBall, dist: eot.EOTDistribution, out_size: int,
                        generator: torch.Generator, config: PartialConfig = PartialConfig(),
                        callback: Callable[[StepReport], None] | None = None) -> PartialResult:
    """Targeted attack from ``start`` (an image of the target class) towards the ε-ball of ``clean``.

    Args:
        target: the query target (its budget ends the run with the point reached).
        objective: the objective ``source`` estimates (its ``target_class`` is the goal).
        source: ``x → Estimate`` of the objective's gradient (e.g. NES), spending queries.
        clean, start: ``(1, 3, S, S)`` in [0, 1].
        threat: the final L∞ ball (its ``eps``).
        dist, out_size: how candidates are rendered for the check.
        generator: the check's transformations.
        config: :class:`PartialConfig`.
        callback: called with each step's :class:`StepReport` (``success`` 1 once the goal is reached).

    Returns:
        :class:`PartialResult`; its ``x`` lies in the final ball (projected there when the budget
        ended the run before ε got there).
    """
    goal, name = threat.eps, objective.target_class
    views = 1 if dist.deterministic else config.check_views

    def check(x: torch.Tensor) -> tuple[bool, bool]:
        """(target among the answered labels, target top-1), each on most of the views."""
        with torch.no_grad():
            params = eot.sample(dist, views, x.shape[-1], out_size, generator, x.device)
            answers = target.query(eot.render(x, params))
        listed = sum(any(same_class(lb.description, name) for lb in labels) for labels in answers)
        top = sum(bool(labels) and same_class(labels[0].description, name) for labels in answers)
        return 2 * listed > views, 2 * top > views

    eps, delta = max(config.start_eps, goal), config.delta_eps
    plateau = Plateau(config.lr_hi, config.lr_lo, config.plateau_length, config.plateau_drop)
    x = _box(start, clean, eps)
    history: list[StepReport] = []
    eps_history: list[float] = []
    reached = exhausted = False
    try:
        listed, top1 = check(x)
        if not listed:
            raise UserError(f"the start image is not answered as the target {name!r} (the partial-information attack "
                            "starts from an image the target already has in its top k)")
        while True:
            if eps <= goal and top1:
                reached = True
                break
            est = source(x)
            plateau.observe(est.objective)
            lr = plateau.alpha
            shrink = delta if (est.success >= config.shrink_when and eps > goal) else 0.0
            while True:
                proposed = max(eps - shrink, goal)
                candidate = _box(x + lr * est.grad.sign(), clean, proposed)
                ok, t1 = check(candidate)
                if ok:
                    if shrink > 0:
                        delta = max(shrink, config.min_delta_eps)
                        plateau.reset_window()
                    x, top1 = candidate, t1
                    eps = max(eps - shrink / config.conservative, goal)
                    break
                if lr >= 2 * config.lr_lo:
                    lr /= 2
                elif shrink > 0:
                    shrink = 0.0 if shrink / 2 < config.min_shrink else shrink / 2
                    lr = plateau.alpha
                else:  # no step kept: estimate again from the same point
                    break
            report = StepReport(len(history), est.objective, float(eps <= goal and top1), lr, est.margin)
            history.append(report)
            eps_history.append(eps)
            if callback is not None:
                callback(report)
    except (SourceExhausted, BudgetExhausted):
        exhausted = True
    return PartialResult(_box(x, clean, goal).detach(), len(history), history, reached, exhausted,
                         eps_history, eps, reached)
