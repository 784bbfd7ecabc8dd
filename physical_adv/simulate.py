"""``physical-adv simulate``: synthetic photos of a printed sheet, for dry runs and tests.

Written with OpenCV and numpy, apart from the EOT distribution, so that it is a fair test
of the attacks rather than a copy of what the optimiser saw. A printer model is applied
once (one print per run: tone curve, gamut and saturation loss, paper colour, dot gain),
then every photo gets its own camera: a pinhole pose with the sheet tilted up to
``max_tilt`` degrees and covering a third to all of the frame's area, a cluttered background,
optional opaque occluders (hand-like blobs over parts of the sheet), a lighting gradient and
exposure, white balance, defocus or motion blur, sensor noise and JPEG.

``conditions = "far"`` photographs the sheet as a webcam at arm's length or farther does
(:data:`CONDITIONS`): the sheet covers a tenth to under half of the frame's area, defocus
and motion blur are stronger, a hand holds the sheet by its edge in half the photos (over
its margin, markers and sometimes a tile), a specular glare spot washes out part of the
page in half of them, and the lens has barrel or pincushion distortion.

Each photo comes with its ground truth: the pinhole homography from page millimetres to
frame pixels (before lens distortion), every tile's corners in the frame (after it), which
tiles lie wholly inside the frame (``tiles_in_frame``), how each tile is seen
(``tiles_seen``: apparent side in pixels, viewing angle between the page normal and the line
of sight, distance from the camera in mm), the camera (focal length, distortion) and which
markers and tiles the occluders cover (``markers_occluded``, ``tiles_occluded``: id →
fraction of its area covered, for those covered at all).

The output folder is replaced as a whole: photos and ground truth are written into a
temporary sibling folder and swapped in at the end, so a crash leaves the previous output
intact and a smaller run never leaves stale frames of a larger one behind. A non-empty
folder that is not a previous simulate output is refused, untouched.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from physical_adv.artifacts import atomic_write_bytes, atomic_write_json, read_toml, replace_folder, software_versions, utc_now
from physical_adv.errors import UserError
from physical_adv.manifest import read_manifest
from physical_adv.resample import area_downsample, max_pyramid_level, pyramid_level
from physical_adv.sheet.render import render_pages
from physical_adv.ui import make_progress

FRAME_W, FRAME_H = 1280, 720
RENDER_DPI = 200
GROUND_TRUTH = "ground_truth.json"
MAX_OCCLUDERS = 10
# index coordinates (pixel centres at integers): the frame spans [-0.5, W - 0.5] × [-0.5, H - 0.5]
_SHIFT = np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1.0]])
@dataclass(frozen=True)
class Conditions:
    """How hard the photos are (see the module docs); ranges are drawn uniformly per photo.

    Attributes:
        fill: the sheet's face-on share of the frame's area (lowered by ``min_fill``).
        defocus: (probability, smallest σ px, largest σ px) of a Gaussian defocus.
        motion: (probability, shortest px, longest px) of a linear motion blur (when not defocused),
            its length drawn from the integers in that range, both ends included.
        edge_hand: probability of a hand holding the sheet by its edge.
        glare: probability of a specular glare spot on the page.
        distortion: range of the radial lens coefficient k₁ (x_d = x_u · (1 + k₁ r²), r in
            units of the focal length; negative is barrel).
    """

    fill: tuple[float, float] = (1 / 3, 1.0)
    defocus: tuple[float, float, float] = (0.5, 0.4, 1.6)
    motion: tuple[float, float, float] = (0.4, 3, 7)
    edge_hand: float = 0.0
    glare: float = 0.0
    distortion: tuple[float, float] = (0.0, 0.0)


CONDITIONS = {
    "default": Conditions(),
    # a webcam at arm's length or farther: the sheet a tenth to under half of the frame
    "far": Conditions(fill=(0.1, 0.45), defocus=(0.5, 0.6, 2.2), motion=(0.6, 4, 11), edge_hand=0.5, glare=0.5,
                      distortion=(-0.25, 0.08)),
}
_GRID = (np.stack(np.meshgrid(np.arange(6), np.arange(6)), -1).reshape(-1, 2) + 0.5) / 6  # points in a unit square


@dataclass(frozen=True)
class Channel:
    """A printer and camera colour channel held fixed (``simulate --printer FILE.toml``): each
    value given replaces the draw it names, the rest are drawn per print or per photo as usual.
    Colours are RGB.

    Attributes:
        saturation: ink saturation kept (0.7–0.95 drawn).
        black: the ink's black level (0.04–0.15 drawn).
        white: the paper's white (0.88–0.98 drawn).
        tone: steepness of the S-shaped tone curve between them (4–7 drawn).
        tint: fraction of light the paper absorbs per channel (0–0.05 drawn).
        exposure: the camera's exposure (0.75–1.2 drawn).
        white_balance: the camera's per-channel gains (0.88–1.12 drawn).
        gamma: the camera's gamma (0.85–1.2 drawn).
        lighting: the largest lighting ramp across the frame (0.35 by default; drawn up to it).
    """

    saturation: float | None = None
    black: float | None = None
    white: float | None = None
    tone: float | None = None
    tint: tuple[float, float, float] | None = None
    exposure: float | None = None
    white_balance: tuple[float, float, float] | None = None
    gamma: float | None = None
    lighting: float | None = None

    def __post_init__(self) -> None:
        checks = {"saturation": (0.0, 1.5), "black": (0.0, 0.5), "white": (0.5, 1.0), "tone": (0.5, 20.0),
                  "exposure": (0.2, 3.0), "gamma": (0.3, 3.0), "lighting": (0.0, 1.0)}
        for name, (lo, hi) in checks.items():
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and lo <= v <= hi):
                raise ValueError(f"{name} must be a number in [{lo:g}, {hi:g}], got {v!r}")
        for name, (lo, hi) in {"tint": (0.0, 0.5), "white_balance": (0.2, 3.0)}.items():
            v = getattr(self, name)
            if v is not None and not (len(v) == 3 and all(isinstance(x, (int, float)) and lo <= x <= hi for x in v)):
                raise ValueError(f"{name} must be three numbers (R, G, B) in [{lo:g}, {hi:g}], got {v!r}")
        if self.black is not None and self.white is not None and self.black >= self.white:
            raise ValueError(f"black ({self.black:g}) must be below white ({self.white:g})")

    @staticmethod
    def _pick(fixed, drawn):
        return drawn if fixed is None else fixed


def load_channel(path: Path) -> Channel:
    """A :class:`Channel` from a TOML file with ``[printer]`` (saturation, black, white, tone,
    tint) and ``[camera]`` (exposure, white_balance, gamma, lighting) tables; a one-line
    :class:`UserError` for a missing file, an unknown key or a bad value."""
    data = read_toml(path, "printer file")
    sections = {"printer": ("saturation", "black", "white", "tone", "tint"),
                "camera": ("exposure", "white_balance", "gamma", "lighting")}
    values = {}
    for key, table in data.items():
        if key not in sections or not isinstance(table, dict):
            raise UserError(f"{path}: unknown table {key!r} (expected [printer] and [camera])")
        for name, value in table.items():
            if name not in sections[key]:
                raise UserError(f"{path}: unknown [{key}] key {name!r} (known: {', '.join(sections[key])})")
            values[name] = tuple(value) if isinstance(value, list) else value
    try:
        return Channel(**values)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{path}: {exc}") from None


@dataclass(frozen=True)
class SimulateConfig:
    """What ``simulate`` makes.

    Args:
        pdf: the sheet PDF; ``manifest`` defaults to the PDF's ``NAME.json``.
        out: the output folder (replaced as a whole; see the module docs).
        n: number of photos.
        seed: seeds the print and every photo.
        video: also write the photos as a 30 fps MP4 here.
        max_tilt: largest tilt of the sheet, degrees.
        min_fill: smallest fraction of the frame's area the sheet covers face-on.
        allow_partial: poses may cut tiles by the frame's edges (the ground truth says which
            tiles lie wholly inside); otherwise every tile of the page is in the frame.
        occluders: opaque hand-like blobs drawn over the sheet in every photo (0 to 10).
        conditions: a name in :data:`CONDITIONS` (``default`` or ``far``).
        channel: printer and camera colour values held fixed (:class:`Channel`).
    """

    pdf: Path
    out: Path
    manifest: Path | None = None
    n: int = 50
    seed: int = 0
    video: Path | None = None
    max_tilt: float = 45.0
    min_fill: float | None = None
    allow_partial: bool = False
    occluders: int = 0
    conditions: str = "default"
    channel: Channel = Channel()

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be ≥ 1, got {self.n}")
        if not 0 <= self.max_tilt <= 70:
            raise ValueError(f"max tilt must be in [0, 70] degrees, got {self.max_tilt:g}")
        if self.min_fill is not None and not 0.05 <= self.min_fill <= 1:
            raise ValueError(f"min fill must be in [0.05, 1], got {self.min_fill:g}")
        if self.conditions not in CONDITIONS:
            raise ValueError(f"conditions must be one of {', '.join(CONDITIONS)}, got {self.conditions!r}")
        if not 0 <= self.occluders <= MAX_OCCLUDERS:
            raise ValueError(f"occluders must be in [0, {MAX_OCCLUDERS}], got {self.occluders}")

    @property
    def scene(self) -> Conditions:
        """The photo conditions, with ``min_fill`` (when given) as the smallest fill."""
        c = CONDITIONS[self.conditions]
        if self.min_fill is None:
            return c
        return Conditions(**{**c.__dict__, "fill": (self.min_fill, max(self.min_fill, c.fill[1]))})


def _printer(rng: np.random.Generator, page: np.ndarray, px_per_mm: float, fixed: Channel = Channel()) -> tuple[np.ndarray, dict]:
    """One print: a tone curve, lost saturation, paper colour and dot gain (float32 [0, 1] BGR),
    and the print's parameters (RGB)."""
    pick = Channel._pick
    saturation = pick(fixed.saturation, rng.uniform(0.7, 0.95))
    mix = np.full((3, 3), (1 - saturation) / 3, np.float32) + np.eye(3, dtype=np.float32) * np.float32(saturation)
    img = cv2.transform(page.astype(np.float32) * np.float32(1 / 255), mix)  # grey + (img − grey)·saturation
    # an S-shaped tone curve between the ink's black and the paper's white
    black, white = pick(fixed.black, rng.uniform(0.04, 0.15)), pick(fixed.white, rng.uniform(0.88, 0.98))
    k = pick(fixed.tone, rng.uniform(4.0, 7.0))
    lo, hi = 1 / (1 + math.exp(k * 0.5)), 1 / (1 + math.exp(-k * 0.5))
    curve = cv2.divide(1.0, 1.0 + cv2.exp(img * np.float32(-k) + np.float32(0.5 * k)))  # 1 / (1 + e^(−k(x − ½)))
    img = np.float32(black) + np.float32(white - black) * (np.float32(0.5) * img + np.float32(0.5 / (hi - lo)) * (curve - np.float32(lo)))
    tint_bgr = rng.uniform(0, 0.05, 3)
    if fixed.tint is not None:
        tint_bgr = np.array(fixed.tint[::-1])
    img = img * (1 - tint_bgr).astype(np.float32)  # paper tint
    params = {"saturation": float(saturation), "black": float(black), "white": float(white), "tone": float(k),
              "tint": [float(v) for v in tint_bgr[::-1]]}
    return cv2.GaussianBlur(img, (0, 0), max(0.3, 0.08 * px_per_mm)), params  # dot gain ≈ 0.08 mm


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


