"""ArUco detector settings and marker size for small, blurred markers, side by side.

Detection rates, false ids, corner error and time per frame of every candidate.

Usage: python benchmarks/marker_detection.py [--photos 60] [--seed 0 1] [--marker-mm 12 14 16 18]
       [--configs NAME ...] [--conditions far default] [--cache /tmp/detector-bench]
       [--threads 1] [--repeats 1] [--json]

For each marker size it makes a one-page A4 sheet of four tiles (two hand-written run
directories from ``tests/capture_sheets.write_run`` and their controls; the benchmark
imports that helper from ``tests/`` so that the sheet has no dependence on the attack code),
with a copy of ``print_templates/a4.toml`` whose ``marker_mm`` is changed. It simulates
``--photos`` photos per seed with ``simulate --conditions far`` (the sheet a tenth to under
half of a 1280x720 frame, defocus, motion blur, glare, a hand at the edge, lens distortion)
and with ``--conditions default`` (for the timing at capture-like sizes); the photos are
cached under ``--cache`` and reused when present.

Every detector configuration (:data:`CONFIGS`: ``today`` is ``make_detector`` as it was before
issue 14 — sub-pixel corners, the rest OpenCV's defaults — and the others change
some attributes of ``cv2.aruco.DetectorParameters`` from it, or detect on a 2x cubic
upscale of the grey image) runs :func:`physical_adv.markers.detect` on every photo. The
truth of a marker is its four corners projected through the frame's
``homography_mm_to_px`` and then through the simulated lens distortion. Figures per
(configuration, conditions, seed, marker size):

- ``marker_rate``: markers correctly detected / markers visible (truth centre inside the
  frame and no part covered by a hand); a correct detection has an id of the page and a
  centre within 3 px of the truth;
- ``tile_rate``: tiles wholly in the frame with at least one of their markers correctly
  detected (what capture needs to locate a tile) / tiles wholly in the frame;
- ``photos_any`` / ``photos_4``: photos with at least one / at least four correct markers;
- ``false_ids``: detections of an id of the page with a centre > 3 px from its truth, and
  ids detected twice (these mislead capture's homographies);
- ``foreign_ids``: detections with an id not on the page (capture ignores them: a pattern
  on the printed tiles or the background decoded as a marker);
- ``corner_px``: mean corner error of the correct detections;
- ``ms``: median over the photos of the time of ``detect`` per frame (the BGR frame, grey
  conversion included; the fastest of ``--repeats`` runs), OpenCV limited to ``--threads``
  threads.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from physical_adv.errors import UserError
from physical_adv.markers import Detection, Detections, detect, dictionary
from physical_adv.sheet import SheetConfig, make_sheet
from physical_adv.sheet.layout import TEMPLATE_DIR, grid, load_template
from physical_adv.simulate import GROUND_TRUTH, SimulateConfig, _distort_points, simulate

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from capture_sheets import write_run  # noqa: E402  (hand-written run directories, see the docs)

CENTRE_TOLERANCE_PX = 3.0
_CORNERS = np.float64([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]])

TODAY = {"cornerRefinementMethod": cv2.aruco.CORNER_REFINE_SUBPIX, "relativeCornerRefinmentWinSize": 0.8}
WIN = {"adaptiveThreshWinSizeMin": 3, "adaptiveThreshWinSizeMax": 33, "adaptiveThreshWinSizeStep": 5}
SMALL = {"minMarkerPerimeterRate": 0.01}
WIN5 = {"adaptiveThreshWinSizeMin": 5, "adaptiveThreshWinSizeMax": 35, "adaptiveThreshWinSizeStep": 6}
SAMPLING = {"perspectiveRemovePixelPerCell": 8, "perspectiveRemoveIgnoredMarginPerCell": 0.25}
# what this benchmark recommended (with 18 mm markers); physical_adv.markers.make_detector ships
# SAMPLING only: the threshold windows decoded ~2 % more markers here but found no more tiles
# end to end (benchmarks/finding.py), with slightly worse corners
RECOMMENDED = {**SAMPLING, "adaptiveThreshWinSizeMin": 7, "adaptiveThreshWinSizeMax": 27, "adaptiveThreshWinSizeStep": 10}


@dataclass(frozen=True)
class Candidate:
    """One detector configuration: attributes set on ``DetectorParameters`` after today's
    settings, and whether to detect on a 2x upscaled grey image."""

    params: dict = field(default_factory=dict)
    upscale: bool = False

    def detector(self):
        """A fresh ``cv2.aruco.ArucoDetector`` for the default dictionary with these settings."""
        params = cv2.aruco.DetectorParameters()
        for key, value in {**TODAY, **self.params}.items():
            setattr(params, key, value)
        return cv2.aruco.ArucoDetector(dictionary(), params)


CONFIGS: dict[str, Candidate] = {
    "today": Candidate(),
    "win3-33-5": Candidate(WIN),
    "win3-53-10": Candidate({"adaptiveThreshWinSizeMin": 3, "adaptiveThreshWinSizeMax": 53, "adaptiveThreshWinSizeStep": 10}),
    "win5-35-6": Candidate(WIN5),
    "perim0.01": Candidate({"minMarkerPerimeterRate": 0.01}),
    "perim0.015": Candidate({"minMarkerPerimeterRate": 0.015}),
    "perim0.02": Candidate({"minMarkerPerimeterRate": 0.02}),
    "poly0.05": Candidate({"polygonalApproxAccuracyRate": 0.05}),
    "cornerdist0.02": Candidate({"minCornerDistanceRate": 0.02}),
    "ppc8": Candidate({"perspectiveRemovePixelPerCell": 8}),
    "margin0.25": Candidate({"perspectiveRemoveIgnoredMarginPerCell": 0.25}),
    "ecr0.8": Candidate({"errorCorrectionRate": 0.8}),
    "ecr1.0": Candidate({"errorCorrectionRate": 1.0}),
    "borderbits0.5": Candidate({"maxErroneousBitsInBorderRate": 0.5}),
    "otsu3": Candidate({"minOtsuStdDev": 3.0}),
    "const5": Candidate({"adaptiveThreshConstant": 5}),
    "const10": Candidate({"adaptiveThreshConstant": 10}),
    "contour": Candidate({"cornerRefinementMethod": cv2.aruco.CORNER_REFINE_CONTOUR}),
    "apriltag": Candidate({"cornerRefinementMethod": cv2.aruco.CORNER_REFINE_APRILTAG}),
    "subpix-rel0.5": Candidate({"relativeCornerRefinmentWinSize": 0.5}),
    "subpix-win3": Candidate({"cornerRefinementWinSize": 3}),
    "aruco3": Candidate({"useAruco3Detection": True}),
    "aruco3-small": Candidate({"useAruco3Detection": True, "minMarkerLengthRatioOriginalImg": 0.0,
                               "minSideLengthCanonicalImg": 16}),
    "upscale2x": Candidate(upscale=True),
    "win+perim": Candidate({**WIN, **SMALL}),
    "win+perim+ppc8": Candidate({**WIN, **SMALL, "perspectiveRemovePixelPerCell": 8}),
    "win+perim+margin": Candidate({**WIN, **SMALL, "perspectiveRemoveIgnoredMarginPerCell": 0.25}),
    "win+perim+poly": Candidate({**WIN, **SMALL, "polygonalApproxAccuracyRate": 0.05}),
    "upscale2x+win+perim": Candidate({**WIN, **SMALL}, upscale=True),
    "ppc6": Candidate({"perspectiveRemovePixelPerCell": 6}),
    "ppc10": Candidate({"perspectiveRemovePixelPerCell": 10}),
    "margin0.3": Candidate({"perspectiveRemoveIgnoredMarginPerCell": 0.3}),
    "ppc8+margin0.25": Candidate(SAMPLING),
    "ppc8+margin0.3": Candidate({**SAMPLING, "perspectiveRemoveIgnoredMarginPerCell": 0.3}),
    "ppc8+margin0.25+win5-35-6": Candidate({**SAMPLING, **WIN5}),
    "ppc8+margin0.25+win3-23-5": Candidate({**SAMPLING, "adaptiveThreshWinSizeStep": 5}),
    "ppc8+margin0.25+win5-35-6+border0.5": Candidate({**SAMPLING, **WIN5, "maxErroneousBitsInBorderRate": 0.5}),
    "ppc8+margin0.25+win5-35-10": Candidate({**SAMPLING, "adaptiveThreshWinSizeMin": 5, "adaptiveThreshWinSizeMax": 35,
                                             "adaptiveThreshWinSizeStep": 10}),
    "ppc8+margin0.25+win7-27-10": Candidate(RECOMMENDED),
    "ppc8+margin0.25+crwin8": Candidate({**SAMPLING, "cornerRefinementWinSize": 8}),
    "ppc8+margin0.25+aruco3-small": Candidate({**SAMPLING, "useAruco3Detection": True,
                                               "minMarkerLengthRatioOriginalImg": 0.0, "minSideLengthCanonicalImg": 16}),
}


def detect_with(frame: np.ndarray, detector, upscale: bool) -> Detections:
    """``detect`` on the frame, or on its 2x cubic upscale with the corners mapped back."""
    if not upscale:
        return detect(frame, detector)
    grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    big = detect(cv2.resize(grey, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC), detector)
    # index coordinates: upscaled pixel i shows the original at (i + 0.5) / 2 - 0.5
    back = tuple(Detection(d.marker_id, (d.corners + 0.5) / 2 - 0.5) for d in big.markers)
    return Detections(back, big.ambiguous)


def make_sheet_for(root: Path, marker_mm: float):
    """The benchmark's A4 sheet (four tiles) with markers of ``marker_mm``; reused when present."""
    folder = root / f"sheet-m{marker_mm:g}"
    pdf = folder / "sheet.pdf"
    if pdf.is_file() and pdf.with_suffix(".json").is_file():
        return pdf
    folder.mkdir(parents=True, exist_ok=True)
    toml = (TEMPLATE_DIR / "a4.toml").read_text()
    lines = [f"marker_mm = {marker_mm:g}" if line.startswith("marker_mm") else line for line in toml.splitlines()]
    template = folder / f"a4-m{marker_mm:g}.toml"
    template.write_text("\n".join(lines) + "\n")
    cols, rows, _, _ = grid(load_template(template))
    if cols * rows < 4:
        raise UserError(f"{marker_mm:g} mm markers leave room for {cols * rows} tiles on A4, not 4")
    runs = tuple(str(write_run(folder / f"run{i}", sign, seed=i)) for i, sign in enumerate(("stop", "speed limit 50")))
    return make_sheet(SheetConfig(runs=runs, out=pdf, template=str(template), previews=False)).pdf


