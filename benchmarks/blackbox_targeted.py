"""Targeted black-box attacks with limited information: partial information and label-only
(Ilyas et al. 2018 §3.2 and §3.3), stop → speed limit 80 on the embedded ``signs`` model.

What it measures: on ``--images`` rendered stop-sign scenes (``physical_adv.signs.scenes``,
print and wild kinds, fixed seed, kept only when ``signs`` classifies them as stop), a digital
attack (EOT distribution ``none``, texture = 64 px = the model input) that must make
``speed limit 80`` the top-1 class within L∞ ``--eps`` of the scene, starting from a rendered
speed-limit-80 scene:

* ``partial`` — ``scores`` mode with k = 1: the target sees only the top label and its score;
  budget ``--budget`` queries per image;
* ``label-only`` — ``label`` mode: the top label's name only (the rank proxy over noisy copies);
  budget ``--label-budget`` per image.

Every query is counted by the query target (``ModelTarget``): the NES estimates, the noisy
copies and every check of the partial schedule. Success is checked again at the end by one
more query of the final image (counted too) and locally (top-1 = target, ‖x − clean‖∞ ≤ ε).
Reports the success rate with its Wilson 95 % interval, the median queries of the successful
images, and the mean ε reached by the failed ones.

Run (single-threaded, ~20–40 min on one core)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/blackbox_targeted.py --json > out.json
    .venv/bin/python benchmarks/blackbox_targeted.py --images 3 --budget 5000 --label-budget 0   # quick look
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np
import torch

from physical_adv.attack import eot
from physical_adv.attack.blackbox_run import query_attack
from physical_adv.attack.estimators import LabelProxyConfig, NESConfig
from physical_adv.attack.partial import PartialConfig
from physical_adv.attack.threat import LinfBall
from physical_adv.blackbox.target import ModelTarget
from physical_adv.images import to_batch
from physical_adv.models import load_model
from physical_adv.signs import CLASS_NAMES
from physical_adv.signs.scenes import SignBank, render_scene
from physical_adv.stats import wilson_interval

SOURCE, TARGET = "stop", "speed limit 80"


def scenes(model, n: int, label: str, seed: int) -> torch.Tensor:
    """``n`` print/wild scenes of ``label`` that ``model`` classifies as ``label``, ``(n, 3, 64, 64)``."""
    rng = np.random.default_rng(seed)
    bank = SignBank(rng, styles_per_class=8)
    idx, kept, tries = CLASS_NAMES.index(label), [], 0
    while len(kept) < n and tries < 50 * n:
        tries += 1
        img = to_batch(render_scene(rng, bank, idx, model.input_size, kind=("print", "wild")[tries % 2]))
        with torch.no_grad():
            if int(model(img).argmax(1)) == idx:
                kept.append(img)
    return torch.cat(kept)


def attack_one(method: str, clean: torch.Tensor, start: torch.Tensor, eps: float, budget: int, seed: int,
               nes: NESConfig, partial: PartialConfig, proxy: LabelProxyConfig, floor: float) -> dict:
    mode, k = ("scores", 1) if method == "partial" else ("label", 1)
    target = ModelTarget("signs", mode, top_k=k, budget=budget + 1, device="cpu")
    t0 = time.time()
    result = query_attack(target, clean, SOURCE, TARGET, method=method, threat=LinfBall(eps),
                          dist=eot.load_distribution("none"), out_size=64, views=nes.pairs,
                          generator=torch.Generator().manual_seed(seed), start=start, budget=budget, nes=nes,
                          partial=partial, proxy=proxy, floor=floor)
    spent = target.queries
    answer = target.query(result.x)[0]  # the final image, asked once more (counted)
    linf = float((result.x - clean).abs().max())
    success = bool(result.reached and answer[0].description == TARGET and linf <= eps + 1e-6)
    return {"success": success, "queries": spent, "queries_with_check": target.queries, "eps_reached_255":
            round(result.final_eps * 255, 2), "linf_255": round(linf * 255, 2), "seconds": round(time.time() - t0, 1)}


def summarise(rows: list[dict]) -> dict:
    wins = [r for r in rows if r["success"]]
    lo, hi = wilson_interval(len(wins), len(rows))
    fails = [r["eps_reached_255"] for r in rows if not r["success"]]
    return {"success": len(wins), "n": len(rows), "rate": round(len(wins) / len(rows), 3),
            "ci95": [round(lo, 3), round(hi, 3)],
            "median_queries_success": statistics.median(r["queries"] for r in wins) if wins else None,
            "mean_eps_reached_failed_255": round(statistics.mean(fails), 2) if fails else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--eps", type=float, default=32, help="final L∞ ε in /255")
    ap.add_argument("--budget", type=int, default=20000, help="partial-information queries per image")
    ap.add_argument("--label-budget", type=int, default=10000, help="label-only queries per image (0 = skip)")
    ap.add_argument("--pairs", type=int, default=50)
    ap.add_argument("--sigma", type=float, default=0.02)
    ap.add_argument("--grid", type=int, default=32, help="NES basis side (0 = every pixel)")
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--floor", type=float, default=1e-6)
    ap.add_argument("--copies", type=int, default=LabelProxyConfig().copies)
    ap.add_argument("--label-pairs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    model = load_model("signs", "cpu")
    cleans = scenes(model, args.images, SOURCE, args.seed)
    start = scenes(model, 1, TARGET, args.seed + 1)
    nes = NESConfig(pairs=args.pairs, sigma=args.sigma, grid=args.grid or None, momentum=args.momentum)
    partial, proxy = PartialConfig(), LabelProxyConfig(copies=args.copies)
    eps = args.eps / 255
    out = {"source": SOURCE, "target": TARGET, "eps_255": args.eps, "images": len(cleans), "seed": args.seed,
           "nes": vars(nes) if hasattr(nes, "__dict__") else str(nes), "partial": str(partial), "floor": args.floor}
    methods = [("partial", args.budget, nes)]
    if args.label_budget:
        methods.append(("label-only", args.label_budget,
                        NESConfig(pairs=args.label_pairs, sigma=args.sigma, grid=args.grid or None, momentum=args.momentum)))
    for method, budget, cfg in methods:
        rows = []
        for i, clean in enumerate(cleans):
            row = attack_one(method, clean[None], start, eps, budget, args.seed + i, cfg, partial, proxy, args.floor)
            rows.append(row)
            print(f"{method} image {i}: {row}", file=sys.stderr, flush=True)
        out[method] = {"budget": budget, "pairs": cfg.pairs, "per_image": rows, **summarise(rows)}
        print(f"{method}: {out[method]['success']}/{len(rows)} {out[method]['ci95']} "
              f"median queries {out[method]['median_queries_success']}", file=sys.stderr, flush=True)
    print(json.dumps(out, indent=1) if args.json else json.dumps({m: {k: v for k, v in out[m].items() if k != "per_image"}
                                                                 for m, _, _ in methods}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
