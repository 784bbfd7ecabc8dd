"""``physical-adv capture``: photos of a printed sheet → markers → rectified tiles → the
classifier → an append-only log, one JSON line per (frame, tile).

Each tile is classified by its own model, the one its manifest entry names (each model
loaded once, the found tiles of a frame batched per model); ``--model SPEC`` classifies
every tile with that one model instead (recorded as ``model_override`` in session.json).

**Which (frame, tile) pairs get a line** — the denominator of the detection rate: a tile
gets a line in a frame only when its page is in view, i.e. at least one marker of that page
was detected in the frame. A frame in which no marker of the sheet is seen adds no line at
all (it is still counted in session.json's ``frames``). A tile with a line is ``found`` when
it could be located from at least one of its markers and lies wholly inside the frame;
otherwise ``found`` is false and ``reason`` says why. A marker id detected more than once in
a frame (a second printed copy of the sheet in view) is ambiguous there: it is not used for
locating, and the line of each tile it belongs to lists it under ``ambiguous_markers``.

The session folder holds ``session.json`` (source, manifest copy, models, tags, versions;
rewritten atomically at the end with the totals), ``detections.jsonl`` (flushed after
every frame, so Ctrl-C, a crash or an unplugged camera leave every complete line
readable), ``chart.jsonl`` when the sheet carries a calibration chart (one line per frame in
which the chart was read: each patch's colour, :mod:`physical_adv.capture.chart`), ``crops/`` (a sample of rectified tiles for the report's gallery) and, for a
live camera, ``frames/`` (every N-th frame and those saved with the space bar).
"""

from __future__ import annotations

import contextlib
import json
import queue
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from physical_adv.artifacts import atomic_write_bytes, atomic_write_json, software_versions, utc_now
from physical_adv.capture.chart import read_chart
from physical_adv.capture.locate import Intrinsics, Locator, TileView, box_crop, rectify
from physical_adv.capture.sources import Camera, ImageFolder, Source, VideoFile
from physical_adv.classes import class_index
from physical_adv.errors import UserError
from physical_adv.images import to_batch
from physical_adv.manifest import read_manifest
from physical_adv.markers import detect, make_detector, page_boards
from physical_adv.models import load_model
from physical_adv.outcome import is_fooled
from physical_adv.ui import console, make_progress

SCHEMA = 1
CROP_SAMPLES_PER_TILE = 24  # crops kept per tile for the gallery


@dataclass(frozen=True)
class CaptureConfig:
    """One capture session.

    Args:
        sheet: the sheet manifest.
        camera, video, images: the source (exactly one).
        model: a model spec that classifies every tile, overriding the manifest's per-tile models.
        out: the session folder (default ``captures/<timestamp>``; must be new or empty).
        window: show the live window when a display exists.
        every: from a live camera, save every N-th frame.
        tags: ``(key, value)`` pairs recorded with the session.
        crop: ``rectified`` (un-warp each tile) or ``box`` (its raw bounding box).
        save_frames: also copy frames from a video or photo folder.
        device: where the models run.
        max_frames: stop after this many frames.
        focal_px: the camera's focal length in pixels, when calibrated (else assumed; it only
            enters the logged viewing angle and distance).
    """

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
    focal_px: float | None = None

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
        if self.focal_px is not None and not 50 <= self.focal_px <= 100_000:
            raise ValueError(f"focal length must be in [50, 100000] px, got {self.focal_px:g}")


@dataclass
class CaptureResult:
    """A finished session: its folder, frames read, frames per second and per-tile counts
    (``frames`` observed with the page in view, ``found``, ``fooled``)."""

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


def _load_models(manifest: dict, cfg: CaptureConfig) -> tuple[dict, dict[str, str]]:
    """Each model the session needs, loaded once.

    Args:
        manifest: the sheet manifest (its ``models`` section gives class names and input sizes).
        cfg: the capture config (``cfg.model`` overrides every tile's model).

    Returns:
        ``(models, tile_model)``: spec → loaded classifier, and tile id → the spec that classifies it.
    """
    tile_model = {t["tile_id"]: cfg.model or t["model"] for t in manifest["tiles"]}
    known = manifest.get("models") or {}
    models = {}
    for spec in sorted(set(tile_model.values())):
        entry = known.get(spec) or {}
        models[spec] = load_model(spec, cfg.device, classes=entry.get("class_names"), input_size=entry.get("input_size"))
    return models, tile_model


