"""Training and evaluation scenes for the embedded ``signs`` classifier.

A scene is a small square photo-like crop showing one sign. Three kinds are mixed:

* ``wild`` — a sign in the street: cluttered background, scale, position, perspective,
  rotation, partial occlusion and wear;
* ``print`` — what capture hands the model after rectifying a printed tile: the sign
  frontal on paper white, with a print's washed-out colours, lifted blacks, paper tint,
  dot gain and a small residual misalignment;
* ``sheet`` — a printed tile cut out of a photo by its bounding box without un-warping
  (``capture --crop box``): tilted paper, bits of the sheet and its markers around it.

All of them then go through a camera: lighting gradient, exposure, contrast, gamma,
colour cast, saturation, defocus or motion blur, sensor noise and JPEG. Everything is
numpy/OpenCV on uint8/float32 arrays and draws only from the ``numpy.random.Generator``
it is given, so a seed fixes every scene.
"""

from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np

from physical_adv.pose import posed_square
from physical_adv.signs.designs import CLASS_NAMES, SIGN_FILL, SignStyle, draw_sign, random_style

SCENE_KINDS = ("wild", "print", "sheet")
SCENE_MIX = (0.5, 0.35, 0.15)
BANK_SIGN_PX = 128  # side of the pre-drawn signs that scenes warp from
SENSOR_NOISE_MAX = 0.05  # largest sensor-noise sigma at the model's input, image in [0, 1]


class SignBank:
    """Pre-drawn signs (``styles_per_class`` random styles of every class) to warp scenes from.

    Drawing a sign with anti-aliasing costs milliseconds; warping a pre-drawn one costs
    tens of microseconds, so scenes sample from a bank that is redrawn now and then.
    """

    def __init__(
        self,
        rng: np.random.Generator,
        styles_per_class: int = 24,
        size: int = BANK_SIGN_PX,
        styles: Sequence[SignStyle] | None = None,
    ) -> None:
        """Draw the bank; ``styles`` fixes the looks instead of drawing random ones."""
        if styles is None:
            styles = [random_style(rng) for _ in range(styles_per_class)]
        self.size = size
        self.rgb = np.empty((len(CLASS_NAMES), len(styles), size, size, 3), np.float32)
        self.alpha = np.empty((len(CLASS_NAMES), len(styles), size, size), np.float32)
        for j, style in enumerate(styles):
            for i, name in enumerate(CLASS_NAMES):
                self.rgb[i, j], self.alpha[i, j] = draw_sign(name, size, style)

    def pick(self, rng: np.random.Generator, label: int) -> tuple[np.ndarray, np.ndarray]:
        j = int(rng.integers(self.rgb.shape[1]))
        return self.rgb[label, j].copy(), self.alpha[label, j].copy()


def render_scene(
    rng: np.random.Generator,
    bank: SignBank,
    label: int,
    out: int = 64,
    kind: str | None = None,
) -> np.ndarray:
    """Render one scene of class ``label``.

    Args:
        rng: the only source of randomness.
        bank: pre-drawn signs to take the sign from.
        label: class index into :data:`CLASS_NAMES`.
        out: side of the square output in pixels.
        kind: one of :data:`SCENE_KINDS`, or ``None`` to draw one with :data:`SCENE_MIX`.

    Returns:
        ``(out, out, 3)`` uint8 RGB.
    """
    if kind is None:
        kind = SCENE_KINDS[int(rng.choice(len(SCENE_KINDS), p=SCENE_MIX))]
    rgb, alpha = bank.pick(rng, label)
    if kind == "wild":
        rgb = _wear(rng, rgb, alpha)
        img = _wild(rng, rgb, alpha, out)
        strength = 1.0
    elif kind == "print":
        img = _printed_tile(rng, rgb, alpha, out)
        strength = 0.7
    elif kind == "sheet":
        img = _sheet_box(rng, rgb, alpha, out)
        strength = 0.8
    else:
        raise ValueError(f"kind must be one of {SCENE_KINDS}, got {kind!r}")
    return _camera(rng, img, strength)


def render_batch(rng: np.random.Generator, bank: SignBank, labels: np.ndarray, out: int = 64) -> np.ndarray:
    """Scenes for each label, stacked as ``(N, out, out, 3)`` uint8."""
    return np.stack([render_scene(rng, bank, int(y), out) for y in labels])


# --------------------------------------------------------------------------- sign wear


