"""``report.html``: one self-contained file (plots and crops embedded as data URIs)."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np

from physical_adv.outcome import is_fooled
from physical_adv.report import Observations
from physical_adv.report.table import pct as _pct


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _figure_uri(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return _png_uri(buf.getvalue())


def survival_plot(report: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for t in report["tiles"]:
        if t["kind"] == "clean":
            rows.append((f"{t['tile_id']} clean {t['true_class']}: accuracy", t["accuracy"], t["ci"].get("accuracy"), "#57606a"))
        else:
            how = f" ({t['attack']})" if (t.get("attack") or "").startswith("black-box") else ""
            rows.append((f"{t['tile_id']} ADV{how} {t['true_class']}: not {t['true_class']}", t["untargeted_success"], t["ci"].get("untargeted_success"), "#cf222e"))
            if t["target_class"]:
                rows.append((f"{t['tile_id']} ADV → {t['target_class']}", t["targeted_success"], t["ci"].get("targeted_success"), "#8250df"))
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1))
    for i, (label, value, ci, colour) in enumerate(rows):
        if value is not None:  # an undefined rate (never found) gets no bar, only its label
            ax.barh(i, value, color=colour, alpha=0.85)
            ax.errorbar(value, i, xerr=[[value - ci[0]], [ci[1] - value]], color="black", capsize=3, lw=1)
        ax.text(1.01, i, _pct(value) if value is not None else "undefined", va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("rate over frames where the tile was found (95 % interval, clustered frames)")
    return _figure_uri(fig)


def confidence_plot(obs: Observations) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3))
    for tid, tile in obs.tiles.items():
        conf = [l["confidence"] for l in obs.lines if l["tile_id"] == tid and l["found"]]
        if conf:
            ax.hist(conf, bins=20, range=(0, 1), histtype="step", lw=1.5, label=f"{tid} {tile['kind']} {tile['true_class']}")
    ax.set_xlabel("top-1 confidence")
    ax.set_ylabel("frames")
    ax.legend(fontsize=7)
    return _figure_uri(fig)


# the series of a by_seen plot: (kind, rate, legend label, colour, x offset within the bin)
SEEN_SERIES = (("adversarial", "untargeted_success", "adversarial: not its true class", "#cf222e", -0.12),
               ("adversarial", "targeted_success", "adversarial: the target class", "#8250df", 0.0),
               ("clean", "accuracy", "clean control: accuracy", "#57606a", 0.12))


MAX_TILE_SERIES = 6  # up to this many adversarial tiles get a line each; more are pooled per kind


def seen_plot(quantity: dict, tile_labels: dict[str, str] | None = None) -> str:
    """Survival against one quantity of ``by_seen`` (a recorded one): a point per bin and series
    with its 95 % interval, the bins side by side; on the size plot a dashed line at each model's
    input size (an edge of the bins: left of it the tile is undersampled).

    Args:
        quantity: one quantity of ``report["by_seen"]`` with ``recorded`` true.
        tile_labels: tile id → what its attack was after, for the legend; with at most
            :data:`MAX_TILE_SERIES` adversarial tiles each gets its own line (its goal's rate),
            with more they are pooled (untargeted and targeted success).

    Returns:
        The plot as a PNG data URI.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = quantity["bins"]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    per_tile = sorted({tid for b in bins for tid in b.get("per_tile", {})})
    tile_labels = tile_labels or {}
    series = ([("per_tile", tid, f"{tid} {tile_labels.get(tid, 'adversarial')}", None, 0.0) for tid in per_tile]
              if 0 < len(per_tile) <= MAX_TILE_SERIES else list(SEEN_SERIES[:2])) + [SEEN_SERIES[2]]
    spread = np.linspace(-0.15, 0.15, len(series)) if len(series) > 1 else [0.0]
    for (kind, name, label, colour, _), dx in zip(series, spread):
        points = [(i + dx, b[kind][name]) for i, b in enumerate(bins) if name in b[kind] and b[kind][name]["n"]]
        if points:
            x, rates = zip(*points)
            y = [r["rate"] for r in rates]
            yerr = [[r["rate"] - r["ci95"][0] for r in rates], [r["ci95"][1] - r["rate"] for r in rates]]
            ax.errorbar(x, y, yerr=yerr, fmt="o-", lw=1, capsize=3, color=colour, label=label)
    specs_by_size: dict[int, list[str]] = {}
    for spec, size in sorted((quantity.get("input_sizes") or {}).items()):
        specs_by_size.setdefault(size, []).append(spec)
    for size, specs in sorted(specs_by_size.items()):
        x = next((i for i, b in enumerate(bins) if b["lo"] >= size), len(bins)) - 0.5
        text = "model input" if len(specs_by_size) == 1 else f"{', '.join(specs)} input"
        ax.axvline(x, ls="--", color="#0969da", lw=1)
        ax.text(x, 1.05, f" {text} {size} px", color="#0969da", fontsize=8, va="bottom")
    ax.set_xticks(range(len(bins)), [f"{b['label']}\n{b['found']} found" for b in bins], fontsize=7)
    ax.set_xlim(-0.5, len(bins) - 0.5)
    ax.set_ylim(-0.03, 1.03)  # points at 0 and 1 stay whole
    ax.set_xlabel(f"{quantity['label']} ({quantity['unit']})")
    ax.set_ylabel("rate over found (95 % interval)")
    if ax.get_legend_handles_labels()[0]:  # a bin holding only lines not found has no point to draw
        ax.legend(fontsize=7, loc="best")
    return _figure_uri(fig)


def _seen_table(quantity: dict) -> str:
    """One quantity's bins: found / lines, undersampled, and each kind's rates with their intervals
    (a targeted column only when a targeted tile was found)."""
    targeted = any(b["adversarial"]["targeted_success"]["n"] for b in quantity["bins"])
    rates = [("adversarial", "untargeted_success", "untargeted"),
             *([("adversarial", "targeted_success", "targeted")] if targeted else []), ("clean", "accuracy", "clean accuracy")]
    rows = []
    for b in quantity["bins"]:
        cells = "".join(f"<td>{_with_ci(b[kind][n]['rate'], b[kind][n]['ci95'])} of {b[kind][n]['n']}</td>" for kind, n, _ in rates)
        rows.append(f'<tr data-lo="{b["lo"]}"><td>{html.escape(b["label"])}</td><td>{b["found"]}/{b["frames"]}</td>'
                    f'<td>{b["undersampled"]}</td>{cells}</tr>')
    head = "".join(f"<th>{title}</th>" for *_, title in rates)
    return f"<table><tr><th>bin</th><th>found</th><th>undersampled</th>{head}</tr>{''.join(rows)}</table>"


def _seen_section(report: dict) -> str:
    """Survival against apparent size, viewing angle and distance (``by_seen``): a plot and a
    table for each quantity the logs record, "not recorded" for the others."""
    seen = report["by_seen"]
    keys = [k for k, q in seen.items() if isinstance(q, dict)]  # not its description
    labels = {t["tile_id"]: f"{Path(t['run']).name}: " + (f"→ {t['target_class']}" if t.get("target_class")
                                                          else f"not {t['true_class']}")
              for t in report["tiles"] if t["kind"] == "adversarial"}
    parts = []
    for key in keys:
        q = seen[key]
        name = f"{q['label']} ({q['unit']})"
        if not q["recorded"]:
            parts.append(f'<p class="not-recorded" data-quantity="{key}"><b>{html.escape(q["label"])}</b>: '
                         f'{html.escape(q["note"])}.</p>')
            continue
        alt = (f"survival against {name}: adversarial success and clean-control accuracy per bin, with 95 % intervals"
               + ("; dashed line: the model's input size" if q.get("input_sizes") else ""))
        extra = (f" {q['malformed']} line(s) with a malformed value left out." if q["malformed"] else "") + (
            f" {q['missing']} found line(s) without it." if q["missing"] else "")
        parts.append(f'<h3>Against {html.escape(name)}</h3>'
                     f'<img class="seen-plot" data-quantity="{key}" alt="{html.escape(alt)}" src="{seen_plot(q, labels)}">'
                     f'<p>{q["found"]} found observations in {len(q["bins"])} bin(s), {q["undersampled"]} undersampled.{extra}</p>'
                     f"{_seen_table(q)}")
    recorded = " ".join(k for k in keys if seen[k]["recorded"])
    return (f'<section id="seen" data-recorded="{recorded}"><h2>Survival against size, angle and distance</h2>'
            "<p>At what distance and angle does the attack stop working (Eykholt et al. 2018; Kurakin et al. 2016)? "
            "Each found observation falls in a bin by the tile's apparent side in the frame, the viewing angle (between "
            "the page normal and the line of sight, 0° = face on) and the camera's distance to the tile (in sheet "
            "millimetres, from an approximate camera matrix unless the camera was calibrated); the rates are pooled over "
            "the tiles of each kind, with the same clustered 95 % intervals as above. <i>Undersampled</i>: the tile's "
            "side in the frame was below its model's input size, so the classifier saw it upsampled.</p>"
            f"{''.join(parts)}</section>\n")


def gallery(obs: Observations, per_tile: int = 8) -> str:
    parts = []
    for tid, tile in obs.tiles.items():
        cells = []
        for line in obs.lines:
            if line["tile_id"] != tid or not line.get("crop"):
                continue
            path = obs.sessions[line["_session"]].path / line["crop"]
            if not path.is_file():
                continue
            cls = "fooled" if is_fooled(line["pred"], tile["true_class"]) else "held"
            cells.append(f'<figure class="{cls}"><img src="{_png_uri(path.read_bytes())}" alt="tile {tid} frame {line["frame"]}">'
                         f'<figcaption>{html.escape(line["pred"])} {line["confidence"]:.2f}</figcaption></figure>')
            if len(cells) >= per_tile:
                break
        parts.append(f'<h3>{tid} · {html.escape(tile["kind"])} · {html.escape(tile["true_class"])}'
                     f'{" → " + html.escape(tile["target_class"]) if tile.get("target_class") else ""}</h3>'
                     f'<div class="gallery" data-tile="{tid}">{"".join(cells) or "<p>no crops saved</p>"}</div>')
    return "\n".join(parts)


def _run_config(tile: dict) -> str:
    record_path = Path(tile["run"]) / "attack.json"
    if record_path.is_file():
        try:
            record = json.loads(record_path.read_text())
            body = json.dumps({"config": record.get("config"), "blackbox": record.get("blackbox"),
                               "metrics": record.get("metrics")}, indent=2)
        except (OSError, json.JSONDecodeError):
            body = "(attack.json unreadable)"
    else:
        body = json.dumps({k: tile.get(k) for k in ("model", "threat", "eot", "dpi", "digital", "blackbox")}, indent=2) + "\n(run directory not present here)"
    return f"<details><summary>{html.escape(tile['run'])}</summary><pre>{html.escape(body)}</pre></details>"


def _with_ci(value: float | None, ci) -> str:
    """A rate with its interval (when ``ci`` is given), or "undefined" when it has no observation."""
    if value is None:
        return "undefined"
    return _pct(value) + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")


def _by_model_section(report: dict) -> str:
    """Before vs after: the pooled rates of each model's tiles, when the sheet holds more than one model."""
    if "by_model" not in report:
        return ""
    rows = []
    for model, k in report["by_model"].items():
        adv, clean = k["adversarial"], k["clean"]
        cells = [_with_ci(adv[n]["rate"], adv[n]["ci95"]) if n in adv else "–" for n in ("targeted_success", "untargeted_success")]
        acc = _with_ci(clean["accuracy"]["rate"], clean["accuracy"]["ci95"]) if "accuracy" in clean else "–"
        rows.append(f"<tr><td>{html.escape(model)}</td><td>{adv['tiles']}</td><td>{adv['found']}</td><td>{cells[0]}</td>"
                    f"<td>{cells[1]}</td><td>{clean['found']}</td><td>{acc}</td></tr>")
    return ("<h2>By model</h2><p>The same sheet, photographed together: each model's adversarial tiles (made against it) "
            "and clean controls, pooled (95 % intervals as below).</p><table><tr><th>model</th><th>adversarial tiles</th>"
            "<th>found</th><th>targeted</th><th>untargeted</th><th>clean found</th><th>clean accuracy</th></tr>"
            f"{''.join(rows)}</table>\n")


def _tile_rows(report: dict) -> str:
    rows = []
    for t in report["tiles"]:
        cells = "".join(f"<td>{_with_ci(t[name], t['ci'].get(name)) if name in t['ci'] else '–'}</td>"
                        for name in ("targeted_success", "untargeted_success", "accuracy"))
        rows.append(
            f'<tr data-tile="{t["tile_id"]}"><td>{t["tile_id"]}</td><td>{t["kind"]}</td><td>{html.escape(t["true_class"])}</td>'
            f'<td>{html.escape(t["target_class"] or "–") if t["kind"] == "adversarial" else "–"}</td>'
            f'<td class="attack">{html.escape(t.get("attack") or "–")}</td><td>{html.escape(str(t.get("model") or "–"))}</td>'
            f'<td>{t["found"]}/{t["frames"]}</td>'
            f'{cells}</tr>')
    return "".join(rows)


def _destruction_cell(d: dict) -> str:
    if not d["eligible"]:
        return f'<td colspan="2" class="ineligible">not eligible: {html.escape(d["reason"])}</td>'
    if d["rate"] is None:
        return f'<td colspan="2">undefined: {html.escape(d["reason"])}</td>'
    return f'<td>{_with_ci(d["rate"], d["ci95"])} of {d["n"]}</td><td>{_with_ci(d["paired"]["rate"], d["paired"]["ci95"])} of {d["paired"]["n"]}</td>'


def _destruction_section(report: dict) -> str:
    rows = [f"<tr><td>{html.escape(r['run'])}</td>{_destruction_cell(r['destruction_top1'])}{_destruction_cell(r['destruction_top5'])}</tr>"
            for r in report["runs"]]
    pooled = []
    for key, label in (("destruction_top1", "top-1"), ("destruction_top5", "top-5")):
        d = report["summary"][key]
        pooled.append(f"<tr><td>{label}</td><td>{d['runs']}</td><td>{_with_ci(d['rate'], d['ci95'])} of {d['n']}</td>"
                      f"<td>{_with_ci(d['per_run']['mean'], None)}</td>"
                      f"<td>{_with_ci(d['paired']['rate'], d['paired']['ci95'])} of {d['paired']['n']}</td>"
                      f"<td>{_with_ci(d['paired']['per_run']['mean'], None)}</td></tr>")
    return f"""<h2>Destruction rate (Kurakin et al. 2016, Eq. 1)</h2>
<p>Among eligible runs — the clean image classified correctly and the adversarial image fooling the model, both
digitally — the fraction of photographed adversarial tiles classified correctly again. <i>Per photo</i> pools the
eligible runs' photos (as in the paper); <i>per run</i> is the mean of each eligible run's own rate. <i>Paired</i>
counts only frames in which the run's clean control was found and classified correctly.</p>
<table><tr><th></th><th>eligible runs</th><th>per photo</th><th>mean per run</th><th>paired, per photo</th><th>paired, mean per run</th></tr>
{''.join(pooled)}</table>
<table><tr><th>run</th><th>top-1</th><th>top-1 paired</th><th>top-5</th><th>top-5 paired</th></tr>
{''.join(rows)}</table>"""


def _by_tag_section(report: dict) -> str:
    if "by" not in report:
        return ""
    trs = []
    for value, stats in report["by"]["groups"].items():
        for t in stats:
            name = "accuracy" if t["kind"] == "clean" else "untargeted_success"
            trs.append(f"<tr><td>{html.escape(value)}</td><td>{t['tile_id']}</td><td>{t['kind']}</td><td>{t['found']}/{t['frames']}</td>"
                       f"<td>{_with_ci(t[name], t['ci'][name])}</td></tr>")
    tag = html.escape(report["by"]["tag"])
    return (f"<h2>By {tag}</h2><table><tr><th>{tag}</th><th>tile</th>"
            f"<th>kind</th><th>found</th><th>success / accuracy</th></tr>{''.join(trs)}</table>")


def calibration_plot(cal: dict) -> str:
    """The fitted tone response: the chart's greys as observed (points, per channel) and the
    model's grey ramp (lines), beside each patch's error (held-out ones marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    colours = ("#cf222e", "#1a7f37", "#0969da")
    printed, observed = cal["greys"]["printed"], cal["greys"]["observed"]
    ramp, predicted = cal["fitted_ramp"]["printed"], np.array(cal["fitted_ramp"]["predicted"])
    for c, (name, colour) in enumerate(zip("RGB", colours)):
        pts = [(x, o[c]) for x, o in zip(printed, observed) if o[c] is not None]
        if pts:
            left.plot(*zip(*pts), "o", ms=3, color=colour, label=f"{name} observed")
        left.plot(ramp, predicted[:, c], "-", lw=1, color=colour, label=f"{name} fitted")
    left.plot([0, 1], [0, 1], ":", color="#57606a", lw=1)
    left.set_xlabel("printed grey")
    left.set_ylabel("photographed")
    left.legend(fontsize=6, ncol=2)
    errors = np.array([np.nan if e is None else e for e in cal["residuals"]])
    held = np.array(cal["held_out"])
    x = np.arange(len(errors))
    right.plot(x[~held], errors[~held], ".", ms=3, color="#57606a", label="fitted patches")
    right.plot(x[held], errors[held], "o", ms=4, color="#8250df", label=f"held out (mean {cal['heldout_error']:.2f})")
    right.set_xlabel("chart patch")
    right.set_ylabel("|predicted − observed| (/255)")
    right.legend(fontsize=7)
    fig.tight_layout()
    return _figure_uri(fig)


def _gap_cell(gap: float | None) -> str:
    return "–" if gap is None else f"{100 * gap:+.1f} points"


def _channel_section(report: dict) -> str:
    """The colour calibration fitted from the chart, and simulated beside photographed survival."""
    parts = []
    cal = report.get("calibration")
    if cal is not None and "error" in cal:
        parts.append(f'<p class="calibration-error">Colour calibration: {html.escape(cal["error"])}.</p>')
    elif cal is not None:
        parts.append(f"<p>Fitted from the chart in {cal['frames']} frame(s) of "
                     f"{'the photographed' if cal['photographed'] else 'the simulated'} sessions: observed = "
                     "curve<sub>c</sub>((M · printed + b)<sub>c</sub>); mean error on held-out patches "
                     f"<b>{cal['heldout_error']:.2f}/255</b> (fitted ones {cal['train_error']:.2f}); frame-to-frame spread "
                     f"{', '.join(f'{v:.1f}' for v in cal['spread'])}/255 (R, G, B). "
                     "<code>physical-adv calibrate</code> writes it as a file.</p>"
                     f'<img class="calibration-plot" alt="the fitted tone response and each patch\'s error" '
                     f'src="{calibration_plot(cal)}">')
    rows = report.get("simulated_vs_captured")
    if rows:
        body = "".join(
            f'<tr data-tile="{r["tile_id"]}"><td>{r["tile_id"]}</td><td>{r["kind"]}</td><td>{r["rate"].replace("_", " ")}</td>'
            f'<td>{_with_ci(r["simulated"]["rate"], r["simulated"]["ci95"])} of {r["simulated"]["n"]}</td>'
            f'<td>{_with_ci(r["captured"]["rate"], r["captured"]["ci95"])} of {r["captured"]["n"]}</td>'
            f'<td>{_gap_cell(r["gap"])}</td></tr>' for r in rows)
        parts.append("<p>Each tile in the simulated sessions (photos from <code>simulate</code>) beside the photographed "
                     "ones: the gap says whether the simulator can be trusted for this printer and camera.</p>"
                     "<table><tr><th>tile</th><th>kind</th><th>rate</th><th>simulated</th><th>photographed</th><th>gap</th></tr>"
                     f"{body}</table>")
    if not parts:
        return ""
    return f'<section id="channel"><h2>Printer and camera</h2>{"".join(parts)}</section>'


def write_html(path: Path, report: dict, obs: Observations) -> None:
    """Write the self-contained ``report.html`` (atomically).

    Args:
        path: where to write it.
        report: the data of :func:`physical_adv.report.compute_report`.
        obs: the pooled observations it was computed from (for crops and confidences).
    """
    from physical_adv.artifacts import atomic_write_bytes

    adv, clean = report["summary"]["adversarial"], report["summary"]["clean"]
    configs = "".join(_run_config(t) for t in obs.tiles.values() if t["kind"] == "adversarial")
    doc = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>physical-adv report {html.escape(str(report['sheet_id']))}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #1f2328; }}
table {{ border-collapse: collapse; margin: 1em 0; }} td, th {{ border: 1px solid #d0d7de; padding: 4px 8px; font-size: 90%; }}
.gallery {{ display: flex; flex-wrap: wrap; gap: 6px; }} figure {{ margin: 0; text-align: center; font-size: 75%; }}
figure img {{ width: 96px; height: 96px; image-rendering: pixelated; border: 3px solid; }}
figure.fooled img {{ border-color: #cf222e; }} figure.held img {{ border-color: #1a7f37; }}
.headline {{ font-size: 120%; }}
</style></head><body>
<h1>Print-and-photograph survival — sheet {html.escape(str(report['sheet_id']))}</h1>
<p class="headline">Adversarial tiles: not their true class in <b>{_pct(adv['untargeted_success']['rate'])}</b>
of {adv['found']} found observations; targeted success <b>{_pct(adv['targeted_success']['rate'])}</b>.
Clean controls: accuracy <b>{_pct(clean['accuracy']['rate'])}</b> of {clean['found']}.</p>
<p>{len(report['sessions'])} capture session(s), {sum(s['lines'] for s in report['sessions'])} observations;
{report['skipped_lines']} incomplete log line(s) skipped. Generated {html.escape(report['created'])}.</p>
{_by_model_section(report)}<h2>Tiles</h2>
<p class="method">How the numbers are counted: {html.escape(report['denominators'])}.
Intervals: {html.escape(report['intervals']['description'])}. A segment ends when the tile is found with its corners moved by more than
{100 * report['intervals']['segment_rule']['max_move']:.0f} % of its apparent size (however long ago it was last found),
when more than {report['intervals']['segment_rule']['max_gap_s']:g} s pass where the pose cannot be compared (the tile
not found, or not yet found in the segment), or when the session changes; a frame in which the tile was not found
otherwise stays in its segment.
"undefined" marks a rate with no observation.</p>
<table><tr><th>tile</th><th>kind</th><th>true</th><th>target</th><th>attack</th><th>model</th><th>found</th><th>targeted</th><th>untargeted</th><th>accuracy</th></tr>
{_tile_rows(report)}</table>
<img alt="survival per tile" src="{survival_plot(report)}">
{_destruction_section(report)}
{_seen_section(report)}{_channel_section(report)}<h2>Confidence</h2><img alt="confidence distributions" src="{confidence_plot(obs)}">
<h2>Gallery of rectified tiles</h2><p>Green: still its true class; red: fooled.</p>
{gallery(obs)}
{_by_tag_section(report)}
<h2>Configuration of each run</h2>{configs}
</body></html>
"""
    atomic_write_bytes(path, doc.encode("utf-8"))
