"""Substitute fidelity: how often a substitute trained on ``signs``' top-1 labels agrees with it.

Usage: python benchmarks/substitute_fidelity.py [--budget 1120] [--rounds 4] [--eval 1000] [--seeds 0]
                                               [--probe 500] [--only papernot|natural] [--out DIR] [--json]
                                               [--set KEY=VALUE ...]

Two rows, the same substitute training (``physical_adv.substitute``), the same oracle (``signs``
in ``label`` mode) and the same number of oracle labels:

* ``papernot`` — Papernot et al. 2017: 10 rendered scenes per class (140 images, seed stream
  ``SEED_STREAM``) grown by Jacobian-based augmentation with reservoir sampling to ``--budget`` labels
  in ``--rounds`` training rounds;
* ``natural`` — an attacker who can sample the input distribution: ``--budget`` random scenes
  (same seed stream), labelled once, trained in one round of the same training (same epochs,
  jitter, network) as the papernot row's last round.

Each is scored on ``--eval`` held-out scenes of ``signs``' evaluation stream (``EVAL_STREAM``,
seed ``EVAL_SEED``, classes round-robin), which neither the substitute's seeds nor its probe use:
agreement with ``signs``' top-1 (Wilson 95 %), and the substitute's own accuracy against the true
classes beside ``signs``' accuracy. Per round: queries, set size, probe agreement (probe labels are
oracle queries counted apart, ``probe_queries``). Several ``--seeds`` give mean and min–max.

The defaults are a small run (1,120 labels, 4 rounds, 1,000 held-out scenes: about 6 min on two
CPU cores). The README's figures are the full Papernot setting:

    python benchmarks/substitute_fidelity.py --budget 6400 --rounds 7 --eval 2000 --json

(about 18 min for the papernot row and 7 min for the natural one on two idle CPU cores).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from physical_adv.models import load_model
from physical_adv.signs.designs import CLASS_NAMES
from physical_adv.signs.train import EVAL_SEED, EVAL_STREAM
from physical_adv.stats import wilson_interval
from physical_adv.substitute import SubstituteConfig, predict, rendered_scenes, train_substitute


def heldout(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` scenes of the evaluation stream and their true classes."""
    labels = np.arange(n) % len(CLASS_NAMES)
    return rendered_scenes(EVAL_STREAM, EVAL_SEED, labels), torch.from_numpy(labels)


def rate(k: int, n: int) -> dict:
    low, high = wilson_interval(k, n)
    return {"rate": k / n, "low": low, "high": high, "k": k, "n": n}


def score(model_dir: Path, oracle_pred: torch.Tensor, images: torch.Tensor, truth: torch.Tensor) -> dict:
    sub = load_model(str(model_dir), device="cpu")
    pred = predict(sub, images)
    return {"agreement": rate(int((pred == oracle_pred).sum()), len(pred)),
            "substitute_accuracy": rate(int((pred == truth).sum()), len(pred))}


def parse_sets(items: list[str]) -> dict:
    """``KEY=VALUE`` overrides of :class:`SubstituteConfig`; VALUE is read as JSON (``3``, ``0.05``,
    ``false``, ``null``), else kept as text."""
    known = {f.name for f in fields(SubstituteConfig)}
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        if key not in known:
            raise SystemExit(f"unknown setting {key!r}; known: {', '.join(sorted(known))}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=int, default=1120, help="oracle labels per substitute (full setting: 6400)")
    ap.add_argument("--rounds", type=int, default=4, help="training rounds of the papernot row (full setting: 7)")
    ap.add_argument("--eval", type=int, default=1000, help="held-out scenes (EVAL_STREAM) to score on")
    ap.add_argument("--probe", type=int, default=500)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--only", choices=("papernot", "natural"))
    ap.add_argument("--out", type=Path, help="keep the substitutes here (default: a temporary folder)")
    ap.add_argument("--set", dest="sets", nargs="*", default=[], help="SubstituteConfig overrides, KEY=VALUE")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    overrides = parse_sets(args.sets)
    images, truth = heldout(args.eval)
    oracle = load_model("signs", device="cpu")
    oracle_pred = predict(oracle, images)
    result = {"oracle": "signs", "heldout": {"stream": EVAL_STREAM, "seed": EVAL_SEED, "n": args.eval,
                                               "oracle_accuracy": rate(int((oracle_pred == truth).sum()), args.eval)},
              "settings": {"budget": args.budget, "rounds": args.rounds, "probe": args.probe, **overrides}, "rows": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        for row in ("papernot", "natural"):
            if args.only and row != args.only:
                continue
            runs = []
            for seed in args.seeds:
                base = dict(oracle="signs", out=root / f"{row}-seed{seed}", budget=args.budget, probe=args.probe, seed=seed,
                            device="cpu", threads=args.threads)
                base.update(overrides)
                if row == "papernot":
                    cfg = SubstituteConfig(**{**base, "rounds": args.rounds, "seed_set": "sign:*"})
                else:
                    cfg = SubstituteConfig(**{**base, "rounds": 1, "seed_set": f"scenes:{args.budget}"})
                record = train_substitute(cfg)  # progress on stderr, JSON on stdout
                scored = score(cfg.out, oracle_pred, images, truth)
                runs.append({"seed": seed, **scored, "queries": record["queries"], "probe_queries": record["probe_queries"],
                             "seconds": record["seconds"],
                             "rounds": [{k: r[k] for k in ("round", "set_size", "queries", "train_seconds")}
                                        | ({"probe_agreement": round(r["probe"]["agreement"], 4)} if "probe" in r else {})
                                        for r in record["rounds"]]})
                print(f"{row} seed {seed}: agreement {scored['agreement']['rate']:.4f} "
                      f"[{scored['agreement']['low']:.4f}, {scored['agreement']['high']:.4f}] "
                      f"queries {record['queries']} (+{record['probe_queries']} probe)", file=sys.stderr)
            agree = [r["agreement"]["rate"] for r in runs]
            result["rows"][row] = {"runs": runs, "agreement_mean": statistics.fmean(agree),
                                   "agreement_min": min(agree), "agreement_max": max(agree)}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for row, r in result["rows"].items():
            print(f"{row:9s} agreement mean {r['agreement_mean']:.4f} (min {r['agreement_min']:.4f}, max {r['agreement_max']:.4f})")


if __name__ == "__main__":
    main()