def _wear(rng: np.random.Generator, rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Sun fading, dirt, scratches and stickers on the sign face."""
    size = rgb.shape[0]
    if rng.random() < 0.5:  # sun fading: towards white and less saturated
        fade = rng.uniform(0.0, 0.35)
        rgb = rgb + (1.0 - rgb) * fade
    if rng.random() < 0.4:  # grime: low-frequency darkening
        grime = cv2.resize(rng.random((4, 4)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
        rgb = rgb * (1.0 - rng.uniform(0.0, 0.35) * np.clip(grime, 0, 1))[..., None]
    if rng.random() < 0.3:  # scratches and graffiti strokes
        layer = np.zeros((size, size), np.uint8)
        for _ in range(int(rng.integers(1, 5))):
            p0 = tuple(int(v) for v in rng.integers(0, size, 2))
            p1 = tuple(int(v) for v in rng.integers(0, size, 2))
            cv2.line(layer, p0, p1, 255, int(rng.integers(1, 4)), cv2.LINE_AA)
        m = layer.astype(np.float32)[..., None] / 255.0
        rgb = rgb + (rng.uniform(0.3, 1.0, 3).astype(np.float32) - rgb) * m * rng.uniform(0.4, 1.0)
    if rng.random() < 0.2:  # a sticker
        w, h = rng.integers(size // 10, size // 4, 2)
        x, y = rng.integers(size // 5, size - size // 5 - w), rng.integers(size // 5, size - size // 5 - h)
        rgb[y : y + h, x : x + w] = rng.uniform(0, 1, 3)
    return np.clip(rgb, 0, 1).astype(np.float32)


# --------------------------------------------------------------------------- backgrounds


def _clutter(rng: np.random.Generator, out: int) -> np.ndarray:
    """A street-like background: gradient sky/wall, random shapes, texture, blur."""
    top, bottom = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    t = np.linspace(0, 1, out, dtype=np.float32)[:, None, None]
    img = (top * (1 - t) + bottom * t).astype(np.float32) * np.ones((1, out, 1), np.float32)
    for _ in range(int(rng.integers(2, 14))):
        colour = tuple(float(c) for c in rng.uniform(0, 1, 3))
        shape = rng.integers(4)
        if shape == 0:
            p0 = rng.integers(-out // 4, out, 2)
            p1 = p0 + rng.integers(2, out, 2)
            cv2.rectangle(img, tuple(int(v) for v in p0), tuple(int(v) for v in p1), colour, -1)
        elif shape == 1:
            c = tuple(int(v) for v in rng.integers(0, out, 2))
            cv2.circle(img, c, int(rng.integers(2, out // 2)), colour, -1, cv2.LINE_AA)
        elif shape == 2:
            p0 = tuple(int(v) for v in rng.integers(-out // 2, out + out // 2, 2))
            p1 = tuple(int(v) for v in rng.integers(-out // 2, out + out // 2, 2))
            cv2.line(img, p0, p1, colour, int(rng.integers(1, 6)), cv2.LINE_AA)
        else:
            pts = rng.integers(-out // 4, out + out // 4, (int(rng.integers(3, 6)), 2)).astype(np.int32)
            cv2.fillPoly(img, [pts], colour, cv2.LINE_AA)
    if rng.random() < 0.5:  # foliage / brick-like texture
        tex = cv2.resize(rng.random((out // 4, out // 4)).astype(np.float32), (out, out), interpolation=cv2.INTER_LINEAR)
        img = img * (1 - rng.uniform(0.1, 0.5) * tex[..., None])
    if rng.random() < 0.5:  # out-of-focus background
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 2.5))
    return np.clip(img, 0, 1)


def _paper(rng: np.random.Generator, out: int) -> np.ndarray:
    tint = 1.0 - rng.uniform(0.0, 0.08, 3)
    return np.ones((out, out, 3), np.float32) * tint.astype(np.float32)


# --------------------------------------------------------------------------- geometry


def _square(side: float) -> np.ndarray:
    return np.float32([[0, 0], [side, 0], [side, side], [0, side]])


def _pose(rng: np.random.Generator, centre: np.ndarray, side: float, max_rot: float, max_tilt: float, jitter: float) -> np.ndarray:
    """Corners (TL, TR, BR, BL) of a square of ``side`` px seen rotated, tilted and jittered
    (the tilt and rotation rule is :func:`physical_adv.pose.posed_square`, shared with EOT)."""
    half = side / 2
    pts = np.float32([[-half, -half], [half, -half], [half, half], [-half, half]])
    tilt = math.radians(rng.uniform(0, max_tilt))
    axis = rng.uniform(0, math.pi)
    u = np.float32([math.cos(axis), math.sin(axis)])
    rot = math.radians(rng.uniform(-max_rot, max_rot))
    r = np.float32([[math.cos(rot), -math.sin(rot)], [math.sin(rot), math.cos(rot)]])
    pts = posed_square(pts, half, math.sin(tilt), math.cos(tilt), u, r)
    pts += rng.uniform(-jitter, jitter, pts.shape) * side
    return (pts + centre).astype(np.float32)


def _warp_onto(
    background: np.ndarray, rgb: np.ndarray, alpha: np.ndarray, src: np.ndarray, dst: np.ndarray
) -> np.ndarray:
    """Composite ``rgb`` (with ``alpha``) onto ``background`` so that ``src`` corners land on ``dst``.

    The source is first area-downsampled to roughly the footprint it will cover, so the
    bilinear warp does not alias (a camera integrates over each pixel's footprint).
    """
    out = background.shape[0]
    span = float(np.max(np.linalg.norm(dst - dst.mean(0), axis=1))) * 2 / math.sqrt(2)
    src_side = float(src[:, 0].max() - src[:, 0].min())
    factor = span / src_side
    if factor < 0.7:
        new = max(4, int(round(rgb.shape[0] * factor * 1.3)))
        scale = new / rgb.shape[0]
        premul = cv2.resize(rgb * alpha[..., None], (new, new), interpolation=cv2.INTER_AREA)
        alpha = cv2.resize(alpha, (new, new), interpolation=cv2.INTER_AREA)
        src = (src + 0.5) * scale - 0.5
    else:
        premul = rgb * alpha[..., None]
    h = cv2.getPerspectiveTransform(src.astype(np.float32), dst.astype(np.float32))
    warped = cv2.warpPerspective(premul, h, (out, out), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    a = cv2.warpPerspective(alpha, h, (out, out), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    return background * (1 - a[..., None]) + warped


def _occlude(rng: np.random.Generator, img: np.ndarray, centre: np.ndarray, side: float) -> np.ndarray:
    """Cover part of the sign (up to about a fifth) with a branch, pole, hand or another object."""
    out = img.shape[0]
    mask = np.zeros((out, out), np.float32)
    ang = rng.uniform(0, 2 * math.pi)
    direction = np.float32([math.cos(ang), math.sin(ang)])
    depth = rng.uniform(0.15, 0.4) * side  # how far the occluder reaches past the sign edge
    edge = centre + direction * (side / 2 - depth)
    normal = np.float32([-direction[1], direction[0]])
    width = rng.uniform(0.3, 0.9) * side
    far = centre + direction * side * 1.5
    poly = np.float32([edge + normal * width / 2, edge - normal * width / 2, far - normal * width / 2, far + normal * width / 2])
    cv2.fillPoly(mask, [np.round(poly).astype(np.int32)], 1.0, cv2.LINE_AA)
    colour = rng.uniform(0, 1, 3).astype(np.float32)
    occluder = np.ones_like(img) * colour
    if rng.random() < 0.5:
        occluder = occluder * (0.7 + 0.3 * cv2.resize(rng.random((6, 6)).astype(np.float32), (out, out))[..., None])
    return img * (1 - mask[..., None]) + occluder * mask[..., None]


def _wild(rng: np.random.Generator, rgb: np.ndarray, alpha: np.ndarray, out: int) -> np.ndarray:
    side = out * rng.uniform(0.55, 0.95)
    centre = out / 2 + rng.uniform(-0.12, 0.12, 2) * out
    dst = _pose(rng, centre, side, max_rot=15, max_tilt=45, jitter=0.04)
    img = _warp_onto(_clutter(rng, out), rgb, alpha, _square(rgb.shape[0]) - 0.5, dst)
    if rng.random() < 0.25:
        img = _occlude(rng, img, centre, side)
    return img


def _print_effects(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Printer gamut: washed-out colours, lifted blacks, paper white, ink cross-talk, dot gain."""
    grey = img.mean(axis=2, keepdims=True)
    img = grey + (img - grey) * rng.uniform(0.6, 1.0)
    mix = np.eye(3, dtype=np.float32) + rng.uniform(-0.06, 0.06, (3, 3)).astype(np.float32)
    img = img @ (mix / mix.sum(1, keepdims=True)).T
    black, white = rng.uniform(0.03, 0.25), rng.uniform(0.82, 1.0)
    img = black + (white - black) * np.clip(img, 0, 1)
    if rng.random() < 0.7:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 0.8))
    return img