@dataclass(frozen=True)
class _Pose:
    """A pinhole camera looking at the page: ``hom`` page mm → frame px (continuous
    coordinates), focal length ``f`` px, rotation ``r`` and the page centre ``centre`` in camera
    coordinates (mm)."""

    hom: np.ndarray
    f: float
    r: np.ndarray
    centre: np.ndarray


def _pose(rng: np.random.Generator, page_mm: tuple[float, float], max_tilt: float, fill_range: tuple[float, float],
          shift: float = 0.15) -> _Pose:
    """A pinhole camera looking at the tilted sheet, which face-on would cover a fraction in
    ``fill_range`` of the frame's area, its centre displaced by up to ``shift`` of the frame
    from the optical axis."""
    w, h = page_mm
    f = FRAME_W * rng.uniform(0.8, 1.4)  # focal length in pixels (a webcam's 50–75° field of view)
    tilt = math.radians(rng.uniform(0, max_tilt))
    axis_ang = rng.uniform(0, 2 * math.pi)
    axis = np.array([math.cos(axis_ang), math.sin(axis_ang), 0.0])
    r, _ = cv2.Rodrigues(axis * tilt)
    r = r @ cv2.Rodrigues(np.array([0, 0, math.radians(rng.uniform(-20, 20))]))[0]
    # at the top of the range the sheet overflows the frame and is cut by its edges
    fill = rng.uniform(*fill_range)
    px_per_mm = math.sqrt(fill * FRAME_W * FRAME_H / (w * h))
    z = f / px_per_mm
    centre = np.array([rng.uniform(-shift, shift) * FRAME_W * z / f, rng.uniform(-shift, shift) * FRAME_H * z / f, z])
    # page point (x, y, 0) in mm → camera: R · (x − w/2, y − h/2, 0) + centre
    k = np.array([[f, 0, FRAME_W / 2], [0, f, FRAME_H / 2], [0, 0, 1.0]])
    to_centre = np.array([[1, 0, -w / 2], [0, 1, -h / 2], [0, 0, 1.0]])
    rt = np.column_stack([r[:, 0], r[:, 1], centre])
    hom = k @ rt @ to_centre
    return _Pose(hom / hom[2, 2], f, r, centre)


