"""``physical-adv report``: capture logs → survival rates with intervals that respect clustered frames.

Raw observations first, statistics second: everything here is computed from the lines of
``detections.jsonl`` (and the manifest copy in ``session.json``); several sessions of the
same sheet pool by concatenating their lines.

The denominators: a tile's *detection rate* is over the lines logged for it, one per frame in
which its page was in view (capture logs no line for a tile whose page was not seen; a line
``"reason": "page not in view"``, or a frame in which no marker of the sheet was seen at all,
as older captures logged them, is not counted either). Every *survival* rate (targeted and
untargeted success, accuracy, destruction rate) is over the observations in which the tile
was found.

Each adversarial tile says how it was made (``attack``: "white-box", "black-box NES, 10,000
queries", or "not recorded" for a sheet from before the manifest carried it) and carries its
black-box record (``blackbox``), both read from the manifest copy.

``by_seen`` bins the same survival rates by what the camera saw — the tile's apparent size,
the viewing angle and the distance, as capture logs them (:mod:`physical_adv.report.seen`).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from physical_adv.artifacts import atomic_write_json, read_json, software_versions, utc_now
from physical_adv.errors import UserError
from physical_adv.manifest import attack_label, blackbox_problem
from physical_adv.outcome import attack_succeeded, is_fooled
from physical_adv.report.destruction import destruction_rates
from physical_adv.report.segments import SegmentRule, assign_segments, capture_times
from physical_adv.stats import METHOD, METHOD_TEXT, clustered_rate

SCHEMA = 1
NOT_IN_VIEW = "page not in view"
DENOMINATOR_TEXT = ("detection rate = found / lines logged (one line per frame in which the tile's page was in view; "
                    "frames in which the page was not in view are not counted); survival rates are over found "
                    "observations only")


@dataclass
class Session:
    path: Path
    record: dict
    lines: list[dict]
    skipped: int
    not_in_view: int = 0


@dataclass
class Observations:
    """Pooled sessions: the tiles of the sheet and every complete log line, tagged with its
    session (``_session``), the session's tags (``_tags``) and its segment (``_cluster``)."""

    sessions: list[Session]
    tiles: dict[str, dict]
    lines: list[dict] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        return sum(s.skipped for s in self.sessions)


@dataclass(frozen=True)
class ReportConfig:
    """What ``physical-adv report`` reads and where it writes.

    Args:
        captures: capture folders of one sheet; several are pooled.
        out: folder for ``report.json`` and ``report.html``; required when pooling several
            sessions (their own folders are left as they are); by default the one capture folder.
        html: where to write the HTML report instead of ``OUT/report.html``.
        by: a capture tag to break the rates down by.
    """

    captures: tuple[Path, ...]
    out: Path | None = None
    html: Path | None = None
    by: str | None = None

    def __post_init__(self):
        if not self.captures:
            raise ValueError("give at least one capture directory")
        if len(self.captures) > 1 and self.out is None:
            raise ValueError(f"pooling {len(self.captures)} capture folders needs --out DIR for the pooled report "
                             "(each session's own folder is left as it is)")

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out is not None else Path(self.captures[0])


def _saw_no_marker(line: dict) -> bool:
    """Whether a line says that not one marker of its tile was detected, not even ambiguously."""
    return (not line["found"] and "markers_used" in line and not line["markers_used"]
            and line.get("reason", "no marker visible") == "no marker visible")


def _in_view(lines: list[dict]) -> list[dict]:
    """The lines that count: not those of a tile whose page was not in view, nor those of a frame
    in which no marker of the sheet was seen (older captures logged every tile not found then)."""
    lines = [l for l in lines if l.get("reason") != NOT_IN_VIEW]
    by_frame: dict = defaultdict(list)
    for line in lines:
        by_frame[line.get("frame")].append(line)
    blind = {f for f, group in by_frame.items() if f is not None and all(_saw_no_marker(l) for l in group)}
    return [l for l in lines if l.get("frame") not in blind]


