"""The ``physical-adv`` command line: thin typer commands that build one config each and
call one library function. Errors follow one convention (see :func:`main`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

try:  # typer ≥ 0.22 vendors click
    from typer._click.exceptions import ClickException
except ImportError:  # older typer on top of click
    from click import ClickException

from physical_adv import __version__
from physical_adv.errors import UserError, os_error_message
from physical_adv.memory import keep_freed_memory

app = typer.Typer(
    name="physical-adv",
    help="Physical-world adversarial examples: EOT attacks, printable sheets, webcam capture, survival reports.\n\n"
         "Pipeline: attack → sheet (PDF) → print at 100 % → capture (webcam, video or photos) → report; "
         "simulate stands in for the printer and camera. New here? Run `physical-adv demo` (a few minutes on a CPU), "
         "then `physical-adv COMMAND --help`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

DeviceOpt = typer.Option("auto", "--device", help="auto (CUDA, then MPS, then CPU), cpu, cuda or mps.")
ModelOpt = typer.Option("signs", "--model", "-m", help="Model spec: signs, torchvision:NAME, a TorchScript file or module:factory.")
ClassesOpt = typer.Option(None, "--classes", help="Class-name file (one per line) for a TorchScript or module:factory model.")


def build(cls, **kwargs):
    """Construct a config dataclass, turning its validation error into a user error."""
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _version(value: bool) -> None:
    if value:
        typer.echo(f"physical-adv {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    verbose: bool = typer.Option(False, "--verbose", help="Show full tracebacks (for bug reports); accepted anywhere."),
) -> None:
    """Physical-world adversarial examples for image classifiers.

    Pipeline: attack → sheet (PDF) → print → capture (webcam) → report.
    """


@app.command("models")
def models_cmd(
    all_: bool = typer.Option(False, "--all", help="Also list torchvision models whose weights are not cached."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List the models you can use and where their weights come from."""
    from rich.table import Table

    from physical_adv.models import list_models
    from physical_adv.ui import console

    entries = list_models()
    shown = [e for e in entries if all_ or e.available or not e.spec.startswith("torchvision:")]
    if as_json:
        typer.echo(json.dumps([e.__dict__ for e in shown], indent=2))
        return
    table = Table(title="models")
    for col in ("spec", "description", "weights", "ready"):
        table.add_column(col)
    for e in shown:
        table.add_row(e.spec, e.description, e.weights, "yes" if e.available else "not cached")
    from rich.console import Console

    Console().print(table)
    hidden = len(entries) - len(shown)
    if hidden:
        console.print(
            f"{hidden} more torchvision:NAME models can be used once their ImageNet weights are in the torch cache "
            "(downloaded on first use when online); `physical-adv models --all` lists them."
        )


@app.command("classify")
def classify_cmd(
    images: List[str] = typer.Argument(..., help="Image files, or sign:NAME for a rendered sign."),
    model: str = ModelOpt,
    top_k: int = typer.Option(5, "--top-k", "-k", help="How many labels to show per image."),
    as_json: bool = typer.Option(False, "--json", help='Print [{"path", "top": [{"class", "prob"}]}] as JSON.'),
    classes: Optional[str] = ClassesOpt,
    device: str = DeviceOpt,
) -> None:
    """Print the top-k labels and probabilities for each image."""
    from physical_adv.classify import ClassifyConfig, classify_images

    cfg = build(ClassifyConfig, images=tuple(images), model=model, top_k=top_k, device=device, classes=classes)
    results = classify_images(cfg)
    if as_json:
        typer.echo(json.dumps(results, indent=2))
        return
    for r in results:
        typer.echo(r["path"])
        for rank, t in enumerate(r["top"], 1):
            typer.echo(f"  {rank}. {t['class']:<24} {t['prob']:.4f}")


