"""Procedural traffic-sign designs after the Vienna Convention.

A sign is drawn from a few vector primitives (discs, rings, polygons, thick strokes and
text) in normalised coordinates, ``[-1, 1]²`` with y pointing down, so it can be drawn at
any resolution. Every free choice of the drawing (exact colours, ring widths, font,
stroke weight, text proportions) is a field of :class:`SignStyle`, so the training set can
vary them and tests can draw variants the training set never saw.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from physical_adv.classes import class_index as lookup_class

RGB = tuple[float, float, float]

# Class names: the order is the model's output order and must never change once weights ship.
CLASS_NAMES: tuple[str, ...] = (
    "stop",
    "yield",
    "no entry",
    "speed limit 30",
    "speed limit 50",
    "speed limit 80",
    "no vehicles",
    "priority road",
    "general caution",
    "ahead only",
    "keep right",
    "turn left ahead",
    "no parking",
    "parking",
)

HERSHEY_FONTS = {
    "hershey_simplex": cv2.FONT_HERSHEY_SIMPLEX,
    "hershey_duplex": cv2.FONT_HERSHEY_DUPLEX,
    "hershey_triplex": cv2.FONT_HERSHEY_TRIPLEX,
    "hershey_complex": cv2.FONT_HERSHEY_COMPLEX,
    "hershey_plain": cv2.FONT_HERSHEY_PLAIN,
}
# Fonts the training set draws from; the others are kept for off-style tests.
TRAINING_FONTS = ("hershey_simplex", "hershey_duplex", "hershey_triplex")
# "pil" is Pillow's built-in scalable font, a sans-serif unlike any Hershey face.
ALL_FONTS = tuple(HERSHEY_FONTS) + ("pil",)


@dataclass(frozen=True)
class SignStyle:
    """Everything about a sign's look that a real sign may vary.

    Colours are linear-ish sRGB triples in [0, 1]. ``ring`` scales every border and
    ring width; ``stroke`` scales the font's stroke weight; ``text_width`` and
    ``text_height`` stretch the lettering box; ``rim`` draws the thin white edge that
    Vienna-convention signs carry outside their red border.
    """

    red: RGB = (0.80, 0.07, 0.10)
    blue: RGB = (0.00, 0.30, 0.66)
    yellow: RGB = (0.99, 0.78, 0.00)
    white: RGB = (0.97, 0.97, 0.96)
    black: RGB = (0.06, 0.06, 0.06)
    ring: float = 1.0
    font: str = "hershey_duplex"
    stroke: float = 1.0
    text_width: float = 1.0
    text_height: float = 1.0
    italic: bool = False
    rim: bool = True

    def __post_init__(self) -> None:
        if self.font not in ALL_FONTS:
            raise ValueError(f"font must be one of {', '.join(ALL_FONTS)}, got {self.font!r}")
        for name in ("ring", "stroke", "text_width", "text_height"):
            value = getattr(self, name)
            if not 0.2 <= value <= 3.0:
                raise ValueError(f"{name} must be in [0.2, 3.0], got {value}")


DEFAULT_STYLE = SignStyle()


def random_style(rng: np.random.Generator) -> SignStyle:
    """Draw a style from the training distribution: colours, widths and lettering jittered
    around the Vienna-convention defaults, one of :data:`TRAINING_FONTS`."""

    def jitter(rgb: RGB, amount: float) -> RGB:
        shifted = np.asarray(rgb) + rng.uniform(-amount, amount, 3)
        return tuple(float(v) for v in np.clip(shifted, 0.0, 1.0))

    return SignStyle(
        red=jitter(DEFAULT_STYLE.red, 0.08),
        blue=jitter(DEFAULT_STYLE.blue, 0.08),
        yellow=jitter(DEFAULT_STYLE.yellow, 0.08),
        white=jitter((0.95, 0.95, 0.94), 0.04),
        black=jitter((0.08, 0.08, 0.08), 0.06),
        ring=float(rng.uniform(0.8, 1.25)),
        font=TRAINING_FONTS[rng.integers(len(TRAINING_FONTS))],
        stroke=float(rng.uniform(0.8, 1.3)),
        text_width=float(rng.uniform(0.85, 1.15)),
        text_height=float(rng.uniform(0.9, 1.1)),
        italic=False,
        rim=bool(rng.random() < 0.7),
    )


class _Canvas:
    """An RGB + coverage canvas drawn in normalised coordinates with sub-pixel accuracy."""

    SHIFT = 4  # fixed-point bits for OpenCV's sub-pixel drawing

    def __init__(self, size: int) -> None:
        self.size = size
        self.rgb = np.zeros((size, size, 3), np.float32)
        self.alpha = np.zeros((size, size), np.float32)

    def _pts(self, xy: np.ndarray) -> np.ndarray:
        px = (np.asarray(xy, np.float64) + 1.0) * 0.5 * self.size - 0.5
        return np.round(px * (1 << self.SHIFT)).astype(np.int32).reshape(-1, 1, 2)

    def _paint(self, mask: np.ndarray, colour: RGB) -> None:
        self.rgb += (np.asarray(colour, np.float32) - self.rgb) * mask[..., None]
        self.alpha = np.maximum(self.alpha, mask)

    def polygon(self, xy: np.ndarray, colour: RGB) -> None:
        mask = np.zeros((self.size, self.size), np.uint8)
        cv2.fillPoly(mask, [self._pts(xy)], 255, cv2.LINE_AA, self.SHIFT)
        self._paint(mask.astype(np.float32) / 255.0, colour)

    def disc(self, radius: float, colour: RGB, cx: float = 0.0, cy: float = 0.0) -> None:
        t = np.linspace(0, 2 * math.pi, 180, endpoint=False)
        self.polygon(np.stack([cx + radius * np.cos(t), cy + radius * np.sin(t)], 1), colour)

    def stroke(self, xy: np.ndarray, width: float, colour: RGB) -> None:
        mask = np.zeros((self.size, self.size), np.uint8)
        thickness = max(1, int(round(width * 0.5 * self.size)))
        cv2.polylines(mask, [self._pts(xy)], False, 255, thickness, cv2.LINE_AA, self.SHIFT)
        self._paint(mask.astype(np.float32) / 255.0, colour)

    def text(self, text: str, box: tuple[float, float, float, float], colour: RGB, style: SignStyle) -> None:
        """Draw ``text`` stretched to fill ``box`` = (centre x, centre y, width, height)."""
        cx, cy, w, h = box
        w, h = w * style.text_width, h * style.text_height
        glyphs = _text_mask(text, style.font, round(style.stroke, 2), style.italic)
        pw = max(1, int(round(w * 0.5 * self.size)))
        ph = max(1, int(round(h * 0.5 * self.size)))
        interp = cv2.INTER_AREA if pw < glyphs.shape[1] else cv2.INTER_LINEAR
        patch = cv2.resize(glyphs, (pw, ph), interpolation=interp)
        x0 = int(round((cx + 1) * 0.5 * self.size - pw / 2))
        y0 = int(round((cy + 1) * 0.5 * self.size - ph / 2))
        mask = np.zeros((self.size, self.size), np.float32)
        xs, ys = max(0, x0), max(0, y0)
        xe, ye = min(self.size, x0 + pw), min(self.size, y0 + ph)
        mask[ys:ye, xs:xe] = patch[ys - y0 : ye - y0, xs - x0 : xe - x0]
        self._paint(mask, colour)


@functools.lru_cache(maxsize=256)
def _text_mask(text: str, font: str, stroke: float, italic: bool) -> np.ndarray:
    """Coverage mask of ``text`` cropped tight to its ink, float32 in [0, 1], ~200 px tall."""
    if font == "pil":
        from PIL import Image, ImageDraw, ImageFont

        pil_font = ImageFont.load_default(size=200)
        img = Image.new("L", (200 * (len(text) + 1), 320), 0)
        draw = ImageDraw.Draw(img)
        draw.text((20, 20), text, fill=255, font=pil_font, stroke_width=int(round(8 * (stroke - 1.0))) if stroke > 1 else 0)
        mask = np.asarray(img, np.uint8).copy()
    else:
        face = HERSHEY_FONTS[font] | (cv2.FONT_ITALIC if italic else 0)
        scale = 200.0 / cv2.getTextSize("0", face, 1.0, 1)[0][1]
        thickness = max(1, int(round(22 * stroke)))
        (tw, th), base = cv2.getTextSize(text, face, scale, thickness)
        mask = np.zeros((th + base + 4 * thickness, tw + 4 * thickness), np.uint8)
        cv2.putText(mask, text, (2 * thickness, th + 2 * thickness), face, scale, 255, thickness, cv2.LINE_AA)
    if italic and font == "pil":
        shear = np.float32([[1, -0.2, 60], [0, 1, 0]])
        mask = cv2.warpAffine(mask, shear, (mask.shape[1] + 80, mask.shape[0]))
    ys, xs = np.nonzero(mask > 32)
    if len(xs) == 0:
        return np.zeros((1, 1), np.float32)
    return mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(np.float32) / 255.0


def _regular_polygon(n: int, radius: float, rotation: float) -> np.ndarray:
    t = rotation + np.arange(n) * 2 * math.pi / n
    return np.stack([radius * np.cos(t), radius * np.sin(t)], 1)


def _triangle(radius: float, pointing_down: bool) -> np.ndarray:
    # Equilateral triangle inscribed so that its bounding box is centred on the origin.
    h = radius * 1.732  # height of an equilateral triangle of side 2r
    top, bottom = -h / 2, h / 2
    if pointing_down:
        return np.array([[-radius, top], [radius, top], [0.0, bottom]])
    return np.array([[0.0, top], [radius, bottom], [-radius, bottom]])


def _inset_triangle(radius: float, border: float, pointing_down: bool) -> np.ndarray:
    # The inradius of an equilateral triangle is 1/3 of its height: inset along the centroid.
    outer = _triangle(radius, pointing_down)
    centroid = outer.mean(0)
    inradius = radius * 1.732 / 3
    return centroid + (outer - centroid) * (inradius - border) / inradius


def _rim(c: _Canvas, s: SignStyle, outline: Callable[[float], np.ndarray] | None = None) -> None:
    if not s.rim:
        return
    if outline is None:
        c.disc(0.98, s.white)
    else:
        c.polygon(outline(0.98), s.white)


def _draw_round_prohibition(c: _Canvas, s: SignStyle, inner: RGB) -> None:
    _rim(c, s)
    c.disc(0.94, s.red)
    c.disc(0.94 - 0.19 * s.ring, inner)


def _draw_stop(c: _Canvas, s: SignStyle) -> None:
    octagon = lambda r: _regular_polygon(8, r, math.pi / 8)  # noqa: E731 - flat top and bottom
    c.polygon(octagon(0.98 / math.cos(math.pi / 8)), s.white)
    c.polygon(octagon((0.98 - 0.035 * s.ring) / math.cos(math.pi / 8)), s.red)
    c.text("STOP", (0.0, 0.0, 1.34, 0.48), s.white, s)


def _draw_yield(c: _Canvas, s: SignStyle) -> None:
    c.polygon(_triangle(1.0, True), s.white if s.rim else s.red)
    c.polygon(_inset_triangle(1.0, 0.05 if s.rim else 0.0, True), s.red)
    c.polygon(_inset_triangle(1.0, 0.05 + 0.2 * s.ring, True), s.white)


def _draw_no_entry(c: _Canvas, s: SignStyle) -> None:
    _rim(c, s)
    c.disc(0.94, s.red)
    bar_h = 0.2 * s.ring
    c.polygon(np.array([[-0.68, -bar_h], [0.68, -bar_h], [0.68, bar_h], [-0.68, bar_h]]), s.white)


def _speed_limit(number: str) -> Callable[[_Canvas, SignStyle], None]:
    def draw(c: _Canvas, s: SignStyle) -> None:
        _draw_round_prohibition(c, s, s.white)
        c.text(number, (0.0, 0.0, 0.98, 0.86), s.black, s)

    return draw


def _draw_no_vehicles(c: _Canvas, s: SignStyle) -> None:
    _draw_round_prohibition(c, s, s.white)


def _draw_priority_road(c: _Canvas, s: SignStyle) -> None:
    diamond = lambda r: np.array([[0, -r], [r, 0], [0, r], [-r, 0]], np.float64)  # noqa: E731
    c.polygon(diamond(0.99), s.black)
    c.polygon(diamond(0.95), s.white)
    c.polygon(diamond(0.95 - 0.26 * s.ring), s.yellow)


def _draw_general_caution(c: _Canvas, s: SignStyle) -> None:
    c.polygon(_triangle(1.0, False), s.white if s.rim else s.red)
    c.polygon(_inset_triangle(1.0, 0.05 if s.rim else 0.0, False), s.red)
    c.polygon(_inset_triangle(1.0, 0.05 + 0.18 * s.ring, False), s.white)
    w = 0.07 * s.stroke
    c.polygon(np.array([[-w, -0.30], [w, -0.30], [w * 0.6, 0.28], [-w * 0.6, 0.28]]), s.black)
    c.disc(w * 1.05, s.black, 0.0, 0.45)


def _blue_disc(c: _Canvas, s: SignStyle) -> None:
    _rim(c, s)
    c.disc(0.94, s.blue)


def _arrow(c: _Canvas, s: SignStyle, path: np.ndarray, colour: RGB) -> None:
    """A thick arrow along ``path`` (first point = tail) with a triangular head at the end."""
    width = 0.2 * s.stroke
    tip = path[-1]
    direction = tip - path[-2]
    direction = direction / np.linalg.norm(direction)
    normal = np.array([-direction[1], direction[0]])
    head_len, head_half = 0.36, 0.28 * max(1.0, s.stroke)
    base = tip - direction * head_len
    c.stroke(np.vstack([path[:-1], base + direction * 0.02]), width, colour)
    c.polygon(np.array([tip, base + normal * head_half, base - normal * head_half]), colour)


def _draw_ahead_only(c: _Canvas, s: SignStyle) -> None:
    _blue_disc(c, s)
    _arrow(c, s, np.array([[0.0, 0.62], [0.0, -0.62]]), s.white)


def _draw_keep_right(c: _Canvas, s: SignStyle) -> None:
    _blue_disc(c, s)
    d = 0.44
    _arrow(c, s, np.array([[-d, -d], [d, d]]), s.white)


def _draw_turn_left_ahead(c: _Canvas, s: SignStyle) -> None:
    _blue_disc(c, s)
    _arrow(c, s, np.array([[0.22, 0.62], [0.22, -0.08], [-0.62, -0.08]]), s.white)


def _draw_no_parking(c: _Canvas, s: SignStyle) -> None:
    _draw_round_prohibition(c, s, s.blue)
    d = 0.55  # keeps the round caps of the slash inside the ring
    c.stroke(np.array([[-d, -d], [d, d]]), 0.19 * s.ring, s.red)


def _draw_parking(c: _Canvas, s: SignStyle) -> None:
    square = lambda r: np.array([[-r, -r], [r, -r], [r, r], [-r, r]], np.float64)  # noqa: E731
    c.polygon(square(0.92), s.white)
    c.polygon(square(0.92 - 0.05 * s.ring), s.blue)
    c.text("P", (0.0, 0.0, 0.9, 1.2), s.white, s)


_DRAWERS: dict[str, Callable[[_Canvas, SignStyle], None]] = {
    "stop": _draw_stop,
    "yield": _draw_yield,
    "no entry": _draw_no_entry,
    "speed limit 30": _speed_limit("30"),
    "speed limit 50": _speed_limit("50"),
    "speed limit 80": _speed_limit("80"),
    "no vehicles": _draw_no_vehicles,
    "priority road": _draw_priority_road,
    "general caution": _draw_general_caution,
    "ahead only": _draw_ahead_only,
    "keep right": _draw_keep_right,
    "turn left ahead": _draw_turn_left_ahead,
    "no parking": _draw_no_parking,
    "parking": _draw_parking,
}
assert tuple(_DRAWERS) == CLASS_NAMES


def class_index(name: str) -> int:
    """Index of a sign class in :data:`CLASS_NAMES` by the one class-name lookup
    (:func:`physical_adv.classes.class_index`: case-insensitive, ``_`` or ``-`` for spaces).

    Raises:
        UserError: (a ``ValueError``) an unknown sign, naming the closest ones.
    """
    return lookup_class(CLASS_NAMES, name, "sign", "the built-in signs")


def draw_sign(name: str, size: int, style: SignStyle = DEFAULT_STYLE, supersample: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Draw one sign filling a ``size``×``size`` square.

    Args:
        name: a class name from :data:`CLASS_NAMES`.
        size: output side in pixels.
        style: the look to draw it in.
        supersample: draw at this multiple of ``size`` and area-average down (anti-aliasing).

    Returns:
        ``(rgb, alpha)``: ``(size, size, 3)`` and ``(size, size)`` float32 arrays in [0, 1];
        ``rgb`` is premultiplied-free (valid where ``alpha`` > 0).
    """
    drawer = _DRAWERS[CLASS_NAMES[class_index(name)]]
    canvas = _Canvas(size * supersample)
    drawer(canvas, style)
    rgb, alpha = canvas.rgb, canvas.alpha
    if supersample > 1:
        rgb = cv2.resize(rgb * alpha[..., None], (size, size), interpolation=cv2.INTER_AREA)
        alpha = cv2.resize(alpha, (size, size), interpolation=cv2.INTER_AREA)
        rgb = rgb / np.maximum(alpha, 1e-6)[..., None]
    return np.clip(rgb, 0, 1), np.clip(alpha, 0, 1)