def _true_classes(manifest: dict, models: dict, tile_model: dict[str, str]) -> dict[str, str]:
    """Each tile's true class as its model names it; a :class:`UserError` naming the closest
    class when a tile's class is not one of its model's."""
    true = {}
    for t in manifest["tiles"]:
        spec = tile_model[t["tile_id"]]
        names = models[spec].class_names
        true[t["tile_id"]] = names[class_index(names, t["true_class"], what=f"tile {t['tile_id']}'s true", owner=f"model {spec}")]
    return true


@dataclass
class _Session:
    """What every frame of a running session needs."""

    cfg: CaptureConfig
    out: Path
    tiles: dict[str, dict]
    models: dict
    tile_model: dict[str, str]
    true_class: dict[str, str]
    locator: Locator
    saved_crops: dict[str, int] = field(default_factory=dict)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    chart: dict | None = None  # the manifest's calibration chart
    unique_frames: int = 0  # frames in which a marker of the sheet was seen exactly once
    ambiguous_frames: int = 0  # frames in which markers of the sheet were seen, every one more than once


def _session_record(cfg: CaptureConfig, source: Source, manifest: dict, models: dict, tile_model: dict) -> dict:
    used = {spec: {"input_size": m.input_size, "tiles": [t for t, s in tile_model.items() if s == spec]}
            for spec, m in models.items()}
    return {
        "schema": SCHEMA, "kind": "capture", "started": utc_now(), "source": source.describe(),
        "sheet": str(cfg.sheet), "manifest": manifest, "models": used, "model_override": cfg.model,
        "crop": cfg.crop, "tags": dict(cfg.tags), "camera": Intrinsics(cfg.focal_px).describe(),
        "versions": software_versions(),
        "device": str(next(iter(models.values())).device) if models else cfg.device,
    }


def run_capture(cfg: CaptureConfig, show_progress: bool = True) -> CaptureResult:
    """Run a capture session (see module docs) until the source ends, ``q`` or Ctrl-C.

    Args:
        cfg: the session's configuration.
        show_progress: show a progress bar (never for a live camera).

    Returns:
        The session folder, frames read, frames per second and per-tile counts.
    """
    manifest = read_manifest(cfg.sheet)
    models, tile_model = _load_models(manifest, cfg)
    true_class = _true_classes(manifest, models, tile_model)
    boards = page_boards(manifest)
    source = _open_source(cfg)
    out = Path(cfg.out) if cfg.out else Path("captures") / time.strftime("%Y%m%d-%H%M%S")
    if out.exists() and any(out.iterdir()):
        source.close()
        raise UserError(f"capture folder {out} already exists and is not empty; choose another --out")
    created = not out.exists()
    (out / "crops").mkdir(parents=True, exist_ok=True)
    tiles = {t["tile_id"]: t for t in manifest["tiles"]}
    ctx = _Session(cfg, out, tiles, models, tile_model, true_class, Locator(manifest, camera=Intrinsics(cfg.focal_px),
                                   input_sizes={t: models[s].input_size for t, s in tile_model.items()}),
                   {tid: 0 for tid in tiles},
                   {tid: {"found": 0, "fooled": 0, "frames": 0} for tid in tiles}, manifest.get("calibration"))
    session = _session_record(cfg, source, manifest, models, tile_model)
    atomic_write_json(out / "session.json", session)
    window = cfg.window and _gui_available()
    if cfg.window and not window:
        console.print("no display or OpenCV without GUI: capturing without the live window")
    frames_done, t_first, ended = 0, None, "source ended"
    previous_sigterm = signal.signal(signal.SIGTERM, _raise_interrupt) if _in_main_thread() else None
    log = open(out / "detections.jsonl", "a", encoding="utf-8")
    chart_log = open(out / "chart.jsonl", "a", encoding="utf-8") if ctx.chart else None
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, torch_threads - 1))  # a core for the read-ahead thread; the batches are tiny
    try:
        # closing: the read-ahead threads stop as soon as the loop ends, however it ends
        with (make_progress(disable=not show_progress or source.live, transient=True) as progress,
              contextlib.closing(read_ahead(source, manifest["aruco_dictionary"], boards)) as frames):
            task = progress.add_task("capture", total=getattr(source, "files", None) and len(source.files), info="")
            for frame, ref, detections in frames:
                now = time.time()
                if t_first is None:
                    t_first = time.perf_counter()
                lines, overlay, chart_line = _process_frame(frame, ref, detections, frames_done, now, ctx)
                log.write("".join(json.dumps(line) + "\n" for line in lines))
                log.flush()
                if chart_log is not None and chart_line is not None:
                    chart_log.write(json.dumps(chart_line) + "\n")
                    chart_log.flush()
                frames_done += 1
                fps = frames_done / max(time.perf_counter() - t_first, 1e-9)
                progress.update(task, advance=1, info=f"{fps:.1f} fps")
                save_now = source.live and frames_done % cfg.every == 0
                if window:
                    key = _show(frame, overlay, ctx.counts, fps)
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
        torch.set_num_threads(torch_threads)
        log.close()
        if chart_log is not None:
            chart_log.close()
        source.close()
        if window:
            cv2.destroyAllWindows()
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
        elapsed = time.perf_counter() - t_first if t_first else 0.0
        session.update(ended=ended, finished=utc_now(), frames=frames_done,
                       fps=round(frames_done / elapsed, 2) if elapsed else None, counts=ctx.counts)
        atomic_write_json(out / "session.json", session)
    if ctx.ambiguous_frames and not ctx.unique_frames:
        kept = _remove_session_files(out, created)
        raise UserError(f"in all {ctx.ambiguous_frames} frame(s) where sheet {manifest['sheet_id']}'s markers were seen, "
                        "every one was seen more than once (two printed copies in view, or another sheet from the "
                        "same ArUco dictionary), so no tile could be located; no log was kept"
                        + (f" (the saved frames are in {out / 'frames'})" if kept else ""))
    return CaptureResult(out, frames_done, session["fps"] or 0.0, ctx.counts)