@app.command("attack")
def attack_cmd(
    source: str = typer.Option(..., "--source", "-s", help="Image file, or sign:NAME for a built-in sign rendering."),
    target: Optional[str] = typer.Option(None, "--target", "-t", help="Target class name (untargeted when omitted)."),
    true_class: Optional[str] = typer.Option(None, "--true-class", help="The source's true class (default: the sign's class for sign:NAME, else the model's prediction on the clean image)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model spec: signs, torchvision:NAME, a TorchScript file or module:factory (default signs; with --oracle SPEC, the oracle's spec: the local model of the held-out check)."),
    classes: Optional[str] = ClassesOpt,
    eps: Optional[float] = typer.Option(None, "--eps", help="Budget: /255 units for linf (default 16); L2 norm at the model's input size for l2 (default 2.0)."),
    norm: str = typer.Option("linf", "--norm", help="linf or l2 (ignored in patch mode)."),
    mask: Optional[str] = typer.Option(None, "--mask", help="Patch mode: a square PNG, white = perturbable (resized to the texture)."),
    patch: Optional[str] = typer.Option(None, "--patch", help="Patch mode with a built-in sticker: square, circle or band."),
    patch_area: float = typer.Option(0.2, "--patch-area", help="Sticker area as a fraction of the tile."),
    patch_pos: str = typer.Option("0.5,0.5", "--patch-pos", help="Sticker centre as X,Y fractions of the tile."),
    eot_name: str = typer.Option("print-camera", "--eot", help="Transformation distribution: none, digital, print-camera, print-camera-hard, or a .toml file; append your own stages as +module:factory, each factory returning a batch to batch callable (e.g. a kornia AugmentationSequential) applied to every EOT sample and to the held-out check."),
    eval_eot: Optional[str] = typer.Option(None, "--eval-eot", help="Distribution of the held-out check (default: the same as --eot; print-camera when --eot is deterministic, like none)."),
    samples: int = typer.Option(32, "--samples", help="Transformations drawn per step (the EOT batch)."),
    steps: int = typer.Option(300, "--steps", help="Optimisation steps (stops early once the goal is held with margin; with --oracle the budget sets them)."),
    seed: int = typer.Option(0, "--seed", help="Seeds every random draw; held-out checks use a seed derived from it."),
    loss: str = typer.Option("ce", "--loss", help="ce (cross-entropy) or margin (C&W-style)."),
    tv: float = typer.Option(0.0, "--tv", help="Weight of the total-variation (smoothness) term."),
    nps: float = typer.Option(0.0, "--nps", help="Weight of the non-printability score (Sharif et al. 2016)."),
    palette: Optional[str] = typer.Option(None, "--palette", help="The printer's measured colours for the "
                                          "non-printability score: a calibration written by physical-adv calibrate "
                                          "(default: 27 synthetic colours)."),
    texture_size: int = typer.Option(512, "--texture-size", help="Side of the texture at print resolution, pixels."),
    eval_samples: int = typer.Option(1000, "--eval-samples", help="Held-out transformations for the final success rate."),
    no_early_stop: bool = typer.Option(False, "--no-early-stop", help="Always run every step."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default runs/<source>-<goal>-<time>)."),
    device: str = DeviceOpt,
    oracle: Optional[str] = typer.Option(None, "--oracle", help="Black-box: attack this model spec or label-detection URL by queries only."),
    method: str = typer.Option("nes", "--method", help="Black-box method: nes (NES gradient estimate under EOT), square (Square attack, L∞ or L2 by --norm), partial (targeted partial information: start from an image of the target, shrink ε; Ilyas et al. 2018) or label-only (partial information on a rank proxy; --mode labels or label)."),
    budget: Optional[int] = typer.Option(None, "--budget", help="Black-box: the most images sent to the oracle (required with --oracle)."),
    top_k: int = typer.Option(5, "--top-k", help="Black-box: labels the oracle answers per image."),
    mode: Optional[str] = typer.Option(None, "--mode", help="Black-box: what the oracle answers: scores (nes, square, partial; the default) or labels / label (label-only; default label)."),
    start: Optional[str] = typer.Option(None, "--start", help="Black-box partial / label-only: an image of the target class to start from (default sign:TARGET for a sign class)."),
    nes_schedule: str = typer.Option("cosine", "--nes-schedule", help="Black-box NES step sizes: cosine (decay over the budget) or plateau (halve after a plateau; Ilyas et al. 2018)."),
    transfer_to: List[str] = typer.Option([], "--transfer-to", help="After the held-out check, classify the same held-out draws with this model spec (a,b = an ensemble; TorchScript class names from --classes) or label-detection URL (top-1 labels, every image counted) and record transfer success; repeatable."),
    momentum: float = typer.Option(0.0, "--momentum", help="Transfer: MI-FGSM momentum decay μ (Dong et al. 2018; 1.0 in the paper; 0 = off)."),
    ti_sigma: float = typer.Option(0.0, "--ti-sigma", help="Transfer: translation invariance, the gradient smoothed by a Gaussian of this sigma in model-input pixels (Dong et al. 2019; 0 = off)."),
    di: float = typer.Option(0.0, "--di", help="Transfer: input diversity, the probability that a view is shrunk to 90–100 % at a random place (Xie et al. 2019; 0 = off)."),
) -> None:
    """Make a perturbation or sticker that survives printing and photographing (EOT)."""
    import time as _time

    from physical_adv.attack.preview import success_text
    from physical_adv.attack.runner import AttackConfig, run_attack
    from physical_adv.blackbox.target import is_url

    try:
        pos = tuple(float(v) for v in patch_pos.split(","))
        if len(pos) != 2:
            raise ValueError
    except ValueError:
        raise UserError(f"--patch-pos must be X,Y fractions like 0.5,0.7, got {patch_pos!r}") from None
    if out is None:
        slug = "".join(c if c.isalnum() else "-" for c in Path(source.replace("sign:", "")).stem.lower()).strip("-")
        goal = "".join(c if c.isalnum() else "-" for c in (target or "untargeted").lower())
        out = Path("runs") / f"{slug}-{goal}-{_time.strftime('%Y%m%d-%H%M%S')}"
    if model is None:
        if oracle is not None and is_url(oracle):
            raise UserError("a URL oracle needs --model SPEC for the held-out check (checking without a local model is not built yet)")
        model = oracle if oracle is not None else "signs"
    cfg = build(AttackConfig, source=source, out=out, target=target, true_class=true_class, model=model, classes=classes, eps=eps, norm=norm, mask=mask, patch=patch,
                patch_area=patch_area, patch_position=pos, eot=eot_name, eval_eot=eval_eot, samples=samples, steps=steps, seed=seed, loss=loss,
                tv_weight=tv, nps_weight=nps, palette=palette, texture_size=texture_size, eval_samples=eval_samples, device=device,
                early_stop=not no_early_stop, oracle=oracle, method=method, budget=budget, top_k=top_k,
                mode=mode if mode is not None else ("label" if method == "label-only" else "scores"), start=start,
                nes_schedule=nes_schedule, transfer_to=tuple(transfer_to), momentum=momentum, ti_sigma=ti_sigma,
                di_prob=di)
    result = run_attack(cfg)
    r, m = result.record, result.record["metrics"]
    goal = f"classified as {r['target_class']}" if r["targeted"] else f"not classified as {r['true_class']}"
    typer.echo(f"{result.out}: {goal} in {success_text(m, r['eval_distribution']['name'])} "
               f"(clean image: {m['clean_eot_success']:.1%}); {m['wall_seconds']:.0f} s")
    if "blackbox" in r:
        bb = r["blackbox"]
        spent = " (budget spent)" if bb["budget_exhausted"] else ""
        typer.echo(f"black-box {bb['method']}: {bb['queries']} of {cfg.budget} queries{spent}")
    for t in r.get("transfer", {}).get("models", []):
        cost = f"; {t['queries'] + t['probe_queries']} queries" if "queries" in t else ""
        typer.echo(f"transfer to {t['spec']}: {t['success']:.1%} of the same {t['n']} held-out draws "
                   f"(95% CI {t['success_ci95'][0]:.1%}–{t['success_ci95'][1]:.1%}; {r['transfer']['goal']}{cost})")
    if cfg.eval_eot is None and r["eval_distribution"]["name"] != r["eot_distribution"]["name"]:
        typer.echo(f"note: {r['eval_distribution_reason']}")


