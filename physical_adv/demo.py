"""``physical-adv demo``: the whole product on the embedded default, in a few minutes on a CPU.

Renders a stop sign, runs two EOT attacks on ``signs`` — a sticker (a square covering 20 %
of the tile) toward ``speed limit 80`` and an untargeted L∞ perturbation at ε = 16/255 —
puts both on one sheet with their clean controls, simulates 50 photos of the printed
sheet, captures them and writes the report.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from physical_adv.attack.runner import AttackConfig, run_attack
from physical_adv.capture import CaptureConfig, run_capture
from physical_adv.artifacts import atomic_write_json, software_versions, utc_now
from physical_adv.errors import UserError
from physical_adv.report import compute_report, pool, write_report_json
from physical_adv.report.html import write_html
from physical_adv.report.table import print_table
from physical_adv.sheet import SheetConfig, make_sheet
from physical_adv.simulate import SimulateConfig, simulate
from physical_adv.ui import console


@dataclass(frozen=True)
class DemoConfig:
    out: Path = Path("demo")
    seed: int = 0
    device: str = "auto"
    photos: int = 50
    steps: int = 300  # attack steps (tests use a few)
    baselines: bool = False  # also the same two attacks without EOT (plain PGD), on a second page


def run_demo(cfg: DemoConfig) -> dict:
    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()):
        if not (out / "demo.json").is_file():
            raise UserError(f"{out} already exists, is not empty and is not an earlier demo; choose another --out")
        shutil.rmtree(out)  # an earlier demo's output: make it anew
    out.mkdir(parents=True)
    t0 = time.time()
    attacks = {
        "sticker": dict(target="speed limit 80", patch="square", patch_area=0.2),
        "linf": dict(eps=16.0),
    }
    if cfg.baselines:
        attacks.update({f"{name}-no-eot": dict(extra, eot="none", eval_eot="print-camera") for name, extra in list(attacks.items())})
    runs = []
    for name, extra in attacks.items():
        console.rule(f"attack: {name}")
        cfg_a = AttackConfig(source="sign:stop", out=out / "runs" / name, seed=cfg.seed, device=cfg.device, steps=cfg.steps, **extra)
        result = run_attack(cfg_a)
        m = result.record["metrics"]
        console.print(f"{name}: EOT success {m['eot_success']:.1%} on {m['eot_samples']} held-out draws")
        runs.append(str(result.out))
    console.rule("sheet")
    sheet = make_sheet(SheetConfig(runs=tuple(runs), out=out / "sheet.pdf"))
    console.rule(f"simulate {cfg.photos} photos of the printed sheet")
    simulate(SimulateConfig(pdf=sheet.pdf, out=out / "photos", n=cfg.photos, seed=cfg.seed))
    console.rule("capture")
    capture = run_capture(CaptureConfig(sheet=sheet.manifest_path, images=out / "photos", out=out / "capture",
                                        window=False, device=cfg.device, tags=(("source", "simulated"),)))
    console.rule("report")
    obs = pool([capture.out])
    report = compute_report(obs)
    write_report_json(report, [capture.out])
    html_path = capture.out / "report.html"
    write_html(html_path, report, obs)
    print_table(report)
    tiles = {t["tile_id"]: t for t in report["tiles"]}
    sticker = next(t for t in tiles.values() if t["kind"] == "adversarial" and t["target_class"])
    linf = next(t for t in tiles.values() if t["kind"] == "adversarial" and not t["target_class"])
    for t in tiles.values():
        if t["kind"] == "adversarial" and t["run"].endswith("-no-eot"):
            rate = t["targeted_success"] if t["target_class"] else t["untargeted_success"]
            console.print(f"baseline without EOT, {Path(t['run']).name}: {'targeted' if t['target_class'] else 'untargeted'} success {rate:.1%}")
    clean = report["summary"]["clean"]["accuracy"]
    atomic_write_json(out / "demo.json", {
        "schema": 1, "created": utc_now(), "config": {"seed": cfg.seed, "photos": cfg.photos, "steps": cfg.steps,
                                                     "baselines": cfg.baselines, "device": cfg.device},
        "sheet": str(sheet.pdf), "report": str(html_path),
        "headline": {"sticker_targeted_success": sticker["targeted_success"], "linf_untargeted_success": linf["untargeted_success"],
                     "clean_accuracy": clean["rate"]},
        "seconds": round(time.time() - t0, 1), "versions": software_versions()})
    console.print(f"\nsheet to print: {sheet.pdf} (preview {sheet.previews[0]})\nreport: {html_path}")
    console.print(f"sticker → speed limit 80: targeted success {sticker['targeted_success']:.1%}; "
                  f"L∞ 16/255: untargeted success {linf['untargeted_success']:.1%}; "
                  f"clean controls: accuracy {clean['rate']:.1%}  ({time.time() - t0:.0f} s)")
    return report