def _remove_session_files(out: Path, created: bool) -> bool:
    """Remove the log, the session record and the crops a session wrote into ``out``, and
    ``out`` itself when the session made it and nothing else is left; returns whether frames
    the user saved (``frames/``) were kept."""
    for name in ("detections.jsonl", "chart.jsonl", "session.json"):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "crops", ignore_errors=True)
    kept = (out / "frames").is_dir()
    if created and not kept and not any(out.iterdir()):
        out.rmdir()
    return kept


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise_interrupt(signum, frame):  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt


_END = object()


DETECT_WORKERS = 2  # marker detection threads: decoding and detecting a 720p frame take 5 + 7 ms


def read_ahead(source: Source, dictionary: str, boards: dict | None = None, workers: int = DETECT_WORKERS,
               depth: int = 2 * DETECT_WORKERS + 1):
    """The source's frames with their markers, ``(frame, reference, detections)`` in order.

    A reader thread decodes the frames and hands each to a pool of ``workers`` detection
    threads (each with its own detectors — the strict one and the relaxed second pass of
    :func:`physical_adv.markers.detect` — sharing the read-only page boards), while the caller
    locates, classifies
    and logs earlier frames: OpenCV releases the GIL, so decoding, detection and the rest
    share the cores. The threads stop when the caller stops iterating (``q``, Ctrl-C,
    ``--max-frames``) and their errors are raised in the caller, in frame order.

    Args:
        source: where the frames come from.
        dictionary: the sheet's ArUco dictionary.
        boards: the sheet's pages (:func:`physical_adv.markers.page_boards`), to recover markers.
        workers: detection threads.
        depth: frames read ahead at most (a live camera's frames are at most this late).
    """
    from concurrent.futures import ThreadPoolExecutor

    items: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    local = threading.local()

    def find(frame: np.ndarray):
        if not hasattr(local, "detectors"):
            local.detectors = (make_detector(dictionary), make_detector(dictionary, relaxed=True))
        return detect(frame, local.detectors[0], boards=boards, relaxed=local.detectors[1])

    def put(item) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def read(pool: ThreadPoolExecutor) -> None:
        try:
            for frame, ref in source.frames():
                if not put((frame, ref, pool.submit(find, frame))):
                    return
            put(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, which raises it
            put(exc)

    with ThreadPoolExecutor(workers, thread_name_prefix="capture-detect") as pool:
        reader = threading.Thread(target=read, args=(pool,), name="capture-read", daemon=True)
        reader.start()
        try:
            while True:
                item = items.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                frame, ref, detections = item
                yield frame, ref, detections.result()
        finally:
            stop.set()
            reader.join()
            pool.shutdown(wait=True, cancel_futures=True)


def _process_frame(frame: np.ndarray, ref: dict, detections, index: int, now: float,
                   ctx: _Session) -> tuple[list[dict], list, dict | None]:
    """Locate, rectify and classify one frame from its markers.

    Returns:
        ``(lines, overlay, chart_line)``: one log line per tile whose page is in view,
        ``(view, pred, confidence, fooled)`` for each found tile (for the live window), and the
        chart's reading for ``chart.jsonl`` (``None`` when the chart was not read).
    """
    if any(d.marker_id in ctx.locator.markers for d in detections):
        ctx.unique_frames += 1
    elif any(i in ctx.locator.markers for i in detections.ambiguous):
        ctx.ambiguous_frames += 1
    fits = ctx.locator.page_fits(detections)
    views = ctx.locator.locate(detections, (frame.shape[1], frame.shape[0]), fits)
    chart, chart_line = ctx.chart, None
    if chart is not None and chart["page"] in fits:
        seen = read_chart(frame, chart, fits[chart["page"]], ctx.locator, detections)
        if seen is not None:
            chart_line = {"frame": index, "time": round(now, 3), "source": ref, **seen}
    results = _classify(frame, [v for v in views if v.found], ctx)
    lines, overlay = [], []
    for v in views:
        line = {"frame": index, "time": round(now, 3), "tile_id": v.tile_id, "found": v.found,
                "markers_used": v.markers_used, "source": ref}
        if v.ambiguous:
            line["ambiguous_markers"] = v.ambiguous
        if v.located_by:
            line["located_by"] = v.located_by
        if v.seen is not None:
            line.update(size_px=v.seen.size_px, angle_deg=v.seen.angle_deg, distance_mm=v.seen.distance_mm)
        if v.corner_sd is not None:
            line["corner_sd_px"] = round(v.corner_sd, 3) if np.isfinite(v.corner_sd) else None
        ctx.counts[v.tile_id]["frames"] += 1
        if not v.found:
            line["reason"] = v.reason
        else:
            crop, vals, names = results[v.tile_id]
            pred = names[0]
            fooled = is_fooled(pred, ctx.true_class[v.tile_id])
            ctx.counts[v.tile_id]["found"] += 1
            ctx.counts[v.tile_id]["fooled"] += int(fooled)
            line.update(reprojection_px=round(v.reprojection_px, 3), corners_px=np.round(v.corners_px, 2).tolist(),
                        undersampled=bool(v.seen is not None and v.seen.size_px < ctx.models[ctx.tile_model[v.tile_id]].input_size),
                        model=ctx.tile_model[v.tile_id], pred=pred, confidence=round(vals[0], 5),
                        top5=[{"class": n, "prob": round(p, 5)} for p, n in zip(vals, names)],
                        crop=_maybe_save_crop(ctx.out, v.tile_id, index, crop, ctx.saved_crops))
            overlay.append((v, pred, vals[0], fooled))
        lines.append(line)
    return lines, overlay, chart_line


def _classify(frame: np.ndarray, found: list[TileView], ctx: _Session) -> dict[str, tuple[np.ndarray, list, list]]:
    """Crop each found tile at its model's input size and classify it, one batch per model.

    Returns:
        tile id → ``(crop BGR uint8, top-5 probabilities, top-5 class names)``.
    """
    by_spec: dict[str, list[TileView]] = {}
    for v in found:
        by_spec.setdefault(ctx.tile_model[v.tile_id], []).append(v)
    results = {}
    for spec, views in by_spec.items():
        model = ctx.models[spec]
        if ctx.cfg.crop == "rectified":
            crops = [rectify(frame, v, ctx.tiles[v.tile_id]["bbox_mm"], model.input_size) for v in views]
        else:
            crops = [box_crop(frame, v, model.input_size) for v in views]
        batch = to_batch(np.stack(crops)[..., ::-1]).to(model.device)
        with torch.no_grad():
            probs = torch.softmax(model(batch), 1).cpu()
        top = probs.topk(min(5, probs.shape[1]), 1)
        for v, crop, vals, idx in zip(views, crops, top.values.tolist(), top.indices.tolist()):
            results[v.tile_id] = (crop, vals, [model.class_names[i] for i in idx])
    return results


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
