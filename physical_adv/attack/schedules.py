"""Step-size schedules and the early-stop rule shared by white-box and black-box runs.

* :func:`step_sizes` — the largest and smallest step of a threat model;
* :func:`cosine` — cosine decay between them over a fixed number of steps (the default);
* :class:`Plateau` — Ilyas et al. 2018's schedule: halve the step when the objective has not
  improved over a window of steps, never below a floor;
* :func:`held_with_margin` — stop once the goal held with margin for a window of steps.
"""

from __future__ import annotations

import math
from typing import Callable

from physical_adv.attack.loop import StepReport
from physical_adv.attack.threat import L2Ball, LinfBall, Patch, ThreatModel


def step_sizes(threat: ThreatModel) -> tuple[float, float]:
    """``(largest, smallest)`` step of ``threat``: ε/4 … ε/40 (L∞), ε/5 … ε/50 (L2), 24/255 … 1/255 (patch)."""
    if isinstance(threat, Patch):
        return 24 / 255, 1 / 255
    if isinstance(threat, LinfBall):
        return threat.eps / 4, threat.eps / 40
    if isinstance(threat, L2Ball):
        return threat.eps / 5, threat.eps / 50
    raise ValueError(f"no step sizes for threat model {type(threat).__name__}")


def cosine(alpha_hi: float, alpha_lo: float, steps: int) -> Callable[[int], float]:
    """Cosine decay from ``alpha_hi`` at step 0 to ``alpha_lo`` at step ``steps − 1``."""

    def alpha(step: int) -> float:
        return alpha_lo + 0.5 * (alpha_hi - alpha_lo) * (1 + math.cos(math.pi * step / max(1, steps - 1)))

    return alpha


class Plateau:
    """Ilyas et al. 2018's plateau schedule (their ``max_lr`` annealing): the step starts at
    ``alpha_hi`` and is divided by ``drop`` whenever the objective (maximised) at the end of a
    window of ``length`` observations is below the one at its start, never below ``alpha_lo``.

    Call :meth:`observe` with each step's objective, then the object (``step → alpha``).
    """

    def __init__(self, alpha_hi: float, alpha_lo: float, length: int = 5, drop: float = 2.0) -> None:
        if not 0 < alpha_lo <= alpha_hi:
            raise ValueError(f"plateau steps need 0 < alpha_lo ≤ alpha_hi, got {alpha_lo:g}, {alpha_hi:g}")
        if length < 2 or drop <= 1:
            raise ValueError(f"plateau length must be ≥ 2 and drop > 1, got {length}, {drop:g}")
        self.alpha, self.alpha_lo, self.length, self.drop = alpha_hi, alpha_lo, length, drop
        self._window: list[float] = []

    def observe(self, objective: float) -> None:
        self._window = (self._window + [objective])[-self.length :]
        if len(self._window) == self.length and self._window[-1] < self._window[0]:
            self.alpha = max(self.alpha / self.drop, self.alpha_lo)
            self._window = []

    def reset_window(self) -> None:
        self._window = []

    def __call__(self, step: int) -> float:
        return self.alpha


def held_with_margin(window: int, enabled: bool = True) -> Callable[[list[StepReport]], bool]:
    """The early stop: the goal held with margin (≥ 3) on ≥ 99 % of the batch for ``window`` straight steps."""

    def early_stop(history: list[StepReport]) -> bool:
        recent = history[-window:]
        return enabled and len(recent) == window and all(r.success >= 0.99 and r.margin >= 3.0 for r in recent)

    return early_stop
