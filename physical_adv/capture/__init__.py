"""``physical-adv capture``: photos of a printed sheet → markers → rectified tiles → the
classifier → an append-only log, one JSON line per (frame, tile).

The session folder holds ``session.json`` (source, manifest copy, model, tags, versions;
rewritten atomically at the end with the totals), ``detections.jsonl`` (flushed after
every frame, so Ctrl-C, a crash or an unplugged camera leave every complete line
readable), ``crops/`` (a sample of rectified tiles for the report's gallery) and, for a
live camera, ``frames/`` (every N-th frame and those saved with the space bar).
"""

from __future__ import annotations

import json
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from physical_adv.artifacts import atomic_write_bytes, atomic_write_json, software_versions, utc_now
from physical_adv.capture.locate import Locator, box_crop, rectify
from physical_adv.capture.sources import Camera, ImageFolder, Source, VideoFile
from physical_adv.errors import UserError
from physical_adv.images import to_batch
from physical_adv.manifest import read_manifest
from physical_adv.markers import Detection, make_detector
from physical_adv.models import load_model
from physical_adv.ui import console, make_progress

SCHEMA = 1
CROP_SAMPLES_PER_TILE = 24  # crops kept per tile for the gallery


@dataclass(frozen=True)
class CaptureConfig:
    sheet: Path
    camera: int | None = None
    video: Path | None = None
    images: Path | None = None
    model: str | None = None
    out: Path | None = None
    window: bool = True
    every: int = 30
    tags: tuple[tuple[str, str], ...] = ()
    crop: str = "rectified"
    save_frames: bool = False
    device: str = "auto"
    max_frames: int | None = None

    def __post_init__(self) -> None:
        given = [v is not None for v in (self.camera, self.video, self.images)]
        if sum(given) != 1:
            raise ValueError("give exactly one source: --camera N, --video FILE or --images DIR")
        if self.crop not in ("rectified", "box"):
            raise ValueError(f"crop must be rectified or box, got {self.crop!r}")
        if self.every < 1:
            raise ValueError(f"every must be ≥ 1, got {self.every}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError("max frames must be ≥ 1")


@dataclass
class CaptureResult:
    out: Path
    frames: int
    fps: float
    counts: dict = field(default_factory=dict)


def _open_source(cfg: CaptureConfig) -> Source:
    if cfg.images is not None:
        return ImageFolder(cfg.images)
    if cfg.video is not None:
        return VideoFile(cfg.video)
    return Camera(int(cfg.camera))


def _gui_available() -> bool:
    """Whether a live window can open: a display exists and OpenCV was built with a GUI."""
    import os
    import sys

    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False  # Qt/GTK would abort the process rather than raise
    gui = [line for line in cv2.getBuildInformation().splitlines() if line.strip().startswith("GUI:")]
    if gui and "NONE" in gui[0].upper():
        return False
    try:
        cv2.namedWindow("physical-adv capture", cv2.WINDOW_NORMAL)
        return True
    except cv2.error:
        return False


def run_capture(cfg: CaptureConfig, show_progress: bool = True) -> CaptureResult:
    """Run a capture session (see module docs) until the source ends, ``q`` or Ctrl-C."""
    manifest = read_manifest(cfg.sheet)
    specs = sorted({t["model"] for t in manifest["tiles"]})
    spec = cfg.model or specs[0]
    if cfg.model is None and len(specs) > 1:
        console.print(f"[yellow]warning:[/] the sheet names several models ({', '.join(specs)}); using {spec} (choose with --model)")
    known = manifest.get("models", {}).get(spec, {})
    model = load_model(spec, cfg.device, classes=known.get("class_names"), input_size=known.get("input_size"))
    names = model.class_names
    for t in manifest["tiles"]:
        if t["true_class"] not in names:
            raise UserError(f"tile {t['tile_id']}'s class {t['true_class']!r} is not a class of model {spec}")
    source = _open_source(cfg)
    out = Path(cfg.out) if cfg.out else Path("captures") / time.strftime("%Y%m%d-%H%M%S")
    if out.exists() and any(out.iterdir()):
        source.close()
        raise UserError(f"capture folder {out} already exists and is not empty; choose another --out")
    (out / "crops").mkdir(parents=True, exist_ok=True)
    tiles = {t["tile_id"]: t for t in manifest["tiles"]}
    session = {
        "schema": SCHEMA, "kind": "capture", "started": utc_now(), "source": source.describe(),
        "sheet": str(cfg.sheet), "manifest": manifest, "model": {"spec": spec, "input_size": model.input_size},
        "crop": cfg.crop, "tags": dict(cfg.tags), "versions": software_versions(), "device": str(model.device),
    }
    atomic_write_json(out / "session.json", session)
    window = cfg.window and _gui_available()
    if cfg.window and not window:
        console.print("no display or OpenCV without GUI: capturing without the live window")
    locator, detector = Locator(manifest), make_detector(manifest["aruco_dictionary"])
    saved_crops = {tid: 0 for tid in tiles}
    counts = {tid: {"found": 0, "fooled": 0, "frames": 0} for tid in tiles}
    frames_done, t_first, ended = 0, None, "source ended"
    previous_sigterm = signal.signal(signal.SIGTERM, _raise_interrupt) if _in_main_thread() else None
    log = open(out / "detections.jsonl", "a", encoding="utf-8")
    try:
        with make_progress(disable=not show_progress or source.live) as progress:
            task = progress.add_task("capture", total=getattr(source, "files", None) and len(source.files), info="")
            for frame, ref in source.frames():
                now = time.time()
                if t_first is None:
                    t_first = time.perf_counter()
                lines, overlay = _process_frame(frame, ref, frames_done, now, cfg, out, model, locator, detector,
                                                tiles, saved_crops, counts)
                log.write("".join(json.dumps(line) + "\n" for line in lines))
                log.flush()
                frames_done += 1
                fps = frames_done / max(time.perf_counter() - t_first, 1e-9)
                progress.update(task, advance=1, info=f"{fps:.1f} fps")
                save_now = source.live and frames_done % cfg.every == 0
                if window:
                    key = _show(frame, overlay, counts, fps)
                    if key == ord("q"):
                        ended = "quit"
                        break
                    save_now = save_now or key == ord(" ")
                if save_now or (cfg.save_frames and not source.live):
                    _save_frame(out, frames_done - 1, frame)
                if cfg.max_frames and frames_done >= cfg.max_frames:
                    ended = "max frames"
                    break
    except KeyboardInterrupt:
        ended = "interrupted"
    finally:
        log.close()
        source.close()
        if window:
            cv2.destroyAllWindows()
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
        elapsed = time.perf_counter() - t_first if t_first else 0.0
        session.update(ended=ended, finished=utc_now(), frames=frames_done,
                       fps=round(frames_done / elapsed, 2) if elapsed else None, counts=counts)
        atomic_write_json(out / "session.json", session)
    return CaptureResult(out, frames_done, session["fps"] or 0.0, counts)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _raise_interrupt(signum, frame):  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt


def _process_frame(frame, ref, index, now, cfg, out, model, locator, detector, tiles, saved_crops, counts):
    grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    corners, ids, _ = detector.detectMarkers(grey)
    detections = [] if ids is None else [Detection(int(i), c.reshape(4, 2)) for c, i in zip(corners, ids.ravel())]
    views = locator.locate(detections, (frame.shape[1], frame.shape[0]))
    found = [v for v in views if v.found]
    crops = []
    for v in found:
        crop = rectify(frame, v, tiles[v.tile_id]["bbox_mm"], model.input_size) if cfg.crop == "rectified" else box_crop(frame, v, model.input_size)
        crops.append(crop)
    preds = []
    if crops:
        batch = to_batch(np.stack(crops)[..., ::-1]).to(model.device)
        with torch.no_grad():
            probs = torch.softmax(model(batch), 1).cpu()
        top = probs.topk(min(5, probs.shape[1]), 1)
        preds = [(vals.tolist(), idx.tolist()) for vals, idx in zip(top.values, top.indices)]
    lines, overlay = [], []
    by_id = {v.tile_id: (v, crops[i], preds[i]) for i, v in enumerate(found)}
    for v in views:
        tile = tiles[v.tile_id]
        line = {"frame": index, "time": round(now, 3), "tile_id": v.tile_id, "found": v.found,
                "markers_used": v.markers_used, "source": ref}
        counts[v.tile_id]["frames"] += 1
        if not v.found:
            line["reason"] = v.reason
        else:
            _, crop, (vals, idx) = by_id[v.tile_id]
            names = model.class_names
            pred = names[idx[0]]
            fooled = pred != tile["true_class"]
            counts[v.tile_id]["found"] += 1
            counts[v.tile_id]["fooled"] += int(fooled)
            line.update(reprojection_px=round(v.reprojection_px, 3), corners_px=np.round(v.corners_px, 2).tolist(),
                        pred=pred, confidence=round(vals[0], 5),
                        top5=[{"class": names[i], "prob": round(p, 5)} for p, i in zip(vals, idx)],
                        crop=_maybe_save_crop(out, v.tile_id, index, crop, saved_crops))
            overlay.append((v, pred, vals[0], fooled))
        lines.append(line)
    return lines, overlay


def _maybe_save_crop(out: Path, tile_id: str, index: int, crop: np.ndarray, saved: dict) -> str | None:
    n = saved[tile_id]
    if n >= CROP_SAMPLES_PER_TILE or (n >= 4 and index % 10):
        return None
    rel = Path("crops") / tile_id / f"frame_{index:06d}.png"
    (out / rel).parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", crop)
    atomic_write_bytes(out / rel, buf.tobytes())
    saved[tile_id] = n + 1
    return str(rel)


def _save_frame(out: Path, index: int, frame: np.ndarray) -> None:
    ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 92])
    atomic_write_bytes(out / "frames" / f"frame_{index:06d}.jpg", buf.tobytes())


def _show(frame, overlay, counts, fps) -> int:
    view = frame.copy()
    for v, pred, conf, fooled in overlay:
        colour = (40, 40, 230) if fooled else (60, 200, 60)
        pts = np.round(v.corners_px).astype(np.int32)
        cv2.polylines(view, [pts], True, colour, 3, cv2.LINE_AA)
        x, y = pts[:, 0].min(), pts[:, 1].min() - 8
        cv2.putText(view, f"{v.tile_id} {pred} {conf:.2f}", (int(x), int(y)), cv2.FONT_HERSHEY_SIMPLEX, 0.6, colour, 2, cv2.LINE_AA)
    y = 24
    for tid, c in counts.items():
        rate = c["fooled"] / c["found"] if c["found"] else 0.0
        cv2.putText(view, f"tile {tid}: fooled {c['fooled']}/{c['found']} ({rate:.0%}) found {c['found']}/{c['frames']}",
                    (10, y), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 2, cv2.LINE_AA)
        y += 22
    cv2.putText(view, f"{fps:.1f} fps   space: save frame   q: quit", (10, y + 6), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 0), 2, cv2.LINE_AA)
    cv2.imshow("physical-adv capture", view)
    return cv2.waitKey(1) & 0xFF