def photos(root: Path, pdf: Path, conditions: str, seed: int, n: int) -> tuple[Path, dict]:
    """Simulated photos of the sheet (cached): their folder and ground truth."""
    out = root / f"{pdf.parent.name}-{conditions}-s{seed}-n{n}"
    if not (out / GROUND_TRUTH).is_file():
        simulate(SimulateConfig(pdf=pdf, out=out, n=n, seed=seed, conditions=conditions), show_progress=False)
    return out, json.loads((out / GROUND_TRUTH).read_text())


def marker_truth(frame: dict, markers: list[dict]) -> dict[int, np.ndarray]:
    """Each marker of the frame's page: its true corners TL TR BR BL in the photo, ``(4, 2)``."""
    hom = np.asarray(frame["homography_mm_to_px"], np.float64)
    cam = frame["camera"]
    truth = {}
    for m in markers:
        if m["page"] != frame["page"]:
            continue
        mm = np.asarray(m["center_mm"], np.float64) + _CORNERS * m["size_mm"]
        px = cv2.perspectiveTransform(mm.reshape(-1, 1, 2), hom).reshape(4, 2)
        truth[m["id"]] = _distort_points(px, cam["k1"], cam["focal_px"]) if cam["k1"] else px
    return truth


def score(candidate: Candidate, images: list[np.ndarray], record: dict, manifest: dict, repeats: int = 1) -> dict:
    """The figures (see the module docs) of one configuration on one set of photos; each
    photo is detected ``repeats`` times and its fastest time kept (less noise on a busy machine)."""
    detector = candidate.detector()
    w, h = record["frame_size"]
    tile_markers = {t["tile_id"]: t["marker_ids"] for t in manifest["tiles"]}
    visible = correct_visible = tiles = tiles_found = any_ = four = false = foreign = 0
    errors, times = [], []
    for image, frame in zip(images, record["frames"]):
        truth = marker_truth(frame, manifest["markers"])
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            found = detect_with(image, detector, candidate.upscale)
            best = min(best, time.perf_counter() - t0)
        times.append(best)
        correct = set()
        for d in found.markers:
            t = truth.get(d.marker_id)
            if t is None:
                foreign += 1
                continue
            if np.linalg.norm(d.centre - t.mean(0)) > CENTRE_TOLERANCE_PX:
                false += 1
                continue
            correct.add(d.marker_id)
            errors.append(float(np.linalg.norm(d.corners - t, axis=1).mean()))
        false += len(found.ambiguous)
        for mid, t in truth.items():
            c = t.mean(0)
            if 0 <= c[0] <= w - 1 and 0 <= c[1] <= h - 1 and str(mid) not in frame["markers_occluded"]:
                visible += 1
                correct_visible += mid in correct
        for tile_id in frame["tiles_in_frame"]:
            tiles += 1
            tiles_found += bool(correct & set(tile_markers[tile_id]))
        any_ += len(correct) >= 1
        four += len(correct) >= 4
    return {"marker_rate": round(correct_visible / max(visible, 1), 4), "tile_rate": round(tiles_found / max(tiles, 1), 4),
            "photos_any": any_, "photos_4": four, "photos": len(images), "false_ids": false,
            "foreign_ids": foreign,
            "corner_px": round(float(np.mean(errors)), 3) if errors else None,
            "ms": round(1000 * statistics.median(times), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=60, help="photos per conditions and seed")
    ap.add_argument("--seed", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--marker-mm", type=float, nargs="+", default=[12.0], help="marker sizes to compare")
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS), metavar="NAME",
                    help=f"configurations (default all: {', '.join(CONFIGS)})")
    ap.add_argument("--conditions", nargs="+", default=["far", "default"], choices=["far", "default"])
    ap.add_argument("--cache", type=Path, default=Path("/tmp/detector-bench"))
    ap.add_argument("--threads", type=int, default=1, help="cv2.setNumThreads for the timing")
    ap.add_argument("--repeats", type=int, default=1, help="detections per photo, the fastest timed")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    cv2.setNumThreads(args.threads)
    rows = []
    for marker_mm in args.marker_mm:
        pdf = make_sheet_for(args.cache, marker_mm)
        manifest = json.loads(pdf.with_suffix(".json").read_text())
        for conditions in args.conditions:
            for seed in args.seed:
                folder, record = photos(args.cache, pdf, conditions, seed, args.photos)
                images = [cv2.imread(str(folder / f["file"]), cv2.IMREAD_COLOR) for f in record["frames"]]
                for name in args.configs:
                    row = {"config": name, "marker_mm": marker_mm, "conditions": conditions, "seed": seed,
                           **score(CONFIGS[name], images, record, manifest, args.repeats)}
                    rows.append(row)
                    if not args.json:
                        print(f"{name:22s} {marker_mm:4g}mm {conditions:7s} s{seed}  markers {row['marker_rate']:6.1%}  "
                              f"tiles {row['tile_rate']:6.1%}  none {row['photos'] - row['photos_any']:2d}/{row['photos']}  "
                              f">=4 {row['photos_4']:2d}  false {row['false_ids']:2d}  foreign {row['foreign_ids']:2d}  "
                              f"corner {row['corner_px'] if row['corner_px'] is not None else float('nan'):.3f}px  "
                              f"{row['ms']:6.2f} ms", flush=True)
    if args.json:
        print(json.dumps({"photos": args.photos, "threads": args.threads, "rows": rows}))


if __name__ == "__main__":
    main()
