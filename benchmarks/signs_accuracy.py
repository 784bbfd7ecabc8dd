"""Accuracy of an embedded ``signs``-family model on freshly rendered scenes it never saw.

Usage: python benchmarks/signs_accuracy.py [--model signs|signs-resnet|DIR] [--n 2000] [--seed 2026] [--json]

Reports top-1 accuracy on N mixed scenes (street, rectified print, box-cropped print) and
N/2 rectified print tiles from the held-out stream, and on each off-training style variant
(clean frontal rendering, print tiles and street scenes).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from physical_adv import load_model
from physical_adv.images import to_batch
from physical_adv.signs import CLASS_NAMES, render_clean
from physical_adv.signs.designs import OFF_STYLES
from physical_adv.signs.train import EVAL_SEED, evaluate, evaluate_style


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=EVAL_SEED)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--model", default="signs", help="signs, signs-resnet or any model spec with the signs classes")
    args = ap.parse_args()
    model = load_model(args.model, "cpu")
    out = {
        "mixed": evaluate(model, args.n, args.seed)["accuracy"],
        "print": evaluate(model, args.n // 2, args.seed, kind="print")["accuracy"],
        "off_style": {},
    }
    for name, style in OFF_STYLES.items():
        clean = torch.cat([to_batch(render_clean(c, 256, style), 64) for c in CLASS_NAMES])
        with torch.no_grad():
            clean_acc = float((model(clean).argmax(1).numpy() == np.arange(len(CLASS_NAMES))).mean())
        out["off_style"][name] = {
            "clean": clean_acc,
            "print": evaluate_style(model, style, 20, "print", args.seed)["accuracy"],
            "wild": evaluate_style(model, style, 20, "wild", args.seed)["accuracy"],
        }
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"held-out seed {args.seed}: mixed scenes {out['mixed']:.4f} (n={args.n}), print tiles {out['print']:.4f} (n={args.n // 2})")
    for name, r in out["off_style"].items():
        print(f"  off-style {name:<36} clean {r['clean']:.3f}  print {r['print']:.3f}  wild {r['wild']:.3f}")


if __name__ == "__main__":
    main()