@app.command("sweep")
def sweep_cmd(
    plan: Optional[Path] = typer.Argument(None, help="The study plan (plan.toml): attack option names as keys; in a grid table a list is an axis; job tables add single jobs."),
    out: Path = typer.Option(..., "--out", "-o", help="The study folder (study.json, study.csv, runs/); an existing one is resumed."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Local worker processes (default: one per CUDA device, else one)."),
    batch: int = typer.Option(32, "--batch", help="Most attacks optimised together in one model pass per step (jobs sharing a model and distributions)."),
    ray: Optional[str] = typer.Option(None, "--ray", help="Run on Ray: auto (join a running cluster or start one here) or a cluster address; needs the ray extra."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Torch threads per worker (default: the cores shared among the workers)."),
    status: bool = typer.Option(False, "--status", help="Only say how far the study in --out is (no plan needed)."),
) -> None:
    """Run a study: many attacks from one plan, batched on a device, across processes or a Ray cluster; resumable."""
    from physical_adv.sweep.study import SweepConfig, run_sweep, study_status

    if status:
        rec = study_status(out)
        _print_study(rec, out)
        return
    if plan is None:
        raise UserError("give the plan file (sweep PLAN --out DIR), or --status with --out DIR")
    cfg = build(SweepConfig, plan=plan, out=out, workers=workers, batch=batch, ray=ray, threads=threads)
    rec = run_sweep(cfg)
    _print_study(rec, out)


def _print_study(rec: dict, out: Path) -> None:
    """The study's summary table and counts."""
    from rich.table import Table

    from physical_adv.ui import console

    table = Table(title=f"study {out}", show_lines=False)
    table.add_column("job", overflow="fold", min_width=20)
    for name in ("status", "held-out success (95% CI)", "steps", "queries", "seconds"):
        table.add_column(name)
    for r in rec["rows"][:200]:
        if r["status"] == "done":
            ci = f" ({r['ci_low']:.0%}-{r['ci_high']:.0%})" if r.get("ci_low") is not None else ""
            rate = f"{r['eot_success']:.1%}{ci}"
        else:
            rate = (r.get("error") or "")[:60]
        table.add_row(r["job"], r["status"], rate, str(r.get("steps_run") or ""), str(r.get("queries") or ""),
                      f"{r['wall_seconds']:.0f}" if r.get("wall_seconds") is not None else "")
    console.print(table)
    c = rec["counts"]
    more = f" (first 200 of {c['jobs']} shown; all in study.csv)" if c["jobs"] > 200 else ""
    typer.echo(f"{out}: {c['done']} of {c['jobs']} jobs done, {c['failed']} failed, {c['pending']} pending{more}; "
               f"study.json and study.csv in {out}")


@app.command("sheet")
def sheet_cmd(
    runs: Optional[List[str]] = typer.Argument(None, help="Attack run directories (each gives a tile, plus its clean control), or study folders of sweep (their finished runs)."),
    template: str = typer.Option("a4", "--template", help="a4, letter, or a template .toml file."),
    tile_mm: Optional[float] = typer.Option(None, "--tile-mm", help="Tile side in millimetres (default: the template's)."),
    no_controls: bool = typer.Option(False, "--no-controls", help="Leave out the clean control tiles."),
    no_calibration: bool = typer.Option(False, "--no-calibration", help="Leave out the colour calibration chart "
                                        "(printed below the tiles of the first page with room for it)."),
    calibration_only: bool = typer.Option(False, "--calibration-only", help="A sheet of only a page-sized colour "
                                          "calibration chart framed by markers (no run directories)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Score every tile with this model instead of the one its run attacked (a transfer sheet: e.g. runs made on a substitute, scored against signs); capture then classifies with it."),
    out: Path = typer.Option(Path("sheet.pdf"), "--out", "-o", help="The PDF to write; the manifest NAME.json and previews NAME-pageN.png go beside it."),
) -> None:
    """Lay attack runs out on a printable PDF with ArUco markers, at exact physical size."""
    from physical_adv.sheet import SheetConfig, make_sheet

    cfg = build(SheetConfig, runs=tuple(runs or ()), out=out, template=template, tile_mm=tile_mm, controls=not no_controls,
                calibration=not no_calibration, calibration_only=calibration_only,
                model=model)
    sheet = make_sheet(cfg)
    m = sheet.manifest
    typer.echo(f"{sheet.pdf}: sheet {m['sheet_id']}, {len(m['tiles'])} tiles on {m['pages']} page(s); "
               f"manifest {sheet.manifest_path}; preview {', '.join(str(p) for p in sheet.previews)}")
    typer.echo("Print at 100 % (actual size) and check the 100 mm scale bar with a ruler.")


@app.command("simulate")
def simulate_cmd(
    pdf: Path = typer.Argument(..., help="The sheet PDF."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the photos and ground_truth.json."),
    manifest: Optional[Path] = typer.Option(None, "--manifest", help="The sheet manifest (default: the PDF's NAME.json)."),
    n: int = typer.Option(50, "--n", help="Number of photos."),
    seed: int = typer.Option(0, "--seed", help="Seeds the print and every photo."),
    video: Optional[Path] = typer.Option(None, "--video", help="Also write the photos as a 30 fps MP4 video."),
    max_tilt: float = typer.Option(45.0, "--max-tilt", help="Largest tilt of the sheet, degrees."),
    allow_partial: bool = typer.Option(False, "--allow-partial", help="Allow poses that cut tiles by the frame's edges "
                                       "(ground_truth.json lists the tiles wholly in frame)."),
    occluders: int = typer.Option(0, "--occluders", help="Draw this many opaque hand-like blobs over the sheet in every "
                                  "photo, 0-10 (ground_truth.json lists the markers they cover)."),
    conditions: str = typer.Option("default", "--conditions", help="default: the sheet a third to all of the frame; "
                                   "far: a webcam at arm's length or farther (the sheet a tenth to under half of "
                                   "the frame, stronger blur, a hand at the edge, glare, lens distortion)."),
    min_fill: Optional[float] = typer.Option(None, "--min-fill", help="Smallest share of the frame's area the sheet "
                                             "covers face-on, 0.05-1 (default: the conditions' own)."),
    printer: Optional[Path] = typer.Option(None, "--printer", help="A TOML file holding printer and camera colour "
                                           "values fixed: a printer table (saturation, black, white, tone, tint) and "
                                           "a camera table (exposure, white_balance, gamma, lighting); the rest are "
                                           "drawn."),
) -> None:
    """Make realistic 1280x720 photos of a printed sheet (printer + camera model), with ground truth.

    OUT is replaced as a whole (a previous simulate output only; any other non-empty folder is refused).
    """
    from physical_adv.simulate import Channel, SimulateConfig, load_channel, simulate

    cfg = build(SimulateConfig, pdf=pdf, out=out, manifest=manifest, n=n, seed=seed, video=video, max_tilt=max_tilt,
                allow_partial=allow_partial, occluders=occluders, conditions=conditions, min_fill=min_fill,
                channel=load_channel(printer) if printer else Channel())
    simulate(cfg)
    typer.echo(f"{out}: {n} photos + ground_truth.json" + (f"; video {video}" if video else ""))


@app.command("capture")
def capture_cmd(
    sheet: Path = typer.Option(..., "--sheet", help="The sheet manifest (NAME.json written by `sheet`)."),
    camera: Optional[int] = typer.Option(None, "--camera", help="Webcam index (0 is usually the built-in one)."),
    video: Optional[Path] = typer.Option(None, "--video", help="A video file."),
    images: Optional[Path] = typer.Option(None, "--images", help="A folder of photos (sorted by name)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Classify every tile with this model spec "
                                        "(default: each tile with the model its manifest entry names)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Session folder (default captures/<timestamp>)."),
    no_window: bool = typer.Option(False, "--no-window", help="No live window (also automatic without a display)."),
    every: int = typer.Option(30, "--every", help="From a live camera, save every N-th frame as JPEG."),
    tag: List[str] = typer.Option([], "--tag", help="KEY=VALUE recorded with the session (e.g. angle=30, light=dim); repeatable."),
    crop: str = typer.Option("rectified", "--crop", help="rectified (un-warp each tile by its markers) or box (raw bounding box)."),
    save_frames: bool = typer.Option(False, "--save-frames", help="Also copy frames from a video or photo folder."),
    max_frames: Optional[int] = typer.Option(None, "--max-frames", help="Stop after this many frames."),
    focal_px: Optional[float] = typer.Option(None, "--focal-px", help="The camera's focal length in pixels, if "
                                             "calibrated (default: assumed 1.1 frame widths); only the logged "
                                             "viewing angle and distance use it."),
    device: str = DeviceOpt,
) -> None:
    """Read photos of a printed sheet, find and rectify each tile, classify it and log the result."""
    from physical_adv.capture import CaptureConfig, run_capture

    tags = []
    for t in tag:
        key, sep, value = t.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--tag must be KEY=VALUE, got {t!r}")
        tags.append((key.strip(), value.strip()))
    cfg = build(CaptureConfig, sheet=sheet, camera=camera, video=video, images=images, model=model, out=out,
                window=not no_window, every=every, tags=tuple(tags), crop=crop, save_frames=save_frames,
                device=device, max_frames=max_frames, focal_px=focal_px)
    result = run_capture(cfg)
    typer.echo(f"{result.out}: {result.frames} frames at {result.fps:.1f} fps")
    for tid, c in result.counts.items():
        rate = f"{c['fooled'] / c['found']:.0%}" if c["found"] else "-"
        typer.echo(f"  tile {tid}: found in {c['found']}/{c['frames']} frames with its page in view, "
                   f"not its true class in {c['fooled']} ({rate})")


@app.command("calibrate")
def calibrate_cmd(
    captures: List[Path] = typer.Argument(..., help="Capture folders of one sheet in which its colour chart was in view."),
    out: Path = typer.Option(..., "--out", "-o", help="The calibration to write (TOML); a PNG of the chart as "
                             "photographed above the chart as predicted goes beside it."),
) -> None:
    """Fit your printer and camera's colour channel from the sheet's calibration chart; print its error per patch."""
    from physical_adv.calibrate import HOLD_OUT, run_calibrate

    cal = run_calibrate(captures, out)
    typer.echo(f"{out}: colour channel fitted on {int(cal.held_out.size - cal.held_out.sum())} patches from "
               f"{cal.frames} frame(s); error on the {int(cal.held_out.sum())} held-out patches (every {HOLD_OUT}th) "
               f"{cal.heldout_error:.2f}/255 (fitted ones {cal.train_error:.2f}); frame-to-frame spread "
               f"{', '.join(f'{v:.1f}' for v in cal.spread)}/255 (R, G, B); chart image {out.with_suffix('.png')}")
    worst = [i for i in sorted(range(len(cal.per_patch_error)), key=lambda i: -cal.per_patch_error[i])
             if cal.per_patch_error[i] == cal.per_patch_error[i]][:8]
    typer.echo("worst patches (printed RGB: error/255, held out *): " + "; ".join(
        f"{tuple(int(round(v * 255)) for v in cal.printed[i])}: {cal.per_patch_error[i]:.1f}{'*' if cal.held_out[i] else ''}"
        for i in worst))


@app.command("report")
def report_cmd(
    captures: List[Path] = typer.Argument(..., help="Capture session folders (several sessions of one sheet are pooled)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for report.json and report.html (default: the capture folder; required when pooling several, whose own folders are left as they are)."),
    as_json: bool = typer.Option(False, "--json", help="Also print report.json on stdout."),
    html_out: Optional[Path] = typer.Option(None, "--html", help="Where to write the HTML report (default: report.html beside report.json)."),
    by: Optional[str] = typer.Option(None, "--by", help="Break the rates down by this capture tag (e.g. angle, light)."),
) -> None:
    """Survival rates per tile and run, with 95 % intervals that respect clustered frames: terminal table, report.json, report.html."""
    from physical_adv.report import ReportConfig, run_report
    from physical_adv.report.table import print_table

    cfg = build(ReportConfig, captures=tuple(captures), out=out, html=html_out, by=by)
    report, _, json_path, html_path = run_report(cfg)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        print_table(report)
        typer.echo(f"wrote {json_path} and {html_path}")


@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(Path("demo"), "--out", "-o", help="Folder for everything the demo makes; an earlier demo there is replaced once the new one is complete."),
    seed: int = typer.Option(0, "--seed", help="Seeds the attacks, the simulated print and every photo."),
    baselines: bool = typer.Option(False, "--baselines", help="Also the sticker made without EOT (the L∞ attack's no-EOT twin is always on the sheet)."),
    photos: int = typer.Option(50, "--photos", help="Simulated photos of the sheet."),
    device: str = DeviceOpt,
) -> None:
    """The whole pipeline on the embedded model in a few minutes: attack a stop sign (a sticker, and an L∞ perturbation with and without EOT), print a sheet, photograph it (simulated), capture, report."""
    from physical_adv.demo import DemoConfig, run_demo

    run_demo(build(DemoConfig, out=out, seed=seed, device=device, baselines=baselines, photos=photos))


@app.command("train-signs")
def train_signs_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the model: FILE.safetensors (a .json record goes beside it) or a model directory (model.safetensors + model.json); either is a --model spec."),
    arch: str = typer.Option("signnet", "--arch", help="Architecture: signnet (the embedded signs CNN) or resnet (the residual net of signs-resnet)."),
    width: int = typer.Option(32, "--width", help="Channels of the first stage (signnet 32; signs-resnet was trained with 24)."),
    input_size: Optional[int] = typer.Option(None, "--input-size", help="The network's input side in pixels (default: signnet 64, resnet 48)."),
    seed: int = typer.Option(0, "--seed", help="Seeds every random draw of the training run."),
    samples: int = typer.Option(360_000, "--samples", help="Training scenes to draw (each is fresh)."),
    batch_size: int = typer.Option(128, "--batch-size", help="Scenes per optimisation step."),
    workers: int = typer.Option(1, "--workers", help="Processes rendering scenes while the main process trains."),
    eval_samples: int = typer.Option(2000, "--eval-samples", help="Held-out scenes for the final accuracy."),
) -> None:
    """Train a traffic-sign classifier from procedurally rendered scenes (CPU, ~20 min), as the embedded ones were."""
    from physical_adv.signs.train import TrainConfig, train_signs

    if out.suffix and out.suffix != ".safetensors":
        raise UserError(f"--out must be a .safetensors file or a directory, got {out}")
    if not out.suffix and out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    cfg = build(TrainConfig, out=out, seed=seed, samples=samples, batch_size=batch_size, workers=workers,
                eval_samples=eval_samples, arch=arch, width=width, input_size=input_size)
    record = train_signs(cfg)
    acc = record["metrics"].get("heldout", {}).get("accuracy")
    typer.echo(f"wrote {out} ({record['train_seconds']:.0f} s" + (f", held-out accuracy {acc:.4f})" if acc is not None else ")"))


@app.command("substitute")
def substitute_cmd(
    oracle: str = typer.Option(..., "--oracle", help="The label-only target: a model spec (signs, …) or the URL of a label-detection API (physical-adv serve)."),
    out: Path = typer.Option(..., "--out", "-o", help="Model directory to write (model.safetensors, model.json, substitute.json); use it as --model DIR in any command."),
    budget: int = typer.Option(6400, "--budget", help="Oracle labels for the training set at most (seed set included; the probe is counted apart)."),
    rounds: int = typer.Option(7, "--rounds", help="Substitute training rounds ρ (a Jacobian augmentation between two rounds)."),
    lam: float = typer.Option(0.1, "--lambda", help="Jacobian augmentation step λ on [0, 1] images."),
    tau: int = typer.Option(3, "--tau", help="The sign of λ flips every τ augmentations (Papernot's periodic step)."),
    kappa: Optional[int] = typer.Option(None, "--kappa", help="New points per augmentation at most (reservoir sampling; default: as many as the budget allows)."),
    seed_set: str = typer.Option("sign:*", "--seed-set", help="sign:* (rendered scenes, --per-class per class), scenes:N (N random scenes) or a folder of images; labels always come from the oracle."),
    per_class: int = typer.Option(10, "--per-class", help="Seed scenes per class for sign:*."),
    arch: str = typer.Option("signnet", "--arch", help="Substitute architecture: signnet or resnet."),
    width: int = typer.Option(16, "--width", help="Channels of the substitute's first stage."),
    input_size: Optional[int] = typer.Option(64, "--input-size", help="The substitute's input side in pixels (images are 64 px; a smaller side is resized inside the model)."),
    epochs: int = typer.Option(20, "--epochs", help="Passes over the labelled set per round."),
    warm_start: bool = typer.Option(True, "--warm-start/--from-scratch", help="Continue from the previous round's weights, or retrain from scratch each round (the paper)."),
    jitter: str = typer.Option("strong", "--jitter", help="Label-keeping random transforms of the training points: none, mild or strong."),
    query_jitter: str = typer.Option("none", "--query-jitter", help="Transforms of the points before their Jacobian step (none = the paper's x + λ·sign(∇)): none, mild or strong."),
    probe: int = typer.Option(500, "--probe", help="Oracle-labelled probe scenes for the per-round agreement (counted apart as probe_queries; 0 = none)."),
    classes: Optional[str] = typer.Option(None, "--classes", help="The oracle's class names, one per line (default: the signs classes)."),
    seed: int = typer.Option(0, "--seed", help="Seeds the seed set, the probe and the training."),
    device: str = DeviceOpt,
) -> None:
    """Train a substitute of a label-only model (Papernot et al. 2017: Jacobian-based dataset augmentation), every oracle query counted. Interrupted (Ctrl-C, crash)? Rerun the same command: it resumes from the last finished round without paying for a label twice."""
    from physical_adv.substitute import SubstituteConfig, train_substitute

    cfg = build(SubstituteConfig, oracle=oracle, out=out, budget=budget, rounds=rounds, lam=lam, tau=tau, kappa=kappa,
                seed_set=seed_set, per_class=per_class, arch=arch, width=width, input_size=input_size, epochs=epochs,
                warm_start=warm_start, jitter=jitter, query_jitter=query_jitter, probe=probe, classes=classes, seed=seed, device=device)
    record = train_substitute(cfg)
    last = record["rounds"][-1]
    agree = f", probe agreement {last['probe']['agreement']:.4f}" if "probe" in last else ""
    typer.echo(f"wrote {out} ({record['queries']} oracle labels + {record['probe_queries']} probe{agree})")


@app.command("evaluate")
def evaluate_cmd(
    model: List[str] = typer.Option(..., "--model", "-m", help="Model spec to evaluate; repeat --model for models side by side (a,b in one spec is an ensemble)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for evaluate.json and the attack run directories (runs/<model>/<item>-seed<k>); rerun the same command to resume."),
    attacks: str = typer.Option("default", "--attacks", help="The suite: default (clean accuracy on mixed scenes and print tiles, PGD-50 ×3 restarts at 8 and 16/255, EOT L∞ at 16 and 32/255, 10 % and 25 % square stickers stop → speed limit 80) or a suite .toml file of the same format (physical_adv/suites/default.toml)."),
    runs: List[str] = typer.Option([], "--runs", help="An attack run directory made against any model: its adversarial.png is scored on each --model over the run's own held-out draws (a transfer row); repeatable."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Optimisation seeds of every EOT item (one run each; the row gives mean and min–max over seeds)."),
    quick: bool = typer.Option(False, "--quick", help="Smoke run with tiny sizes: clean n ≤ 100; PGD n ≤ 16, ≤ 5 steps, ≤ 2 restarts; EOT ≤ 3 steps, ≤ 4 samples, ≤ 50 held-out draws, texture ≤ 128 px. Its figures mean nothing."),
    device: str = DeviceOpt,
) -> None:
    """Run one fixed suite of attacks on each model and print one table, a column per model: clean accuracy, digital PGD robust accuracy, and EOT attacks re-optimised against each model (held-out print-camera success over seeds). Writes OUT/evaluate.json after every item; interrupted? rerun the same command: finished attack runs are read, not recomputed."""
    from physical_adv.evaluate import EvaluateConfig, parse_seeds, print_table, run_evaluate

    cfg = build(EvaluateConfig, models=tuple(model), out=out, attacks=attacks, runs=tuple(runs), seeds=parse_seeds(seeds),
                quick=quick, device=device)
    record = run_evaluate(cfg)
    print_table(record)
    typer.echo(f"wrote {out / 'evaluate.json'} ({record['wall_seconds']:.0f} s)")


@app.command("harden")
def harden_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="Model directory to write (weights, model.json, harden.json); every command takes it as --model DIR."),
    model: str = typer.Option("signs", "--model", "-m", help="The stored model to fine-tune: signs, signs-resnet, or a model directory / .safetensors file (TorchScript is frozen and cannot be trained)."),
    method: List[str] = typer.Option(["pgd"], "--method", help="pgd (Madry et al. 2018), fast (FGSM + random start, Wong et al. 2020), eot (L∞ on the printed tile through print-and-camera draws) or occlusion (DOA rectangles, Wu et al. 2020); repeat or comma-join to mix them in every batch."),
    eps: float = typer.Option(8.0, "--eps", help="L∞ budget in /255 (pgd, fast, eot), in (0, 64]."),
    steps: int = typer.Option(5, "--steps", help="Inner attack steps (pgd, eot, occlusion; fast takes one)."),
    epochs: int = typer.Option(5, "--epochs", help="Epochs; a checkpoint is written after each."),
    samples: int = typer.Option(20_000, "--samples", help="Training examples per epoch (signs scenes are drawn fresh)."),
    batch_size: int = typer.Option(128, "--batch-size", help="Examples per optimisation step, clean and adversarial together."),
    lr: float = typer.Option(1e-3, "--lr", help="Peak learning rate (one-cycle; triangular for fast alone)."),
    clean_fraction: float = typer.Option(0.5, "--clean-fraction", help="Share of every batch that is clean scenes (keeps clean accuracy)."),
    sticker_area: str = typer.Option("0.05,0.3", "--sticker-area", help="occlusion: rectangle area range LO,HI as fractions of the tile."),
    eps_warmup: float = typer.Option(1.0, "--eps-warmup", help="Epochs over which ε ramps up linearly from 0 (0 = none)."),
    eot_name: str = typer.Option("print-camera", "--eot", help="The print-and-camera distribution of eot and occlusion (a preset or .toml)."),
    texture_size: int = typer.Option(128, "--texture-size", help="Side of the training tiles, pixels (eot, occlusion)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Training images for a non-signs model: a folder with one subfolder per class, named as the model's classes."),
    check_samples: int = typer.Option(256, "--check-samples", help="Held-out examples of the per-epoch check (clean, FGSM, PGD, and eot/occlusion accuracy)."),
    check_steps: int = typer.Option(10, "--check-steps", help="PGD steps of the per-epoch check."),
    overfit_check: bool = typer.Option(True, "--overfit-check/--no-overfit-check", help="fast: stop at catastrophic overfitting (held-out PGD accuracy more than --overfit-drop below its best) and keep the best epoch."),
    overfit_drop: float = typer.Option(0.2, "--overfit-drop", help="The PGD-accuracy fall that counts as catastrophic overfitting."),
    fast_alpha: float = typer.Option(1.25, "--fast-alpha", help="fast: the FGSM step as a multiple of ε (Wong et al. 1.25; larger steps overfit catastrophically)."),
    from_scratch: bool = typer.Option(False, "--from-scratch", help="Train the model's architecture from fresh seeded weights instead of fine-tuning its weights."),
    seed: int = typer.Option(0, "--seed", help="Seeds every random draw (scenes, attacks, check set)."),
    threads: int = typer.Option(2, "--threads", help="CPU threads."),
    classes: Optional[str] = ClassesOpt,
    device: str = DeviceOpt,
) -> None:
    """Adversarially fine-tune a model (pgd, fast, eot, occlusion) with held-out clean and robust accuracy after every epoch. Interrupted (Ctrl-C, crash)? Rerun the same command: it resumes after the last finished epoch."""
    from physical_adv.harden import HardenConfig, harden

    try:
        lo, hi = (float(v) for v in sticker_area.split(","))
    except ValueError:
        raise UserError(f"--sticker-area must be LO,HI fractions like 0.05,0.3, got {sticker_area!r}") from None
    methods = tuple(m.strip() for item in method for m in item.split(",") if m.strip())
    cfg = build(HardenConfig, out=out, model=model, methods=methods, eps=eps, steps=steps, epochs=epochs, samples=samples,
                batch_size=batch_size, lr=lr, clean_fraction=clean_fraction, sticker_area=(lo, hi), eps_warmup=eps_warmup,
                eot=eot_name, texture_size=texture_size, data=data, check_samples=check_samples, check_steps=check_steps,
                overfit_check=overfit_check, overfit_drop=overfit_drop, fast_alpha=fast_alpha, from_scratch=from_scratch,
                seed=seed, threads=threads, classes=classes, device=device)
    record = harden(cfg)
    m = record["metrics"]
    acc = f", held-out clean accuracy {m['heldout']['accuracy']:.4f}" if "heldout" in m else ""
    stop = " — stopped at catastrophic overfitting" if record["catastrophic_overfitting"] else ""
    typer.echo(f"wrote {out} ({record['train_seconds']:.0f} s, {record['epochs_run']} epochs{acc}){stop}")