def _seen(pose: _Pose, page_mm, tiles: list[dict], corners_px: np.ndarray) -> dict:
    """How each tile is seen: its apparent side (px, from its corners in the frame), the angle
    between the page normal and the line of sight to its centre (degrees) and its distance (mm)."""
    out = {}
    for t, quad in zip(tiles, corners_px):
        x, y, w, h = t["bbox_mm"]
        p = pose.r @ np.array([x + w / 2 - page_mm[0] / 2, y + h / 2 - page_mm[1] / 2, 0.0]) + pose.centre
        cos = abs(float(pose.r[:, 2] @ p)) / float(np.linalg.norm(p))
        out[t["tile_id"]] = {"size_px": round(math.sqrt(abs(cv2.contourArea(quad.astype(np.float32)))), 2),
                             "angle_deg": round(math.degrees(math.acos(min(1.0, cos))), 2),
                             "distance_mm": round(float(np.linalg.norm(p)), 1)}
    return out


def _tile_quads(tiles: list[dict]) -> np.ndarray:
    """Tile corners TL TR BR BL in page mm: ``(T, 4, 2)``."""
    return np.float64([[[x, y], [x + w, y], [x + w, y + h], [x, y + h]] for x, y, w, h in (t["bbox_mm"] for t in tiles)]).reshape(-1, 4, 2)


