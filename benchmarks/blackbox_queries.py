"""Digital query efficiency of score-based and decision-based black-box attacks, side by side.

Usage:
    OMP_NUM_THREADS=1 python benchmarks/blackbox_queries.py --json [--out result.json] [--raw rows.jsonl]
        [--n 50] [--seed 2026] [--eps 16] [--budgets 100,1000,10000] [--attacks ours-square,torchattacks-square,…]
        [--large-subset K] [--slow-subset 10] [--slow-budget B] [--cache set.pt] [--quick]

The set: scenes of ``physical_adv.signs.scenes`` (seeded, the 14 classes in turn, 64 px, the model's
input size) that ``signs`` classifies correctly and that white-box PGD (100 steps, α = 2.5·ε/100,
random start, cross-entropy, :func:`physical_adv.attack.whitebox.pgd`) fools at ε; the first ``--n``
of them. How many PGD fools at 8/255 is reported too.

The oracle: :class:`physical_adv.blackbox.target.ModelTarget` in ``scores`` mode, k = 5, behind
:class:`RecordingTarget`, which counts every image any attack sends, enforces the budget, and records
per image the first query that was both inside the ε-ball of the original (L∞ ≤ ε + 1e-6, float
comparison) and not classified as the true class — "queries to success", the same rule for every
attack. A run ends at that first success. Peers query it through :class:`ScoresModule` (an
``nn.Module``; ART wraps it in ``PyTorchClassifier``): they see the top-5 log-probabilities (SimBA,
which insists on probabilities: the top-5 probabilities, the remaining mass spread over the other
classes), every other class at the floor. Peers are given their own budget knob equal to the budget
(torchattacks ``n_queries``, ART ``max_iter``); when a peer sends more images than the budget our
target refuses and the run ends there (``cut``).

Attacks (``--attacks``): ``ours-square`` (:func:`physical_adv.attack.square.square_attack`, margin
loss, p schedule fixed to 10,000 iterations so one run at the largest budget gives every budget),
``ours-square-rescaled`` (the same with the schedule spread over each budget, as the paper and
torchattacks do; run it with ``--budgets 100,1000``: at 10,000 it is the same run as ``ours-square``),
``ours-nes`` (:class:`NESEstimator` through :func:`optimize`, budget-independent step schedule, the
iterate itself queried once per step), ``torchattacks-square`` and ``art-square`` (p_init 0.05, the
paper's L∞ default; one run per budget: their schedules depend on it), ``art-hsj`` (HopSkipJump,
norm ∞, untargeted; one run at the largest budget, on the first ``--slow-subset`` images) and
``art-simba`` (SimBA, pixel basis, step ε so it stays in the L∞ ball, batch size 1; likewise).

JSON keys:
    set: n, seed, eps, candidates (scenes rendered), correct (classified correctly), pgd_fooled_8 /
        pgd_fooled_16 (of the correct ones), classes (images per class in the set).
    settings: per attack, what it ran with (floor, p_init, NES settings, peer arguments).
    results: per attack, per budget b: n (images), fooled, success (fraction), wilson ([lo, hi], 95 %),
        median_queries (over successes, counted by our target), counted_mean (queries our target
        counted per image, within b), claimed (the budget knob the peer was given in those runs, or null), cut
        (runs at b our target ended because the peer asked past b), seconds (wall time per image;
        read from a longer run: its time × the share of its queries within b), run_budgets (the
        budgets of the runs b was read from: a budget-independent attack — ours, HopSkipJump,
        SimBA — is read from every run with budget ≥ b, a run cut at b being the start of a longer
        one; torchattacks and ART Square only from their runs at b).
    With --large-subset K only the first K images run at the largest budget (the others at the next
    one); with --slow-subset / --slow-budget HopSkipJump and SimBA run once at that budget on the
    first images. n says how many images each figure is over.
    counting: per peer, ε = 1e-7 (nothing can succeed, so every peer spends its whole budget knob of
        100): queries our target counted per image vs the knob — the peers' own query accounting.
    paper: the Square paper's median queries (ImageNet, ResNet-50, untargeted L∞ ε = 0.05): 11.
    raw: the JSONL file of one row per (attack, run budget, image), from which everything is computed.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from physical_adv.attack import eot
from physical_adv.attack.estimators import NESConfig, NESEstimator, ScoreObjective
from physical_adv.attack.loop import Estimate, SourceExhausted, optimize
from physical_adv.attack.square import SquareConfig, square_attack
from physical_adv.attack.threat import LinfBall
from physical_adv.attack.whitebox import pgd
from physical_adv.blackbox.protocol import Label
from physical_adv.models import load_model
from physical_adv.blackbox.target import BudgetExhausted, ModelTarget, QueryTarget
from physical_adv.outcome import same_class
from physical_adv.signs.designs import CLASS_NAMES
from physical_adv.signs.scenes import SignBank, render_scene
from physical_adv.stats import wilson_interval

PAPER_MEDIAN_QUERIES = 11  # Andriushchenko et al. 2020, Table 1: ImageNet ResNet-50, untargeted L∞ ε = 0.05
FLOOR = 1e-45  # the smallest float32 probability: log-probabilities far below 1e-6 still carry the signal
PAPER_P_INIT = 0.05  # max-andr/square-attack's L∞ default
OURS_P_INIT = 0.05
NES = NESConfig(pairs=10, sigma=0.01, grid=32, momentum=0.5)  # measured: grid 8 0/8, 16 3/8, 32 3/8 (sooner), full 1/8 at 1,500
PGD_STEPS = 100


class Fooled(Exception):
    """The first successful query happened: the run is over."""


class RecordingTarget(QueryTarget):
    """Our counting oracle around a :class:`ModelTarget`, recording the first winning query.

    Call :meth:`start` before each image. ``first_success`` is the 1-based index of the first
    query inside the ε-ball of ``clean`` not answered with the true class (None until then);
    that query raises :class:`Fooled` once answered.
    """

    def __init__(self, inner: ModelTarget) -> None:
        super().__init__(inner.mode, inner.top_k, None)
        self.inner = inner
        self.class_names = inner.class_names
        self.clean: torch.Tensor | None = None
        self.true_name = ""
        self.eps = 0.0
        self.first_success: int | None = None

    def start(self, clean: torch.Tensor, true_name: str, eps: float, budget: int | None) -> None:
        """Reset the count and budget for a new image ``clean`` ``(1, 3, H, W)``."""
        self.clean, self.true_name, self.eps, self.budget = clean, true_name, eps, budget
        self.queries, self.first_success = 0, None

    def name(self) -> str:
        return self.inner.name()

    def _answer(self, images: torch.Tensor) -> list[list[Label]]:
        answers = self.inner.query(images)
        first = self.queries - images.shape[0]  # already counted by query()
        inside = (images.float() - self.clean.float()).flatten(1).abs().amax(1) <= self.eps + 1e-6
        for i, labels in enumerate(answers):
            if self.first_success is None and bool(inside[i]) and not same_class(labels[0].description, self.true_name):
                self.first_success = first + i + 1
        if self.first_success is not None:
            raise Fooled()
        return answers


class ScoresModule(nn.Module):
    """What a peer library sees of the oracle: ``(N, C)`` top-5 log-probabilities (the other
    classes at ``log floor``), or probabilities with the remaining mass spread over the others."""

    def __init__(self, target: RecordingTarget, floor: float = FLOOR, probabilities: bool = False) -> None:
        super().__init__()
        self.target, self.floor, self.probabilities = target, floor, probabilities
        self.index = {name: i for i, name in enumerate(target.class_names)}
        self._device_anchor = nn.Parameter(torch.zeros(1), requires_grad=False)  # peers read the device from it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        answers = self.target.query(x.detach().float().clamp(0, 1))
        c = len(self.index)
        out = torch.zeros(len(answers), c, dtype=torch.float64)
        for row, labels in zip(out, answers):
            if self.probabilities:
                rest = max(0.0, 1.0 - sum(label.score for label in labels)) / max(1, c - len(labels))
                row.fill_(rest)
                for label in labels:
                    row[self.index[label.description]] = label.score
            else:
                row.fill_(math.log(self.floor))
                for label in labels:
                    row[self.index[label.description]] = math.log(max(label.score, self.floor))
        return out.float().to(x.device)


# --------------------------------------------------------------------------- the set


@dataclass
class ImageSet:
    images: torch.Tensor  # (N, 3, 64, 64) in [0, 1]
    labels: list[int]
    info: dict


def build_set(model, n: int, seed: int, eps: float, candidates: int, cache: Path | None = None,
              pgd_steps: int = PGD_STEPS, styles: int = 8) -> ImageSet:
    """The first ``n`` correctly classified scenes PGD (``pgd_steps``) fools at ``eps`` (classes in turn)."""
    key = {"n": n, "seed": seed, "eps": eps, "candidates": candidates, "pgd_steps": pgd_steps, "styles": styles}
    if cache is not None and cache.exists():
        saved = torch.load(cache)
        if saved["key"] == key:
            return ImageSet(saved["images"], saved["labels"], saved["info"])
    rng = np.random.default_rng(seed)
    bank = SignBank(rng, styles_per_class=styles)
    labels = [i % len(CLASS_NAMES) for i in range(candidates)]
    scenes = np.stack([render_scene(rng, bank, y, model.input_size) for y in labels])
    x = torch.from_numpy(scenes).permute(0, 3, 1, 2).float() / 255
    y = torch.tensor(labels)
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    x, y = x[correct], y[correct]
    fooled = {}
    for e in sorted({8 / 255, eps}):
        adv = pgd(model, x, y, e, 2.5 * e / pgd_steps, pgd_steps, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            fooled[e] = model(adv).argmax(1) != y
    keep = torch.nonzero(fooled[eps]).flatten()[:n]
    if len(keep) < n:
        raise SystemExit(f"only {len(keep)} of {candidates} scenes are correct and PGD-fooled; raise --candidates")
    chosen = [int(y[i]) for i in keep]
    info = {"n": n, "seed": seed, "eps": eps, "candidates": candidates, "pgd_steps": pgd_steps, "correct": int(correct.sum()),
            "pgd_fooled_8": int(fooled[8 / 255].sum()), "pgd_fooled_eps": int(fooled[eps].sum()),
            "classes": {CLASS_NAMES[c]: chosen.count(c) for c in sorted(set(chosen))}}
    out = ImageSet(x[keep].contiguous(), chosen, info)
    if cache is not None:
        torch.save({"key": key, "images": out.images, "labels": out.labels, "info": info}, cache)
    return out


# --------------------------------------------------------------------------- attacks
# Each runner attacks one image (1, 3, 64, 64) through ``target`` (already started) until success,
# the budget or its own end; Fooled / BudgetExhausted are caught by the caller.


def ours_square(target, clean, label, eps, budget, seed, floor=FLOOR, p_init=OURS_P_INIT, loss="margin",
                schedule_iters=10000):
    objective = ScoreObjective(CLASS_NAMES[label], loss=loss, floor=floor)
    cfg = SquareConfig(p_init=p_init, resolution=clean.shape[-1], schedule_iters=schedule_iters)
    square_attack(target, objective, clean, LinfBall(eps), eot.load_distribution("none"), 1, clean.shape[-1],
                  torch.Generator().manual_seed(seed), cfg)


def ours_square_rescaled(target, clean, label, eps, budget, seed):
    """Ours with the paper's schedule spread over the budget, as torchattacks runs it (at 10,000 the
    same run as ``ours-square``)."""
    ours_square(target, clean, label, eps, budget, seed, schedule_iters=None)


def ours_nes(target, clean, label, eps, budget, seed, floor=FLOOR, nes=NES, alpha_frac=0.25, loss="margin"):
    objective = ScoreObjective(CLASS_NAMES[label], loss=loss, floor=floor)
    g = torch.Generator().manual_seed(seed)
    estimator = NESEstimator(target, objective, eot.load_distribution("none"), clean.shape[-1], nes, g)

    def source(x: torch.Tensor) -> Estimate:
        try:
            target.query(x)  # the iterate itself: the only way the attacker sees it has won
        except BudgetExhausted:
            raise SourceExhausted() from None
        return estimator(x)

    def alpha(step: int) -> float:  # halve every 25 steps, from α·ε down to ε/32; independent of the budget
        return max(eps / 32, alpha_frac * eps * 0.5 ** (step // 25))

    steps = budget // (estimator.queries_per_estimate + 1) + 1
    optimize(None, clean, None, threat=LinfBall(eps), objective=None, steps=steps, alpha=alpha, targeted=False,
             gradient_source=source)


def torchattacks_square(target, clean, label, eps, budget, seed, p_init=PAPER_P_INIT):
    import torchattacks

    attack = torchattacks.Square(ScoresModule(target), norm="Linf", eps=eps, n_queries=budget, n_restarts=1,
                                 p_init=p_init, loss="margin", resc_schedule=True, seed=seed)
    attack(clean, torch.tensor([label]))


def _art_classifier(target, probabilities=False):
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(ScoresModule(target, probabilities=probabilities), nn.CrossEntropyLoss(),
                             input_shape=(3, 64, 64), nb_classes=len(CLASS_NAMES), clip_values=(0.0, 1.0))


def art_square(target, clean, label, eps, budget, seed, p_init=PAPER_P_INIT):
    from art.attacks.evasion import SquareAttack

    np.random.seed(seed)
    attack = SquareAttack(_art_classifier(target), norm=np.inf, max_iter=budget, eps=eps, p_init=p_init,
                          nb_restarts=1, batch_size=1, verbose=False)
    attack.generate(clean.numpy(), y=np.eye(len(CLASS_NAMES))[[label]])


def art_hsj(target, clean, label, eps, budget, seed):
    from art.attacks.evasion import HopSkipJump

    np.random.seed(seed)
    attack = HopSkipJump(_art_classifier(target), targeted=False, norm=np.inf, max_iter=1000, max_eval=10000,
                         init_eval=100, init_size=100, batch_size=64, verbose=False)
    attack.generate(clean.numpy(), y=np.eye(len(CLASS_NAMES))[[label]])


def art_simba(target, clean, label, eps, budget, seed):
    from art.attacks.evasion import SimBA

    np.random.seed(seed)
    attack = SimBA(_art_classifier(target, probabilities=True), attack="px", max_iter=budget, epsilon=eps,
                   order="random", targeted=False, batch_size=1, verbose=False)
    attack.generate(clean.numpy(), y=np.eye(len(CLASS_NAMES))[[label]])


# name → (runner, one run at the largest budget serves every budget, the peer's budget knob, slow)
ATTACKS = {
    "ours-square": (ours_square, True, False, False),
    "ours-square-rescaled": (ours_square_rescaled, False, False, False),
    "ours-nes": (ours_nes, True, False, False),
    "torchattacks-square": (torchattacks_square, False, True, False),
    "art-square": (art_square, False, True, False),
    "art-simba": (art_simba, True, True, True),
    "art-hsj": (art_hsj, True, False, True),
}


def settings() -> dict:
    return {
        "floor": FLOOR, "ours-square": {"p_init": OURS_P_INIT, "loss": "margin", "schedule_iters": 10000, "resolution": 64},
        "ours-square-rescaled": {"p_init": OURS_P_INIT, "loss": "margin", "schedule_iters": "budget", "resolution": 64},
        "ours-nes": {**asdict(NES), "loss": "margin", "alpha": "max(ε/32, ε/4 · 0.5^(step // 25))",
                     "queries_per_step": 2 * NES.pairs + 1},
        "torchattacks-square": {"p_init": PAPER_P_INIT, "loss": "margin", "n_queries": "budget", "resc_schedule": True},
        "art-square": {"p_init": PAPER_P_INIT, "max_iter": "budget", "batch_size": 1},
        "art-hsj": {"norm": "inf", "targeted": False, "max_iter": 1000, "max_eval": 10000, "init_eval": 100},
        "art-simba": {"attack": "px", "epsilon": "eps", "max_iter": "budget", "order": "random", "batch_size": 1},
    }


def run_one(name: str, target: RecordingTarget, clean: torch.Tensor, label: int, eps: float, budget: int,
            seed: int, hard_budget: bool = True) -> dict:
    """One attack on one image: the raw row (first success, counted queries, cut, seconds)."""
    runner = ATTACKS[name][0]
    target.start(clean, CLASS_NAMES[label], eps, budget if hard_budget else None)
    cut = False
    t0 = time.perf_counter()
    try:
        runner(target, clean, label, eps, budget, seed)
    except Fooled:
        pass
    except BudgetExhausted:
        cut = True
    return {"first_success": target.first_success, "counted": target.queries, "cut": cut,
            "seconds": round(time.perf_counter() - t0, 3)}


def counting_check(target: RecordingTarget, image: torch.Tensor, label: int, knob: int = 100) -> dict:
    """With ε ≈ 0 (1e-7: ART refuses 0) no query can succeed: each peer spends its whole budget knob."""
    out = {}
    for name in ("torchattacks-square", "art-square", "art-simba"):
        row = run_one(name, target, image, label, 1e-7, knob, 0, hard_budget=False)
        out[name] = {"knob": knob, "counted": row["counted"]}
    return out


def summarise(rows: list[dict], budgets: list[int]) -> dict:
    """Per attack and budget b, from the raw rows: a budget-independent attack is read from every
    run whose budget is ≥ b (a run cut at b is the start of a longer one), the others from their
    runs at b."""
    results = {}
    for name, (_, once, knob, _) in ATTACKS.items():
        per_budget = {}
        for b in budgets:
            sel = [r for r in rows if r["attack"] == name and (r["run_budget"] >= b if once else r["run_budget"] == b)]
            longest: dict[int, dict] = {}  # an image run at several budgets: its longest run (the others are its start)
            for r in sel:
                if r["image"] not in longest or r["run_budget"] > longest[r["image"]]["run_budget"]:
                    longest[r["image"]] = r
            sel = list(longest.values())
            if not sel:
                continue
            wins = [r["first_success"] for r in sel if r["first_success"] is not None and r["first_success"] <= b]
            lo, hi = wilson_interval(len(wins), len(sel))
            per_budget[str(b)] = {
                "n": len(sel), "fooled": len(wins), "success": len(wins) / len(sel), "wilson": [lo, hi],
                "median_queries": statistics.median(wins) if wins else None,
                "counted_mean": statistics.fmean(min(r["counted"], b) for r in sel),
                "claimed": max(r["run_budget"] for r in sel) if knob else None, "cut": sum(r["cut"] and r["run_budget"] == b for r in sel),
                # a run at a larger budget: its time scaled by the share of its queries spent within b
                "seconds": statistics.fmean(r["seconds"] * min(1.0, b / max(1, r["counted"])) for r in sel),
                "run_budgets": sorted({r["run_budget"] for r in sel}),
            }
        if per_budget:
            results[name] = per_budget
    return results


def plan(name: str, n: int, budgets: list[int], large_subset: int, slow_subset: int, slow_budget: int) -> list[tuple[int, int]]:
    """``(run budget, image)`` pairs for one attack: the largest budget only on the first
    ``large_subset`` images (a budget-independent attack runs the others at the next budget, which
    still reads every smaller one); slow attacks one run at ``slow_budget`` on ``slow_subset`` images."""
    _, once, _, slow = ATTACKS[name]
    top, below = budgets[-1], budgets[:-1]
    if slow:
        return [(slow_budget, i) for i in range(min(n, slow_subset))]
    if once:
        return [(top if i < large_subset else (below[-1] if below else top), i) for i in range(n)]
    return [(b, i) for b in below for i in range(n)] + [(top, i) for i in range(min(n, large_subset))]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--eps", type=float, default=16, help="L∞ radius in 1/255")
    ap.add_argument("--candidates", type=int, default=84)
    ap.add_argument("--budgets", default="100,1000,10000")
    ap.add_argument("--attacks", default=",".join(ATTACKS))
    ap.add_argument("--large-subset", type=int, default=None, help="images run at the largest budget (default: all)")
    ap.add_argument("--slow-subset", type=int, default=10, help="images for art-hsj and art-simba")
    ap.add_argument("--slow-budget", type=int, default=None, help="the one budget art-hsj and art-simba run at (default: the largest)")
    ap.add_argument("--raw", type=Path, default=None, help="JSONL of raw rows (appended; rows already there are reused)")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON result here")
    ap.add_argument("--cache", type=Path, default=None, help="cache the image set here")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 2 images of 4 candidates (2 sign styles, PGD-20), budgets 20,50")
    ap.add_argument("--no-counting", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.candidates, args.budgets, args.slow_subset, args.large_subset = 2, 4, "20,50", 1, None
    budgets = sorted(int(b) for b in args.budgets.split(","))
    names = [a for a in args.attacks.split(",") if a]
    unknown = [a for a in names if a not in ATTACKS]
    if unknown:
        raise SystemExit(f"unknown attack(s) {unknown}; choose from {', '.join(ATTACKS)}")
    eps = args.eps / 255
    inner = ModelTarget("signs", "scores", top_k=5, device="cpu")
    target = RecordingTarget(inner)
    image_set = build_set(load_model("signs", "cpu"), args.n, args.seed, eps, args.candidates, args.cache,
                          *((20, 2) if args.quick else ()))

    rows: list[dict] = []
    if args.raw is not None and args.raw.exists():
        rows = [json.loads(line) for line in args.raw.read_text().splitlines() if line.strip()]
    config = {name: json.dumps({"eps": args.eps, "seed": args.seed, **settings().get(name, {})}) for name in ATTACKS}
    rows = [r for r in rows if r.get("config") == config.get(r["attack"])]  # rows of other settings are not reused
    done = {(r["attack"], r["run_budget"], r["image"]) for r in rows}
    raw = args.raw.open("a") if args.raw is not None else None
    large = args.n if args.large_subset is None else args.large_subset
    tasks = [(name, b, i) for name in names
             for b, i in plan(name, args.n, budgets, large, args.slow_subset, args.slow_budget or budgets[-1])]
    tasks.sort(key=lambda task: task[1] == budgets[-1])  # every attack's smaller runs first, then the largest
    for name, b, i in tasks:
        if (name, b, i) in done:
            continue
        row = {"attack": name, "run_budget": b, "image": i, "label": image_set.labels[i], "config": config[name],
               **run_one(name, target, image_set.images[i : i + 1], image_set.labels[i], eps, b, seed=i)}
        rows.append(row)
        if raw is not None:
            raw.write(json.dumps(row) + "\n")
            raw.flush()
    if raw is not None:
        raw.close()
    wanted = {(r["attack"], r["run_budget"], r["image"]): r for r in rows if r["image"] < args.n}
    result = {
        "set": image_set.info,
        "settings": settings(),
        "results": summarise(list(wanted.values()), budgets),
        "counting": None if args.no_counting else counting_check(target, image_set.images[:1], image_set.labels[0]),
        "paper": {"square_median_queries_imagenet_resnet50_eps0.05": PAPER_MEDIAN_QUERIES},
        "raw": str(args.raw) if args.raw else None,
    }
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for name, per in result["results"].items():
            for b, r in per.items():
                print(f"{name:<20} {b:>6}: {r['fooled']}/{r['n']} ({r['success']:.0%}, {r['wilson'][0]:.2f}–{r['wilson'][1]:.2f})"
                      f"  median {r['median_queries']}  counted {r['counted_mean']:.0f}  cut {r['cut']}  {r['seconds']:.1f} s")
    return result


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
