"""``physical-adv report``: capture logs → survival rates with 95 % Wilson intervals.

Raw observations first, statistics second: everything here is computed from the lines of
``detections.jsonl`` (and the manifest copy in ``session.json``); several sessions of the
same sheet pool by simply concatenating their lines.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from physical_adv.artifacts import atomic_write_json, read_json, software_versions, utc_now
from physical_adv.errors import UserError
from physical_adv.stats import wilson_interval

SCHEMA = 1


@dataclass
class Session:
    path: Path
    record: dict
    lines: list[dict]
    skipped: int


@dataclass
class Observations:
    """Pooled sessions: the tiles of the sheet and every complete log line, tagged."""

    sessions: list[Session]
    tiles: dict[str, dict]
    lines: list[dict] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        return sum(s.skipped for s in self.sessions)


def load_session(path: str | Path) -> Session:
    """Read one capture folder; lines that do not parse (a capture killed mid-line) are skipped and counted."""
    path = Path(path)
    if not path.is_dir() or not (path / "session.json").is_file() or not (path / "detections.jsonl").is_file():
        raise UserError(f"{path} is not a capture directory (needs session.json and detections.jsonl)")
    record = read_json(path / "session.json", "capture session")
    if "manifest" not in record or "tiles" not in record.get("manifest", {}):
        raise UserError(f"{path / 'session.json'} holds no sheet manifest; is it from physical-adv capture?")
    lines, skipped = [], 0
    with open(path / "detections.jsonl", encoding="utf-8", errors="replace") as fh:
        for raw in fh:
            try:
                line = json.loads(raw)
            except json.JSONDecodeError:
                skipped += 1
                continue
            if not isinstance(line, dict) or "tile_id" not in line or "found" not in line:
                skipped += 1
                continue
            lines.append(line)
    if not lines:
        raise UserError(f"{path / 'detections.jsonl'} holds no complete observation")
    return Session(path, record, lines, skipped)


def pool(paths: list[str | Path]) -> Observations:
    """Load and pool capture sessions of one sheet; a :class:`UserError` when they do not match."""
    if not paths:
        raise UserError("give at least one capture directory")
    sessions = [load_session(p) for p in paths]
    manifest = sessions[0].record["manifest"]
    tiles = {t["tile_id"]: t for t in manifest["tiles"]}
    obs = Observations(sessions, tiles)
    for n, s in enumerate(sessions):
        if s.record["manifest"].get("sheet_id") != manifest.get("sheet_id"):
            raise UserError(f"{s.path} captured sheet {s.record['manifest'].get('sheet_id')}, not {manifest.get('sheet_id')}; "
                            "report one sheet at a time")
        for line in s.lines:
            if line["tile_id"] not in tiles:
                raise UserError(f"{s.path}: the log names tile {line['tile_id']!r}, which the sheet's manifest does not have")
            obs.lines.append({**line, "_session": n, "_tags": s.record.get("tags", {})})
    return obs


def _rate(k: int, n: int) -> dict:
    lo, hi = wilson_interval(k, n)
    return {"k": k, "n": n, "rate": (k / n) if n else None, "ci95": [round(lo, 4), round(hi, 4)]}


def tile_stats(tile: dict, lines: list[dict]) -> dict:
    """Rates of one tile over its lines: detection, and over found frames targeted and
    untargeted success (adversarial) or accuracy (clean), with Wilson intervals."""
    found = [l for l in lines if l["found"]]
    correct = sum(l["pred"] == tile["true_class"] for l in found)
    out = {
        "tile_id": tile["tile_id"], "kind": tile["kind"], "run": tile["run"], "true_class": tile["true_class"],
        "target_class": tile.get("target_class"), "frames": len(lines), "found": len(found),
        "detection_rate": _rate(len(found), len(lines)),
        "targeted_success": None, "untargeted_success": None, "accuracy": None,
        "mean_confidence": (sum(l["confidence"] for l in found) / len(found)) if found else None, "ci": {},
    }
    if tile["kind"] == "clean":
        r = _rate(correct, len(found))
        out["accuracy"], out["ci"]["accuracy"] = r["rate"], r["ci95"]
    else:
        r = _rate(len(found) - correct, len(found))
        out["untargeted_success"], out["ci"]["untargeted_success"] = r["rate"], r["ci95"]
        if tile.get("target_class"):
            t = _rate(sum(l["pred"] == tile["target_class"] for l in found), len(found))
            out["targeted_success"], out["ci"]["targeted_success"] = t["rate"], t["ci95"]
    out["ci"]["detection_rate"] = out["detection_rate"]["ci95"]
    out["detection_rate"] = out["detection_rate"]["rate"]
    return out


def run_stats(adv: dict, clean: dict | None, lines_by_tile: dict[str, list[dict]]) -> dict:
    """Kurakin et al.'s destruction rate (their Eq. 1) for one run, top-1 and top-5, and the
    paired variant that counts only frames whose clean control is classified correctly."""
    result = {"run": adv["run"], "adversarial_tile": adv["tile_id"], "clean_tile": clean["tile_id"] if clean else None,
              "true_class": adv["true_class"], "target_class": adv.get("target_class")}
    digital_adv, digital_clean = adv.get("digital"), (clean or {}).get("digital")
    for k, key in ((1, "top1"), (5, "top5")):
        def in_top(obs_top: list[str]) -> bool:
            return adv["true_class"] in obs_top[:k]

        eligible = None
        if digital_adv and digital_clean:
            eligible = in_top(digital_clean["top5"]) and not in_top(digital_adv["top5"])
        found = [l for l in lines_by_tile[adv["tile_id"]] if l["found"]]
        restored = sum(in_top([t["class"] for t in l["top5"]]) for l in found)
        entry = {"eligible": eligible, **_rate(restored, len(found))}
        if clean:
            clean_ok = {(l["_session"], l["frame"]) for l in lines_by_tile[clean["tile_id"]]
                        if l["found"] and in_top([t["class"] for t in l["top5"]])}
            paired = [l for l in found if (l["_session"], l["frame"]) in clean_ok]
            entry["paired"] = _rate(sum(in_top([t["class"] for t in l["top5"]]) for l in paired), len(paired))
        result[f"destruction_{key}"] = entry
    return result


def compute_report(obs: Observations, by: str | None = None) -> dict:
    """The whole report as JSON-able data (``report.json``)."""
    lines_by_tile: dict[str, list[dict]] = defaultdict(list)
    for line in obs.lines:
        lines_by_tile[line["tile_id"]].append(line)
    tiles = [tile_stats(t, lines_by_tile[tid]) for tid, t in obs.tiles.items()]
    runs = []
    for t in obs.tiles.values():
        if t["kind"] != "adversarial":
            continue
        clean = next((c for c in obs.tiles.values() if c["kind"] == "clean" and c["run"] == t["run"]), None)
        runs.append(run_stats(t, clean, lines_by_tile))

    def summary(kind: str) -> dict:
        sel = [s for s in tiles if s["kind"] == kind]
        found = sum(s["found"] for s in sel)
        frames = sum(s["frames"] for s in sel)
        out = {"tiles": len(sel), "found": found, "frames": frames}
        if kind == "clean":
            k = sum(round(s["accuracy"] * s["found"]) for s in sel if s["accuracy"] is not None)
            out["accuracy"] = _rate(k, found)
        else:
            k = sum(round(s["untargeted_success"] * s["found"]) for s in sel if s["untargeted_success"] is not None)
            out["untargeted_success"] = _rate(k, found)
            tsel = [s for s in sel if s["targeted_success"] is not None]
            kt = sum(round(s["targeted_success"] * s["found"]) for s in tsel)
            out["targeted_success"] = _rate(kt, sum(s["found"] for s in tsel))
        return out

    report = {
        "schema": SCHEMA, "created": utc_now(), "sheet_id": obs.sessions[0].record["manifest"].get("sheet_id"),
        "sessions": [{"path": str(s.path), "tags": s.record.get("tags", {}), "lines": len(s.lines), "skipped_lines": s.skipped,
                      "ended": s.record.get("ended"), "source": s.record.get("source")} for s in obs.sessions],
        "skipped_lines": obs.skipped, "tiles": tiles, "runs": runs,
        "summary": {"adversarial": summary("adversarial"), "clean": summary("clean"),
                    **{f"destruction_{key}": _pooled_destruction(runs, key) for key in ("top1", "top5")}},
        "versions": software_versions(),
    }
    if by:
        groups: dict[str, list[dict]] = defaultdict(list)
        for line in obs.lines:
            groups[str(line["_tags"].get(by, "(untagged)"))].append(line)
        report["by"] = {"tag": by, "groups": {
            value: [tile_stats(t, [l for l in group if l["tile_id"] == tid]) for tid, t in obs.tiles.items()]
            for value, group in sorted(groups.items())}}
    return report


def _pooled_destruction(runs: list[dict], key: str) -> dict:
    """Destruction rate over the eligible runs (clean right and adversarial wrong digitally)."""
    eligible = [r[f"destruction_{key}"] for r in runs if r[f"destruction_{key}"]["eligible"]]
    out = {"runs": len(eligible), **_rate(sum(e["k"] for e in eligible), sum(e["n"] for e in eligible))}
    paired = [e["paired"] for e in eligible if "paired" in e]
    out["paired"] = _rate(sum(p["k"] for p in paired), sum(p["n"] for p in paired))
    return out


def write_report_json(report: dict, capture_dirs: list[Path]) -> list[Path]:
    paths = []
    for d in capture_dirs:
        atomic_write_json(Path(d) / "report.json", report)
        paths.append(Path(d) / "report.json")
    return paths
