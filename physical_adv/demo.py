"""``physical-adv demo``: the whole product on the embedded default, in a few minutes on a CPU.

Renders a stop sign and runs three attacks on ``signs``: a sticker (a square covering 20 % of
the tile) toward ``speed limit 80``, an untargeted L∞ perturbation at ε = 32/255 made with EOT,
and its twin made without EOT (plain PGD, ``--eot none``) and checked on the same print-camera
draws. It puts all three on one sheet (two pages) with their clean controls, simulates 50
photos of the printed sheet, captures them and writes the report. The twin is the point: with
seed 0 the EOT perturbation fools the model in 93.8 % of 1000 held-out print-camera draws and
in all 25 simulated photos of its page, the plain one in 2.3 % of the draws and 32 % of the
photos. ``--baselines`` adds the sticker's twin too; it is left out by default because a
sticker survives print even without EOT (94.8 % of the draws), which says nothing of EOT.

The demo is built in a hidden sibling folder and swapped in at the end, so a failed or
interrupted run leaves an earlier demo exactly as it was; only a folder that an earlier demo
wrote (and nothing else in it) is ever replaced.
"""

from __future__ import annotations

import html
import json
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from physical_adv.artifacts import atomic_write_bytes, atomic_write_json, replace_folder, software_versions, utc_now
from physical_adv.attack.runner import AttackConfig, run_attack
from physical_adv.capture import CaptureConfig, run_capture
from physical_adv.errors import UserError
from physical_adv.report import ReportConfig, run_report
from physical_adv.report.table import print_table
from physical_adv.sheet import SheetConfig, is_preview, make_sheet, preview_path
from physical_adv.simulate import SimulateConfig, simulate
from physical_adv.ui import console

SCHEMA = 2  # 2: "kind" and the L∞ twin's rate in the headline
SOURCE = "sign:stop"
ATTACKS = {  # run name → AttackConfig options
    "sticker": dict(target="speed limit 80", patch="square", patch_area=0.2),
    "linf": dict(eps=32.0),
}
NO_EOT = dict(eot="none", eval_eot="print-camera")  # a twin: the same attack, optimised without EOT
TWINS_BY_DEFAULT = ("linf",)
# what a demo folder holds; anything else in it is the user's, and the demo will not delete it
SHEET = "sheet.pdf"  # its manifest sheet.json and previews sheet-pageN.png beside it
OUTPUTS = ("demo.json", "runs", SHEET, "sheet.json", "photos", "capture")


@dataclass(frozen=True)
class DemoConfig:
    """What ``physical-adv demo`` runs.

    Args:
        out: the demo's folder; an earlier demo there is replaced once the new one is complete.
        seed: seeds the attacks, the simulated print and every photo.
        device: where the attacks and the classifier run.
        photos: simulated photos of the printed sheet.
        steps: attack steps (tests use a few).
        eval_samples: held-out transformations scoring each attack (tests use a few).
        baselines: also the sticker's no-EOT twin (the L∞ twin is always there).
    """

    out: Path = Path("demo")
    seed: int = 0
    device: str = "auto"
    photos: int = 50
    steps: int = 300
    eval_samples: int = 1000
    baselines: bool = False

    def __post_init__(self) -> None:
        if self.photos < 1:
            raise ValueError(f"photos must be ≥ 1, got {self.photos}")
        if self.steps < 1:
            raise ValueError(f"steps must be ≥ 1, got {self.steps}")
        if self.eval_samples < 1:
            raise ValueError(f"eval samples must be ≥ 1, got {self.eval_samples}")


def demo_attacks(baselines: bool) -> dict[str, dict]:
    """The demo's runs in sheet order, each twin (``NAME-no-eot``) beside its EOT attack.

    Returns:
        Run name → :class:`AttackConfig` options.
    """
    twins = TWINS_BY_DEFAULT + (tuple(n for n in ATTACKS if n not in TWINS_BY_DEFAULT) if baselines else ())
    attacks = {}
    for name, options in ATTACKS.items():
        attacks[name] = options
        if name in twins:
            attacks[f"{name}-no-eot"] = {**options, **NO_EOT}
    return attacks


def run_demo(cfg: DemoConfig) -> dict:
    """Attack, print (simulated), photograph (simulated), capture and report, into ``cfg.out``.

    Returns:
        The report (as in ``capture/report.json``).
    """
    out = Path(cfg.out)
    check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    build = out.parent / f".physical-adv-demo.{secrets.token_hex(6)}"  # a random name: see _relocate
    build.mkdir()
    try:
        report = _run_pipeline(cfg, build)
        record = _record(cfg, report, out, time.time() - t0)
        atomic_write_json(build / "demo.json", record)
        _relocate(build, out)
        replace_folder(build, out)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    report = json.loads((out / "capture" / "report.json").read_text(encoding="utf-8"))
    print_table(report)
    print_summary(record)
    return report


def check_replaceable(out: Path) -> None:
    """Refuse ``out`` unless it is absent, empty, or an earlier demo's folder holding only what a demo writes.

    Raises:
        UserError: naming what makes the folder someone else's.
    """
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"{out} is a file, not a folder; choose another --out")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    record = out / "demo.json"
    if not record.is_file():
        raise UserError(f"{out} already exists, is not empty and is not an earlier demo; choose another --out")
    if not _is_demo_record(record):
        raise UserError(f"{record} was not written by physical-adv demo, so {out} is not an earlier demo; "
                        "choose another --out")
    foreign = [name for name in entries if name not in OUTPUTS and not is_preview(out / SHEET, out / name)]
    if foreign:
        raise UserError(f"{out} is an earlier demo but also holds {', '.join(foreign[:3])}"
                        f"{' …' if len(foreign) > 3 else ''}, which the demo did not make; move it or choose another --out")


