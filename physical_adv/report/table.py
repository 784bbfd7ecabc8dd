"""The report as a rich table on the terminal."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

UNDEFINED = "–"


def pct(value: float | None) -> str:
    """A rate as ``12.3 %``, or ``–`` when it is undefined (no observation)."""
    return UNDEFINED if value is None else f"{100 * value:.1f} %"


def cell(value: float | None, ci) -> str:
    """A rate with its 95 % interval, or ``–`` when it is undefined."""
    if value is None:
        return UNDEFINED
    return f"{100 * value:5.1f} % [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def destruction_lines(report: dict) -> list[str]:
    """Kurakin et al.'s destruction rate in words: pooled per photo and per run, top-1 and top-5,
    each run's own rate, and why a run is not eligible."""
    out = []
    for key, label in (("destruction_top1", "top-1"), ("destruction_top5", "top-5")):
        d = report["summary"][key]
        if not d["runs"]:
            out.append(f"destruction rate (Kurakin et al. Eq. 1), {label}: no eligible run (needs the clean image right "
                       "and the adversarial image wrong, digitally)")
            continue
        out.append(f"destruction rate (Kurakin et al. Eq. 1), {label}, over {d['runs']} eligible run(s): "
                   f"per photo {cell(d['rate'], d['ci95'])} of {d['n']}, mean per run {pct(d['per_run']['mean'])}; "
                   f"paired with a correct control: per photo {pct(d['paired']['rate'])} of {d['paired']['n']}, "
                   f"mean per run {pct(d['paired']['per_run']['mean'])}")
    for r in report["runs"]:
        d1, d5 = r["destruction_top1"], r["destruction_top5"]
        parts = []
        for d, label in ((d1, "top-1"), (d5, "top-5")):
            if not d["eligible"]:
                parts.append(f"{label} not eligible: {d['reason']}")
            elif d["rate"] is None:
                parts.append(f"{label} undefined ({d['reason']})")
            else:
                parts.append(f"{label} {pct(d['rate'])} (paired {pct(d['paired']['rate'])})")
        out.append(f"  {r['run']}: " + "; ".join(parts))
    return out


def seen_lines(report: dict) -> list[str]:
    """Survival against apparent size, viewing angle and distance (``by_seen``), one line per
    recorded quantity: each bin's adversarial untargeted success and clean accuracy in whole
    percent with their numbers of found observations (bins without one, and the intervals, are
    in report.json and report.html), and one line naming the quantities the logs do not record."""
    seen = {k: q for k, q in report["by_seen"].items() if isinstance(q, dict)}  # not its description
    out = []
    for q in seen.values():
        if not q["recorded"]:
            continue
        cells = []
        for b in (b for b in q["bins"] if b["found"]):  # bins of tiles seen but never found: in report.html
            adv, clean = b["adversarial"]["untargeted_success"], b["clean"]["accuracy"]
            rates = "/".join(UNDEFINED if r["rate"] is None else f"{100 * r['rate']:.0f}" for r in (adv, clean))
            cells.append(f"{b['label']} {rates} % ({adv['n']}/{clean['n']})")
        note = ""
        if "input_sizes" in q:  # the size line says how many views were below the model's input
            sizes = ", ".join(f"{v} px" for v in sorted(set(q["input_sizes"].values())))
            note = f"; {q['undersampled']} undersampled" + (f" (below the model input, {sizes})" if sizes else "")
        out.append(f"  by {q['label']}: " + (" · ".join(cells) or "no found observation") + note)
    missing = [q["label"] for q in seen.values() if not q["recorded"]]
    if out:
        out.insert(0, "survival against what the camera saw: adversarial untargeted success / clean accuracy "
                      "(found adversarial/clean); intervals in report.html")
    if missing:
        out.append(f"{', '.join(missing)}: not recorded in these capture logs")
    return out


def by_tag_table(report: dict) -> Table:
    """The ``--by TAG`` breakdown: each tile's main rate (success or accuracy) per tag value."""
    tag = report["by"]["tag"]
    table = Table(title=f"by {tag} (same intervals)")
    for col in (tag, "tile", "kind", "found", "untargeted / accuracy"):
        table.add_column(col)
    for value, stats in report["by"]["groups"].items():
        for t in stats:
            name = "accuracy" if t["kind"] == "clean" else "untargeted_success"
            table.add_row(value, t["tile_id"], t["kind"], f"{t['found']}/{t['frames']}", cell(t[name], t["ci"].get(name)))
    return table


def by_model_table(report: dict) -> Table:
    """Before vs after: each model's adversarial and clean tiles pooled (a sheet holding runs against several models)."""
    table = Table(title="by model (the same sheet and photos; same intervals)")
    table.add_column("model", min_width=14)
    for col in ("adversarial found", "targeted", "untargeted", "clean found", "clean accuracy"):
        table.add_column(col)
    for model, k in report["by_model"].items():
        adv, clean = k["adversarial"], k["clean"]
        rate = lambda d, n: cell(d[n]["rate"], d[n]["ci95"]) if n in d else UNDEFINED  # noqa: E731
        table.add_row(model, str(adv["found"]), rate(adv, "targeted_success"), rate(adv, "untargeted_success"),
                      str(clean["found"]), rate(clean, "accuracy"))
    return table


def channel_lines(report: dict) -> list[str]:
    """The colour calibration and the simulated-vs-photographed gaps, a line each (none when absent)."""
    out = []
    cal = report.get("calibration")
    if cal is not None:
        out.append(f"colour calibration: {cal['error']}" if "error" in cal else
                   f"colour calibration from the chart ({cal['frames']} frames): held-out error "
                   f"{cal['heldout_error']:.2f}/255, spread {', '.join(f'{v:.1f}' for v in cal['spread'])}/255")
    rows = report.get("simulated_vs_captured")
    if rows:
        out.append("simulated → photographed, each tile at its goal: " + " · ".join(
            f"{r['tile_id']} {pct(r['simulated']['rate'])} → {pct(r['captured']['rate'])}" for r in rows))
    return out


def print_table(report: dict) -> None:
    """Print the tiles' rates, the destruction rates and warnings to the terminal."""
    table = Table(title=f"sheet {report['sheet_id']}: survival over found frames; 95 % Wilson intervals on the "
                        "effective sample size of clustered frames (design effect over segments)")
    several = "by_model" in report  # a model column only when the sheet holds runs against several models
    for col in ("tile", "kind", "true → target", "attack", *(("model",) if several else ()), "found", "targeted",
                "untargeted", "accuracy"):
        table.add_column(col, min_width=9 if col == "attack" else None)  # "black-box" / "white-box" never cut
    for t in report["tiles"]:
        goal = t["true_class"] + (f" → {t['target_class']}" if t["target_class"] and t["kind"] == "adversarial" else "")
        table.add_row(t["tile_id"], t["kind"], goal, t.get("attack") or UNDEFINED,
                      *((str(t.get("model") or UNDEFINED),) if several else ()), f"{t['found']}/{t['frames']}",
                      cell(t["targeted_success"], t["ci"].get("targeted_success")),
                      cell(t["untargeted_success"], t["ci"].get("untargeted_success")),
                      cell(t["accuracy"], t["ci"].get("accuracy")))
    console = Console()
    console.print(table)
    if "by_model" in report:
        console.print(by_model_table(report))
    if "by" in report:
        console.print(by_tag_table(report))
    for line in destruction_lines(report) + seen_lines(report) + channel_lines(report):
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    if report["skipped_lines"]:
        console.print(f"[yellow]{report['skipped_lines']} incomplete log line(s) skipped (a capture ended mid-line)")
