"""Transfer through print and camera: attacks made on one model, scored on ``signs``.

Usage: OMP_NUM_THREADS=1 python benchmarks/transfer.py [--json] [--sources signs-resnet SUB ENSEMBLE …]
           [--substitute DIR] [--target signs] [--threats linf32,sticker10,sticker25]
           [--techniques plain,mi,ti,di,mi-ti-di] [--seeds 1] [--steps 200] [--samples 32]
           [--texture-size 256] [--eval-samples 1000] [--out DIR] [--device cpu]

One table: a row per source × threat × technique × optimisation seed. Every row is one
``physical-adv attack`` run (:func:`physical_adv.attack.runner.run_attack`, from ``sign:stop``,
every step run: ``--no-early-stop``) with ``--transfer-to TARGET``, so both columns are over the
SAME held-out print-camera draws (``--eval-samples``, 1,000 by default, drawn from the run's
held-out seed, never seen by the optimiser):

* ``white_box`` — the source's success on itself (the run's held-out check);
* ``transfer`` — ``TARGET``'s success on the same draws (untargeted: not ``stop``; targeted:
  reads ``speed limit 80``), with Wilson 95 % intervals over the draws of one optimisation seed.

Threats: ``linf32`` untargeted EOT L∞ ε = 32/255; ``sticker10`` / ``sticker25`` a square sticker of
10 % / 25 % of the tile, stop → speed limit 80. Techniques (:mod:`physical_adv.attack.transfer`):
``plain`` (EOT-PGD), ``mi`` momentum μ = 1 (Dong et al. 2018), ``ti`` translation invariance
(Gaussian σ = ``--ti-sigma`` model-input px; Dong et al. 2019), ``di`` input diversity p = 0.5
(Xie et al. 2019), ``margin`` the capped margin loss, ``mi-ti-di`` and ``mi-ti-di-margin`` together.
Sources: model specs; ``SUB`` stands for ``--substitute DIR``, ``ENSEMBLE`` for
``DIR,signs-resnet`` (Liu et al. 2017). With ``--seeds k`` > 1 a summary per row gives the mean
and min–max over seeds.

``--alignment`` adds why-figures: the cosine between the source's and ``TARGET``'s expected
gradients (over ``--alignment-draws`` print-camera draws, the same draws for both) of the
untargeted objective at the clean ``sign:stop`` texture, beside the cosine between two
independent estimates of ``TARGET``'s own (the ceiling that sampling noise leaves).

Each finished run is appended to ``OUT/rows.jsonl`` (flushed); rerunning with the same ``--out``
skips the rows already there.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from physical_adv.attack import eot
from physical_adv.attack.runner import AttackConfig, run_attack
from physical_adv.images import load_image, to_batch
from physical_adv.models import load_model

THREATS = {
    "linf32": dict(eps=32.0),
    "sticker10": dict(target="speed limit 80", patch="square", patch_area=0.10),
    "sticker25": dict(target="speed limit 80", patch="square", patch_area=0.25),
}


def techniques(ti_sigma: float) -> dict[str, dict]:
    """Technique name → the :class:`AttackConfig` fields it sets."""
    mi, ti, di, margin = dict(momentum=1.0), dict(ti_sigma=ti_sigma), dict(di_prob=0.5), dict(loss="margin")
    return {"plain": {}, "mi": mi, "ti": ti, "di": di, "margin": margin, "mi-ti": {**mi, **ti},
            "mi-ti-di": {**mi, **ti, **di}, "mi-ti-di-margin": {**mi, **ti, **di, **margin}, "mi-margin": {**mi, **margin}}


def resolve_source(name: str, substitute: str | None) -> str:
    """``SUB`` / ``ENSEMBLE`` → the substitute directory / ``DIR,signs-resnet``; else as given."""
    if name in ("SUB", "ENSEMBLE"):
        if substitute is None:
            raise SystemExit(f"source {name} needs --substitute DIR")
        return substitute if name == "SUB" else f"{substitute},signs-resnet"
    return name


def run_row(source: str, threat: str, technique: str, seed: int, args, fields: dict) -> dict:
    """One attack run with ``--transfer-to TARGET``; the row of the table."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = AttackConfig(source="sign:stop", out=Path(tmp) / "run", model=source, seed=seed, steps=args.steps,
                           samples=args.samples, texture_size=args.texture_size, eval_samples=args.eval_samples,
                           device=args.device, early_stop=False, transfer_to=(args.target,),
                           **THREATS[threat], **fields)
        t0 = time.time()
        record = run_attack(cfg, show_progress=False).record
    m, tr = record["metrics"], record["transfer"]
    to = tr["models"][0]
    return {
        "source": source, "threat": threat, "technique": technique, "seed": seed, "target": args.target,
        "white_box": {"success": m["eot_success"], "ci95": m["eot_success_ci95"], "n": m["eot_samples"]},
        "transfer": {"success": to["success"], "ci95": to["success_ci95"], "n": to["n"],
                     "mean_goal_prob": to.get("mean_target_prob", to.get("mean_true_prob"))},
        "source_on_transfer_views": tr["source"]["success"],
        "same_views": tr["views"]["same_as_heldout_check"],
        "config": {k: record["config"][k] for k in ("steps", "samples", "texture_size", "loss", "momentum",
                                                    "ti_sigma", "di_prob", "eps", "patch_area")},
        "seconds": round(time.time() - t0, 1),
    }