def _printed_tile(rng: np.random.Generator, rgb: np.ndarray, alpha: np.ndarray, out: int) -> np.ndarray:
    """The model-input view of a printed clean tile after marker-based rectification."""
    side = out * SIGN_FILL * rng.uniform(0.93, 1.07)
    centre = out / 2 + rng.uniform(-0.03, 0.03, 2) * out
    dst = _pose(rng, centre, side, max_rot=3, max_tilt=8, jitter=0.02)
    img = _warp_onto(_paper(rng, out), rgb, alpha, _square(rgb.shape[0]) - 0.5, dst)
    return _print_effects(rng, img)


def _sheet_box(rng: np.random.Generator, rgb: np.ndarray, alpha: np.ndarray, out: int) -> np.ndarray:
    """A printed tile cut from a photo by its bounding box: tilted, with sheet and markers around."""
    tile = _printed_tile(rng, rgb, alpha, 2 * out)  # the tile's paper square, sign and all
    background = _clutter(rng, out)
    side = out * rng.uniform(0.7, 0.95)
    centre = out / 2 + rng.uniform(-0.05, 0.05, 2) * out
    dst = _pose(rng, centre, side * 1.25, max_rot=10, max_tilt=40, jitter=0.02)
    paper = np.float32(tile[2, 2])  # print effects turned the white into this paper colour
    framed = np.ones((int(2 * out * 1.25), int(2 * out * 1.25), 3), np.float32) * paper
    o = (framed.shape[0] - 2 * out) // 2
    framed[o : o + 2 * out, o : o + 2 * out] = tile
    m = max(2, framed.shape[0] // 10)
    for cx, cy in ((0, 0), (1, 0), (0, 1), (1, 1)):  # marker-like squares in the corners
        if rng.random() < 0.7:
            x0 = 1 + cx * (framed.shape[1] - m - 2)
            y0 = 1 + cy * (framed.shape[0] - m - 2)
            framed[y0 : y0 + m, x0 : x0 + m] = paper * 0.15
    full = np.ones(framed.shape[:2], np.float32)
    return _warp_onto(background, framed, full, _square(framed.shape[0]) - 0.5, dst)


# --------------------------------------------------------------------------- camera


def _camera(rng: np.random.Generator, img: np.ndarray, strength: float) -> np.ndarray:
    """Light, exposure, colour, optics, noise and JPEG; ``strength`` scales the ranges."""
    out = img.shape[0]
    s = strength
    if rng.random() < 0.6:  # lighting gradient across the scene
        ang = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:out, 0:out].astype(np.float32) / out - 0.5
        ramp = 1 + rng.uniform(0, 0.4 * s) * (xx * math.cos(ang) + yy * math.sin(ang)) * 2
        img = img * ramp[..., None]
    img = img * rng.uniform(1 - 0.45 * s, 1 + 0.3 * s)  # exposure
    mean = img.mean()
    img = mean + (img - mean) * rng.uniform(1 - 0.4 * s, 1 + 0.2 * s)  # contrast
    img = img * rng.uniform(1 - 0.18 * s, 1 + 0.18 * s, 3).astype(np.float32)  # white balance
    grey = img.mean(axis=2, keepdims=True)
    img = grey + (img - grey) * rng.uniform(1 - 0.4 * s, 1 + 0.2 * s)  # saturation
    img = np.clip(img, 0, 1) ** rng.uniform(1 - 0.3 * s, 1 + 0.4 * s)  # gamma
    r = rng.random()
    if r < 0.35:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.3 * s + 0.2))
    elif r < 0.5:
        img = _motion_blur(rng, img, rng.uniform(1.5, 2 + 3 * s))
    img = img + rng.normal(0, rng.uniform(0, SENSOR_NOISE_MAX * s), img.shape).astype(np.float32)
    u8 = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
    if rng.random() < 0.6:
        quality = int(rng.integers(25, 96))
        ok, buf = cv2.imencode(".jpg", u8[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
        u8 = np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])
    return u8


def _motion_blur(rng: np.random.Generator, img: np.ndarray, length: float) -> np.ndarray:
    k = int(math.ceil(length)) | 1
    kernel = np.zeros((k, k), np.float32)
    c = k // 2
    ang = rng.uniform(0, math.pi)
    dx, dy = math.cos(ang) * length / 2, math.sin(ang) * length / 2
    cv2.line(kernel, (int(round(c - dx)), int(round(c - dy))), (int(round(c + dx)), int(round(c + dy))), 1.0, 1, cv2.LINE_AA)
    return cv2.filter2D(img, -1, kernel / kernel.sum())
