"""Rates with honest uncertainty: the Wilson interval, and the same interval on an effective
sample size when observations come in clusters (near-duplicate video frames of one pose).

A per-frame rate from video treats 30 frames of one pose as 30 independent trials; they are
closer to one. :func:`clustered_rate` keeps the per-frame rate as the point estimate and
shrinks the sample size by the design effect (Kish 1965): with an intra-cluster correlation
``ρ`` (one-way ANOVA estimator, Donner 1986) and the size-weighted mean cluster size
``m̃ = Σ mᵢ² / n``, ``n_eff = n / (1 + (m̃ − 1)·ρ)``; the Wilson interval is then computed on
``(p·n_eff, n_eff)``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054
METHOD = "wilson-design-effect"
MIN_CLUSTERS_FOR_ICC = 5  # below this many segments ρ = 1 is used (each segment counts once)
METHOD_TEXT = ("95 % Wilson interval on the effective sample size n_eff = n / (1 + (m̃ − 1)·ICC): frames are "
               "clustered into segments (runs of consecutive frames of one tile in one pose, misses included), ICC is the one-way "
               "ANOVA estimate over the segments clipped to [0, 1] (taken as 1 when it cannot be estimated or there are "
               "fewer than 5 segments, so each segment then counts once), m̃ = Σ size² / n; the point estimate is the per-frame rate")


def wilson_interval(successes: float, n: float, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval for a binomial rate (95 % by default), by statsmodels.

    Args:
        successes: number of successes, ``0 ≤ successes ≤ n`` (may be fractional: an
            effective count ``p·n_eff``).
        n: number of trials (may be fractional); with ``n == 0`` the interval is ``(0.0, 1.0)``.
        z: the normal quantile of the two-sided level.

    Returns:
        ``(low, high)`` in [0, 1].
    """
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 ≤ successes ≤ n, got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    from statsmodels.stats.proportion import proportion_confint  # imports scipy.stats: seconds, so only when needed

    low, high = proportion_confint(successes, n, alpha=math.erfc(z / math.sqrt(2)), method="wilson")
    return max(0.0, float(low)), min(1.0, float(high))


def icc_anova(successes: np.ndarray, cluster: np.ndarray) -> float | None:
    """Intra-cluster correlation of binary outcomes by the one-way ANOVA estimator.

    ``ρ = (MSB − MSW) / (MSB + (n₀ − 1)·MSW)`` with ``n₀ = (n − Σ mᵢ²/n) / (k − 1)`` for
    unequal cluster sizes ``mᵢ`` (Donner 1986), clipped to [0, 1].

    Args:
        successes: ``(n,)`` outcomes in {0, 1}.
        cluster: ``(n,)`` integer cluster index of each outcome, in ``0 … k−1``.

    Returns:
        ``ρ`` in [0, 1], or ``None`` when it is undefined: fewer than two clusters, every
        cluster a single observation, or no variance at all (every outcome the same).
    """
    y = np.asarray(successes, np.float64)
    sizes = np.bincount(cluster)
    sizes_used = sizes[sizes > 0]
    n, k = float(len(y)), len(sizes_used)
    if k < 2 or n == k:
        return None
    means = np.bincount(cluster, weights=y)[sizes > 0] / sizes_used
    p = y.mean()
    msb = float((sizes_used * (means - p) ** 2).sum() / (k - 1))
    msw = float((sizes_used * means * (1 - means)).sum() / (n - k))
    n0 = (n - float((sizes_used ** 2).sum()) / n) / (k - 1)
    denom = msb + (n0 - 1) * msw
    if denom <= 0:
        return None
    return float(np.clip((msb - msw) / denom, 0.0, 1.0))


def effective_sample_size(sizes: Sequence[int], icc: float) -> float:
    """Kish's ``n / (1 + (m̃ − 1)·ρ)`` with the size-weighted mean cluster size ``m̃ = Σ mᵢ² / n``.

    It lies between ``n²/Σ mᵢ²`` (ρ = 1: each cluster one trial, weighted by its size as the
    per-frame rate weights it; equal to the number of clusters when they are of equal size,
    fewer when they are not) and ``n`` (ρ = 0). It is deliberately *not* floored at the
    number of clusters: with unequal sizes and ρ = 1 the per-frame rate really has the
    variance of ``n²/Σ mᵢ²`` trials, and a floor would make the interval too narrow.

    Args:
        sizes: the number of observations in each cluster (each ≥ 1).
        icc: the intra-cluster correlation in [0, 1].

    Returns:
        The effective number of independent trials (0 when there is no observation).
    """
    m = np.asarray(sizes, np.float64)
    n = float(m.sum())
    if n == 0:
        return 0.0
    return n / (1.0 + (float((m ** 2).sum()) / n - 1.0) * icc)