def load_session(path: str | Path) -> Session:
    """Read one capture folder; lines that do not parse (a capture killed mid-line) are skipped and
    counted, and lines of frames in which the tile's page was not in view are left out."""
    path = Path(path)
    if not path.is_dir() or not (path / "session.json").is_file() or not (path / "detections.jsonl").is_file():
        raise UserError(f"{path} is not a capture directory (needs session.json and detections.jsonl)")
    record = read_json(path / "session.json", "capture session")
    problem = _manifest_problem(record)
    if problem:
        raise UserError(f"{path / 'session.json'} {problem}; is it from physical-adv capture?")
    lines, skipped = [], 0
    with open(path / "detections.jsonl", encoding="utf-8", errors="replace") as fh:
        for raw in fh:
            try:
                line = json.loads(raw)
            except json.JSONDecodeError:
                skipped += 1
                continue
            if not _complete_line(line):
                skipped += 1
                continue
            lines.append(line)
    if not lines:
        raise UserError(f"{path / 'detections.jsonl'} holds no complete observation")
    kept = _in_view(lines)
    return Session(path, record, kept, skipped, len(lines) - len(kept))


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _complete_line(line) -> bool:
    """Whether a parsed log line has every field the report reads, of the right type (a line
    written by another tool or cut by a crash is skipped and counted, never trusted)."""
    if not (isinstance(line, dict) and isinstance(line.get("tile_id"), str) and isinstance(line.get("found"), bool)
            and isinstance(line.get("frame"), int) and not isinstance(line.get("frame"), bool)):
        return False
    if "time" in line and not _is_number(line["time"]):
        return False
    if not line["found"]:
        return True
    top5 = line.get("top5")
    corners = line.get("corners_px")
    return (isinstance(line.get("pred"), str) and _is_number(line.get("confidence"))
            and isinstance(top5, list) and len(top5) > 0
            and all(isinstance(t, dict) and isinstance(t.get("class"), str) and _is_number(t.get("prob")) for t in top5)
            and (corners is None or (isinstance(corners, list) and len(corners) == 4
                                     and all(isinstance(c, list) and len(c) == 2 and all(map(_is_number, c)) for c in corners))))


def _manifest_problem(record) -> str | None:
    """What is wrong with a session record's manifest copy, or ``None`` when the report can use it."""
    manifest = record.get("manifest") if isinstance(record, dict) else None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("tiles"), list):
        return "holds no sheet manifest"
    for t in manifest["tiles"]:
        if not (isinstance(t, dict) and isinstance(t.get("tile_id"), str) and t.get("kind") in ("adversarial", "clean")
                and isinstance(t.get("true_class"), str) and isinstance(t.get("run"), str)
                and (t.get("target_class") is None or isinstance(t.get("target_class"), str))):
            return "holds a manifest tile that lacks tile_id, kind, run or true_class"
        digital = t.get("digital")
        if digital is not None and not (isinstance(digital, dict) and isinstance(digital.get("top5"), list)
                                        and all(isinstance(c, str) for c in digital["top5"])):
            return f"holds tile {t['tile_id']!r} with a malformed digital prediction"
        problem = blackbox_problem(t)
        if problem:
            return f"holds a {problem}"
    if not isinstance(record.get("model_override"), (str, type(None))):
        return "holds a model_override that is not a model spec"
    if not isinstance(record.get("tags", {}), dict):
        return "holds tags that are not a KEY: VALUE table"
    return None


def pool(paths: list[str | Path], rule: SegmentRule = SegmentRule()) -> Observations:
    """Load and pool capture sessions of one sheet; a :class:`UserError` when they do not match.

    Args:
        paths: capture folders.
        rule: how each session's lines are cut into segments (the intervals' clusters).
    """
    if not paths:
        raise UserError("give at least one capture directory")
    seen: dict[Path, str] = {}
    for p in paths:
        key = Path(p).resolve()
        if key in seen:  # pooled twice, its frames would count twice and every interval shrink by √2
            raise UserError(f"capture folder {p} is given twice (also as {seen[key]}); give each session once")
        seen[key] = str(p)
    sessions = [load_session(p) for p in paths]
    overrides = {s.record.get("model_override") for s in sessions}
    if len(overrides) > 1:
        names = ", ".join(sorted("the sheet's own models" if o is None else str(o) for o in overrides))
        raise UserError(f"these sessions were classified by different models ({names}); report them separately")
    override = overrides.pop()
    manifest = sessions[0].record["manifest"]
    # a tile photographed under `capture --model X` was classified by X, not by its own model
    tiles = {t["tile_id"]: ({**t, "photo_model": override} if override else t) for t in manifest["tiles"]}
    obs = Observations(sessions, tiles)
    for n, s in enumerate(sessions):
        if s.record["manifest"].get("sheet_id") != manifest.get("sheet_id"):
            raise UserError(f"{s.path} captured sheet {s.record['manifest'].get('sheet_id')}, not {manifest.get('sheet_id')}; "
                            "report one sheet at a time")
        for line in s.lines:
            if line["tile_id"] not in tiles:
                raise UserError(f"{s.path}: the log names tile {line['tile_id']!r}, which the sheet's manifest does not have")
        segments = assign_segments(s.lines, rule, capture_times(s.lines, s.record.get("source")))
        for line, segment in zip(s.lines, segments):
            obs.lines.append({**line, "_session": n, "_tags": s.record.get("tags", {}), "_cluster": (n, segment)})
    return obs


