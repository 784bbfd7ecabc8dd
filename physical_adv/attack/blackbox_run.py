"""Black-box attacks by queries only: the one library entry point :func:`query_attack`, and
:func:`optimise_blackbox`, the part of ``physical-adv attack --oracle`` that spends queries.

Methods (Ilyas et al. 2018, "Black-box Adversarial Attacks with Limited Queries and
Information"; Andriushchenko et al. 2020):

* ``nes`` — NES gradient estimates (:class:`~physical_adv.attack.estimators.NESEstimator`) in
  place of autograd in the shared loop; ``scores`` mode;
* ``square`` — the Square random search (:mod:`physical_adv.attack.square`), L∞ or L2; ``scores`` mode;
* ``partial`` — partial information: targeted, start from an image of the target class and
  shrink ε around the source while the target stays in the top k
  (:mod:`physical_adv.attack.partial`); ``scores`` mode, any k;
* ``label-only`` — the same schedule on the proxy score from the target's rank over noisy
  copies (:class:`~physical_adv.attack.estimators.LabelProxyObjective`); ``labels`` or
  ``label`` mode. Untargeted, both run NES in the shared loop on their objective.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from physical_adv.attack import eot
from physical_adv.attack.estimators import LabelProxyConfig, LabelProxyObjective, NESConfig, NESEstimator, ScoreObjective
from physical_adv.attack.loop import LoopResult, StepReport, optimize
from physical_adv.attack.partial import PartialConfig, partial_information
from physical_adv.attack.schedules import Plateau, cosine, held_with_margin, step_sizes
from physical_adv.attack.threat import LinfBall, Patch, ThreatModel
from physical_adv.blackbox.protocol import Label
from physical_adv.blackbox.target import BudgetExhausted, QueryTarget
from physical_adv.ui import make_progress

# the answer modes each method can work with
METHOD_MODES = {"nes": ("scores",), "square": ("scores",), "partial": ("scores",), "label-only": ("labels", "label")}
BLACKBOX_METHODS = tuple(METHOD_MODES)
NES_SCHEDULES = ("cosine", "plateau")


def check_method(method: str, mode: str, *, targeted: bool | None = None, patch_mode: bool = False,
                 norm: str = "linf") -> None:
    """Raise ``ValueError`` naming the first setting ``method`` cannot work with."""
    if method not in METHOD_MODES:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(BLACKBOX_METHODS)}")
    if mode not in METHOD_MODES[method]:
        allowed = " or ".join(METHOD_MODES[method])
        raise ValueError(f"--method {method} works on --mode {allowed}, not {mode!r}")
    if method == "square" and patch_mode:
        raise ValueError("the Square attack searches an L∞ or L2 ball, not a patch: use --method nes for stickers")
    if method == "partial" and targeted is False:
        raise ValueError("the partial-information attack is targeted: give --target")
    if method in ("partial", "label-only") and (patch_mode or norm != "linf"):
        raise ValueError(f"--method {method} shrinks an L∞ ball: it works in L∞ only, not in patch mode or L2")


def planned_nes(method: str, views: int, budget: int, proxy: LabelProxyConfig = LabelProxyConfig()) -> NESConfig:
    """The default NES settings of a run: ``views`` antithetic pairs per estimate, fewer when
    ``budget`` cannot pay for one estimate of that many (label-only pays each pair's noisy
    copies; partial and label-only also one check per step)."""
    per_pair = 2 * (proxy.copies if method == "label-only" else 1)
    checks = 1 if method in ("partial", "label-only") else 0
    return NESConfig(pairs=max(1, min(views, (budget - checks) // per_pair)))


def queries_per_estimate(method: str, pairs: int, proxy: LabelProxyConfig = LabelProxyConfig()) -> int:
    """Queries one step costs at least: an estimate (2·pairs, times the noisy copies for
    label-only), plus the partial schedule's one check."""
    if method == "square":
        return 1
    per = 2 * pairs * (proxy.copies if method == "label-only" else 1)
    return per + (1 if method in ("partial", "label-only") else 0)


class _Capped(QueryTarget):
    """``target`` seen through a budget of its own: at most ``budget`` more images (the
    queries are sent to, and counted by, ``target``)."""

    def __init__(self, target: QueryTarget, budget: int) -> None:
        self.inner, self._start = target, target.queries
        super().__init__(target.mode, target.top_k, budget)

    @property
    def queries(self) -> int:
        return self.inner.queries - self._start

    @queries.setter
    def queries(self, value: int) -> None:  # the base class's counter; the inner target counts
        pass

    def query(self, images: torch.Tensor) -> list[list[Label]]:
        if self.queries + images.shape[0] > self.budget:
            raise BudgetExhausted(self.queries, self.budget)
        return self.inner.query(images)

    def _answer(self, images):  # pragma: no cover - query delegates
        raise NotImplementedError

    def name(self) -> str:
        return self.inner.name()