@app.command("serve")
def serve_cmd(
    model: str = ModelOpt,
    top_k: int = typer.Option(5, "--top-k", "-k", help="Labels per image at most (a request's maxResults can ask for fewer)."),
    mode: str = typer.Option("scores", "--mode", help="What answers carry: scores (names and probabilities), labels (names only) or label (the top name only)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on. Anything but loopback exposes the model to the network (a warning is printed)."),
    port: int = typer.Option(8080, "--port", help="TCP port; 0 picks a free one (the printed URL names it)."),
    budget: Optional[int] = typer.Option(None, "--budget", help="Images each client (API key, else address) may have classified; past it requests answer 429. Default: no limit."),
    device: str = DeviceOpt,
    classes: Optional[str] = ClassesOpt,
) -> None:
    """Serve a model over HTTP like Google Cloud Vision's label detection (POST /v1/images:annotate, GET /stats) until Ctrl-C."""
    from physical_adv.blackbox.server import ServeConfig, serve

    serve(build(ServeConfig, model=model, top_k=top_k, mode=mode, host=host, port=port, budget=budget, device=device, classes=classes))


def _fail(message: str, code: int = 2) -> None:
    one_line = " ".join(str(message).split())
    print(f"physical-adv: error: {one_line}", file=sys.stderr)
    sys.exit(code)