def goal_outcome(tile: dict):
    """The rate a tile is judged by, ``(name, outcome of a found line)``: accuracy for a clean
    control, targeted success for a targeted tile, untargeted success for another."""
    true, target = tile["true_class"], tile.get("target_class")
    if tile["kind"] == "clean":
        return "accuracy", lambda l: not is_fooled(l["pred"], true)
    if target:
        return "targeted_success", lambda l: attack_succeeded(l["pred"], true, target)
    return "untargeted_success", lambda l: is_fooled(l["pred"], true)


def _rate(lines: list[dict], outcome) -> dict:
    """The clustered rate of ``outcome(line)`` over ``lines`` (clusters: their segments)."""
    return clustered_rate([bool(outcome(l)) for l in lines], [l["_cluster"] for l in lines]).to_json()


def tile_stats(tile: dict, lines: list[dict]) -> dict:
    """Rates of one tile over its lines: detection (over lines logged), and over found frames
    targeted and untargeted success (adversarial) or accuracy (clean).

    Returns:
        The scalar rates (``None`` where undefined), ``ci`` (their 95 % intervals) and ``rates``
        (each rate in full: k, n, clusters, icc, n_eff, ci95, method).
    """
    found = [l for l in lines if l["found"]]
    true, target = tile["true_class"], tile.get("target_class")
    rates = {"detection_rate": _rate(lines, lambda l: l["found"])}
    if tile["kind"] == "clean":
        rates["accuracy"] = _rate(found, lambda l: not is_fooled(l["pred"], true))
    else:
        rates["untargeted_success"] = _rate(found, lambda l: is_fooled(l["pred"], true))
        if target:
            rates["targeted_success"] = _rate(found, lambda l: attack_succeeded(l["pred"], true, target))
    return {
        "tile_id": tile["tile_id"], "kind": tile["kind"], "run": tile["run"], "true_class": true,
        "target_class": target, "attack": attack_label(tile), "blackbox": tile.get("blackbox"),
        "model": tile_model(tile),
        "frames": len(lines), "found": len(found),
        **{name: rates[name]["rate"] if name in rates else None
           for name in ("detection_rate", "targeted_success", "untargeted_success", "accuracy")},
        "mean_confidence": (sum(l["confidence"] for l in found) / len(found)) if found else None,
        "ci": {name: r["ci95"] for name, r in rates.items()}, "rates": rates,
    }


def _kind_summary(tiles: dict[str, dict], lines_by_tile: dict[str, list[dict]], kind: str) -> dict:
    """Rates pooled over every tile of one kind (clusters stay per tile and segment)."""
    sel = [t for t in tiles.values() if t["kind"] == kind]
    lines = [l for t in sel for l in lines_by_tile[t["tile_id"]]]
    found = [l for l in lines if l["found"]]
    out = {"tiles": len(sel), "found": len(found), "frames": len(lines)}
    if kind == "clean":
        out["accuracy"] = _rate(found, lambda l: not is_fooled(l["pred"], tiles[l["tile_id"]]["true_class"]))
    else:
        out["untargeted_success"] = _rate(found, lambda l: is_fooled(l["pred"], tiles[l["tile_id"]]["true_class"]))
        targeted = [l for l in found if tiles[l["tile_id"]].get("target_class")]
        out["targeted_success"] = _rate(targeted, lambda l: attack_succeeded(
            l["pred"], tiles[l["tile_id"]]["true_class"], tiles[l["tile_id"]]["target_class"]))
    return out


def tile_model(tile: dict) -> str | None:
    """The model that classified a tile's photos: ``capture --model``'s, else the sheet's scorer."""
    return tile.get("photo_model") or tile.get("model")


