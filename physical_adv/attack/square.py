"""The Square attack (Andriushchenko et al. 2020, "Square Attack: a query-efficient black-box
adversarial attack via random search"), L∞ and L2, as the score-based baseline.

It is random search, not a gradient method, so it does not run the gradient loop: it is one
small function over the same pieces (query target, :class:`LinfBall` / :class:`L2Ball`,
:class:`ScoreObjective`, EOT renderer). The perturbation lives on a coarse ``resolution`` ×
``resolution`` grid (nearest-upsampled to the texture, so a square survives the downsampling to
the model input), and each candidate is scored on one fixed draw of ``views`` transformations (a
random search needs one consistent objective to compare candidates on).

The two threat models differ only in the proposal: L∞ sets one square to a random vertex of the
ball (±ε per channel); L2 moves mass between two squares with a pseudo-Gaussian bump of opposite
halves (the paper's Algorithm 3), keeping the whole perturbation on the sphere of radius ε.
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
from physical_adv.attack.threat import L2Ball, LinfBall
from physical_adv.blackbox.target import BudgetExhausted, QueryTarget

# the paper's schedule: fraction of p_init by progress (in 1/10,000 of the iterations)
_P_SCHEDULE = ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128), (8000, 256))


@dataclass(frozen=True)
class SquareConfig:
    """Square settings.

    ``p_init``: initial fraction of the grid a square covers; ``resolution``: side of the grid;
    ``schedule_iters``: the number of iterations the square-size schedule is spread over
    (``None``: the budget's, as in the paper; a number makes the run independent of the budget,
    so a run cut at any budget is the run that budget would have made).
    """

    # 0.3 fooled one sign soonest; on 8 PGD-fooled scenes (1,500 queries, margin loss) 0.05 fooled 5, 0.3 3,
    # 0.8 4 — within noise, so the default stays (benchmarks/blackbox_queries.py runs the paper's 0.05)
    p_init: float = 0.3
    resolution: int = 64
    schedule_iters: int | None = None

    def __post_init__(self) -> None:
        if not 0 < self.p_init <= 1:
            raise ValueError(f"Square p_init must be in (0, 1], got {self.p_init:g}")
        if self.resolution < 2:
            raise ValueError(f"Square resolution must be ≥ 2, got {self.resolution}")
        if self.schedule_iters is not None and self.schedule_iters < 1:
            raise ValueError(f"Square schedule_iters must be ≥ 1, got {self.schedule_iters}")


def square_fraction(p_init: float, it: int, n_iters: int) -> float:
    """The square's area fraction at iteration ``it`` of ``n_iters`` (the paper's halving schedule)."""
    progress = int(it / max(1, n_iters) * 10000)
    divisor = 512
    for bound, d in _P_SCHEDULE:
        if progress <= bound:
            divisor = d
            break
    return p_init / divisor


def pseudo_gaussian_bump(h: int, w: int) -> torch.Tensor:
    """``(h, w)`` unit-L2 bump: concentric rectangles around the centre, the k-th weighted 1/(k+1)²
    (a pixel at Chebyshev distance d from the centre gets Σ_{k ≥ d} 1/(k+1)²)."""
    rings = max(h // 2 + 1, w // 2 + 1)
    tail = torch.tensor([1.0 / (k + 1) ** 2 for k in range(rings)], dtype=torch.float64).flip(0).cumsum(0).flip(0)
    d = torch.maximum((torch.arange(h) - h // 2).abs().view(h, 1), (torch.arange(w) - w // 2).abs().view(1, w))
    bump = tail[d]
    return (bump / bump.norm()).float()


def opposite_halves(s: int, generator: torch.Generator) -> torch.Tensor:
    """``(s, s)`` unit-L2 L2-Square proposal: a bump on one half, minus a bump on the other,
    split horizontally or vertically at random."""
    top = s // 2
    delta = torch.cat([pseudo_gaussian_bump(top, s), -pseudo_gaussian_bump(s - top, s)]) if top else -pseudo_gaussian_bump(s, s)
    delta = delta / delta.norm()
    if float(torch.rand(1, generator=generator)) > 0.5:
        delta = delta.t()
    return delta


def _random_signs(generator: torch.Generator, dtype: torch.dtype, device, *shape: int) -> torch.Tensor:
    return (torch.randint(0, 2, shape, generator=generator, device=device) * 2 - 1).to(dtype)


def _linf_init(eps: float, r: int, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Vertical stripes of ±ε (the paper's L∞ start)."""
    return eps * _random_signs(generator, like.dtype, like.device, 1, 3, 1, r).expand(1, 3, r, r).clone()


def _linf_proposal(delta: torch.Tensor, eps: float, p: float, generator: torch.Generator) -> torch.Tensor:
    """One square of side ≈ √p·r set to a random vertex (±ε per channel)."""
    r, dev = delta.shape[-1], delta.device
    side = min(r - 1, max(1, int(round(math.sqrt(p * r * r)))))
    y, x = (int(v) for v in torch.randint(0, r - side + 1, (2,), generator=generator, device=dev))
    candidate = delta.clone()
    candidate[:, :, y : y + side, x : x + side] = eps * _random_signs(generator, delta.dtype, dev, 1, 3, 1, 1)
    if torch.equal(candidate, delta):  # the same square again: flip one channel instead of wasting a query
        channel = int(torch.randint(0, 3, (1,), generator=generator, device=dev))
        candidate[:, channel, y : y + side, x : x + side] *= -1
    return candidate