@dataclass(frozen=True)
class ClusteredRate:
    """A rate over clustered binary observations with its design-effect Wilson interval."""

    k: int
    n: int
    clusters: int
    icc: float | None  # the estimate; None when undefined (then 1 is used, or nothing is needed)
    n_eff: float
    ci95: tuple[float, float]

    @property
    def rate(self) -> float | None:
        """The per-observation rate ``k / n``; ``None`` (undefined) without observations."""
        return self.k / self.n if self.n else None

    def to_json(self) -> dict:
        """The rate as ``report.json`` records it."""
        return {"k": self.k, "n": self.n, "rate": self.rate, "clusters": self.clusters,
                "icc": None if self.icc is None else round(self.icc, 4), "n_eff": round(self.n_eff, 2),
                "ci95": [round(self.ci95[0], 4), round(self.ci95[1], 4)], "method": METHOD}


def clustered_rate(successes: Sequence[bool], clusters: Sequence[Hashable]) -> ClusteredRate:
    """The rate of ``successes`` with a 95 % Wilson interval on the design-effect sample size.

    Args:
        successes: one outcome per observation.
        clusters: the cluster (any hashable label) of each observation.

    Returns:
        A :class:`ClusteredRate`. With every cluster a single observation it is the plain
        Wilson interval; when ρ cannot be estimated (one cluster, or all outcomes equal) or
        there are fewer than :data:`MIN_CLUSTERS_FOR_ICC` clusters, ρ = 1 is used, the
        conservative choice under which each cluster counts once.
    """
    if len(successes) != len(clusters):
        raise ValueError(f"{len(successes)} outcomes but {len(clusters)} cluster labels")
    y = np.asarray(successes, dtype=bool)
    labels: dict[Hashable, int] = {}
    index = np.fromiter((labels.setdefault(c, len(labels)) for c in clusters), np.int64, len(clusters))
    n, k = len(y), int(y.sum())
    if n == 0:
        return ClusteredRate(0, 0, 0, None, 0.0, (0.0, 1.0))
    sizes = np.bincount(index)
    icc = icc_anova(y, index)
    # with few segments the ANOVA estimate is too noisy to trust a low value (2 segments of
    # 150 frames can give ρ = 0 and the plain per-frame interval): use ρ = 1 there
    trusted = icc is not None and len(labels) >= MIN_CLUSTERS_FOR_ICC
    n_eff = float(n) if len(labels) == n else effective_sample_size(sizes, icc if trusted else 1.0)
    return ClusteredRate(k, n, len(labels), icc, n_eff, wilson_interval(k / n * n_eff, n_eff))


def seed_summary(rates: list[float]) -> dict:
    """Mean, min, max and the 95 % Student-t interval of the mean of per-seed success rates.

    Args:
        rates: one held-out success rate per optimisation seed, each in [0, 1].

    Returns:
        ``{"seeds", "mean", "min", "max", "sd", "t95"}``; ``t95`` is ``None`` for one seed and
        ``[mean, mean]`` when every seed gave the same rate; clipped to [0, 1].
    """
    import statistics

    from scipy import stats

    n, mean = len(rates), statistics.fmean(rates)
    sd = statistics.stdev(rates) if n > 1 else None
    if n < 2:
        t95 = None
    elif sd == 0:
        t95 = [mean, mean]
    else:
        lo, hi = stats.t.interval(0.95, n - 1, loc=mean, scale=sd / n**0.5)
        t95 = [max(0.0, float(lo)), min(1.0, float(hi))]
    return {"seeds": n, "mean": mean, "min": min(rates), "max": max(rates), "sd": sd,
            "t95": None if t95 is None else [round(v, 4) for v in t95]}
