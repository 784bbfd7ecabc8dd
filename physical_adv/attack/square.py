"""The Square attack (Andriushchenko et al. 2020, "Square Attack: a query-efficient black-box
adversarial attack via random search"), L∞, as the score-based baseline.

It is random search, not a gradient method, so it does not run the gradient loop: it is one
small function over the same pieces (query target, :class:`LinfBall`, :class:`ScoreObjective`,
EOT renderer). The perturbation lives on a coarse ``resolution`` × ``resolution`` grid
(nearest-upsampled to the texture, so a square survives the downsampling to the model input),
and each candidate is scored on one fixed draw of ``views`` transformations (a random search
needs one consistent objective to compare candidates on).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from physical_adv.attack import eot
from physical_adv.attack.estimators import ScoreObjective
from physical_adv.attack.loop import LoopResult, StepReport
from physical_adv.attack.threat import LinfBall
from physical_adv.blackbox.target import BudgetExhausted, QueryTarget

# the paper's schedule: fraction of p_init by progress (in 1/10,000 of the iterations)
_P_SCHEDULE = ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128), (8000, 256))


@dataclass(frozen=True)
class SquareConfig:
    """``p_init``: initial fraction of the grid a square covers; ``resolution``: side of the grid."""

    p_init: float = 0.3  # measured on signs: 0.3 fools sooner than 0.05, 0.1 or 0.8
    resolution: int = 64

    def __post_init__(self) -> None:
        if not 0 < self.p_init <= 1:
            raise ValueError(f"Square p_init must be in (0, 1], got {self.p_init:g}")
        if self.resolution < 2:
            raise ValueError(f"Square resolution must be ≥ 2, got {self.resolution}")


def square_fraction(p_init: float, it: int, n_iters: int) -> float:
    """The square's area fraction at iteration ``it`` of ``n_iters`` (the paper's halving schedule)."""
    progress = int(it / max(1, n_iters) * 10000)
    divisor = 512
    for bound, d in _P_SCHEDULE:
        if progress <= bound:
            divisor = d
            break
    return p_init / divisor


def square_attack(
    target: QueryTarget,
    objective: ScoreObjective,
    clean: torch.Tensor,
    threat: LinfBall,
    dist: eot.EOTDistribution,
    views: int,
    out_size: int,
    generator: torch.Generator,
    config: SquareConfig = SquareConfig(),
    callback: Callable[[StepReport], None] | None = None,
) -> LoopResult:
    """Untargeted or targeted L∞ Square attack on the texture ``clean`` ``(1, 3, S, S)``.

    Runs until the target's budget is spent or every view succeeds.

    Args:
        target: the query target; each candidate costs ``views`` queries.
        objective: maximised (mean over the views).
        threat: the L∞ ball (its ``eps``).
        dist, views, out_size: the fixed transformations every candidate is scored on.
        generator: the randomness of the stripes, squares and transformations.
        config: :class:`SquareConfig`.
        callback: called with each iteration's :class:`StepReport` (the accepted point's).

    Returns:
        :class:`LoopResult` with the best point (random search only ever keeps improvements).
    """
    size, r, eps, dev = clean.shape[-1], config.resolution, threat.eps, clean.device
    params = eot.sample(dist, views, size, out_size, generator, dev)
    n_iters = max(1, (target.remaining if target.remaining is not None else 10000 * views) // views)

    def signs(*shape: int) -> torch.Tensor:
        return (torch.randint(0, 2, shape, generator=generator, device=dev) * 2 - 1).to(clean.dtype)

    def texture(delta: torch.Tensor) -> torch.Tensor:
        return threat.project(clean + F.interpolate(delta, size=(size, size), mode="nearest"), clean)

    def score(delta: torch.Tensor) -> tuple[float, float, float]:
        with torch.no_grad():
            values, hits, margins = objective.evaluate(target.query(eot.render(texture(delta), params)))
        return float(values.mean()), float(hits.mean()), float(margins.mean())

    history: list[StepReport] = []
    delta = eps * signs(1, 3, 1, r).expand(1, 3, r, r).clone()  # vertical stripes
    try:
        best = score(delta)
    except BudgetExhausted:
        return LoopResult(clean.clone(), 0, history, True, True)
    exhausted = False
    for it in range(n_iters):
        report = StepReport(it, best[0], best[1], square_fraction(config.p_init, it, n_iters), best[2])
        history.append(report)
        if callback is not None:
            callback(report)
        if best[1] >= 1.0:
            break
        side = min(r - 1, max(1, int(round(math.sqrt(square_fraction(config.p_init, it, n_iters) * r * r)))))
        y, x = (int(v) for v in torch.randint(0, r - side + 1, (2,), generator=generator, device=dev))
        candidate = delta.clone()
        candidate[:, :, y : y + side, x : x + side] = eps * signs(1, 3, 1, 1)
        if torch.equal(candidate, delta):  # the same square again: flip one channel instead of wasting a query
            channel = int(torch.randint(0, 3, (1,), generator=generator, device=dev))
            candidate[:, channel, y : y + side, x : x + side] *= -1
        try:
            trial = score(candidate)
        except BudgetExhausted:
            exhausted = True
            break
        if trial[0] > best[0]:
            delta, best = candidate, trial
    return LoopResult(texture(delta).detach(), len(history), history, exhausted or best[1] >= 1.0, exhausted)