def _internal_error(exc: BaseException) -> str:
    return f"internal error: {type(exc).__name__}: {exc} (rerun with --verbose for the traceback)"


def main(argv: list[str] | None = None) -> None:
    """Entry point. User errors (and OS errors the user can fix: permissions, a full disk, a file
    where a folder should be) → one line ``physical-adv: error: …`` on stderr, exit 2;
    Ctrl-C → exit 130; a bug → one line and exit 1, or the traceback with ``--verbose``."""
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in args
    args = [a for a in args if a != "--verbose"]
    command = typer.main.get_command(app)
    keep_freed_memory()
    try:
        result = command.main(args=args, prog_name="physical-adv", standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        print("physical-adv: interrupted", file=sys.stderr)
        sys.exit(130)
    except ClickException as exc:
        _fail(exc.format_message())
    except UserError as exc:
        if verbose:
            raise
        _fail(str(exc))
    except OSError as exc:
        if verbose:
            raise
        message = os_error_message(exc)  # the user's files or disk, not a bug
        if message is None:
            _fail(_internal_error(exc), code=1)
        _fail(message)
    except Exception as exc:  # noqa: BLE001 - the last line of defence for bugs
        if verbose:
            raise
        _fail(_internal_error(exc), code=1)
    if result == 130:
        print("physical-adv: interrupted", file=sys.stderr)
    sys.exit(result if isinstance(result, int) else 0)