def expected_gradient(model, texture, dist, n: int, seed: int, true_idx: int, size: int = 64,
                      batch: int = 50) -> torch.Tensor:
    """∇ of the mean cross-entropy of ``true_idx`` over ``n`` draws (seed ``seed``) w.r.t. the texture."""
    g = torch.Generator().manual_seed(seed)
    x = texture.clone().requires_grad_(True)
    total = torch.zeros_like(texture)
    for start in range(0, n, batch):
        params = eot.sample(dist, min(batch, n - start), texture.shape[-1], size, g, fresh_noise=True)
        logits = model(eot.render(x, params))
        loss = F.cross_entropy(logits, torch.full((len(logits),), true_idx), reduction="sum")
        total += torch.autograd.grad(loss, x)[0]
    return total / n


def alignment(sources: list[str], target: str, texture_size: int, n: int) -> list[dict]:
    """Cosine of each source's expected gradient with the target's, on the same draws, at the clean stop sign."""
    dist = eot.load_distribution("print-camera")
    texture = to_batch(load_image("sign:stop"), texture_size)
    tgt = load_model(target, "cpu")
    true_idx = tgt.class_names.index("stop")
    ref = expected_gradient(tgt, texture, dist, n, 1, true_idx, tgt.input_size)
    rows = [{"source": f"{target} (another {n} draws: the noise ceiling)", "target": target, "draws": n,
             "cosine": float(F.cosine_similarity(expected_gradient(tgt, texture, dist, n, 2, true_idx, tgt.input_size).flatten(),
                                                 ref.flatten(), dim=0))}]
    for spec in sources:
        src = load_model(spec, "cpu")
        grad = expected_gradient(src, texture, dist, n, 1, src.class_names.index("stop"), tgt.input_size)
        rows.append({"source": spec, "target": target, "draws": n,
                     "cosine": float(F.cosine_similarity(grad.flatten(), ref.flatten(), dim=0)),
                     "sign_agreement": float((grad.sign() == ref.sign()).float().mean())})
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Per source × threat × technique: mean and min–max over seeds of both rates."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["source"], r["threat"], r["technique"]), []).append(r)
    out = []
    for (source, threat, technique), rs in groups.items():
        wb, tr = [r["white_box"]["success"] for r in rs], [r["transfer"]["success"] for r in rs]
        out.append({"source": source, "threat": threat, "technique": technique, "seeds": sorted(r["seed"] for r in rs),
                    "white_box_mean": statistics.fmean(wb), "white_box_min_max": [min(wb), max(wb)],
                    "transfer_mean": statistics.fmean(tr), "transfer_min_max": [min(tr), max(tr)]})
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sources", nargs="+", default=["signs-resnet", "SUB", "ENSEMBLE"],
                   help="model specs (a,b = an ensemble), SUB = --substitute, ENSEMBLE = SUB,signs-resnet")
    p.add_argument("--substitute", default=None, help="the Papernot substitute's model directory")
    p.add_argument("--target", default="signs")
    p.add_argument("--threats", default="linf32,sticker10,sticker25")
    p.add_argument("--techniques", default="plain,mi,ti,di,mi-ti-di")
    p.add_argument("--ti-sigma", type=float, default=1.0)
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--texture-size", type=int, default=256)
    p.add_argument("--eval-samples", type=int, default=1000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/transfer"))
    p.add_argument("--json", action="store_true", help="print the table as JSON on stdout")
    p.add_argument("--alignment", action="store_true", help="also the gradient-alignment figures (see above)")
    p.add_argument("--alignment-draws", type=int, default=500)
    args = p.parse_args(argv)
    techs = techniques(args.ti_sigma)
    sources = [resolve_source(s, args.substitute) for s in args.sources]
    args.out.mkdir(parents=True, exist_ok=True)
    rows_file = args.out / "rows.jsonl"
    rows = [json.loads(line) for line in rows_file.read_text().splitlines() if line.strip()] if rows_file.exists() else []
    done = {(r["source"], r["threat"], r["technique"], r["seed"], r["target"], r["config"]["steps"]) for r in rows}
    for source in sources:
        for threat in [t for t in args.threats.split(",") if t]:
            for technique in args.techniques.split(","):
                for seed in range(args.seeds):
                    if (source, threat, technique, seed, args.target, args.steps) in done:
                        continue
                    row = run_row(source, threat, technique, seed, args, techs[technique])
                    rows.append(row)
                    with rows_file.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                        f.flush()
                    print(f"{source:>28} {threat:>9} {technique:>16} seed {seed}: white-box "
                          f"{row['white_box']['success']:6.1%}  transfer to {args.target} "
                          f"{row['transfer']['success']:6.1%} {row['transfer']['ci95']}  ({row['seconds']:.0f} s)",
                          file=sys.stderr, flush=True)
    table = {
        "note": (f"each rate is over {args.eval_samples} held-out print-camera draws of ONE optimisation seed per row "
                 "(Wilson 95 % intervals over those draws); white_box = the source on itself, transfer = "
                 f"{args.target} on the same draws; summary = mean and min-max over the seeds run"),
        "rows": rows,
        "summary": summarise(rows),
    }
    if args.alignment:
        table["alignment"] = alignment(sources, args.target, args.texture_size, args.alignment_draws)
        for a in table["alignment"]:
            print(f"gradient alignment {a['source']} vs {a['target']}: cosine {a['cosine']:+.3f}", file=sys.stderr)
    if args.json:
        print(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
