"""The report as a rich table on the terminal."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def _cell(value, ci) -> str:
    if value is None:
        return "–"
    return f"{100 * value:5.1f} % [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def print_table(report: dict) -> None:
    table = Table(title=f"sheet {report['sheet_id']}: survival over found frames (95 % Wilson intervals)")
    for col in ("tile", "kind", "true → target", "found", "targeted", "untargeted", "accuracy"):
        table.add_column(col)
    for t in report["tiles"]:
        goal = t["true_class"] + (f" → {t['target_class']}" if t["target_class"] and t["kind"] == "adversarial" else "")
        table.add_row(t["tile_id"], t["kind"], goal, f"{t['found']}/{t['frames']}",
                      _cell(t["targeted_success"], t["ci"].get("targeted_success")),
                      _cell(t["untargeted_success"], t["ci"].get("untargeted_success")),
                      _cell(t["accuracy"], t["ci"].get("accuracy")))
    console = Console()
    console.print(table)
    d1 = report["summary"]["destruction_top1"]
    if d1["runs"]:
        console.print(f"destruction rate (Kurakin et al. Eq. 1), top-1: {100 * d1['rate']:.1f} % over {d1['runs']} eligible run(s); "
                      f"paired with a correct control: {('%.1f %%' % (100 * d1['paired']['rate'])) if d1['paired']['n'] else '–'}")
    else:
        console.print("destruction rate: no run is eligible (needs the clean tile right and the adversarial tile wrong digitally)")
    if report["skipped_lines"]:
        console.print(f"[yellow]{report['skipped_lines']} incomplete log line(s) skipped (a capture ended mid-line)")
