"""Black-box EOT (issue 11): held-out print-camera success against queries, beside white-box EOT.

Usage:
    OMP_NUM_THREADS=1 python benchmarks/blackbox_eot.py --json [--out curve.json] [--eps 32] [--budget 100000]
        [--checkpoints 1000,2000,5000,10000,20000,50000,100000] [--pairs 50] [--wb-samples 32] [--wb-steps 300]
        [--compare-budget 10000] [--loss ce|margin] [--texture-size 512] [--eval-samples 1000] [--seed 0] [--device cpu]
    OMP_NUM_THREADS=1 python benchmarks/blackbox_eot.py --sticker --runs DIR --json [--out stickers.json]
        [--seeds 0,1,2] [--areas 0.1,0.05,0.25] [--budget 10000] [--pairs 50] [--texture-size 512]

**Curve mode** (default): the stop sign, untargeted L∞ at ``--eps``/255, against ``signs`` in
``scores`` mode with k = 5 (:class:`physical_adv.blackbox.target.ModelTarget`).

* One NES run (:class:`NESEstimator`, ``--pairs`` antithetic pairs per estimate, each pair through
  one print-camera draw; 16×16 grid basis, σ = 0.05, momentum 0.5: the CLI's settings) through the
  one loop (:func:`physical_adv.attack.loop.optimize`) with a ``--budget`` of queries, the objective
  ``--loss`` on the answered scores (:class:`ScoreObjective`: ``ce`` = −log p(stop), ``margin`` = the
  best other returned class's log-probability minus stop's, capped at 5), its step size
  the runner's cosine decay over the budget's ``budget / (2·pairs)`` steps, early stop off. The
  gradient source is wrapped (:class:`Snapshots`): when the query count first reaches a checkpoint
  the current iterate, and the best one so far by the loop's own ``keep_best`` rule (batch success,
  then margin, over the estimates seen — what ``attack --oracle`` returns), are copied. **A snapshot
  at 10k of a 100k run is mid-schedule** (its step size still large), not a 10k run: hence the
  ``--compare-budget`` run, a separate NES run with that budget and its own full schedule.
* The white-box EOT run (autograd through the same loop, ``--wb-samples`` views per step, cross
  entropy, cosine over ``--wb-steps``: the CLI's default attack, 300 steps, early stop off),
  snapshotted the same way per step (``--wb-steps 0``: not run).
* **Step-equivalent rule**: one white-box step ≙ one NES estimate, i.e. ``2·pairs`` queries
  (100 with 50 pairs). Per step the white-box run renders ``--wb-samples`` views (one forward and one
  backward pass); one NES estimate renders ``2·pairs`` views through ``pairs`` transformations
  (forward only, by the oracle). The white-box run ends at ``--wb-steps`` (its default 300 = 30,000
  query-equivalents), where the white-box figure of the README comes from; later NES checkpoints
  stand beside its last step.
* Every snapshot is checked on the same ``--eval-samples`` held-out print-camera draws (the
  runner's held-out seed, fresh noise: draws neither optimiser saw) with the local ``signs`` model;
  success = the top-1 class is not ``stop`` (:func:`physical_adv.outcome.attack_succeeded`), with
  95 % Wilson intervals.

**Sticker mode** (``--sticker``): the issue's black-box EOT sticker, ``physical-adv attack -s sign:stop
-t "speed limit 80" --patch square --patch-area A --oracle signs --budget B --samples P
--eval-samples 1000 --seed S --texture-size T --device cpu --out RUNS/aA-sS`` for every seed × area
(a run directory that already holds ``attack.json`` is read, not rerun), summarised per area:
held-out targeted success per seed with its interval, median / min / max over seeds, queries spent
and the query count at which the batch success (the estimate's own noisy renders) first reached
1.0 (from ``queries.csv``; ``null`` if never).

JSON keys (curve): settings, step_equivalent, nes: [{queries, current, best_so_far}], whitebox:
[{step, query_equivalent, views_rendered, current, best_so_far}], compare: {budget, final, best,
checkpoints}, seconds, where each evaluation is {success, wilson, k, n, mean_true_prob}.
JSON keys (sticker): settings, runs: [{area, seed, run, success, wilson, queries, first_full_batch,
optimise_seconds, texture_size}], by_area: {area: {median, min, max, seeds, median_queries,
first_full_batch}}.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from physical_adv.attack import eot
from physical_adv.attack.estimators import NESConfig, NESEstimator, ScoreObjective
from physical_adv.attack.loop import Estimate, SourceExhausted, autograd_source, optimize
from physical_adv.attack.objectives import OBJECTIVES
from physical_adv.attack.runner import (AttackConfig, _clean_prediction, _seeds, _square_texture, build_regularisers,
                                        build_threat, evaluate_texture, resolve_distributions, resolve_goal)
from physical_adv.blackbox.target import open_target
from physical_adv.images import load_image
from physical_adv.models import load_model
from physical_adv.outcome import attack_succeeded
from physical_adv.stats import wilson_interval


class Snapshots:
    """A gradient source that copies the iterate when a counter first reaches each checkpoint.

    ``count()`` is read before each call (queries spent, or steps taken). Kept per checkpoint:
    ``current`` (the iterate the source is asked about) and ``best`` (the best iterate scored so far
    by ``(success, margin)`` of the estimates returned — the loop's ``keep_best`` rule).
    """

    def __init__(self, source, count, checkpoints: list[int]) -> None:
        self.source, self.count, self.pending = source, count, sorted(checkpoints)
        self.taken: list[dict] = []
        self.best, self.best_key = None, None

    def __call__(self, x: torch.Tensor) -> Estimate:
        self.take(x)
        est = self.source(x)
        key = (est.success, est.margin)
        if self.best_key is None or key > self.best_key:
            self.best, self.best_key = x.detach().clone(), key
        return est

    def take(self, x: torch.Tensor) -> None:
        """Snapshot ``x`` for every pending checkpoint the counter has reached."""
        n = self.count()
        while self.pending and self.pending[0] <= n:
            self.taken.append({"checkpoint": self.pending.pop(0), "count": n, "current": x.detach().clone(),
                               "best": (self.best if self.best is not None else x).detach().clone()})


class HeldOut:
    """The held-out check: ``n`` draws of ``dist`` from one seed, the same draws for every texture."""

    def __init__(self, model, dist, n: int, seed: int, true_class: str, target_class: str | None) -> None:
        self.model, self.dist, self.n, self.seed = model, dist, n, seed
        self.true_class, self.target_class = true_class, target_class

    def __call__(self, texture: torch.Tensor) -> dict:
        g = torch.Generator(device=texture.device).manual_seed(self.seed)
        probs, _, _ = evaluate_texture(self.model, texture, self.dist, self.n, g)
        names = self.model.class_names
        k = sum(attack_succeeded(names[i], self.true_class, self.target_class) for i in probs.argmax(1).tolist())
        true_p = float(probs[:, list(names).index(self.true_class)].mean())
        return {"success": k / self.n, "wilson": [round(v, 4) for v in wilson_interval(k, self.n)], "k": k, "n": self.n,
                "mean_true_prob": round(true_p, 4)}


def _setup(args):
    """The runner's stages up to the optimisation: config, distributions, model, clean texture, goal, seeds."""
    cfg = AttackConfig(source="sign:stop", out=Path("unused"), eps=args.eps, oracle="signs", budget=args.budget, loss=args.loss,
                       samples=args.pairs, texture_size=args.texture_size, eval_samples=args.eval_samples,
                       seed=args.seed, device=args.device, early_stop=False)
    dists = resolve_distributions(cfg)
    model = load_model(cfg.model, cfg.device)
    device = model.device
    opt_seed, held_seed = _seeds(cfg.seed)
    clean = torch.from_numpy(_square_texture(load_image(cfg.source), cfg.texture_size)).permute(2, 0, 1)
    clean = clean.unsqueeze(0).float().div(255).to(device)
    pred = _clean_prediction(model, clean, torch.Generator(device=device).manual_seed(opt_seed))
    goal = resolve_goal(cfg, list(model.class_names), model.spec, pred)
    held = HeldOut(model, dists.evaluate, cfg.eval_samples, held_seed, model.class_names[goal.true_idx], None)
    return cfg, dists, model, clean, goal, opt_seed, held


def nes_run(cfg, dists, model, clean, goal, opt_seed, budget: int, pairs: int, checkpoints: list[int]):
    """One NES run of ``budget`` queries, snapshotted at ``checkpoints`` (query counts)."""
    device = clean.device
    torch.manual_seed(opt_seed)
    generator = torch.Generator(device=device).manual_seed(opt_seed)
    target = open_target("signs", "scores", 5, budget, device)
    objective = ScoreObjective(model.class_names[goal.true_idx], None, loss=cfg.loss)
    nes = NESConfig(pairs=pairs)
    steps = max(1, budget // (2 * pairs))
    threat, alpha = build_threat(cfg, None, model.input_size, device, steps)
    snaps = Snapshots(NESEstimator(target, objective, dists.optimise, model.input_size, nes, generator), lambda: target.queries,
                      [c for c in checkpoints if c <= budget])
    t0 = time.time()
    # one step more than the schedule: its call finds the budget spent, after the last checkpoint is taken
    result = optimize(None, clean, None, threat=threat, objective=None, steps=steps + 1, alpha=alpha, targeted=False,
                      regularisers=build_regularisers(cfg, device), generator=generator, keep_best=True,
                      gradient_source=snaps)
    return snaps, result, target.queries, time.time() - t0


def whitebox_run(cfg, dists, model, clean, goal, opt_seed, steps: int, samples: int, checkpoints: list[int]):
    """The white-box EOT run (autograd through the same loop), snapshotted at ``checkpoints`` (steps taken)."""
    device = clean.device
    torch.manual_seed(opt_seed)
    generator = torch.Generator(device=device).manual_seed(opt_seed)
    threat, alpha = build_threat(cfg, None, model.input_size, device, steps)

    def render_views(x):
        return eot.render(x, eot.sample(dists.optimise, samples, cfg.texture_size, model.input_size, generator, device))

    label = torch.tensor([goal.true_idx], device=device)
    loss_fn = OBJECTIVES[cfg.loss]
    objective = lambda logits, y: loss_fn(logits, y, False)  # noqa: E731
    calls = [0]
    source = autograd_source(model, label, objective, False, render_views)

    def counted(x):
        calls[0] += 1
        return source(x)

    snaps = Snapshots(counted, lambda: calls[0], [c for c in checkpoints if c <= steps])
    t0 = time.time()
    # one call more than the schedule (its estimate unused), so the iterate after the last step is snapshotted
    result = optimize(model, clean, label, threat=threat, objective=objective, steps=steps + 1, alpha=alpha,
                      targeted=False, generator=generator, keep_best=True, gradient_source=snaps)
    return snaps, result, time.time() - t0


def curve(args) -> dict:
    cfg, dists, model, clean, goal, opt_seed, held = _setup(args)
    checkpoints = [int(c) for c in args.checkpoints.split(",")]
    per_estimate = 2 * args.pairs
    out = {"settings": {"source": "sign:stop", "goal": "untargeted", "eps_255": args.eps, "oracle": "signs, scores, top-5",
                        "budget": args.budget, "pairs": args.pairs, "sigma": NESConfig().sigma, "grid": NESConfig().grid,
                        "momentum": NESConfig().momentum, "nes_loss": args.loss, "texture_size": args.texture_size,
                        "eval_samples": args.eval_samples, "eval": "held-out print-camera draws (the runner's held-out "
                        "seed, fresh noise)", "seed": args.seed, "wb_samples": args.wb_samples, "wb_steps": args.wb_steps,
                        "nes_schedule": f"cosine step over the budget's {args.budget // per_estimate} estimates",
                        "early_stop": False, "threads": torch.get_num_threads()},
           "step_equivalent": f"one white-box step = one NES estimate = {per_estimate} queries; a white-box step renders "
                              f"{args.wb_samples} views (forward + backward), an estimate {per_estimate} views through "
                              f"{args.pairs} transformations (forward only)",
           "clean": held(clean), "seconds": {}}
    t0 = time.time()
    snaps, _, spent, secs = nes_run(cfg, dists, model, clean, goal, opt_seed, args.budget, args.pairs, checkpoints)
    out["seconds"]["nes"] = round(secs, 1)
    out["nes"] = [{"queries": s["count"], "current": held(s["current"]), "best_so_far": held(s["best"])} for s in snaps.taken]
    out["nes_queries_spent"] = spent
    _log(out["nes"], "NES", "queries")
    if args.wb_steps:
        whitebox_curve(args, out, cfg, dists, model, clean, goal, opt_seed, held, checkpoints)
    if args.compare_budget:
        csnaps, cres, cspent, csecs = nes_run(cfg, dists, model, clean, goal, opt_seed, args.compare_budget, args.pairs,
                                              [c for c in checkpoints if c <= args.compare_budget])
        out["compare"] = {"budget": args.compare_budget, "queries_spent": cspent, "seconds": round(csecs, 1),
                          "returned": held(cres.x),  # what `attack --oracle --budget B` would return (keep_best)
                          "checkpoints": [{"queries": s["count"], "current": held(s["current"]),
                                           "best_so_far": held(s["best"])} for s in csnaps.taken]}
        _log(out["compare"]["checkpoints"], f"NES {args.compare_budget}-budget run", "queries")
    out["seconds"]["total"] = round(time.time() - t0, 1)
    return out


def whitebox_curve(args, out, cfg, dists, model, clean, goal, opt_seed, held, checkpoints) -> None:
    """The white-box EOT run (cross entropy on logits, whatever ``--loss``), at the NES checkpoints'
    step-equivalents up to ``--wb-steps``, into ``out["whitebox"]``."""
    per_estimate = 2 * args.pairs
    wb_steps = sorted({c // per_estimate for c in checkpoints if c // per_estimate <= args.wb_steps} | {args.wb_steps})
    wcfg = AttackConfig(**{**cfg.__dict__, "loss": "ce"})
    wsnaps, _, wsecs = whitebox_run(wcfg, dists, model, clean, goal, opt_seed, args.wb_steps, args.wb_samples, wb_steps)
    out["seconds"]["whitebox"] = round(wsecs, 1)
    out["whitebox"] = [{"step": s["count"], "query_equivalent": s["count"] * per_estimate,
                        "views_rendered": s["count"] * args.wb_samples, "current": held(s["current"]),
                        "best_so_far": held(s["best"])} for s in wsnaps.taken]
    _log(out["whitebox"], "white-box", "step")


def _log(rows, name, key):
    for r in rows:
        print(f"{name} {key} {r[key]}: current {100 * r['current']['success']:.1f} % (mean p(true) "
              f"{r['current']['mean_true_prob']:.3f}), best so far {100 * r['best_so_far']['success']:.1f} %",
              file=sys.stderr, flush=True)


def first_full_batch(run: Path) -> int | None:
    """The query count of the first step whose batch success was 1.0 (``queries.csv``), or ``None``."""
    with open(run / "queries.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if float(row["batch_success"]) >= 1.0:
                return int(row["queries"])
    return None


def stickers(args) -> dict:
    root = Path(args.runs)
    rows = []
    for area in args.areas.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            run = root / f"a{area}-s{seed}"
            if not (run / "attack.json").is_file():
                cmd = [sys.executable, "-m", "physical_adv", "attack", "-s", "sign:stop", "-t", "speed limit 80",
                       "--patch", "square", "--patch-area", area, "--oracle", "signs", "--budget", str(args.budget),
                       "--samples", str(args.pairs), "--eval-samples", str(args.eval_samples), "--seed", str(seed),
                       "--texture-size", str(args.texture_size), "--device", args.device, "--out", str(run)]
                print(" ".join(cmd), file=sys.stderr, flush=True)
                subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
            rec = json.loads((run / "attack.json").read_text())
            m = rec["metrics"]
            rows.append({"area": float(area), "seed": seed, "run": str(run), "success": m["eot_success"],
                         "wilson": m["eot_success_ci95"], "eval_samples": m["eot_samples"],
                         "queries": rec["blackbox"]["queries"], "first_full_batch": first_full_batch(run),
                         "optimise_seconds": m["optimise_seconds"], "texture_size": m["texture_size"],
                         "patch_fraction": rec["patch_fraction"]})
    by_area = {}
    for area in sorted({r["area"] for r in rows}):
        sel = [r for r in rows if r["area"] == area]
        succ = [r["success"] for r in sel]
        full = [r["first_full_batch"] for r in sel if r["first_full_batch"] is not None]
        by_area[str(area)] = {"median": statistics.median(succ), "min": min(succ), "max": max(succ), "seeds": len(sel),
                              "median_queries": statistics.median(r["queries"] for r in sel),
                              "first_full_batch": [r["first_full_batch"] for r in sel],
                              "median_first_full_batch": statistics.median(full) if full else None}
    return {"settings": {"command": "physical-adv attack -s sign:stop -t 'speed limit 80' --patch square --patch-area A "
                                    f"--oracle signs --budget {args.budget} --samples {args.pairs} --eval-samples "
                                    f"{args.eval_samples} --seed S", "texture_size": args.texture_size,
                         "oracle": "signs, scores, top-5 (the CLI default)"},
            "runs": rows, "by_area": by_area}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--sticker", action="store_true", help="the sticker runs (seeds × areas) instead of the L∞ curve")
    p.add_argument("--runs", default="blackbox_eot_runs", help="sticker mode: where the run directories go")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--areas", default="0.1,0.05,0.25")
    p.add_argument("--eps", type=float, default=32.0)
    p.add_argument("--budget", type=int, default=None, help="queries (default 100000; sticker mode 10000)")
    p.add_argument("--checkpoints", default="1000,2000,5000,10000,20000,50000,100000")
    p.add_argument("--pairs", type=int, default=50, help="antithetic pairs per NES estimate (the CLI's --samples)")
    p.add_argument("--loss", default="ce", help="NES objective on the answered scores: ce or margin")
    p.add_argument("--wb-samples", type=int, default=32)
    p.add_argument("--wb-steps", type=int, default=300)
    p.add_argument("--compare-budget", type=int, default=10000, help="a separate NES run with this budget (0: none)")
    p.add_argument("--texture-size", type=int, default=512)
    p.add_argument("--eval-samples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if args.budget is None:
        args.budget = 10000 if args.sticker else 100000
    result = stickers(args) if args.sticker else curve(args)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.json:
        print(text)


if __name__ == "__main__":
    main()
