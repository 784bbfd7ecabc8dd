"""Capture throughput: frames per second at 1280x720 with the ``signs`` model.

Usage: python benchmarks/capture_speed.py [--frames 300] [--conditions default] [--json]

Makes a sheet of four tiles (two quick attack runs and their controls), simulates
``--frames`` photos of it into an MP4 video, then runs ``capture --video`` on it without a
window. The figure is frames / seconds from the first frame to the last (start-up —
model loading, opening the video — excluded): video decoding and marker detection (in the
read-ahead thread), the page's and tiles' homographies, rectification per tile, one batched
classification per frame, logging. ``--conditions far`` films the sheet as a webcam at
arm's length or farther sees it (``simulate --conditions far``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from physical_adv.attack.runner import AttackConfig, run_attack
from physical_adv.capture import CaptureConfig, run_capture
from physical_adv.sheet import SheetConfig, make_sheet
from physical_adv.simulate import SimulateConfig, simulate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--conditions", default="default", help="simulate's conditions: default or far")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="capture-speed-"))
    runs = []
    for name in ("stop", "yield"):
        cfg = AttackConfig(source=f"sign:{name}", out=root / name, steps=2, samples=4, eval_samples=10, device="cpu")
        runs.append(str(run_attack(cfg, show_progress=False).out))
    sheet = make_sheet(SheetConfig(runs=tuple(runs), out=root / "sheet.pdf", previews=False))
    video = root / "sheet.mp4"
    simulate(SimulateConfig(pdf=sheet.pdf, out=root / "frames", n=args.frames, video=video,
                            conditions=args.conditions), show_progress=False)
    result = run_capture(CaptureConfig(sheet=sheet.manifest_path, video=video, out=root / "capture", window=False, device="cpu"),
                         show_progress=False)
    found = sum(c["found"] for c in result.counts.values())
    total = sum(c["frames"] for c in result.counts.values())
    out = {"conditions": args.conditions, "frames": result.frames, "fps": result.fps, "tiles_per_frame": len(result.counts), "found_rate": round(found / total, 4)}
    print(json.dumps(out) if args.json else
          f"capture --video ({args.conditions}): {result.frames} frames of 1280x720, {out['tiles_per_frame']} tiles each: {result.fps:.1f} fps "
          f"(tiles found {out['found_rate']:.1%})")


if __name__ == "__main__":
    main()
