"""What the report says about the printer and camera channel: the colour calibration fitted
from the sessions' chart readings, and each tile's survival in simulated photos beside its
survival in photographed ones.

A session is **simulated** when its photos came from ``physical-adv simulate`` (the photo
folder holds simulate's ``ground_truth.json``), else **photographed**. When the pooled
sessions hold both, ``simulated_vs_captured`` gives every tile's rate at its goal (targeted
success for a targeted tile, untargeted success for another adversarial tile, accuracy for a
control) in each, and the gap (photographed − simulated): the gap says whether the simulator
can be trusted for this printer.

``calibration`` is :func:`physical_adv.calibrate.calibrate` run on the sessions' chart
readings (those of photographed sessions when there are any: a simulated chart calibrates
the simulator): the held-out error, the spread, and the grey ramp as observed and as
fitted, for the plot; ``{"error": …}`` when the readings do not suffice, absent when no
session read a chart.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from physical_adv.errors import UserError
from physical_adv.report import Observations, _rate, goal_outcome


def is_simulated(record: dict) -> bool:
    """Whether a capture session's photos were made by ``simulate``."""
    source = record.get("source") if isinstance(record, dict) else None
    folder = source.get("folder") if isinstance(source, dict) else None
    if not isinstance(folder, str):
        return False
    try:
        truth = json.loads((Path(folder) / "ground_truth.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(truth, dict) and truth.get("kind") == "simulate"


def simulated_vs_captured(obs: Observations) -> list[dict] | None:
    """Per tile, its goal's rate over found lines of simulated and of photographed sessions
    (with the clustered intervals) and the gap; ``None`` unless both kinds of session exist."""
    simulated = {n for n, s in enumerate(obs.sessions) if is_simulated(s.record)}
    if not simulated or len(simulated) == len(obs.sessions):
        return None
    rows = []
    for tid, tile in obs.tiles.items():
        name, outcome = goal_outcome(tile)
        found = [l for l in obs.lines if l["tile_id"] == tid and l["found"]]
        sim = _rate([l for l in found if l["_session"] in simulated], outcome)
        cap = _rate([l for l in found if l["_session"] not in simulated], outcome)
        gap = None if sim["rate"] is None or cap["rate"] is None else round(cap["rate"] - sim["rate"], 4)
        rows.append({"tile_id": tid, "kind": tile["kind"], "rate": name, "simulated": sim, "captured": cap, "gap": gap})
    return rows


def calibration_summary(obs: Observations) -> dict | None:
    """The colour channel fitted from the sessions' chart readings (see the module docs)."""
    from physical_adv.calibrate import calibrate, load_readings

    with_chart = [s for s in obs.sessions if (s.path / "chart.jsonl").is_file()]
    if not with_chart:
        return None
    photographed = [s for s in with_chart if not is_simulated(s.record)]
    chosen = photographed or with_chart
    try:
        cal = calibrate(load_readings([s.path for s in chosen]))
    except UserError as exc:
        return {"error": str(exc)}
    greys = [i for i, p in enumerate(cal.printed) if np.ptp(p) == 0]
    ramp = np.linspace(0, 1, 33)
    return {"sessions": [str(s.path) for s in chosen], "photographed": bool(photographed), "frames": cal.frames,
            "heldout_error": round(cal.heldout_error, 3), "train_error": round(cal.train_error, 3),
            "spread": [round(float(v), 3) for v in cal.spread],
            "greys": {"printed": [round(float(cal.printed[i, 0]), 4) for i in greys],
                      "observed": [[None if not np.isfinite(v) else round(float(v), 4) for v in cal.observed[i]] for i in greys]},
            "fitted_ramp": {"printed": [round(float(v), 4) for v in ramp],
                            "predicted": cal.model.apply(np.repeat(ramp[:, None], 3, 1)).round(4).tolist()},
            "residuals": [None if not np.isfinite(e) else round(float(e), 3) for e in cal.per_patch_error],
            "held_out": cal.held_out.tolist()}
