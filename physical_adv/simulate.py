"""``physical-adv simulate``: synthetic photos of a printed sheet, for dry runs and tests.

Written with OpenCV and numpy, apart from the EOT distribution, so that it is a fair test
of the attacks rather than a copy of what the optimiser saw. A printer model is applied
once (one print per run: tone curve, gamut and saturation loss, paper colour, dot gain),
then every photo gets its own camera: a pinhole pose with the sheet tilted up to
``max_tilt`` degrees and covering a third to all of the frame's area, a cluttered background,
a lighting gradient and exposure, white balance, defocus or motion blur, sensor noise and
JPEG. Each photo comes with its ground truth: the homography from page millimetres to
frame pixels and every tile's corners in the frame.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from physical_adv.artifacts import atomic_write_bytes, atomic_write_json, software_versions, utc_now
from physical_adv.errors import UserError
from physical_adv.manifest import read_manifest
from physical_adv.sheet.render import render_pages
from physical_adv.ui import make_progress

FRAME_W, FRAME_H = 1280, 720
RENDER_DPI = 200


@dataclass(frozen=True)
class SimulateConfig:
    pdf: Path
    out: Path
    manifest: Path | None = None
    n: int = 50
    seed: int = 0
    video: Path | None = None
    max_tilt: float = 45.0
    min_fill: float = 1 / 3

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be ≥ 1, got {self.n}")
        if not 0 <= self.max_tilt <= 70:
            raise ValueError(f"max tilt must be in [0, 70] degrees, got {self.max_tilt:g}")
        if not 0.05 <= self.min_fill <= 1:
            raise ValueError(f"min fill must be in [0.05, 1], got {self.min_fill:g}")


def _printer(rng: np.random.Generator, page: np.ndarray, px_per_mm: float) -> np.ndarray:
    """One print: a tone curve, lost saturation, paper colour and dot gain (float32 [0, 1] BGR)."""
    img = page.astype(np.float32) / 255.0
    grey = img.mean(2, keepdims=True)
    img = grey + (img - grey) * rng.uniform(0.7, 0.95)
    # an S-shaped tone curve between the ink's black and the paper's white
    black, white = rng.uniform(0.04, 0.15), rng.uniform(0.88, 0.98)
    k = rng.uniform(4.0, 7.0)
    curve = 1 / (1 + np.exp(-k * (img - 0.5)))
    lo, hi = 1 / (1 + math.exp(k * 0.5)), 1 / (1 + math.exp(-k * 0.5))
    img = black + (white - black) * (0.5 * img + 0.5 * (curve - lo) / (hi - lo))
    img = img * (1 - rng.uniform(0, 0.05, 3)).astype(np.float32)  # paper tint
    return cv2.GaussianBlur(img, (0, 0), max(0.3, 0.08 * px_per_mm))  # dot gain ≈ 0.08 mm


def _background(rng: np.random.Generator) -> np.ndarray:
    img = np.empty((FRAME_H, FRAME_W, 3), np.float32)
    t = np.linspace(0, 1, FRAME_H, dtype=np.float32)[:, None, None]
    img[:] = rng.uniform(0.1, 0.8, 3) * (1 - t) + rng.uniform(0.1, 0.8, 3) * t
    for _ in range(int(rng.integers(5, 25))):
        colour = tuple(float(v) for v in rng.uniform(0, 1, 3))
        p = rng.integers([-200, -200], [FRAME_W, FRAME_H])
        if rng.random() < 0.5:
            cv2.rectangle(img, tuple(int(v) for v in p), tuple(int(v) for v in p + rng.integers(20, 400, 2)), colour, -1)
        else:
            cv2.circle(img, tuple(int(v) for v in p), int(rng.integers(10, 200)), colour, -1, cv2.LINE_AA)
    return cv2.GaussianBlur(img, (0, 0), rng.uniform(1, 6))


def _pose(rng: np.random.Generator, page_mm: tuple[float, float], max_tilt: float, min_fill: float) -> np.ndarray:
    """Homography page-mm → frame px for a pinhole camera looking at the tilted sheet."""
    w, h = page_mm
    f = FRAME_W * rng.uniform(0.8, 1.4)  # focal length in pixels (a webcam's 50–75° field of view)
    tilt = math.radians(rng.uniform(0, max_tilt))
    axis_ang = rng.uniform(0, 2 * math.pi)
    axis = np.array([math.cos(axis_ang), math.sin(axis_ang), 0.0])
    r, _ = cv2.Rodrigues(axis * tilt)
    r = r @ cv2.Rodrigues(np.array([0, 0, math.radians(rng.uniform(-20, 20))]))[0]
    # the sheet, seen face-on, would cover this fraction of the frame's area (it may overflow
    # the frame at the top of the range: a sheet that fills the frame is cut by its edges)
    fill = rng.uniform(min_fill, 1.0)
    px_per_mm = math.sqrt(fill * FRAME_W * FRAME_H / (w * h))
    z = f / px_per_mm
    centre = np.array([rng.uniform(-0.15, 0.15) * FRAME_W * z / f, rng.uniform(-0.15, 0.15) * FRAME_H * z / f, z])
    # page point (x, y, 0) in mm → camera: R · (x − w/2, y − h/2, 0) + centre
    k = np.array([[f, 0, FRAME_W / 2], [0, f, FRAME_H / 2], [0, 0, 1.0]])
    to_centre = np.array([[1, 0, -w / 2], [0, 1, -h / 2], [0, 0, 1.0]])
    rt = np.column_stack([r[:, 0], r[:, 1], centre])
    hom = k @ rt @ to_centre
    return hom / hom[2, 2]


def _pose_with_tiles_in_frame(rng: np.random.Generator, page_mm, cfg: SimulateConfig, tiles: list[dict]) -> np.ndarray:
    """A pose in which every tile of the page is inside the frame (the sheet's margins and
    markers may still be cut by the frame's edges). Rejection-samples, shrinking the largest
    allowed fill if the tiles keep falling outside."""
    pts = np.float64([[[x, y], [x + w, y], [x + w, y + h], [x, y + h]] for x, y, w, h in (t["bbox_mm"] for t in tiles)]).reshape(1, -1, 2)
    min_fill = cfg.min_fill
    for attempt in range(60):
        hom = _pose(rng, page_mm, cfg.max_tilt, min_fill)
        if not len(tiles):
            return hom
        px = cv2.perspectiveTransform(pts, hom)[0]
        if (px[:, 0] >= 4).all() and (px[:, 1] >= 4).all() and (px[:, 0] <= FRAME_W - 4).all() and (px[:, 1] <= FRAME_H - 4).all():
            return hom
        if attempt % 10 == 9:
            min_fill = max(0.05, min_fill * 0.8)
    return hom


def _camera(rng: np.random.Generator, frame: np.ndarray) -> np.ndarray:
    yy, xx = np.mgrid[0:FRAME_H, 0:FRAME_W].astype(np.float32)
    ang = rng.uniform(0, 2 * math.pi)
    ramp = 1 + rng.uniform(0, 0.35) * ((xx / FRAME_W - 0.5) * math.cos(ang) + (yy / FRAME_H - 0.5) * math.sin(ang))
    frame = frame * ramp[..., None] * rng.uniform(0.75, 1.2)
    frame = frame * rng.uniform(0.88, 1.12, 3).astype(np.float32)  # white balance
    frame = np.clip(frame, 0, 1) ** rng.uniform(0.85, 1.2)
    r = rng.random()
    if r < 0.5:
        frame = cv2.GaussianBlur(frame, (0, 0), rng.uniform(0.4, 1.6))
    elif r < 0.7:
        length = int(rng.integers(3, 8))
        kernel = np.zeros((length, length), np.float32)
        kernel[length // 2] = 1.0 / length
        rot = cv2.getRotationMatrix2D(((length - 1) / 2, (length - 1) / 2), rng.uniform(0, 180), 1.0)
        kernel = cv2.warpAffine(kernel, rot, (length, length))
        frame = cv2.filter2D(frame, -1, kernel / max(kernel.sum(), 1e-6))
    frame = frame + rng.normal(0, rng.uniform(0.003, 0.02), frame.shape).astype(np.float32)
    return np.clip(frame * 255 + 0.5, 0, 255).astype(np.uint8)


def simulate(cfg: SimulateConfig, show_progress: bool = True) -> dict:
    """Write ``cfg.n`` photos ``frame_NNNN.jpg`` of the sheet plus ``ground_truth.json`` and
    ``simulate.json`` into ``cfg.out`` (and a video when ``cfg.video``).

    Returns:
        The ground-truth record.
    """
    pdf = Path(cfg.pdf)
    if not pdf.is_file():
        raise UserError(f"sheet PDF not found: {pdf}")
    manifest = read_manifest(cfg.manifest or pdf.with_suffix(".json"))
    try:
        pages = render_pages(pdf, RENDER_DPI)
    except Exception as exc:  # noqa: BLE001 - pdfium raises its own types for broken files
        raise UserError(f"cannot render {pdf} as a PDF: {exc}") from None
    if len(pages) != manifest["pages"]:
        raise UserError(f"{pdf} has {len(pages)} page(s) but its manifest says {manifest['pages']}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([cfg.seed, 0x51])
    px_per_mm = RENDER_DPI / 25.4
    printed = [_printer(rng, p, px_per_mm) for p in pages]
    page_w, page_h = manifest["page"]["size_mm"]
    frames, writer = [], None
    if cfg.video:
        Path(cfg.video).parent.mkdir(parents=True, exist_ok=True)
        writer = cv2.VideoWriter(str(cfg.video), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (FRAME_W, FRAME_H))
        if not writer.isOpened():
            raise UserError(f"cannot write video {cfg.video} (no mp4v encoder in this OpenCV?)")
    with make_progress(disable=not show_progress) as progress:
        task = progress.add_task("simulate", total=cfg.n, info="")
        for i in range(cfg.n):
            page_no = i % len(pages) + 1
            sheet = printed[page_no - 1]
            hom = _pose_with_tiles_in_frame(rng, (page_w, page_h), cfg, [t for t in manifest["tiles"] if t["page"] == page_no])
            # sample the printed page from a pyramid level near the frame's scale (no aliasing)
            corners = cv2.perspectiveTransform(np.float64([[[0, 0], [page_w, 0], [page_w, page_h], [0, page_h]]]), hom)[0]
            frame_px_per_mm = math.sqrt(cv2.contourArea(corners.astype(np.float32)) / (page_w * page_h))
            src, src_px_per_mm = sheet, px_per_mm
            while src_px_per_mm / 2 >= frame_px_per_mm * 1.2 and min(src.shape[:2]) > 64:
                half = (src.shape[1] // 2, src.shape[0] // 2)
                src = cv2.resize(src[: 2 * half[1], : 2 * half[0]], half, interpolation=cv2.INTER_AREA)
                src_px_per_mm /= 2
            # index coordinates (pixel centres at integers): page mm → source pixels → frame pixels
            mm_to_src = np.array([[src_px_per_mm, 0, -0.5], [0, src_px_per_mm, -0.5], [0, 0, 1.0]])
            shift = np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1.0]])
            warp = shift @ hom @ np.linalg.inv(mm_to_src)
            warped = cv2.warpPerspective(src, warp, (FRAME_W, FRAME_H), flags=cv2.INTER_LINEAR)
            mask = cv2.warpPerspective(np.ones(src.shape[:2], np.float32), warp, (FRAME_W, FRAME_H), flags=cv2.INTER_LINEAR)
            frame = _background(rng) * (1 - mask[..., None]) + warped * mask[..., None]
            photo = _camera(rng, frame)
            quality = int(rng.integers(60, 96))
            ok, buf = cv2.imencode(".jpg", photo, [cv2.IMWRITE_JPEG_QUALITY, quality])
            name = f"frame_{i:04d}.jpg"
            atomic_write_bytes(out / name, buf.tobytes())
            if writer is not None:
                writer.write(cv2.imdecode(buf, cv2.IMREAD_COLOR))
            tiles = {}
            for t in manifest["tiles"]:
                if t["page"] != page_no:
                    continue
                x, y, w, h = t["bbox_mm"]
                pts = np.float64([[[x, y], [x + w, y], [x + w, y + h], [x, y + h]]])
                tiles[t["tile_id"]] = (cv2.perspectiveTransform(pts, shift @ hom)[0]).round(3).tolist()
            frames.append({"file": name, "page": page_no, "jpeg_quality": quality,
                           "homography_mm_to_px": (shift @ hom).tolist(), "tile_corners_px": tiles})
            progress.update(task, advance=1)
    if writer is not None:
        writer.release()
    record = {"schema": 1, "kind": "simulate", "created": utc_now(), "sheet_id": manifest["sheet_id"],
              "pdf": str(pdf), "seed": cfg.seed, "n": cfg.n, "frame_size": [FRAME_W, FRAME_H],
              "max_tilt": cfg.max_tilt, "min_fill": cfg.min_fill, "video": str(cfg.video) if cfg.video else None,
              "pixel_convention": "pixel centres at integer coordinates; corners TL TR BR BL", "frames": frames,
              "versions": software_versions()}
    atomic_write_json(out / "ground_truth.json", record)
    return record
