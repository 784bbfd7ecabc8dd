"""The attack figures of the README: EOT attacks on ``signs``, the same attacks without EOT, over seeds.

Usage: python benchmarks/attack_figures.py [--seeds 5] [--out DIR] [--only TEXT] [--eval-samples 1000]
                                          [--device cpu] [--json]

Runs, from ``sign:stop`` with default settings (print-camera, 32 samples, ≤ 300 steps):
  (a) untargeted L∞ ε = 16/255;
  (b) targeted sticker (square, 25 % of the tile) → speed limit 80;
  (c) targeted L∞ → speed limit 80 at ε = 16/255 and 32/255;
  untargeted L∞ at ε = 20, 24 and 32/255;
each with ``--eot print-camera`` and (except the 20 and 24 rows) with ``--eot none`` (plain PGD,
one view per step), all checked on held-out print-camera draws. Every attack runs once per
optimisation seed ``0 … --seeds−1`` (the seed also picks that run's held-out draws), and
each row reports the success rate's mean over seeds, its min and max, and a 95 % Student-t
interval of the mean over seeds (``scipy.stats.t``) — the spread a reader would see
re-running with another seed, which one run's Wilson interval over its draws does not show.

Each finished run is appended as one JSON line to ``OUT/runs.jsonl`` (flushed), so an
interrupted benchmark keeps its runs; rerunning with the same ``--out`` skips them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from physical_adv.attack.runner import AttackConfig, run_attack
from physical_adv.stats import seed_summary

BOTH, EOT_ONLY = ("print-camera", "none"), ("print-camera",)
ATTACKS = {
    "a: untargeted linf 16": (dict(), BOTH),
    "b: sticker 25% -> speed limit 80": (dict(target="speed limit 80", patch="square", patch_area=0.25), BOTH),
    "c: targeted linf 16 -> speed limit 80": (dict(target="speed limit 80", eps=16.0), BOTH),
    "c: targeted linf 32 -> speed limit 80": (dict(target="speed limit 80", eps=32.0), BOTH),
    "untargeted linf 20": (dict(eps=20.0), EOT_ONLY),
    "untargeted linf 24": (dict(eps=24.0), EOT_ONLY),
    "untargeted linf 32": (dict(eps=32.0), BOTH),
}


def _slug(name: str, preset: str, seed: int) -> str:
    label, _, rest = name.partition(":")
    text = (label + "-" + rest.strip()) if rest else label
    return "".join(c if c.isalnum() else "-" for c in text) + f"-{preset}-s{seed}"


def run_all(root: Path, seeds: int, eval_samples: int, device: str, only: str | None, quiet: bool) -> list[dict]:
    """Run every (attack, preset, seed) not already in ``root/runs.jsonl``; return all run rows."""
    log = root / "runs.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []
    done = {(r["attack"], r["eot"], r["seed"]) for r in rows}
    for seed in range(seeds):  # seed-major, so an interrupted run has every attack at the first seeds
        for name, (extra, presets) in ATTACKS.items():
            if only and only not in name:
                continue
            for preset in presets:
                if (name, preset, seed) in done:
                    continue
                cfg = AttackConfig(source="sign:stop", out=root / _slug(name, preset, seed), eot=preset,
                                   eval_eot="print-camera", eval_samples=eval_samples, seed=seed, device=device, **extra)
                m = run_attack(cfg, show_progress=False).record["metrics"]
                row = {"attack": name, "eot": preset, "seed": seed, "success": m["eot_success"], "ci95": m["eot_success_ci95"],
                       "eval_samples": m["eot_samples"], "steps_run": m["steps_run"], "wall_seconds": m["wall_seconds"]}
                rows.append(row)
                with log.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                    f.flush()
                if not quiet:
                    print(f"{name:<40} --eot {preset:<13} seed {seed}: {m['eot_success']:6.1%}  {m['steps_run']:3d} steps  "
                          f"{m['wall_seconds']:5.0f} s", flush=True)
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """One row per (attack, preset): :func:`seed_summary` of its runs, plus mean steps and wall time."""
    out = []
    for name in ATTACKS:
        for preset in BOTH:
            runs = sorted((r for r in rows if r["attack"] == name and r["eot"] == preset), key=lambda r: r["seed"])
            if runs:
                out.append({"attack": name, "eot": preset, **seed_summary([r["success"] for r in runs]),
                            "eval_samples": runs[0]["eval_samples"],
                            "mean_steps": round(statistics.fmean(r["steps_run"] for r in runs), 1),
                            "mean_wall_seconds": round(statistics.fmean(r["wall_seconds"] for r in runs), 1)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5, help="Optimisation seeds per attack (0 … N−1); at least 2 for a spread.")
    ap.add_argument("--out", type=Path, default=None, help="Keep the run directories and runs.jsonl here (and resume).")
    ap.add_argument("--only", default=None, help="Only the attacks whose name contains this text.")
    ap.add_argument("--eval-samples", type=int, default=1000, help="Held-out print-camera draws per run.")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.seeds < 1:
        ap.error("--seeds must be ≥ 1")
    root = args.out or Path(tempfile.mkdtemp(prefix="attack-figures-"))
    root.mkdir(parents=True, exist_ok=True)
    summary = summarise(run_all(root, args.seeds, args.eval_samples, args.device, args.only, args.json))
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"\nover seeds (mean [95% t-interval of the mean], min–max), held-out print-camera draws; runs in {root}")
    for r in summary:
        t95 = "" if r["t95"] is None else f" [{r['t95'][0]:.1%}, {r['t95'][1]:.1%}]"
        print(f"{r['attack']:<40} --eot {r['eot']:<13} {r['mean']:6.1%}{t95}  min–max {r['min']:.1%}–{r['max']:.1%}  "
              f"({r['seeds']} seeds, {r['mean_steps']:.0f} steps, {r['mean_wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