def by_model(tiles: dict[str, dict], lines_by_tile: dict[str, list[dict]]) -> dict[str, dict] | None:
    """Adversarial and clean rates pooled per classifying model — a sheet holding runs against two
    models (say ``signs`` and ``signs-hardened``) compares them before vs after; ``None`` for one model."""
    models = sorted({str(tile_model(t)) for t in tiles.values()})
    if len(models) < 2:
        return None
    out = {}
    for m in models:
        mine = {tid: t for tid, t in tiles.items() if str(tile_model(t)) == m}
        out[m] = {"adversarial": _kind_summary(mine, lines_by_tile, "adversarial"),
                  "clean": _kind_summary(mine, lines_by_tile, "clean")}
    return out


def compute_report(obs: Observations, by: str | None = None) -> dict:
    """The whole report as JSON-able data (``report.json``).

    Args:
        obs: pooled observations from :func:`pool`.
        by: a capture tag to break the per-tile rates down by.
    """
    lines_by_tile: dict[str, list[dict]] = defaultdict(list)
    for line in obs.lines:
        lines_by_tile[line["tile_id"]].append(line)
    tiles = [tile_stats(t, lines_by_tile[tid]) for tid, t in obs.tiles.items()]
    pairs = [(t, next((c for c in obs.tiles.values() if c["kind"] == "clean" and c["run"] == t["run"]), None))
             for t in obs.tiles.values() if t["kind"] == "adversarial"]
    runs, destruction = destruction_rates(pairs, lines_by_tile)
    from physical_adv.report.seen import by_seen  # it builds on this module's rates

    report = {
        "schema": SCHEMA, "created": utc_now(), "sheet_id": obs.sessions[0].record["manifest"].get("sheet_id"),
        "intervals": {"method": METHOD, "description": METHOD_TEXT, "clusters": "segments",
                      "segment_rule": {"max_move": SegmentRule().max_move, "max_gap_s": SegmentRule().max_gap_s}},
        "denominators": DENOMINATOR_TEXT,
        "sessions": [{"path": str(s.path), "tags": s.record.get("tags", {}), "lines": len(s.lines), "skipped_lines": s.skipped,
                      "not_in_view_lines": s.not_in_view, "ended": s.record.get("ended"), "source": s.record.get("source")}
                     for s in obs.sessions],
        "skipped_lines": obs.skipped, "tiles": tiles, "runs": runs,
        "summary": {"adversarial": _kind_summary(obs.tiles, lines_by_tile, "adversarial"),
                    "clean": _kind_summary(obs.tiles, lines_by_tile, "clean"), **destruction},
        "by_seen": by_seen(obs),
        "versions": software_versions(),
    }
    models = by_model(obs.tiles, lines_by_tile)
    if models is not None:
        report["by_model"] = models
    from physical_adv.report.channel import calibration_summary, simulated_vs_captured  # they build on _rate

    gap = simulated_vs_captured(obs)
    if gap is not None:
        report["simulated_vs_captured"] = gap
    calibration = calibration_summary(obs)
    if calibration is not None:
        report["calibration"] = calibration
    if by:
        groups: dict[str, list[dict]] = defaultdict(list)
        for line in obs.lines:
            groups[str(line["_tags"].get(by, "(untagged)"))].append(line)
        report["by"] = {"tag": by, "groups": {
            value: [tile_stats(t, [l for l in group if l["tile_id"] == tid]) for tid, t in obs.tiles.items()]
            for value, group in sorted(groups.items())}}
    return report


def write_report_json(report: dict, folders: list[Path]) -> list[Path]:
    """Write ``report.json`` atomically into each of ``folders``; returns the paths written."""
    paths = []
    for d in folders:
        atomic_write_json(Path(d) / "report.json", report)
        paths.append(Path(d) / "report.json")
    return paths


def run_report(cfg: ReportConfig) -> tuple[dict, Observations, Path, Path]:
    """Pool ``cfg.captures``, compute the report and write ``report.json`` and ``report.html``
    into ``cfg.out_dir`` (the HTML to ``cfg.html`` when given).

    Returns:
        ``(report, observations, json_path, html_path)``.
    """
    from physical_adv.report.html import write_html

    obs = pool(list(cfg.captures))
    report = compute_report(obs, by=cfg.by)
    (json_path,) = write_report_json(report, [cfg.out_dir])
    html_path = Path(cfg.html) if cfg.html is not None else cfg.out_dir / "report.html"
    write_html(html_path, report, obs)
    return report, obs, json_path, html_path