PAPER_WHITE = (1.0, 1.0, 1.0)
SIGN_FILL = 0.88  # fraction of a clean print rendering's side covered by the sign


def render_clean(name: str, size: int = 512, style: SignStyle = DEFAULT_STYLE, fill: float = SIGN_FILL) -> np.ndarray:
    """A clean, frontal, print-quality rendering of a sign on paper white.

    This is what ``--source sign:NAME`` attacks start from and what a printed tile shows.

    Args:
        name: a class name from :data:`CLASS_NAMES`.
        size: side of the square image in pixels.
        style: the sign's look (the default is the canonical design).
        fill: fraction of the side the sign spans.

    Returns:
        ``(size, size, 3)`` uint8 RGB.
    """
    inner = int(round(size * fill))
    rgb, alpha = draw_sign(name, inner, style, supersample=4 if size <= 1024 else 2)
    page = np.empty((size, size, 3), np.float32)
    page[:] = PAPER_WHITE
    o = (size - inner) // 2
    region = page[o : o + inner, o : o + inner]
    region += (rgb - region) * alpha[..., None]
    return np.round(page * 255).astype(np.uint8)


# Looks the training distribution never draws: a font it never uses, colours and
# proportions outside its ranges. Tests and the accuracy benchmark check the model on them.
OFF_STYLES: dict[str, SignStyle] = {
    "pillow sans font": SignStyle(font="pil"),
    "complex serif italic font": SignStyle(font="hershey_complex", italic=True),
    "dark maroon and navy": SignStyle(red=(0.55, 0.08, 0.18), blue=(0.08, 0.16, 0.42), font="pil"),
    "bright orange-red, sky blue, cream": SignStyle(red=(0.95, 0.3, 0.1), blue=(0.2, 0.5, 0.9), white=(0.95, 0.92, 0.8)),
    "thick rings, condensed lettering": SignStyle(ring=1.5, text_width=0.72, stroke=0.7, font="hershey_plain"),
    "thin rings, wide lettering, no rim": SignStyle(ring=0.6, text_width=1.3, stroke=1.5, rim=False),
}

