"""Attacks per minute of ``signs`` sweep jobs, one at a time and batched, against the bare model's ceiling.

Usage: python benchmarks/sweep_throughput.py [--textures 1,8,32] [--steps 10] [--samples 32] [--repeats 3]
                                             [--model signs] [--device cpu] [--compile] [--amp] [--json]

The jobs are ``sign:stop`` untargeted L∞ 16/255 white-box EOT attacks (seeds 0…K−1, early stop
off, so every job runs all ``--steps``), prepared by the library as ``physical-adv sweep``
prepares them. ``K = 1`` is one job at a time through ``attack``'s own loop
(:func:`physical_adv.attack.runner.optimise`, what a sweep runs for a job alone); ``K > 1`` is
K jobs through the batched loop (:func:`physical_adv.sweep.batched.optimise_batch`, K·M views
in one model pass per step). Attacks per minute count the optimisation only: not the held-out
check (``--eval-samples`` draws per job, batched or not), nor writing the run directories.

The *ceiling* for each K is what the attacks would reach if EOT cost nothing beyond the model:
the bare model's forward+backward on an already-rendered batch of K·M views, as images per
second ÷ (steps · samples). ``ceiling_fraction`` = attacks per minute ÷ ceiling. Everything is
interleaved in one run (for each repeat: each K's attacks, then its bare passes) and reported
as medians. ``--compile`` runs the model through ``torch.compile`` (compiled once per batch
size in a warm-up that is not timed); ``--amp`` runs its forward under autocast (bfloat16, or
float16 on a CUDA device without bfloat16), with logits returned in float32.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import time

import torch

from eot_overhead import bare_pass, batched_jobs, build_model, rendered_views, sync, texture_counts
from physical_adv.attack.runner import optimise
from physical_adv.memory import keep_freed_memory
from physical_adv.sweep.batched import optimise_batch

BARE_PASSES = 5  # bare forward+backward passes per K per repeat


def amp_dtype(device: torch.device) -> torch.dtype:
    """The autocast type: bfloat16 where the device has it, else float16 (older CUDA devices)."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def autocast_forward(model, dtype: torch.dtype) -> None:
    """Run ``model``'s forward under autocast to ``dtype``, its logits handed back in float32 (in place)."""
    forward = model.forward

    @functools.wraps(forward)
    def run(images: torch.Tensor) -> torch.Tensor:
        with torch.autocast(model.device.type, dtype=dtype):
            return forward(images).float()

    model.forward = run


def run_attacks(model, k: int, samples: int, steps: int) -> float:
    """Seconds to optimise ``k`` fresh jobs for ``steps`` steps each (preparing them is not timed):
    one job through ``attack``'s loop when ``k`` is 1, else all ``k`` through the batched loop."""
    jobs = batched_jobs(model, k, samples, steps)
    sync(model.device)
    t = time.perf_counter()
    if k == 1:
        tex = jobs.textures[0]
        optimise(tex.cfg, model, tex.clean, jobs.goals[0], tex.threat, tex.alpha, jobs.dist, tex.generator, False)
    else:
        optimise_batch(jobs.textures, model, jobs.dist, jobs.views, jobs.objective)
    sync(model.device)
    return time.perf_counter() - t


def warm_up(model, counts: list[int], samples: int, rounds: int) -> None:
    """``rounds`` of two-step attacks and two bare passes at every K, untimed (under ``--compile`` the
    first round compiles the model for every batch size, the second meets any recompilation)."""
    for _ in range(rounds):
        for k in counts:
            run_attacks(model, k, samples, 2)
            batch, labels = rendered_views(model, batched_jobs(model, k, samples))
            for _ in range(2):
                bare_pass(model, batch, labels)


def measure(model, counts: list[int], samples: int, steps: int, repeats: int, warmup_rounds: int = 1) -> dict:
    """Median attack and bare-pass times per K, interleaved over ``repeats``, as attacks per minute."""
    device = model.device
    warm_up(model, counts, samples, warmup_rounds)
    bare_inputs = {k: rendered_views(model, batched_jobs(model, k, samples)) for k in counts}
    runs: dict[int, list[float]] = {k: [] for k in counts}
    bare: dict[int, list[float]] = {k: [] for k in counts}
    for _ in range(repeats):
        for k in counts:
            runs[k].append(run_attacks(model, k, samples, steps))
            for _ in range(BARE_PASSES):
                sync(device)
                t = time.perf_counter()
                bare_pass(model, *bare_inputs[k])
                sync(device)
                bare[k].append(time.perf_counter() - t)
    rows = {}
    for k in counts:
        run_s, bare_s = statistics.median(runs[k]), statistics.median(bare[k])
        per_min = 60 * k / run_s
        ceiling = 60 * k / (bare_s * steps)  # (k·samples / bare_s) images/s ÷ (steps · samples)
        rows[str(k)] = {"mode": "one at a time (attack's loop)" if k == 1 else "batched (optimise_batch)",
                        "run_s": round(run_s, 3), "step_ms": round(run_s / steps * 1000, 2),
                        "bare_ms": round(bare_s * 1000, 2), "attacks_per_min": round(per_min, 2),
                        "ceiling_attacks_per_min": round(ceiling, 2), "ceiling_fraction": round(per_min / ceiling, 3)}
    if "1" in rows:
        for row in rows.values():
            row["speedup_over_one_at_a_time"] = round(row["attacks_per_min"] / rows["1"]["attacks_per_min"], 2)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--textures", type=texture_counts, default=None,
                    help="Jobs per batch to compare (default 1,8,32; 1,8,32,64 on a CUDA device); 1 = one at a time.")
    ap.add_argument("--steps", type=int, default=10,
                    help="Steps per job (early stop off, so the cost per step does not depend on it; default 10).")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default="signs", help="signs, or a torchvision classifier by name (random weights).")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compile", action="store_true", help="Run the model through torch.compile.")
    ap.add_argument("--amp", action="store_true", help="Run the model's forward under autocast (bfloat16 or float16).")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.steps < 1 or args.samples < 1 or args.repeats < 1:
        ap.error("--steps, --samples and --repeats must be ≥ 1")
    tuned = keep_freed_memory()
    model = build_model(args.model, args.device)
    device = model.device
    counts = args.textures or ([1, 8, 32, 64] if device.type == "cuda" else [1, 8, 32])
    if args.amp:
        autocast_forward(model, amp_dtype(device))
    if args.compile:
        model.compile()
    started = time.perf_counter()
    rows = measure(model, counts, args.samples, args.steps, args.repeats, 2 if args.compile else 1)
    results = {"model": args.model, "device": str(device), "threads": torch.get_num_threads(),
               "machine": (torch.cuda.get_device_name(device) if device.type == "cuda"
                           else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"),
               "torch": torch.__version__, "compile": args.compile, "amp": str(amp_dtype(device)) if args.amp else None,
               "malloc_tuned": tuned, "steps": args.steps, "samples": args.samples, "repeats": args.repeats,
               "wall_s": round(time.perf_counter() - started, 1), "rows": rows}
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for k, row in rows.items():
        line = (f"K={k} {row['mode']}: {row['attacks_per_min']} attacks/min ({row['step_ms']} ms/step), ceiling "
                f"{row['ceiling_attacks_per_min']} (bare pass {row['bare_ms']} ms) → {100 * row['ceiling_fraction']:.1f} %")
        if "speedup_over_one_at_a_time" in row:
            line += f", {row['speedup_over_one_at_a_time']}× one at a time"
        print(line, flush=True)


if __name__ == "__main__":
    main()