def _is_demo_record(path: Path) -> bool:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    if not isinstance(record, dict):
        return False
    if record.get("kind") == "demo" and record.get("schema") in (1, SCHEMA):
        return True
    # schema 1 had no "kind"; recognise it by its exact set of keys
    return record.get("schema") == 1 and set(record) == {"schema", "created", "config", "sheet", "report", "headline",
                                                          "seconds", "versions"}


def _run_pipeline(cfg: DemoConfig, folder: Path) -> dict:
    """Every stage of the product, writing into ``folder``; returns the report."""
    runs = []
    for name, options in demo_attacks(cfg.baselines).items():
        console.rule(f"attack: {name}")
        attack = AttackConfig(source=SOURCE, out=folder / "runs" / name, seed=cfg.seed, device=cfg.device,
                              steps=cfg.steps, eval_samples=cfg.eval_samples, **options)
        result = run_attack(attack)
        m = result.record["metrics"]
        console.print(f"{name}: success {m['eot_success']:.1%} on {m['eot_samples']} held-out "
                      f"{attack.eval_eot or attack.eot} draws")
        runs.append(str(result.out))
    console.rule("sheet")
    sheet = make_sheet(SheetConfig(runs=tuple(runs), out=folder / SHEET))
    console.rule(f"simulate {cfg.photos} photos of the printed sheet")
    simulate(SimulateConfig(pdf=sheet.pdf, out=folder / "photos", n=cfg.photos, seed=cfg.seed))
    console.rule("capture")
    capture = run_capture(CaptureConfig(sheet=sheet.manifest_path, images=folder / "photos", out=folder / "capture",
                                        window=False, device=cfg.device, tags=(("source", "simulated"),)))
    console.rule("report")
    report, *_ = run_report(ReportConfig(captures=(capture.out,)))
    return report


def _tile_rate(report: dict, run: str, rate: str) -> float | None:
    """``rate`` of the adversarial tile of the run named ``run`` (None: undefined, e.g. never found)."""
    tile = next(t for t in report["tiles"] if t["kind"] == "adversarial" and Path(t["run"]).name == run)
    return tile[rate]


def _record(cfg: DemoConfig, report: dict, out: Path, seconds: float) -> dict:
    """``demo.json``: the configuration, where things are, and the headline rates (None: undefined)."""
    headline = {"sticker_targeted_success": _tile_rate(report, "sticker", "targeted_success"),
                "linf_untargeted_success": _tile_rate(report, "linf", "untargeted_success"),
                "linf_no_eot_untargeted_success": _tile_rate(report, "linf-no-eot", "untargeted_success"),
                "clean_accuracy": report["summary"]["clean"]["accuracy"]["rate"]}
    if cfg.baselines:
        headline["sticker_no_eot_targeted_success"] = _tile_rate(report, "sticker-no-eot", "targeted_success")
    return {"schema": SCHEMA, "kind": "demo", "created": utc_now(),
            "config": {"seed": cfg.seed, "photos": cfg.photos, "steps": cfg.steps, "eval_samples": cfg.eval_samples,
                       "baselines": cfg.baselines, "device": cfg.device, "linf_eps_255": ATTACKS["linf"]["eps"]},
            "sheet": str(out / SHEET), "preview": str(preview_path(out / SHEET, 1)),
            "report": str(out / "capture" / "report.html"), "headline": headline,
            "seconds": round(seconds, 1), "versions": software_versions()}


def _relocate(build: Path, out: Path) -> None:
    """Make the paths the stages recorded inside ``build`` (runs in the manifest, the sheet in the
    capture session, …) name ``out``, the folder ``build`` is about to become."""
    escapes = {".json": lambda s: json.dumps(s)[1:-1], ".jsonl": lambda s: json.dumps(s)[1:-1], ".html": html.escape}
    for path in build.rglob("*"):
        escape = escapes.get(path.suffix)
        if escape is None or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        if build.name in text:  # a random name, found nowhere else
            atomic_write_bytes(path, text.replace(build.name, escape(out.name)).encode("utf-8"))


def _percent(rate: float | None) -> str:
    return "undefined" if rate is None else f"{rate:.1%}"


def print_summary(record: dict) -> None:
    """Print (on stdout, after the report's table) where the sheet and report are and the headline
    rates of ``demo.json``; an undefined rate (a tile never found) prints as such."""
    h = record["headline"]
    sticker = f"sticker → speed limit 80: targeted success {_percent(h['sticker_targeted_success'])}"
    if "sticker_no_eot_targeted_success" in h:
        sticker += f" (without EOT: {_percent(h['sticker_no_eot_targeted_success'])})"
    out = Console(highlight=False)
    out.print(f"\nsheet to print: {record['sheet']} (preview {record['preview']})\nreport: {record['report']}",
              markup=False)
    out.print(sticker, markup=False)
    out.print(f"L∞ {record['config']['linf_eps_255']:g}/255: untargeted success {_percent(h['linf_untargeted_success'])} "
              f"with EOT, {_percent(h['linf_no_eot_untargeted_success'])} without (plain PGD)", markup=False)
    out.print(f"clean controls: accuracy {_percent(h['clean_accuracy'])}  ({record['seconds']:.0f} s)", markup=False)
