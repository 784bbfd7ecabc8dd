"""Transfer through print and camera, end to end: attacks made on a SOURCE model, printed on a
sheet scored by the TARGET (``sheet --model``), photographed by ``simulate`` and read back by
``capture``, twice over the same photos — once scored by the target (transfer) and once by the
source (``capture --model SOURCE``: white-box success through print, for comparison).

Each rate is over the simulated photos of one printed page (one optimisation seed per attack,
one print); its 95 % interval is the report's, which clusters frames by photo segment. The
photos are drawn by ``simulate``'s renderer, which the attack's EOT distribution approximates
but never sampled from: a held-out renderer.

Usage::

    python benchmarks/transfer_print.py --json                      # signs-resnet → signs, 40 photos
    python benchmarks/transfer_print.py --runs RUN_DIR ... --json   # existing attack runs (any source)
    python benchmarks/transfer_print.py --source /path/to/substitute --momentum 1.0 --json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ATTACKS = {  # name → AttackConfig options (stop sign; the three threats)
    "sticker-25": dict(target="speed limit 80", patch="square", patch_area=0.25),
    "sticker-10": dict(target="speed limit 80", patch="square", patch_area=0.10),
    "linf-32": dict(eps=32.0),
}


def make_runs(source: str, root: Path, args) -> list[Path]:
    from physical_adv.attack.runner import AttackConfig, run_attack

    extra = {}
    for name in ("momentum", "ti_sigma", "di_prob"):
        value = getattr(args, name)
        if value:
            extra[name] = value
    runs = []
    for name in args.attacks:
        cfg = AttackConfig(source="sign:stop", model=source, out=root / name, seed=args.seed, steps=args.steps,
                           samples=args.samples, eval_samples=args.eval_samples, device="cpu", **ATTACKS[name], **extra)
        result = run_attack(cfg, show_progress=not args.quiet)
        m = result.record["metrics"]
        print(f"{name} on {source}: {m['eot_success']:.1%} of {m['eot_samples']} held-out draws", file=sys.stderr)
        runs.append(result.out)
    return runs


def measure(runs: list[Path], source: str | None, target: str, photos: int, seed: int, root: Path, quiet: bool) -> dict:
    from physical_adv.capture import CaptureConfig, run_capture
    from physical_adv.report import ReportConfig, run_report
    from physical_adv.sheet import SheetConfig, make_sheet
    from physical_adv.simulate import SimulateConfig, simulate

    sheet = make_sheet(SheetConfig(runs=tuple(str(r) for r in runs), out=root / "sheet.pdf", model=target, previews=False))
    source = source or sheet.manifest["tiles"][0]["attacked_model"]
    simulate(SimulateConfig(pdf=sheet.pdf, out=root / "photos", n=photos, seed=seed), show_progress=not quiet)
    reports = {}
    for who, override in (("target", None), ("source", source)):
        cap = root / f"capture-{who}"
        run_capture(CaptureConfig(sheet=sheet.manifest_path, images=root / "photos", out=cap, window=False,
                                  device="cpu", model=override), show_progress=not quiet)
        reports[who], *_ = run_report(ReportConfig(captures=(cap,)))
    rows = []
    for tile in sheet.manifest["tiles"]:
        by = {who: next(t for t in rep["tiles"] if t["tile_id"] == tile["tile_id"]) for who, rep in reports.items()}
        rate = "targeted_success" if tile.get("target_class") else "untargeted_success"
        if tile["kind"] == "clean":
            rate = "accuracy"
        rows.append({
            "tile": tile["tile_id"], "run": Path(tile["run"]).name, "kind": tile["kind"], "rate": rate,
            "attacked_model": tile["attacked_model"], "target_model": target,
            "found": by["target"]["found"], "frames": by["target"]["frames"],
            "on_source": by["source"][rate], "on_source_ci95": by["source"]["ci"].get(rate),
            "on_target": by["target"][rate], "on_target_ci95": by["target"]["ci"].get(rate),
        })
    return {"source": source, "target": target, "photos": photos, "seed": seed, "rows": rows}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default="signs-resnet", help="model the attacks are made on (ignored with --runs)")
    ap.add_argument("--target", default="signs", help="model that scores the printed sheet")
    ap.add_argument("--runs", nargs="*", type=Path, help="existing attack run directories instead of making new ones")
    ap.add_argument("--attacks", nargs="*", default=list(ATTACKS), choices=list(ATTACKS))
    ap.add_argument("--photos", type=int, default=40)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--eval-samples", type=int, default=1000)
    ap.add_argument("--momentum", type=float, default=0.0)
    ap.add_argument("--ti-sigma", dest="ti_sigma", type=float, default=0.0)
    ap.add_argument("--di", dest="di_prob", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="keep the runs, sheet, photos and captures here")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        runs = args.runs or make_runs(args.source, root / "runs", args)
        result = measure(runs, None if args.runs else args.source, args.target, args.photos, args.seed, root, args.quiet)
    result["seconds"] = round(time.time() - t0, 1)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{'tile':<5}{'run':<14}{'kind':<12}{'rate':<20}{'on source':>12}{'on target':>12}  found")
    for r in result["rows"]:
        fmt = lambda v: "—" if v is None else f"{v:.1%}"
        print(f"{r['tile']:<5}{r['run']:<14}{r['kind']:<12}{r['rate']:<20}{fmt(r['on_source']):>12}{fmt(r['on_target']):>12}"
              f"  {r['found']}/{r['frames']}")


if __name__ == "__main__":
    main()
