"""Training cost of each ``harden`` method, measured side by side in one run.

Usage: python benchmarks/harden_speed.py [--batches 6] [--batch-size 128] [--eps 32] [--steps 5] [--threads 2] [--json]

For ``clean`` (plain training on signs scenes, the train-signs step) and each method of
``physical_adv.harden`` (pgd, fast, eot, occlusion, and the shipped recipe occlusion+eot), the
same number of real training batches of ``signs`` (half clean scenes, half adversarial, as
``harden``'s default ``--clean-fraction 0.5``), interleaved round-robin so that a shared
machine's load falls on every row alike. Reported: seconds per 1,000 training examples and
the ratio to ``clean``; from them, the minutes an epoch of 16,000 examples takes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from physical_adv.attack import eot  # noqa: E402
from physical_adv.harden import HardenConfig, SceneData, _train_epoch  # noqa: E402
from physical_adv.models import load_model  # noqa: E402
from physical_adv.ui import make_progress  # noqa: E402

ROWS = {"clean": None, "pgd": ("pgd",), "fast": ("fast",), "eot": ("eot",), "occlusion": ("occlusion",),
        "occlusion+eot": ("occlusion", "eot")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=6, help="training batches per row (after one warm-up batch)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--eps", type=float, default=32.0)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dist = eot.load_distribution("print-camera")
    tmp = Path(tempfile.mkdtemp())
    setups = {}
    for name, methods in ROWS.items():
        model = load_model("signs", "cpu")
        model.net.requires_grad_(True)
        cfg = HardenConfig(out=tmp / name, methods=methods or ("pgd",), eps=args.eps, steps=args.steps,
                           samples=args.batch_size, batch_size=args.batch_size, epochs=1, eps_warmup=0,
                           clean_fraction=0.999 if methods is None else 0.5)
        opt = torch.optim.AdamW(model.net.parameters(), lr=1e-4)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        setups[name] = (model, cfg, opt, sched, SceneData(np.random.default_rng(1), cfg.texture_size))
    seconds = {name: 0.0 for name in ROWS}
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    with make_progress(disable=False) as progress:
        task = progress.add_task("batches", total=(args.batches + 1) * len(ROWS), info="")
        inner = progress.add_task("", visible=False)  # _train_epoch's own per-step updates
        for b in range(args.batches + 1):
            for name, (model, cfg, opt, sched, data) in setups.items():
                t0 = time.perf_counter()
                _train_epoch(model, cfg, data, 0, opt, sched, dist, gen, rng, progress, inner)
                if b:  # the first batch warms up
                    seconds[name] += time.perf_counter() - t0
                progress.update(task, advance=1)
    per_k = {name: 1000 * s / (args.batches * args.batch_size) for name, s in seconds.items()}
    rows = [{"method": name, "seconds_per_1000": round(v, 2), "ratio_to_clean": round(v / per_k["clean"], 2),
             "minutes_per_16000": round(16 * v / 60, 1)} for name, v in per_k.items()]
    result = {"batches": args.batches, "batch_size": args.batch_size, "eps": args.eps, "steps": args.steps,
              "threads": args.threads, "rows": rows, "torch": torch.__version__}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for r in rows:
            print(f"{r['method']:>14}: {r['seconds_per_1000']:7.2f} s / 1,000 examples  ×{r['ratio_to_clean']:.1f}  "
                  f"({r['minutes_per_16000']} min per 16,000-example epoch)")


if __name__ == "__main__":
    main()