def _project(hom: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Points ``(..., 2)`` through a homography."""
    flat = pts.reshape(1, -1, 2).astype(np.float64)
    if not flat.shape[1]:  # no points (a sheet without tiles)
        return np.zeros(pts.shape, np.float64)
    return cv2.perspectiveTransform(flat, hom)[0].reshape(pts.shape)


def _inside(px: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """Whether each point ``(..., 2)`` (index coordinates) lies ``margin`` px inside the frame."""
    lo = -0.5 + margin
    return (px[..., 0] >= lo) & (px[..., 1] >= lo) & (px[..., 0] <= FRAME_W - 0.5 - margin) & (px[..., 1] <= FRAME_H - 0.5 - margin)


def _pose_for_page(rng: np.random.Generator, page_mm, cfg: SimulateConfig, tiles: list[dict]) -> _Pose:
    """A pose for one photo. Without ``allow_partial``, one in which every tile of the page is
    inside the frame (margins and markers may still be cut): rejection-sampled, lowering the
    smallest fill if tiles keep falling outside. With it, any pose, the sheet often larger than
    the frame and off-centre, so that tiles are cut by the frame's edges."""
    lo, hi = cfg.scene.fill
    if cfg.allow_partial:
        return _pose(rng, page_mm, cfg.max_tilt, (lo, 1.6 * hi), shift=0.35)
    quads = _tile_quads(tiles)
    for attempt in range(60):
        pose = _pose(rng, page_mm, cfg.max_tilt, (lo, hi))
        if not len(tiles) or _inside(_project(_SHIFT @ pose.hom, quads), 4.0).all():
            return pose
        if attempt % 10 == 9:
            lo = max(0.05, lo * 0.8)
    return pose


def _hand(rng: np.random.Generator, centre: np.ndarray, size: float) -> np.ndarray:
    """A hand-like blob (palm and fingers) as a float32 (H, W) mask in [0, 1]."""
    mask = np.zeros((FRAME_H, FRAME_W), np.uint8)
    ang = rng.uniform(0, 2 * math.pi)
    palm = size * rng.uniform(0.35, 0.5)
    cx, cy = (int(round(v)) for v in centre)
    cv2.ellipse(mask, (cx, cy), (int(palm), int(palm * rng.uniform(0.8, 1.1))), math.degrees(ang), 0, 360, 255, -1, cv2.LINE_AA)
    for k in range(int(rng.integers(3, 6))):  # fingers, fanned out from the palm's top
        a = ang + (k - 2) * 0.32 + rng.normal(0, 0.08)
        length = palm * rng.uniform(1.2, 2.0)
        start = centre + 0.6 * palm * np.array([math.cos(a), math.sin(a)])
        end = start + length * np.array([math.cos(a), math.sin(a)])
        cv2.line(mask, tuple(int(v) for v in start), tuple(int(v) for v in end), 255, max(2, int(palm * 0.38)), cv2.LINE_AA)
    wrist = centre - 2.5 * palm * np.array([math.cos(ang), math.sin(ang)])  # an arm coming in from outside
    cv2.line(mask, (cx, cy), tuple(int(v) for v in wrist), 255, max(2, int(palm * 1.4)), cv2.LINE_AA)
    return mask.astype(np.float32) / 255.0


def _paint_hand(rng: np.random.Generator, frame: np.ndarray, centre: np.ndarray, size: float) -> tuple[np.ndarray, np.ndarray]:
    """One opaque skin-coloured hand at ``centre`` (frame px): the frame and the hand's mask."""
    mask = _hand(rng, centre, size)
    colour = np.array([rng.uniform(0.25, 0.6), rng.uniform(0.35, 0.7), rng.uniform(0.5, 0.9)], np.float32)  # skin-ish, BGR
    shade = 1 + 0.15 * cv2.GaussianBlur(rng.standard_normal((FRAME_H // 16, FRAME_W // 16)).astype(np.float32), (0, 0), 2)
    paint = colour * cv2.resize(shade, (FRAME_W, FRAME_H))[..., None]
    return frame * (1 - mask[..., None]) + paint * mask[..., None], mask


def _page_side(hom: np.ndarray, page_mm) -> float:
    """The page's apparent side in frame px (square root of its area)."""
    w, h = page_mm
    return math.sqrt(abs(cv2.contourArea(_project(hom, np.float64([[0, 0], [w, 0], [w, h], [0, h]])).astype(np.float32))))


def _occlude(rng: np.random.Generator, frame: np.ndarray, hom: np.ndarray, page_mm, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` opaque hand-like occluders over the sheet; returns the frame and the
    occluder mask (float32 (H, W) in [0, 1], 1 = covered)."""
    w, h = page_mm
    total = np.zeros((FRAME_H, FRAME_W), np.float32)
    side = _page_side(hom, page_mm)
    for _ in range(n):
        centre = _project(hom, np.array([rng.uniform(0, w), rng.uniform(0, h)]))
        frame, mask = _paint_hand(rng, frame, centre, side * rng.uniform(0.2, 0.4))
        total = np.maximum(total, mask)
    return frame, total


def _edge_hand(rng: np.random.Generator, frame: np.ndarray, hom: np.ndarray, page_mm) -> tuple[np.ndarray, np.ndarray]:
    """A hand holding the sheet by one of its edges: palm centred just inside the edge, so that
    it covers the margin, often a marker and sometimes a corner of a tile."""
    w, h = page_mm
    edge = int(rng.integers(4))
    t, inset = rng.uniform(0.15, 0.85), rng.uniform(0.0, 0.06)
    point = [(t * w, inset * h), (w * (1 - inset), t * h), (t * w, h * (1 - inset)), (inset * w, t * h)][edge]
    return _paint_hand(rng, frame, _project(hom, np.array(point)), _page_side(hom, page_mm) * rng.uniform(0.15, 0.28))


def _glare(rng: np.random.Generator, frame: np.ndarray, hom: np.ndarray, page_mm) -> np.ndarray:
    """A specular highlight on the page: a bright elliptical spot that saturates to white."""
    w, h = page_mm
    cx, cy = _project(hom, np.array([rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h]))
    side = _page_side(hom, page_mm)
    sx, sy = side * rng.uniform(0.06, 0.2), side * rng.uniform(0.04, 0.12)
    ang = rng.uniform(0, math.pi)
    x = np.arange(FRAME_W, dtype=np.float32)[None, :] - np.float32(cx)
    y = np.arange(FRAME_H, dtype=np.float32)[:, None] - np.float32(cy)
    u, v = x * math.cos(ang) + y * math.sin(ang), -x * math.sin(ang) + y * math.cos(ang)
    spot = np.exp(-0.5 * ((u / np.float32(sx)) ** 2 + (v / np.float32(sy)) ** 2)) * np.float32(rng.uniform(0.6, 1.5))
    return frame + spot[..., None]


def _distortion_maps(k1: float, f: float) -> tuple[np.ndarray, np.ndarray]:
    """``cv2.remap`` maps for radial lens distortion: the distorted photo's pixel ``d`` shows the
    pinhole image at ``u`` with ``d = u · (1 + k₁ |u|²)`` (coordinates from the frame centre in
    units of ``f``), inverted per pixel by fixed-point iteration."""
    c = np.array([(FRAME_W - 1) / 2, (FRAME_H - 1) / 2])
    xd = (np.arange(FRAME_W, dtype=np.float64)[None, :] - c[0]) / f
    yd = (np.arange(FRAME_H, dtype=np.float64)[:, None] - c[1]) / f
    xu, yu = np.broadcast_to(xd, (FRAME_H, FRAME_W)).copy(), np.broadcast_to(yd, (FRAME_H, FRAME_W)).copy()
    for _ in range(8):
        scale = 1 + k1 * (xu * xu + yu * yu)
        xu, yu = xd / scale, yd / scale
    return (xu * f + c[0]).astype(np.float32), (yu * f + c[1]).astype(np.float32)


def _distort_points(pts: np.ndarray, k1: float, f: float) -> np.ndarray:
    """Pinhole frame points ``(..., 2)`` (index coordinates) → where the distorted photo shows them."""
    c = np.array([(FRAME_W - 1) / 2, (FRAME_H - 1) / 2])
    u = (pts - c) / f
    return u * (1 + k1 * (u * u).sum(-1, keepdims=True)) * f + c


def _covered(mask: np.ndarray, hom: np.ndarray, quads_mm: np.ndarray) -> np.ndarray:
    """Fraction of each quad ``(Q, 4, 2)`` (page mm, axis-aligned) under the occluder mask,
    from a 6×6 grid of points in each quad."""
    lo, hi = quads_mm[:, 0], quads_mm[:, 2]
    pts = lo[:, None] + _GRID[None] * (hi - lo)[:, None]
    px = np.round(_project(_SHIFT @ hom, pts)).astype(int)
    ok = (px[..., 0] >= 0) & (px[..., 1] >= 0) & (px[..., 0] < FRAME_W) & (px[..., 1] < FRAME_H)
    vals = np.where(ok, mask[px[..., 1].clip(0, FRAME_H - 1), px[..., 0].clip(0, FRAME_W - 1)], 0.0)
    return (vals >= 0.5).mean(1)


def _camera(rng: np.random.Generator, frame: np.ndarray, scene: Conditions, fixed: Channel = Channel()) -> tuple[np.ndarray, dict]:
    """The camera: lighting ramp, exposure, white balance, gamma, defocus or motion blur,
    sensor noise; float32 [0, 1] BGR in, uint8 out, and the blur applied
    (``{"defocus_sigma_px": σ}``, ``{"motion_px": length}`` or ``{}``)."""
    ang = rng.uniform(0, 2 * math.pi)
    amp = rng.uniform(0, 0.35 if fixed.lighting is None else fixed.lighting)
    x = (np.arange(FRAME_W, dtype=np.float32) / FRAME_W - 0.5) * math.cos(ang)
    y = (np.arange(FRAME_H, dtype=np.float32) / FRAME_H - 0.5) * math.sin(ang)
    ramp = 1 + amp * (y[:, None] + x[None, :])
    gain, balance = rng.uniform(0.75, 1.2), rng.uniform(0.88, 1.12, 3)  # exposure, white balance per channel (BGR)
    gain = Channel._pick(fixed.exposure, gain)
    if fixed.white_balance is not None:
        balance = np.array(fixed.white_balance[::-1])
    frame = frame.astype(np.float32) * ramp[..., None] * (gain * balance).astype(np.float32)
    frame = cv2.pow(np.clip(frame, 0, 1, out=frame), Channel._pick(fixed.gamma, rng.uniform(0.85, 1.2)))
    r = rng.random()
    p_defocus, lo, hi = scene.defocus
    p_motion, shortest, longest = scene.motion
    blur: dict = {}
    if r < p_defocus:
        blur["defocus_sigma_px"] = round(float(rng.uniform(lo, hi)), 3)
        frame = cv2.GaussianBlur(frame, (0, 0), blur["defocus_sigma_px"])
    elif r < p_defocus + (1 - p_defocus) * p_motion:
        length = int(rng.integers(int(shortest), int(longest) + 1))
        blur["motion_px"] = length
        # a centred line of `length` px in an odd-sized kernel (filter2D anchors at the centre
        # pixel): an even length gets half-weight end taps, so the photo does not shift by ½ px
        size = length | 1
        kernel = np.zeros((size, size), np.float32)
        kernel[size // 2] = 1.0
        if size != length:
            kernel[size // 2, [0, -1]] = 0.5
        rot = cv2.getRotationMatrix2D(((size - 1) / 2, (size - 1) / 2), rng.uniform(0, 180), 1.0)
        kernel = cv2.warpAffine(kernel, rot, (size, size))
        frame = cv2.filter2D(frame, -1, kernel / max(kernel.sum(), 1e-6))
    sigma = rng.uniform(0.003, 0.02)
    frame = frame * 255 + (rng.standard_normal(frame.shape, dtype=np.float32) * np.float32(sigma * 255) + np.float32(0.5))
    return np.clip(frame, 0, 255, out=frame).astype(np.uint8), blur


class _PrintedPage:
    """One printed page and its area pyramid (levels built on first use)."""

    def __init__(self, printed: np.ndarray, px_per_mm: float) -> None:
        self.levels = {0: printed}
        self.px_per_mm = px_per_mm
        self.max_level = max_pyramid_level(printed.shape, 64)

    def level(self, level: int) -> np.ndarray:
        if level not in self.levels:
            self.levels[level] = area_downsample(self.levels[0], level)
        return self.levels[level]

    def warp(self, hom: np.ndarray, page_mm) -> tuple[np.ndarray, np.ndarray]:
        """The page seen through ``hom`` (page mm → frame px): (frame, coverage mask)."""
        w, h = page_mm
        corners = _project(hom, np.float64([[0, 0], [w, 0], [w, h], [0, h]]))
        frame_px_per_mm = math.sqrt(abs(cv2.contourArea(corners.astype(np.float32))) / (w * h))
        # sample the printed page from the pyramid level nearest the frame's scale (no aliasing)
        level = pyramid_level(self.px_per_mm / max(frame_px_per_mm, 1e-9), self.max_level)
        src, src_px_per_mm = self.level(level), self.px_per_mm / 2**level
        mm_to_src = np.array([[src_px_per_mm, 0, -0.5], [0, src_px_per_mm, -0.5], [0, 0, 1.0]])
        warp = _SHIFT @ hom @ np.linalg.inv(mm_to_src)
        warped = cv2.warpPerspective(src, warp, (FRAME_W, FRAME_H), flags=cv2.INTER_LINEAR)
        mask = cv2.warpPerspective(np.ones(src.shape[:2], np.float32), warp, (FRAME_W, FRAME_H), flags=cv2.INTER_LINEAR)
        return warped, mask


def _photo(rng: np.random.Generator, cfg: SimulateConfig, manifest: dict, page: _PrintedPage, page_no: int) -> tuple[bytes, dict]:
    """One JPEG photo of a page and its ground truth (without the file name)."""
    page_mm = tuple(manifest["page"]["size_mm"])
    scene = cfg.scene
    tiles = [t for t in manifest["tiles"] if t["page"] == page_no]
    markers = [m for m in manifest["markers"] if m["page"] == page_no]
    pose = _pose_for_page(rng, page_mm, cfg, tiles)
    hom = pose.hom
    warped, mask = page.warp(hom, page_mm)
    frame = _background(rng) * (1 - mask[..., None]) + warped * mask[..., None]
    covered = np.zeros((FRAME_H, FRAME_W), np.float32)
    if cfg.occluders:
        frame, covered = _occlude(rng, frame, _SHIFT @ hom, page_mm, cfg.occluders)
    if scene.edge_hand and rng.random() < scene.edge_hand:
        frame, hand = _edge_hand(rng, frame, _SHIFT @ hom, page_mm)
        covered = np.maximum(covered, hand)
    if scene.glare and rng.random() < scene.glare:
        frame = _glare(rng, frame, _SHIFT @ hom, page_mm)
    k1 = float(rng.uniform(*scene.distortion)) if scene.distortion != (0.0, 0.0) else 0.0
    if k1:
        frame = cv2.remap(frame.astype(np.float32), *_distortion_maps(k1, pose.f), cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT)
    photo, blur = _camera(rng, frame, scene, cfg.channel)
    quality = int(rng.integers(60, 96))
    _, buf = cv2.imencode(".jpg", photo, [cv2.IMWRITE_JPEG_QUALITY, quality])
    corners = _project(_SHIFT @ hom, _tile_quads(tiles))
    if k1:
        corners = _distort_points(corners, k1, pose.f)
    marker_quads = np.float64([np.asarray(m["center_mm"]) + np.float64([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * m["size_mm"] / 2
                               for m in markers]).reshape(-1, 4, 2)
    marker_cover = _covered(covered, hom, marker_quads)
    tile_cover = _covered(covered, hom, _tile_quads(tiles))
    truth = {
        "page": page_no, "jpeg_quality": quality, "homography_mm_to_px": (_SHIFT @ hom).tolist(),
        "camera": {"focal_px": round(pose.f, 2), "k1": round(k1, 5), **blur},
        "tile_corners_px": {t["tile_id"]: c.round(3).tolist() for t, c in zip(tiles, corners)},
        "tiles_in_frame": [t["tile_id"] for t, c in zip(tiles, corners) if _inside(c).all()],
        "tiles_seen": _seen(pose, page_mm, tiles, corners),
        "markers_occluded": {str(m["id"]): round(float(f), 3) for m, f in zip(markers, marker_cover) if f > 0},
        "tiles_occluded": {t["tile_id"]: round(float(f), 3) for t, f in zip(tiles, tile_cover) if f > 0},
    }
    return buf.tobytes(), truth


def _is_simulate_output(folder: Path) -> bool:
    """Whether ``folder`` holds exactly a previous simulate output: its ground truth and the
    photos that ground truth names (nothing a user put there)."""
    try:
        record = json.loads((folder / GROUND_TRUTH).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(record, dict) or record.get("kind") != "simulate" or not isinstance(record.get("frames"), list):
        return False
    files = {Path(GROUND_TRUTH)} | {Path(f["file"]) for f in record["frames"] if isinstance(f, dict) and isinstance(f.get("file"), str)}
    if isinstance(record.get("video"), str) and _is_within(Path(record["video"]), folder):  # a video written inside it
        files.add(Path(record["video"]).resolve().relative_to(folder.resolve()))
    dirs = {parent for f in files for parent in f.parents if parent != Path(".")}
    for p in folder.rglob("*"):
        rel = p.relative_to(folder)
        if p.is_symlink() or not ((p.is_file() and rel in files) or (p.is_dir() and rel in dirs)):
            return False
    return True


def _check_out(out: Path) -> None:
    """Refuse an output that would destroy something not made by simulate."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not _is_simulate_output(out):
        raise UserError(f"{out} is not empty and is not a previous simulate output; choose another --out "
                        "(nothing was changed)")


def _render_pages(pdf: Path, manifest: dict) -> list[np.ndarray]:
    try:
        pages = render_pages(pdf, RENDER_DPI)
    except Exception as exc:  # noqa: BLE001 - pdfium raises its own types for broken files
        raise UserError(f"cannot render {pdf} as a PDF: {exc}") from None
    if len(pages) != manifest["pages"]:
        raise UserError(f"{pdf} has {len(pages)} page(s) but its manifest says {manifest['pages']}")
    return pages


def simulate(cfg: SimulateConfig, show_progress: bool = True) -> dict:
    """Write ``cfg.n`` photos ``frame_NNNN.jpg`` of the sheet plus ``ground_truth.json`` into
    ``cfg.out`` (replacing a previous simulate output as a whole), and a video when ``cfg.video``.

    Args:
        cfg: what to make.
        show_progress: show a progress bar.

    Returns:
        The ground-truth record (as written to ``ground_truth.json``).

    Raises:
        UserError: a missing or unreadable PDF or manifest, or an ``out`` folder holding
            something other than a previous simulate output.
    """
    pdf = Path(cfg.pdf)
    if not pdf.is_file():
        raise UserError(f"sheet PDF not found: {pdf}")
    manifest = read_manifest(cfg.manifest or pdf.with_suffix(".json"))
    out = Path(cfg.out)
    _check_out(out)
    pages = _render_pages(pdf, manifest)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.simulate-{secrets.token_hex(4)}"
    tmp.mkdir()  # the usual permissions (mkdtemp's would be owner-only)
    moves: list[tuple[Path, Path]] = []
    try:
        record = _write_photos(cfg, manifest, pages, pdf, tmp, show_progress, moves)
        replace_folder(tmp, out)
        for partial, final in moves:
            os.replace(partial, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        for partial, _ in moves:
            partial.unlink(missing_ok=True)
    return record


def _video_target(video: Path, out: Path, folder: Path) -> Path:
    """Where to write the video now: inside the temporary ``folder`` when it belongs in ``out``
    (it is swapped in with the photos), else where the user asked."""
    try:
        return folder / video.resolve().relative_to(out.resolve())
    except ValueError:
        return video


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def _write_photos(cfg: SimulateConfig, manifest: dict, pages: list[np.ndarray], pdf: Path, folder: Path,
                  show_progress: bool, moves: list[tuple[Path, Path]]) -> dict:
    """The photos, ground truth and optional video, written into ``folder``; a finished video
    that belongs outside it is appended to ``moves`` (temporary, final) for the caller to
    rename after the folder is in place."""
    rng = np.random.default_rng([cfg.seed, 0x51])
    px_per_mm = RENDER_DPI / 25.4
    prints = [_printer(rng, p, px_per_mm, cfg.channel) for p in pages]
    printed = [_PrintedPage(img, px_per_mm) for img, _ in prints]
    frames, writer, video_tmp, video = [], None, None, None
    if cfg.video:
        video = _video_target(Path(cfg.video), Path(cfg.out), folder)
        video.parent.mkdir(parents=True, exist_ok=True)
        video_tmp = video.with_name(f".{video.stem}.partial{video.suffix}")
        writer = cv2.VideoWriter(str(video_tmp), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (FRAME_W, FRAME_H))
        if not writer.isOpened():
            raise UserError(f"cannot write video {cfg.video} (no mp4v encoder in this OpenCV?)")
    try:
        with make_progress(disable=not show_progress) as progress:
            task = progress.add_task("simulate", total=cfg.n, info="")
            for i in range(cfg.n):
                page_no = i % len(pages) + 1
                jpeg, truth = _photo(rng, cfg, manifest, printed[page_no - 1], page_no)
                name = f"frame_{i:04d}.jpg"
                atomic_write_bytes(folder / name, jpeg)
                if writer is not None:
                    writer.write(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR))
                frames.append({"file": name, **truth})
                progress.update(task, advance=1)
    finally:
        if writer is not None:
            writer.release()
            if len(frames) < cfg.n:
                video_tmp.unlink(missing_ok=True)
    if video_tmp is not None and _is_within(video, folder):
        os.replace(video_tmp, video)  # swapped in with the photos
    elif video_tmp is not None:
        moves.append((video_tmp, video))  # put in place only once the photos are
    record = {"schema": 1, "kind": "simulate", "created": utc_now(), "sheet_id": manifest["sheet_id"],
              "pdf": str(pdf), "seed": cfg.seed, "n": cfg.n, "frame_size": [FRAME_W, FRAME_H],
              "max_tilt": cfg.max_tilt, "min_fill": cfg.scene.fill[0], "conditions": cfg.conditions,
              "scene": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.scene.__dict__.items()},
              "allow_partial": cfg.allow_partial,
              "occluders": cfg.occluders, "prints": [params for _, params in prints],
              "channel": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.channel.__dict__.items() if v is not None},
              "video": str(cfg.video) if cfg.video else None,
              "pixel_convention": "pixel centres at integer coordinates; corners TL TR BR BL", "frames": frames,
              "versions": software_versions()}
    atomic_write_json(folder / GROUND_TRUTH, record)
    return record
