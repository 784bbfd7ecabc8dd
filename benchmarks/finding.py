"""Finding the sheet: how often capture finds each tile that a person could read, on
``simulate`` photos, side by side with another checkout's capture on the same photos.

Usage: python benchmarks/finding.py [--conditions far default] [--seeds 5 6 7] [--photos 60]
       [--marker-mm 18] [--baseline PATH_TO_OTHER_CHECKOUT] [--json]

Makes a one-page sheet of four tiles (two hand-made run directories and their controls, as
the capture tests do), simulates ``--photos`` photos per seed and condition (``far``: the
sheet a tenth to under half of a 1280x720 frame, strong defocus and motion blur, a hand at
the edge, glare, lens distortion; ``default``: a third to all of the frame), then runs
``capture`` on them. A tile is *eligible* in a photo when it lies wholly inside the frame
and its apparent side (ground truth) is at least the model's 64 px input; the figure is
found / eligible, pooled over seeds, with the corner error of the found ones (the capture
tests' measure: the worst corner's distance from the truth, in pixels of the 64 px model
input; share within 2 px), photos with no line at all (not one marker seen), how well the
logged viewing geometry matches the truth, and how many smaller-than-input tiles were found
and flagged ``undersampled``; and the found rate apart from photos with motion blur of 9 px
or more (where markers' cells, 3–4 px on a far sheet, are smeared across three cells). ``--baseline`` runs the same photos through the capture of
another source checkout (e.g. a ``git worktree`` of an earlier commit) in a subprocess.
The seeds here (5, 6, 7 by default) are not those the detector settings were chosen on (0, 1).
``--marker-mm`` prints the sheet with markers of that size (the A4 template's otherwise;
12 mm was the default before 18 mm).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from capture_sheets import make_test_sheet  # noqa: E402  (the capture tests' hand-made sheet)

from physical_adv.simulate import SimulateConfig, simulate  # noqa: E402

INPUT = 64
HEAVY_MOTION_PX = 9  # motion blur this long smears a 3-4 px marker cell across three cells
CAPTURE = ("from physical_adv.capture import CaptureConfig, run_capture; import sys; "
           "run_capture(CaptureConfig(sheet=sys.argv[1], images=sys.argv[2], out=sys.argv[3], window=False, device='cpu'), "
           "show_progress=False)")


def capture(sheet: Path, photos: Path, out: Path, checkout: Path | None) -> list[dict]:
    """Run capture (this checkout's, or ``checkout``'s) on ``photos``; its log lines."""
    env = dict(os.environ)
    if checkout is not None:
        env["PYTHONPATH"] = str(checkout)
    subprocess.run([sys.executable, "-c", CAPTURE, str(sheet), str(photos), str(out)], check=True, env=env,
                   cwd=checkout or Path.cwd(), stderr=subprocess.DEVNULL)
    return [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]


def score(record: dict, lines: list[dict]) -> dict:
    """Found / eligible and the rest of the figures for one set of photos."""
    got = {(l["frame"], l["tile_id"]): l for l in lines}
    eligible = found = small = small_found = flagged = 0
    heavy = {"eligible": 0, "found": 0}  # photos with motion blur of HEAVY_MOTION_PX or more
    errors, angle_err, dist_ratio = [], [], []
    frames_with_line = {l["frame"] for l in lines}
    for i, frame in enumerate(record["frames"]):
        for tid in frame["tiles_in_frame"]:
            truth = frame["tiles_seen"][tid]
            line = got.get((i, tid))
            ok = bool(line and line["found"])
            if truth["size_px"] >= INPUT:
                eligible += 1
                found += ok
                if frame["camera"].get("motion_px", 0) >= HEAVY_MOTION_PX:
                    heavy["eligible"] += 1
                    heavy["found"] += ok
            else:
                small += 1
                small_found += ok
                flagged += bool(ok and line.get("undersampled"))
            if ok:
                gt = np.array(frame["tile_corners_px"][tid])
                side = np.sqrt(cv2.contourArea(gt.astype(np.float32)))
                errors.append(np.abs(np.array(line["corners_px"]) - gt).max() * INPUT / side)
                if line.get("angle_deg") is not None:
                    angle_err.append(abs(line["angle_deg"] - truth["angle_deg"]))
                    dist_ratio.append(line["distance_mm"] / truth["distance_mm"])
    errors = np.array(errors)
    return {"eligible": eligible, "found": found, "photos": len(record["frames"]),
            "heavy_motion_eligible": heavy["eligible"], "heavy_motion_found": heavy["found"],
            "photos_without_a_line": len(record["frames"]) - len(frames_with_line),
            "corner_within_2px": float(np.mean(errors <= 2)) if len(errors) else None,
            "corner_p95": float(np.percentile(errors, 95)) if len(errors) else None,
            "small": small, "small_found": small_found, "small_flagged_undersampled": flagged,
            "angle_error_deg_median": float(np.median(angle_err)) if angle_err else None,
            "angle_error_deg_p90": float(np.percentile(angle_err, 90)) if angle_err else None,
            "distance_ratio_p10_p50_p90": [float(v) for v in np.percentile(dist_ratio, [10, 50, 90])] if dist_ratio else None}


def pooled(parts: list[dict]) -> dict:
    """Counts summed over seeds; the error figures as the list over seeds."""
    keys = ("eligible", "found", "photos", "photos_without_a_line", "small", "small_found", "small_flagged_undersampled",
            "heavy_motion_eligible", "heavy_motion_found")
    out = {k: sum(p[k] for p in parts) for k in keys}
    out["found_rate"] = round(out["found"] / max(out["eligible"], 1), 4)
    rest = out["eligible"] - out["heavy_motion_eligible"]
    out["found_rate_without_heavy_motion"] = round((out["found"] - out["heavy_motion_found"]) / max(rest, 1), 4)
    for k in ("corner_within_2px", "corner_p95", "angle_error_deg_median", "angle_error_deg_p90"):
        out[k] = [None if p[k] is None else round(p[k], 3) for p in parts]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conditions", nargs="+", default=["far", "default"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[5, 6, 7])
    ap.add_argument("--photos", type=int, default=60)
    ap.add_argument("--marker-mm", type=float, help="markers of this size (default: the a4 template's)")
    ap.add_argument("--baseline", type=Path, help="another source checkout whose capture to run side by side")
    ap.add_argument("--work", type=Path, help="keep photos and captures here (default: a temporary folder)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    root = args.work or Path(tempfile.mkdtemp(prefix="finding-"))
    template = "a4"
    if args.marker_mm:
        template = root / "template.toml"
        template.parent.mkdir(parents=True, exist_ok=True)
        template.write_text(f'page_mm = [210.0, 297.0]\nmarker_mm = {args.marker_mm}\ndistance_mm = 500.0\n')
    sheet = make_test_sheet(root / "sheet", template=str(template))
    result = {"photos_per_seed": args.photos, "seeds": args.seeds, "input_px": INPUT,
              "marker_mm": sheet.manifest["markers"][0]["size_mm"], "conditions": {}}
    for cond in args.conditions:
        parts: dict[str, list] = {"this": [], "baseline": []}
        for seed in args.seeds:
            photos = root / f"{cond}-{seed}"
            record = simulate(SimulateConfig(pdf=sheet.pdf, out=photos, n=args.photos, seed=seed, conditions=cond),
                              show_progress=False)
            parts["this"].append(score(record, capture(sheet.manifest_path, photos, root / f"cap-{cond}-{seed}", None)))
            if args.baseline:
                lines = capture(sheet.manifest_path, photos, root / f"base-{cond}-{seed}", args.baseline.resolve())
                parts["baseline"].append(score(record, lines))
        result["conditions"][cond] = {name: pooled(p) for name, p in parts.items() if p}
    if args.json:
        print(json.dumps(result, indent=1))
        return
    for cond, rows in result["conditions"].items():
        for name, r in rows.items():
            print(f"{cond:8s} {name:8s}: found {r['found']}/{r['eligible']} = {r['found_rate']:.1%} of tiles in frame and "
                  f"≥ {INPUT} px; photos with no line {r['photos_without_a_line']}/{r['photos']}; corners within 2 px "
                  f"{r['corner_within_2px']}; smaller tiles found {r['small_found']}/{r['small']}; without motion blur ≥ "
                  f"{HEAVY_MOTION_PX} px {r['found_rate_without_heavy_motion']:.1%}, with it "
                  f"{r['heavy_motion_found']}/{r['heavy_motion_eligible']}")


if __name__ == "__main__":
    main()
