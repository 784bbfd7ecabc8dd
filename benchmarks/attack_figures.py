"""The attack figures of the README: EOT attacks on ``signs`` and the same attacks without EOT.

Usage: python benchmarks/attack_figures.py [--out DIR] [--json] [--device cpu]

Runs, from ``sign:stop`` with default settings (print-camera, 32 samples, ≤ 300 steps):
  (a) untargeted L∞ ε = 16/255;
  (b) targeted sticker (square, 25 % of the tile) → speed limit 80;
  (c) targeted L∞ → speed limit 80 at ε = 16/255 and 32/255;
each once with ``--eot print-camera`` and once with ``--eot none`` (plain PGD), both checked on
the same 1,000 held-out print-camera draws. Prints success rates with 95 % intervals and wall times.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from physical_adv.attack.runner import AttackConfig, run_attack

ATTACKS = {
    "a: untargeted linf 16": dict(),
    "b: sticker 25% -> speed limit 80": dict(target="speed limit 80", patch="square", patch_area=0.25),
    "c: targeted linf 16 -> speed limit 80": dict(target="speed limit 80", eps=16.0),
    "c: targeted linf 32 -> speed limit 80": dict(target="speed limit 80", eps=32.0),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="Keep the run directories here.")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="attack-figures-"))
    rows = []
    for name, extra in ATTACKS.items():
        for preset in ("print-camera", "none"):
            slug = name.split(":")[0] + "-" + "".join(c if c.isalnum() else "-" for c in name.split(":")[1].strip()) + "-" + preset
            cfg = AttackConfig(source="sign:stop", out=root / slug, eot=preset, eval_eot="print-camera", device=args.device, **extra)
            m = run_attack(cfg, show_progress=False).record["metrics"]
            rows.append({"attack": name, "eot": preset, "success": m["eot_success"], "ci95": m["eot_success_ci95"],
                         "wall_seconds": m["wall_seconds"], "steps_run": m["steps_run"], "run": str(cfg.out)})
            if not args.json:
                lo, hi = m["eot_success_ci95"]
                print(f"{name:<40} --eot {preset:<13} success {m['eot_success']:6.1%} [{lo:.1%}, {hi:.1%}]  "
                      f"{m['steps_run']:3d} steps  {m['wall_seconds']:5.0f} s", flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