def _l2_init(eps: float, r: int, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """A tiling of r//5-sized bumps with random signs per channel, scaled to norm ε (the paper's L2 start)."""
    s = max(1, r // 5)
    start = (r - 5 * s) // 2 if r >= 5 else 0
    delta = torch.zeros(1, 3, r, r, dtype=like.dtype, device=like.device)
    for y in range(start, r - s + 1, s):
        for x in range(start, r - s + 1, s):
            bump = opposite_halves(s, generator).to(like)
            delta[:, :, y : y + s, x : x + s] += bump * _random_signs(generator, like.dtype, like.device, 1, 3, 1, 1)
    return delta * eps / delta.norm().clamp_min(1e-12)


def _l2_proposal(delta: torch.Tensor, eps: float, p: float, generator: torch.Generator) -> torch.Tensor:
    """Move the mass of two random windows into the first one as a fresh signed bump (plus its
    old direction), empty the second, and rescale the whole perturbation to norm ε."""
    r, dev = delta.shape[-1], delta.device
    s = max(3, int(round(math.sqrt(p * r * r))))
    s = min(s + (s % 2 == 0), r - (r % 2 == 0))  # odd, and inside the grid
    y1, x1, y2, x2 = (int(v) for v in torch.randint(0, r - s + 1, (4,), generator=generator, device=dev))
    first = (slice(None), slice(None), slice(y1, y1 + s), slice(x1, x1 + s))
    second = (slice(None), slice(None), slice(y2, y2 + s), slice(x2, x2 + s))
    windows = torch.zeros_like(delta)
    windows[first] = 1
    windows[second] = 1
    room = max(eps**2 - float(delta.pow(2).sum()), 0.0) / 3  # unused budget, shared by the channels
    in_windows = (delta * windows).pow(2).sum((2, 3), keepdim=True)  # (1, 3, 1, 1)
    old = delta[first]
    fresh = opposite_halves(s, generator).to(delta) * _random_signs(generator, delta.dtype, dev, 1, 3, 1, 1)
    fresh = fresh + old / old.pow(2).sum((2, 3), keepdim=True).sqrt().clamp_min(1e-10)
    fresh = fresh / fresh.pow(2).sum((2, 3), keepdim=True).sqrt().clamp_min(1e-12) * (room + in_windows).sqrt()
    candidate = delta.clone()
    candidate[second] = 0
    candidate[first] = fresh
    return candidate * eps / candidate.norm().clamp_min(1e-12)


def square_attack(
    target: QueryTarget,
    objective: ScoreObjective,
    clean: torch.Tensor,
    threat: LinfBall | L2Ball,
    dist: eot.EOTDistribution,
    views: int,
    out_size: int,
    generator: torch.Generator,
    config: SquareConfig = SquareConfig(),
    callback: Callable[[StepReport], None] | None = None,
) -> LoopResult:
    """Untargeted or targeted Square attack (L∞ or L2) on the texture ``clean`` ``(1, 3, S, S)``.

    Runs until the target's budget is spent or every view succeeds.

    Args:
        target: the query target; each candidate costs ``views`` queries.
        objective: maximised (mean over the views).
        threat: the L∞ or L2 ball (its ``eps``, in texture pixels; the L2 search runs on the grid
            with ε scaled by resolution / S, and the texture is projected into the ball anyway).
        dist, views, out_size: the fixed transformations every candidate is scored on.
        generator: the randomness of the stripes, squares and transformations.
        config: :class:`SquareConfig`.
        callback: called with each iteration's :class:`StepReport` (the accepted point's).

    Returns:
        :class:`LoopResult` with the best point (random search only ever keeps improvements).
    """
    if not isinstance(threat, (LinfBall, L2Ball)):
        raise ValueError(f"the Square attack needs an L∞ or L2 ball, got {type(threat).__name__}")
    size, r = clean.shape[-1], config.resolution
    l2 = isinstance(threat, L2Ball)
    eps = threat.eps * r / size if l2 else threat.eps  # a nearest-upsampled grid cell covers (S/r)² pixels
    init, propose = (_l2_init, _l2_proposal) if l2 else (_linf_init, _linf_proposal)
    params = eot.sample(dist, views, size, out_size, generator, clean.device)
    n_iters = max(1, (target.remaining if target.remaining is not None else 10000 * views) // views)
    schedule = config.schedule_iters or n_iters

    def texture(delta: torch.Tensor) -> torch.Tensor:
        return threat.project(clean + F.interpolate(delta, size=(size, size), mode="nearest"), clean)

    def score(delta: torch.Tensor) -> tuple[float, float, float]:
        with torch.no_grad():
            values, hits, margins = objective.evaluate(target.query(eot.render(texture(delta), params)))
        return float(values.mean()), float(hits.mean()), float(margins.mean())

    history: list[StepReport] = []
    delta = init(eps, r, generator, clean)
    try:
        best = score(delta)
    except BudgetExhausted:
        return LoopResult(clean.clone(), 0, history, True, True)
    exhausted = False
    for it in range(n_iters):
        p = square_fraction(config.p_init, it, schedule)
        report = StepReport(it, best[0], best[1], p, best[2])
        history.append(report)
        if callback is not None:
            callback(report)
        if best[1] >= 1.0:
            break
        candidate = propose(delta, eps, p, generator)
        try:
            trial = score(candidate)
        except BudgetExhausted:
            exhausted = True
            break
        if trial[0] > best[0]:
            delta, best = candidate, trial
    return LoopResult(texture(delta).detach(), len(history), history, exhausted or best[1] >= 1.0, exhausted)