def query_attack(target: QueryTarget, clean: torch.Tensor, true_class: str, target_class: str | None, *,
                 method: str, threat: ThreatModel, dist: eot.EOTDistribution, out_size: int, views: int,
                 generator: torch.Generator, loss: str = "margin", regularisers=(), start: torch.Tensor | None = None,
                 callback: Callable[[StepReport], None] | None = None, budget: int | None = None,
                 nes: NESConfig | None = None, schedule: str = "cosine", partial: PartialConfig = PartialConfig(),
                 proxy: LabelProxyConfig = LabelProxyConfig(), floor: float = 1e-6,
                 early_stop: Callable[[list[StepReport]], bool] | None = None) -> LoopResult:
    """Attack ``target`` by queries only, from the texture ``clean``.

    With ``dist`` = the ``none`` distribution and a texture of side ``out_size`` this is a plain
    digital image attack; otherwise every query is a render of the texture through sampled
    transformations (black-box EOT).

    Args:
        target: the query target; it counts every image (a spent budget ends the run cleanly).
        clean: ``(1, 3, S, S)`` in [0, 1], the source texture.
        true_class, target_class: class names as the target answers them (``None`` = untargeted).
        method: ``nes``, ``square``, ``partial`` or ``label-only`` (see the module docs).
        threat: the allowed set (L∞ only for square, partial and label-only).
        dist, out_size: the transformations and the side of the images sent.
        views: NES, partial, label-only: antithetic pairs per estimate (each pair through one
            transformation); square: the fixed draws each candidate is scored on.
        generator: every random draw (noise, transformations).
        loss: ``margin`` or ``ce`` on the answered scores (nes, square; partial uses the target's
            log-probability, as Ilyas et al.).
        regularisers: ``(weight, fn)`` pairs (TV, NPS), exact and free of queries (nes only).
        start: partial and label-only, targeted: an image of the target class ``(1, 3, H, W)``
            (resized to ``S``) to start from.
        callback: called with each step's :class:`StepReport`.
        budget: most queries this call may spend (default: what the target's budget has left;
            one of the two is needed to plan the steps).
        nes: the NES settings (default: ``NESConfig(pairs=views)``, capped by the budget).
        schedule: NES step sizes: ``cosine`` (decay over the budget's steps) or ``plateau``
            (Ilyas et al.'s halving after a plateau).
        partial, proxy: the partial-information schedule and the label-only proxy settings.
        floor: the probability a class missing from the answer counts as.
        early_stop: ends the NES loop when it returns ``True`` (default: the goal held with
            margin on ≥ 99 % of the batch for 5 straight steps).

    Returns:
        :class:`LoopResult` (``exhausted`` when the budget ended it); for partial and label-only
        a :class:`~physical_adv.attack.partial.PartialResult` with the ε reached.
    """
    check_method(method, target.mode, targeted=target_class is not None, patch_mode=isinstance(threat, Patch),
                 norm="linf" if isinstance(threat, (LinfBall, Patch)) else "l2")
    if schedule not in NES_SCHEDULES:
        raise ValueError(f"NES schedule must be one of {', '.join(NES_SCHEDULES)}, got {schedule!r}")
    if budget is not None:
        if isinstance(budget, bool) or budget < 1:
            raise ValueError(f"budget must be a positive number of queries, got {budget}")
        if target.remaining is None or target.remaining > budget:
            target = _Capped(target, budget)
    if target.remaining is None:
        raise ValueError("give a budget (or a target with one): the attack plans its steps from it")
    plan = target.remaining
    nes = nes if nes is not None else planned_nes(method, views, plan, proxy)
    need = queries_per_estimate(method, nes.pairs, proxy)
    if plan < need:
        raise ValueError(f"a budget of {plan} queries is too small for one {method} step ({need} queries)")
    if method == "label-only":
        objective = LabelProxyObjective(true_class, target_class, proxy)
    else:
        objective = ScoreObjective(true_class, target_class, loss="ce" if method == "partial" else loss, floor=floor)
    if method == "square":
        from physical_adv.attack.square import SquareConfig, square_attack

        return square_attack(target, objective, clean, threat, dist, views, out_size, generator,
                             SquareConfig(resolution=min(out_size, clean.shape[-1])), callback=callback)
    mask = threat.mask if isinstance(threat, Patch) else None
    source = NESEstimator(target, objective, dist, out_size, nes, generator, mask)
    if method in ("partial", "label-only") and target_class is not None:
        if start is None:
            raise ValueError(f"--method {method} needs a start image of the target class {target_class!r}")
        start = F.interpolate(start, size=clean.shape[-2:], mode="area") if start.shape[-2:] != clean.shape[-2:] else start
        return partial_information(target, objective, source, clean, start.to(clean), threat, dist, out_size, generator,
                                   partial, callback=callback)
    steps = max(1, plan // need)
    hi, lo = step_sizes(threat)
    if schedule == "plateau":
        alpha = Plateau(hi, lo, length=20)  # measured on the EOT sticker: a 5-step window halves on noise (0 %)
        estimate = source

        def source(x: torch.Tensor):  # noqa: F811 - the estimate, seen by the schedule first
            est = estimate(x)
            alpha.observe(est.objective)
            return est
    else:
        alpha = cosine(hi, lo, steps)
    return optimize(None, clean, None, threat=threat, objective=None, steps=steps, alpha=alpha,
                    targeted=target_class is not None, regularisers=regularisers, random_start=mask is not None,
                    generator=generator, keep_best=True,
                    early_stop=held_with_margin(5) if early_stop is None else early_stop, callback=callback,
                    gradient_source=source)


@dataclass
class BlackboxRun:
    """A black-box optimisation's result, its seconds, and per step the queries spent so far."""

    result: LoopResult
    seconds: float
    queries: list[int]
    record: dict


def optimise_blackbox(cfg, target: QueryTarget, clean: torch.Tensor, true_class: str, target_class: str | None,
                      threat: ThreatModel, out_size: int, dist: eot.EOTDistribution, generator: torch.Generator,
                      regularisers, start: torch.Tensor | None, show_progress: bool) -> BlackboxRun:
    """``physical-adv attack --oracle``'s optimisation: :func:`query_attack` with the settings of
    ``cfg`` (an :class:`~physical_adv.attack.runner.AttackConfig`), a progress bar of queries
    used, and the ``attack.json`` record. Closes ``target``."""
    queries: list[int] = []
    views = cfg.samples if cfg.method != "square" else (1 if dist.deterministic else cfg.samples)
    try:
        with make_progress(disable=not show_progress) as progress:
            task = progress.add_task("queries", total=cfg.budget, info="")

            def report(r: StepReport) -> None:
                queries.append(target.queries)
                progress.update(task, completed=target.queries, info=f"objective {r.objective:+.3f} success {r.success:.2f}")

            t0 = time.time()
            try:
                result = query_attack(target, clean, true_class, target_class, method=cfg.method, threat=threat,
                                      dist=dist, out_size=out_size, views=views, generator=generator, loss=cfg.loss,
                                      regularisers=regularisers, start=start, callback=report,
                                      schedule=cfg.nes_schedule, early_stop=held_with_margin(5, cfg.early_stop))
            except BaseException:  # an error is the one line the CLI prints: no half-drawn bar before it
                progress.update(task, visible=False)
                raise
            seconds = time.time() - t0
    finally:
        if hasattr(target, "close"):
            target.close()
    record = {"method": cfg.method, "oracle": target.describe(), "queries": target.queries, "budget": cfg.budget,
              "budget_exhausted": result.exhausted, "settings": method_settings(cfg, views, result)}
    return BlackboxRun(result, seconds, queries, record)


def method_settings(cfg, views: int, result: LoopResult) -> dict:
    """What ``attack.json`` records about the method's settings."""
    if cfg.method == "square":
        from physical_adv.attack.square import SquareConfig

        return {"views": views, "p_init": SquareConfig().p_init}
    nes = planned_nes(cfg.method, views, cfg.budget)
    settings = {"pairs": nes.pairs, "sigma": nes.sigma, "grid": nes.grid, "momentum": nes.momentum, "top_k": cfg.top_k,
                "mode": cfg.mode}
    if cfg.method == "nes":
        settings["schedule"] = cfg.nes_schedule
    if hasattr(result, "final_eps"):  # the partial-information schedule
        settings.update(eps_reached_255=round(result.final_eps * 255, 3), reached=result.reached,
                        schedule=asdict(PartialConfig()))
    if cfg.method == "label-only":
        settings.update(copies=LabelProxyConfig().copies, noise=LabelProxyConfig().noise)
    return settings
