"""Gradient sources that spend queries instead of autograd: the black-box side of the one
loop's seam (:func:`physical_adv.attack.loop.optimize`'s ``gradient_source``).

The objective is a function of what the target answers: in ``scores`` mode, the top-k
``Label(name, probability)`` per image, a class missing from the top k counting as the
probability ``floor``. :class:`NESEstimator` estimates its gradient with respect to the
texture by antithetic Gaussian sampling (Ilyas et al. 2018, "query-limited"), optionally in a
coarse grid basis, and under EOT: each antithetic pair is rendered through one sampled
print-camera transformation, so the estimate is of the *expected* objective. In ``labels`` and
``label`` modes :class:`LabelProxyObjective` stands in for the scores (Ilyas et al. §3.3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from physical_adv.attack import eot
from physical_adv.attack.loop import Estimate, SourceExhausted
from physical_adv.blackbox.protocol import Label
from physical_adv.blackbox.target import BudgetExhausted, QueryTarget
from physical_adv.outcome import attack_succeeded, same_class

SCORE_LOSSES = ("ce", "margin")


@dataclass(frozen=True)
class ScoreObjective:
    """The attack objective (to maximise) on ``scores``-mode answers.

    ``ce``: log p(target) (targeted) or −log p(true) (untargeted); ``margin``: the log-probability
    margin of the goal class over the best other returned class (targeted: target − other;
    untargeted: other − true), capped at ``kappa``. Missing classes count as ``floor``.
    """

    true_class: str
    target_class: str | None = None
    loss: str = "ce"
    floor: float = 1e-6
    kappa: float = 5.0

    def __post_init__(self) -> None:
        if self.loss not in SCORE_LOSSES:
            raise ValueError(f"loss must be one of {', '.join(SCORE_LOSSES)}, got {self.loss!r}")
        if not 0 < self.floor < 1:
            raise ValueError(f"floor must be in (0, 1), got {self.floor:g}")

    @property
    def targeted(self) -> bool:
        return self.target_class is not None

    def evaluate(self, answers: list[list[Label]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per answered image: ``(objective, success 0/1, log-probability margin)``, each ``(N,)``."""
        own_name = self.target_class if self.targeted else self.true_class
        values, hits, margins = [], [], []
        for labels in answers:
            own = math.log(self.floor)
            other = math.log(self.floor)
            for label in labels:
                lp = math.log(max(float(label.score), self.floor))
                if same_class(label.description, own_name):
                    own = max(own, lp)
                else:
                    other = max(other, lp)
            margin = own - other if self.targeted else other - own
            values.append(min(margin, self.kappa) if self.loss == "margin" else (own if self.targeted else -own))
            margins.append(margin)
            top = labels[0].description if labels else ""
            hits.append(float(attack_succeeded(top, self.true_class, self.target_class)))
        return torch.tensor(values), torch.tensor(hits), torch.tensor(margins)

    def measure(self, target: QueryTarget, images: torch.Tensor,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Query ``target`` with ``images`` ``(N, 3, h, w)`` (N queries) and :meth:`evaluate` the answers."""
        return self.evaluate(target.query(images))


@dataclass(frozen=True)
class LabelProxyConfig:
    """The label-only proxy (Ilyas et al. 2018 §3.3): ``copies`` noisy copies per image, each
    with uniform noise in [−``noise``, ``noise``] per pixel (at the model's input)."""

    copies: int = 10
    noise: float = 0.02

    def __post_init__(self) -> None:
        if self.copies < 1:
            raise ValueError(f"label-only copies must be ≥ 1, got {self.copies}")
        if not 0 < self.noise <= 1:
            raise ValueError(f"label-only noise must be in (0, 1], got {self.noise:g}")


@dataclass(frozen=True)
class LabelProxyObjective:
    """The label-only proxy score of an image, from names alone (``labels`` or ``label`` mode).

    Ilyas et al. 2018 §3.3: S(x) = E_δ[R(x + δ)] over uniform noise δ, with R = (k − rank) / k
    for the goal class at 0-based ``rank`` among the k names answered, 0 when it is not among
    them; with one name (``label`` mode) R is the top-1 hit. Targeted: maximise S for the target;
    untargeted: maximise 1 − S for the true class. Every noisy copy is one query.
    """

    true_class: str
    target_class: str | None = None
    config: LabelProxyConfig = LabelProxyConfig()

    @property
    def targeted(self) -> bool:
        return self.target_class is not None

    def rank_score(self, labels: list[Label]) -> float:
        """R of one answer: (k − rank) / k for the goal class, 0 when absent."""
        own = self.target_class if self.targeted else self.true_class
        k = len(labels)
        for rank, label in enumerate(labels):
            if same_class(label.description, own):
                return (k - rank) / k
        return 0.0

    def measure(self, target: QueryTarget, images: torch.Tensor,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per image of ``images`` ``(N, 3, h, w)``: ``(proxy objective, top-1 success rate over the
        copies, proxy)``, each ``(N,)``; costs ``N · copies`` queries."""
        n, c = images.shape[0], self.config.copies
        noise = torch.rand((c, *images.shape), generator=generator, device=images.device, dtype=images.dtype)
        noisy = (images.unsqueeze(0) + (2 * noise - 1) * self.config.noise).clamp(0, 1).reshape(c * n, *images.shape[1:])
        answers = target.query(noisy)
        scores = torch.tensor([self.rank_score(labels) for labels in answers]).view(c, n).mean(0)
        hits = torch.tensor([float(attack_succeeded(labels[0].description if labels else "", self.true_class,
                                                    self.target_class)) for labels in answers]).view(c, n).mean(0)
        values = scores if self.targeted else 1 - scores
        return values, hits, values


def region_box(mask: torch.Tensor | None, size: int) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)``: the bounding box of the free region (the whole texture without a mask)."""
    if mask is None:
        return 0, size, 0, size
    ys, xs = torch.nonzero(mask.view(size, size) > 0, as_tuple=True)
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


@dataclass(frozen=True)
class NESConfig:
    """NES settings (Ilyas et al. 2018): ``pairs`` antithetic pairs per estimate, noise scale
    ``sigma`` (texture units), a ``grid`` × ``grid`` basis bilinearly upsampled over the free
    region (``None`` = every texture pixel), and momentum on the estimates."""

    pairs: int = 50
    sigma: float = 0.05
    grid: int | None = 16
    momentum: float = 0.5

    def __post_init__(self) -> None:
        if self.pairs < 1:
            raise ValueError(f"NES pairs must be ≥ 1, got {self.pairs}")
        if not 0 < self.sigma <= 1:
            raise ValueError(f"NES sigma must be in (0, 1], got {self.sigma:g}")
        if self.grid is not None and self.grid < 1:
            raise ValueError(f"NES grid must be ≥ 1, got {self.grid}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"NES momentum must be in [0, 1), got {self.momentum:g}")


class NESEstimator:
    """A query-based gradient source: antithetic NES under EOT.

    Each call draws ``pairs`` noise fields ``u`` (in the grid basis, upsampled and confined to
    the free region), one transformation per pair, renders ``x + σu`` and ``x − σu`` through
    that same transformation, queries the target with the ``2·pairs`` renders and returns
    ``Σ (f⁺ − f⁻) u / (2σ·pairs)`` (with momentum), plus the objective and success seen.

    Args:
        target: the query target (its budget ends the loop via :class:`SourceExhausted`).
        objective: the objective on the target's answers (its ``measure`` sends the queries).
        dist: the transformations (a deterministic one renders the plain texture view).
        out_size: side of the images sent (the model input size).
        config: :class:`NESConfig`.
        generator: the randomness of noise and transformations.
        mask: ``(1, 1, S, S)`` free region (patch mode), or ``None``.
    """

    def __init__(self, target: QueryTarget, objective: ScoreObjective | LabelProxyObjective, dist: eot.EOTDistribution, out_size: int,
                 config: NESConfig, generator: torch.Generator, mask: torch.Tensor | None = None) -> None:
        self.target, self.objective, self.dist, self.out_size = target, objective, dist, out_size
        self.config, self.generator, self.mask = config, generator, mask
        self._box: tuple[int, int, int, int] | None = None  # the free region's bounding box (the mask is fixed)
        self._velocity: torch.Tensor | None = None

    @property
    def queries_per_estimate(self) -> int:
        return 2 * self.config.pairs

    def noise(self, x: torch.Tensor) -> torch.Tensor:
        """``(pairs, 3, S, S)`` unit-Gaussian directions in the basis, zero outside the free region."""
        n, size = self.config.pairs, x.shape[-1]
        if self._box is None:
            self._box = region_box(self.mask, size)
        y0, y1, x0, x1 = self._box
        g = self.config.grid
        if g is None:
            u = torch.randn(n, 3, y1 - y0, x1 - x0, generator=self.generator, device=x.device)
        else:
            coarse = torch.randn(n, 3, g, g, generator=self.generator, device=x.device)
            u = F.interpolate(coarse, size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False)
        full = torch.zeros(n, 3, size, size, device=x.device, dtype=x.dtype)
        full[:, :, y0:y1, x0:x1] = u
        return full if self.mask is None else full * self.mask

    def renders(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``(2·pairs, 3, out, out)``: ``x + σu`` then ``x − σu`` of each pair, through the pair's transformation."""
        sigma, size, n = self.config.sigma, x.shape[-1], u.shape[0]
        with torch.no_grad():
            params = eot.sample(self.dist, n, size, self.out_size, self.generator, x.device)
            plus = eot.render((x + sigma * u).clamp(0, 1), params)
            minus = eot.render((x - sigma * u).clamp(0, 1), params)
        return torch.cat([plus, minus])

    def __call__(self, x: torch.Tensor) -> Estimate:
        x = x.detach()
        u = self.noise(x)
        images = self.renders(x, u)
        try:
            values, hits, margins = self.objective.measure(self.target, images, self.generator)
        except BudgetExhausted:
            raise SourceExhausted() from None
        n = u.shape[0]
        diff = (values[:n] - values[n:]).to(x.device, x.dtype)
        grad = (diff.view(n, 1, 1, 1) * u).sum(0, keepdim=True) / (2 * self.config.sigma * n)
        if self.config.momentum and self._velocity is not None:
            grad = self.config.momentum * self._velocity + (1 - self.config.momentum) * grad
        self._velocity = grad
        return Estimate(grad, float(values.mean()), float(hits.mean()), float(margins.mean()))
