"""The print-and-photograph transformation distribution for Expectation over Transformation.

Split as in kornia: :func:`sample` draws an :class:`EOTParams` (a frozen dataclass of
tensors, one row per sample) from an :class:`EOTDistribution` with an explicit
``torch.Generator``; :func:`render` is pure and replays any draw.

:func:`render` takes the texture at print resolution (e.g. 512 px) to a batch at the
model's input size in a fixed, short sequence of batched ops:

1. **geometry** — one homography per sample (scale, rotation, out-of-plane tilt,
   translation, residual misalignment) applied by one ``grid_sample`` from the level of an
   area-filtered pyramid (2×2 average pooling) whose texel size matches the sample's
   footprint, so the downsampling does not alias; outside the tile is paper white;
2. **printer and camera colour** — saturation, ink cross-talk, black level, paper white
   and tint, white balance, exposure, contrast and brightness are all affine in colour,
   so they are folded at sampling time into one 3×3 matrix + offset per sample;
3. **light** — a linear lighting ramp across the frame, then gamma; with a calibration
   (``--eot cal.toml``, :func:`calibrated_distribution`) the measured printer and camera
   channel follows (:mod:`physical_adv.attack.calibrated`), the generic colour of stage 2
   then reduced to the readings' frame-to-frame jitter;
4. **optics** — dot gain, defocus (Gaussian) and motion blur (a line) combined into one
   point-spread function per sample and applied as one depthwise convolution;
5. **sensor** — the blur's edge normalisation, additive Gaussian noise (planes of a fixed
   bank during optimisation, see :func:`sample`), then clipping to [0, 1];
6. **compression** — the JPEG round trip of :mod:`physical_adv.attack.jpeg` in the forward
   pass, with a straight-through (identity) backward pass (BPDA);
7. **your own stages** (``--eot print-camera+module:factory``, :mod:`physical_adv.attack.stages`)
   — e.g. kornia rain, shadows or erasing — on the finished batch, from seeds in the draw.

Everything is differentiable with respect to the texture. Stages 2–3 and 5–6 are two
autograd functions with hand-written backward passes (few image-sized passes; checked
against finite differences in the tests).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from kornia.geometry.transform import get_perspective_transform

from physical_adv.artifacts import read_named_toml
from physical_adv.attack.jpeg import jpeg
from physical_adv.attack.calibrated import CalibratedChannel, is_calibration, load_calibration
from physical_adv.attack.stages import Stage, apply_stages, load_stage
from physical_adv.errors import UserError
from physical_adv.pose import posed_square
from physical_adv.resample import max_pyramid_level, pyramid_level

Range = tuple[float, float]
PRESET_DIR = Path(__file__).resolve().parent / "presets"


@dataclass(frozen=True)
class EOTDistribution:
    """Parameter ranges of the print-and-photograph distribution (all uniform).

    Geometry (model-input frame): ``scale`` = tile side / input side; ``rotation`` and
    ``tilt`` (out-of-plane viewing angle) are maximum degrees; ``translation`` is the
    maximum shift of the tile centre as a fraction of the input side; ``misalignment`` is
    the maximum independent jitter of each corner as a fraction of the tile side (what
    marker-based rectification leaves).

    Printer: ``saturation`` multiplies chroma; ``ink_crosstalk`` is the maximum
    off-diagonal weight of the ink mixing matrix; ``black_level`` is the darkest printable
    value; ``paper_white`` the brightest; ``paper_tint`` the maximum per-channel darkening
    of the paper; ``dot_gain`` a Gaussian blur sigma in input pixels.

    Camera and light: ``exposure`` multiplies, ``brightness`` adds, ``contrast`` scales
    about mid-grey; ``gamma`` is the exponent; ``white_balance`` the maximum per-channel
    gain deviation; ``light_gradient`` the maximum relative change of light across the
    frame; ``defocus`` a Gaussian sigma in input pixels; ``motion_blur`` a line length in
    input pixels, applied with probability ``motion_blur_p``; ``noise`` the sensor noise
    sigma (image in [0, 1]).

    Compression: ``jpeg_quality`` range, applied with probability ``jpeg_p``.

    Stages: your own batch → batch transformations applied after all of the above
    (:mod:`physical_adv.attack.stages`); given as :class:`Stage` objects or ``module:factory``
    specs, which are loaded (as ``attack.json``'s record of a distribution is read back).
    """

    name: str = "custom"
    description: str = ""
    scale: Range = (1.0, 1.0)
    rotation: float = 0.0
    tilt: float = 0.0
    translation: float = 0.0
    misalignment: float = 0.0
    saturation: Range = (1.0, 1.0)
    ink_crosstalk: float = 0.0
    black_level: Range = (0.0, 0.0)
    paper_white: Range = (1.0, 1.0)
    paper_tint: float = 0.0
    dot_gain: Range = (0.0, 0.0)
    exposure: Range = (1.0, 1.0)
    brightness: Range = (0.0, 0.0)
    contrast: Range = (1.0, 1.0)
    gamma: Range = (1.0, 1.0)
    white_balance: float = 0.0
    light_gradient: float = 0.0
    defocus: Range = (0.0, 0.0)
    motion_blur: Range = (0.0, 0.0)
    motion_blur_p: float = 0.0
    noise: Range = (0.0, 0.0)
    jpeg_quality: Range = (100.0, 100.0)
    jpeg_p: float = 0.0
    stages: tuple[Stage, ...] = ()
    calibration: CalibratedChannel | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(s if isinstance(s, Stage) else load_stage(s) for s in self.stages))
        if isinstance(self.calibration, (str, Path)):  # as recorded in attack.json: the file it came from
            object.__setattr__(self, "calibration", load_calibration(self.calibration))
        limits = {
            "scale": (0.05, 10), "saturation": (0, 3), "black_level": (0, 0.9), "paper_white": (0.1, 1),
            "dot_gain": (0, 10), "exposure": (0.05, 5), "brightness": (-1, 1), "contrast": (0.05, 5),
            "gamma": (0.1, 5), "defocus": (0, 10), "motion_blur": (0, 20), "noise": (0, 1), "jpeg_quality": (1, 100),
        }
        for name, (lo, hi) in limits.items():
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 2 or not (lo <= value[0] <= value[1] <= hi):
                raise ValueError(f"EOT {name} must be [low, high] with {lo} ≤ low ≤ high ≤ {hi}, got {list(value)}")
            object.__setattr__(self, name, value)
        for name, hi in (("rotation", 180), ("tilt", 80), ("translation", 1), ("misalignment", 0.5),
                         ("ink_crosstalk", 0.5), ("paper_tint", 0.5), ("white_balance", 0.9),
                         ("light_gradient", 2), ("motion_blur_p", 1), ("jpeg_p", 1)):
            value = float(getattr(self, name))
            if not 0 <= value <= hi:
                raise ValueError(f"EOT {name} must be in [0, {hi}], got {value}")
            object.__setattr__(self, name, value)
        if self.black_level[1] >= self.paper_white[0]:
            raise ValueError("EOT black_level must stay below paper_white")

    @property
    def deterministic(self) -> bool:
        """Whether every draw renders the same image (e.g. ``none``): then one draw says all
        there is, and many draws are one observation repeated, not a sample."""
        ranges = ("scale", "saturation", "black_level", "paper_white", "dot_gain", "exposure", "brightness", "contrast",
                  "gamma", "defocus", "jpeg_quality")
        maxima = ("rotation", "tilt", "translation", "misalignment", "ink_crosstalk", "paper_tint", "white_balance",
                  "light_gradient")
        return (all(getattr(self, f)[0] == getattr(self, f)[1] for f in ranges)
                and all(getattr(self, f) == 0 for f in maxima)
                and self.noise[1] == 0
                and (self.motion_blur[1] == 0 or self.motion_blur_p == 0)
                and self.jpeg_p in (0.0, 1.0)
                and not self.stages)  # a stage may draw anything


# The TOML file groups fields in sections; these are the section names.
_SECTIONS = ("geometry", "printer", "camera", "compression")


def preset_names() -> list[str]:
    """Names of the built-in presets (the TOML files in ``attack/presets``)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def load_distribution(name_or_path: str | Path) -> EOTDistribution:
    """A built-in preset by name, or a TOML file of the same format, optionally followed by
    your own stages: ``BASE+module:factory[+module:factory…]`` (:mod:`physical_adv.attack.stages`).

    Raises :class:`UserError` for an unknown preset, unreadable file, unknown key, bad range
    or a stage that cannot be loaded.
    """
    text = str(name_or_path)
    base, *stage_specs = [text] if Path(text).is_file() else text.split("+")
    dist = _load_base(base)
    if not stage_specs:
        return dist
    return dataclasses.replace(dist, name="+".join([dist.name, *stage_specs]),
                               stages=tuple(load_stage(spec) for spec in stage_specs))


def _load_base(name_or_path: str) -> EOTDistribution:
    """A preset or TOML file (no stages: they are named on the command line only)."""
    path, data = read_named_toml(name_or_path, PRESET_DIR, "EOT preset")
    if is_calibration(data):
        return calibrated_distribution(path)
    flat: dict = {"name": data.pop("name", path.stem), "description": data.pop("description", "")}
    for section in _SECTIONS:
        flat.update(data.pop(section, {}) or {})
    flat.update(data)  # keys outside sections are allowed too
    known = {f.name for f in fields(EOTDistribution)} - {"stages", "calibration"}
    unknown = sorted(set(flat) - known)
    if unknown:
        raise UserError(f"{path}: unknown EOT parameter(s) {', '.join(unknown)}")
    try:
        return EOTDistribution(**{k: tuple(v) if isinstance(v, list) else v for k, v in flat.items()})
    except (TypeError, ValueError) as exc:
        raise UserError(f"{path}: {exc}") from None


def calibrated_distribution(path: Path) -> EOTDistribution:
    """The EOT distribution of a ``physical-adv calibrate`` file: ``print-camera``'s geometry,
    light, optics, sensor and compression, its generic printer and camera colour ranges
    replaced by the measured channel (:class:`physical_adv.attack.calibrated.CalibratedChannel`,
    applied after the light ramp) with a brightness jitter whose standard deviation is the
    readings' frame-to-frame spread (uniform on ±√3 σ)."""
    channel = load_calibration(path)
    jitter = math.sqrt(3) * float(channel.spread.mean())
    base = _load_base("print-camera")
    return dataclasses.replace(
        base, name=f"calibrated:{path.name}", description=f"print-camera geometry and optics, the colour channel "
        f"measured by physical-adv calibrate ({path})", saturation=(1.0, 1.0), ink_crosstalk=0.0, black_level=(0.0, 0.0),
        paper_white=(1.0, 1.0), paper_tint=0.0, exposure=(1.0, 1.0), brightness=(-jitter, jitter), contrast=(1.0, 1.0),
        gamma=(1.0, 1.0), white_balance=0.0, calibration=channel)


def distribution_to_dict(dist: EOTDistribution) -> dict:
    """The distribution as plain JSON-able data (for ``attack.json``; stages by their specs, a
    calibration by its file)."""
    data = {f.name: (list(v) if isinstance(v := getattr(dist, f.name), tuple) else v) for f in fields(dist)}
    data["stages"] = [stage.spec for stage in dist.stages]
    data["calibration"] = dist.calibration.source if dist.calibration is not None else None
    return data


@dataclass(frozen=True)
class EOTParams:
    """One draw of ``N`` transformations (rows sorted by pyramid level).

    ``grid_h`` maps output pixel centres (homogeneous) to ``grid_sample`` texture
    coordinates in [-1, 1]; ``level`` picks the pyramid level per sample; ``colour_a`` /
    ``colour_b`` are the folded affine colour transform; the rest are per-sample
    physical quantities (pixels at the output size) and the pre-drawn noise; ``stages`` run
    on the rendered batch, stage ``i`` from ``stage_seeds[i]``.
    """

    out_size: int
    grid_h: torch.Tensor  # (N, 3, 3)
    level: torch.Tensor  # (N,) long, non-decreasing
    colour_a: torch.Tensor  # (N, 3, 3)
    colour_b: torch.Tensor  # (N, 3)
    light_ramp: torch.Tensor  # (N, 2) lighting ramp: relative light change per frame width in x and y
    gamma: torch.Tensor  # (N,)
    blur_sigma: torch.Tensor  # (N,) Gaussian sigma (dot gain and defocus combined)
    motion_length: torch.Tensor  # (N,)
    motion_angle: torch.Tensor  # (N,)
    noise: torch.Tensor | None  # (N, 3, S, S) already scaled by each sample's sigma; None = no noise
    jpeg_quality: torch.Tensor  # (N,) 0 = no JPEG
    blur_radius: int = 0  # kernel radius of the blur; 0 = this draw does not blur
    stages: tuple[Stage, ...] = ()
    stage_seeds: tuple[int, ...] = ()
    channel: CalibratedChannel | None = None  # the measured printer and camera colour, after the light ramp

    def __len__(self) -> int:
        return int(self.grid_h.shape[0])


def _uniform(n: int, bounds: Range | float, g: torch.Generator, device) -> torch.Tensor:
    lo, hi = (-bounds, bounds) if isinstance(bounds, (int, float)) else bounds
    return lo + (hi - lo) * torch.rand(n, generator=g, device=device)


def _affine_then(a1, b1, a2, b2):
    """Compose colour maps: x ↦ a2 (a1 x + b1) + b2."""
    return a2 @ a1, (a2 @ b1.unsqueeze(-1)).squeeze(-1) + b2


def sample(
    dist: EOTDistribution,
    n: int,
    texture_size: int,
    out_size: int,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    fresh_noise: bool = False,
) -> EOTParams:
    """Draw ``n`` transformations: geometry, colour, light, optics and sensor, in that order.

    Sensor noise comes from a fixed bank of unit-Gaussian planes (:func:`_noise_bank`):
    each sample takes three planes at random, each with a random sign — about 57 million
    combinations, at a tenth of the cost of fresh Gaussian draws, which at 224 px were the
    largest single cost of sampling. ``fresh_noise=True`` draws new noise instead (the
    held-out evaluation does, so it never sees a noise field the optimisation saw).

    Args:
        dist: the parameter ranges.
        n: number of samples.
        texture_size: side of the square texture at print resolution (pixels).
        out_size: side of the model input (pixels).
        generator: the only randomness source; must live on ``device``.
        fresh_noise: draw new Gaussian noise instead of combining planes of the bank.

    Returns:
        An :class:`EOTParams` on ``device`` (with one seed per stage of ``dist``, drawn last, so
        a distribution without stages draws what it always drew).
    """
    draw = _Draw(n, generator, torch.device(device))
    grid_h, level = _draw_geometry(dist, draw, texture_size, out_size)
    colour_a, colour_b = _draw_colour(dist, draw)
    light_ramp, gamma = _draw_light(dist, draw)
    blur_sigma, motion, motion_angle = _draw_optics(dist, draw)
    noise, quality = _draw_sensor(dist, draw, out_size, fresh_noise)
    order = torch.argsort(level, stable=True)  # (the noise rows are i.i.d.: they need no reordering)
    stage_seeds = tuple(torch.randint(2**62, (len(dist.stages),), generator=generator, device=device).tolist()
                        if dist.stages else ())
    return EOTParams(
        out_size=out_size, grid_h=grid_h[order], level=level[order], colour_a=colour_a[order], colour_b=colour_b[order],
        light_ramp=light_ramp[order], gamma=gamma[order], blur_sigma=blur_sigma[order], motion_length=motion[order],
        motion_angle=motion_angle[order], noise=noise, jpeg_quality=quality[order],
        blur_radius=blur_radius(dist) if bool((blur_sigma > 0).any() or (motion > 0).any()) else 0,
        stages=dist.stages, stage_seeds=stage_seeds, channel=dist.calibration,
    )


@dataclass(frozen=True)
class _Draw:
    """The batch size, generator and device that every stage of :func:`sample` draws with."""

    n: int
    g: torch.Generator
    dev: torch.device

    def uniform(self, bounds: Range | float) -> torch.Tensor:
        """``(n,)`` uniform in ``bounds`` (a ``(low, high)`` range, or ``±bounds``)."""
        return _uniform(self.n, bounds, self.g, self.dev)

    def rand(self, *shape: int) -> torch.Tensor:
        """``(n, *shape)`` uniform in [0, 1)."""
        return torch.rand(self.n, *shape, generator=self.g, device=self.dev)


def _draw_geometry(dist: EOTDistribution, d: _Draw, texture_size: int, out_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The homography ``(N, 3, 3)`` (output pixels → texture [-1, 1]) and pyramid level ``(N,)`` per sample."""
    n, u = d.n, d.uniform
    side = out_size * u(dist.scale)
    centre = out_size / 2 + out_size * torch.stack([u(dist.translation), u(dist.translation)], 1)
    unit = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]], device=d.dev)
    half = (side / 2).view(n, 1, 1)
    tilt = torch.deg2rad(u((0.0, dist.tilt)))
    axis_angle = u((0.0, math.pi))
    axis = torch.stack([torch.cos(axis_angle), torch.sin(axis_angle)], 1).unsqueeze(1)  # (N, 1, 2)
    rot = torch.deg2rad(u(dist.rotation))
    c, s = torch.cos(rot), torch.sin(rot)
    r = torch.stack([torch.stack([c, -s], 1), torch.stack([s, c], 1)], 1)  # (N, 2, 2)
    pts = posed_square(unit.unsqueeze(0) * half, half, torch.sin(tilt).view(n, 1, 1), torch.cos(tilt).view(n, 1, 1), axis, r)
    pts = pts + dist.misalignment * side.view(n, 1, 1) * (2 * d.rand(4, 2) - 1)
    dst = pts + centre.unsqueeze(1)
    grid_h = get_perspective_transform(dst, unit.expand(n, 4, 2).contiguous())  # output px → [-1, 1]
    # area of the quad → footprint in texels per output pixel → pyramid level
    x, y = dst[..., 0], dst[..., 1]
    area = 0.5 * (x * y.roll(-1, 1) - x.roll(-1, 1) * y).sum(1).abs()
    ratio = texture_size / area.clamp_min(1.0).sqrt()
    max_level = max_pyramid_level((texture_size, texture_size), 4)
    return grid_h, torch.from_numpy(pyramid_level(ratio.detach().cpu().numpy(), max_level)).to(ratio.device)


def _draw_colour(dist: EOTDistribution, d: _Draw) -> tuple[torch.Tensor, torch.Tensor]:
    """Printer then camera colour, folded into one affine map per sample: ``(N, 3, 3)`` and ``(N, 3)``."""
    n, u = d.n, d.uniform
    eye = torch.eye(3, device=d.dev).expand(n, 3, 3)
    ones = torch.ones(n, 3, device=d.dev)
    sat = u(dist.saturation).view(n, 1, 1)
    a = sat * eye + (1 - sat) / 3
    b = torch.zeros(n, 3, device=d.dev)
    mix = eye + dist.ink_crosstalk * (2 * d.rand(3, 3) - 1) * (1 - eye)
    a, b = _affine_then(a, b, mix / mix.sum(2, keepdim=True), torch.zeros_like(b))
    black = u(dist.black_level).view(n, 1)
    white = u(dist.paper_white).view(n, 1) * (1 - dist.paper_tint * d.rand(3))
    a, b = _affine_then(a, b, torch.diag_embed(white - black), black * ones)
    gains = 1 + dist.white_balance * (2 * d.rand(3) - 1)
    gains = gains * u(dist.exposure).view(n, 1)
    a, b = _affine_then(a, b, torch.diag_embed(gains), torch.zeros_like(b))
    k = u(dist.contrast).view(n, 1)
    return _affine_then(a, b, k.view(n, 1, 1) * eye, 0.5 * (1 - k) * ones + u(dist.brightness).view(n, 1))


def _draw_light(dist: EOTDistribution, d: _Draw) -> tuple[torch.Tensor, torch.Tensor]:
    """The lighting ramp ``(N, 2)`` (relative light change per frame width in x and y) and gamma ``(N,)``."""
    angle = d.uniform((0.0, 2 * math.pi))
    strength = d.uniform((0.0, dist.light_gradient))
    light_ramp = torch.stack([torch.cos(angle), torch.sin(angle)], 1) * strength.view(d.n, 1)
    return light_ramp, d.uniform(dist.gamma)


def _draw_optics(dist: EOTDistribution, d: _Draw) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Blur sigma (dot gain and defocus combined), motion length and motion angle, each ``(N,)``."""
    blur_sigma = torch.sqrt(d.uniform(dist.dot_gain) ** 2 + d.uniform(dist.defocus) ** 2)
    motion = d.uniform(dist.motion_blur) * (d.rand() < dist.motion_blur_p)
    return blur_sigma, motion, d.uniform((0.0, math.pi))


def _draw_sensor(dist: EOTDistribution, d: _Draw, out_size: int, fresh_noise: bool) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Sensor noise ``(N, 3, out, out)`` scaled by each sample's sigma (``None`` when the
    distribution has none) and JPEG quality ``(N,)`` (0 = no JPEG)."""
    n, g, dev = d.n, d.g, d.dev
    sigma = d.uniform(dist.noise)
    if dist.noise[1] == 0:
        noise = None
    elif fresh_noise:
        noise = torch.randn(n, 3, out_size, out_size, generator=g, device=dev) * sigma.view(n, 1, 1, 1)
    else:  # three planes of the fixed bank per sample, each with a random sign
        bank = _noise_bank(out_size, dev)
        pick = torch.randint(len(bank), (n * 3,), generator=g, device=dev)
        signs = torch.randint(2, (n, 3), generator=g, device=dev) * 2 - 1
        noise = bank.index_select(0, pick).view(n, 3, out_size, out_size) * (signs * sigma.view(n, 1)).view(n, 3, 1, 1)
    quality = d.uniform(dist.jpeg_quality).round() * (d.rand() < dist.jpeg_p)
    return noise, quality


NOISE_BANK_SEED = 0x5E75
NOISE_BANK_BYTES = 64 * 2**20


@functools.lru_cache(maxsize=4)
def _noise_bank(size: int, device: torch.device) -> torch.Tensor:
    """``(P, size, size)`` unit-Gaussian planes, drawn once per size and device from a fixed
    seed (a constant table, like a quantisation table: the randomness of a draw is in which
    planes it picks). ``P`` is 192, or fewer where that would pass 64 MiB (never below 48)."""
    planes = max(48, min(192, NOISE_BANK_BYTES // (4 * size * size)))
    g = torch.Generator(device=device).manual_seed(NOISE_BANK_SEED)
    return torch.randn(planes, size, size, generator=g, device=device)


@functools.lru_cache(maxsize=16)
def _pixel_grid(out: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    coords = torch.arange(out, device=device, dtype=dtype) + 0.5
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1), torch.ones_like(xx).reshape(-1)], 0)  # (3, out²)


def warp_texture(texture: torch.Tensor, params: EOTParams) -> torch.Tensor:
    """Geometry only: ``texture`` ``(1, 3, S, S)`` (one texture for every row) or ``(N, 3, S, S)``
    (row ``i`` warps its own texture ``i``) → ``(N, 3, out, out)``, paper white outside."""
    out = params.out_size
    pix = _pixel_grid(out, texture.device, texture.dtype)
    mapped = params.grid_h.to(texture.dtype) @ pix  # (N, 3, out²)
    grid = (mapped[:, :2] / mapped[:, 2:].clamp_min(1e-8)).transpose(1, 2).reshape(-1, out, out, 2)
    levels = params.level.tolist()
    pieces, start = [], 0
    shifted = texture - 1.0  # sample (x − 1) so that zero padding reads as paper white
    per_row = shifted.shape[0] > 1
    for lvl in sorted(set(levels)):
        count = levels.count(lvl)
        src = shifted[start : start + count] if per_row else shifted  # rows are sorted by level
        # level l of the area pyramid, pooled straight from the texture (one op, one backward)
        level_img = F.avg_pool2d(src, 2**lvl) if lvl else src
        g = grid[start : start + count]
        pieces.append(F.grid_sample(level_img if per_row else level_img.expand(count, -1, -1, -1), g, mode="bilinear",
                                    padding_mode="zeros", align_corners=False))
        start += count
    return (torch.cat(pieces, 0) if len(pieces) > 1 else pieces[0]) + 1.0


def blur_radius(dist: EOTDistribution) -> int:
    """Kernel radius that holds the widest point-spread function ``dist`` can draw."""
    sigma = math.hypot(dist.dot_gain[1], dist.defocus[1])
    return max(1, int(math.ceil(max(3 * sigma, dist.motion_blur[1] / 2 + 3 * MIN_BLUR_SIGMA))))


MIN_BLUR_SIGMA = 0.4  # pixels: the least blur a blurring draw applies (a lens is never perfect)
_LINE_POINTS = 7


def blur_kernels(sigma: torch.Tensor, length: torch.Tensor, angle: torch.Tensor, radius: int) -> torch.Tensor:
    """Per-sample point-spread functions ``(N, 2r+1, 2r+1)``: a Gaussian of ``sigma`` swept along
    a line of ``length`` pixels at ``angle`` (motion), normalised to sum 1. Built from
    ``_LINE_POINTS`` Gaussians along the line, all in one elementwise expression."""
    n, k = sigma.shape[0], 2 * radius + 1
    c = torch.arange(k, device=sigma.device, dtype=sigma.dtype) - radius
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    t = torch.linspace(-0.5, 0.5, _LINE_POINTS, device=sigma.device, dtype=sigma.dtype).view(1, -1, 1, 1)
    along = t * length.view(n, 1, 1, 1)
    px, py = along * torch.cos(angle).view(n, 1, 1, 1), along * torch.sin(angle).view(n, 1, 1, 1)
    s2 = 2 * sigma.clamp_min(MIN_BLUR_SIGMA).view(n, 1, 1, 1) ** 2
    psf = torch.exp(-((xx - px) ** 2 + (yy - py) ** 2) / s2).sum(1)
    psf = psf * (psf > 1e-9 * psf.amax((1, 2), keepdim=True))  # no denormals: they slow a CPU convolution ~10×
    return psf / psf.sum((1, 2), keepdim=True)


def _blur_parts(images: torch.Tensor, sigma: torch.Tensor, length: torch.Tensor, angle: torch.Tensor,
                radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The zero-padded blur of ``images`` and, per sample and pixel, one over the kernel mass
    that fell inside the frame (see :func:`_blur`)."""
    n, ch, h, w = images.shape
    psf = blur_kernels(sigma.to(images.dtype), length.to(images.dtype), angle.to(images.dtype), radius)
    weight = psf.unsqueeze(1)  # (N, 1, k, k)
    with torch.no_grad():
        inside = _mass_inside(weight, radius, h, w)
    out = F.conv2d(images.reshape(1, n * ch, h, w), weight.repeat_interleave(ch, 0), groups=n * ch, padding=radius)
    return out.reshape(n, ch, h, w), inside.reciprocal_()


def _mass_inside(weight: torch.Tensor, radius: int, h: int, w: int) -> torch.Tensor:
    """``(N, 1, h, w)``: the part of each sample's kernel ``weight`` ``(N, 1, k, k)`` that falls
    inside an ``h × w`` frame, centred on each pixel. It depends only on how close the pixel
    is to each edge, so it is computed on a ``(2r+1)²`` canvas (row ``r`` stands for the whole
    interior) and spread out by indexing — a fraction of the cost of convolving a frame of ones."""
    n, k = weight.shape[0], 2 * radius + 1
    if min(h, w) <= k:
        return F.conv2d(weight.new_ones(1, n, h, w), weight, groups=n, padding=radius).reshape(n, 1, h, w)
    small = F.conv2d(weight.new_ones(1, n, k, k), weight, groups=n, padding=radius).reshape(n, 1, k, k)
    return small.index_select(2, _edge_rows(h, radius, weight.device)).index_select(3, _edge_rows(w, radius, weight.device))


@functools.lru_cache(maxsize=16)
def _edge_rows(size: int, radius: int, device: torch.device) -> torch.Tensor:
    """For each of ``size`` rows, its row on the ``(2r+1)`` canvas of :func:`_mass_inside`
    (built once per size: it is the same every step)."""
    i = torch.arange(size, device=device)
    return torch.where(i < radius, i, torch.where(i >= size - radius, i - (size - 2 * radius - 1), torch.full_like(i, radius)))


def _blur(images: torch.Tensor, sigma: torch.Tensor, length: torch.Tensor, angle: torch.Tensor, radius: int) -> torch.Tensor:
    """Per-sample blur (dot gain, defocus, motion) as one depthwise convolution.

    At these sizes a depthwise convolution with a kernel fixed by the distribution costs a
    fifth of an FFT pair, and a fixed kernel size lets oneDNN reuse its plan every step.
    The frame's edge is handled by normalised convolution — zero padding inside the
    convolution, divided by the kernel mass that falls inside the frame — which reads like
    replicate padding for smooth content and avoids a padding op (and its backward) that
    cost as much as the convolution itself. (:func:`render` folds that division into the
    sensor stage as its ``edge_norm``.)
    """
    out, scale = _blur_parts(images, sigma, length, angle, radius)
    return out * scale


class _Photometric(torch.autograd.Function):
    """Colour affine map, lighting ramp and gamma in one step whose backward pass is one
    multiply and one batched matmul: the forward pass keeps the local derivative
    ``γ·y/z`` (times the ramp) instead of letting autograd re-run ``pow`` and its masks."""

    @staticmethod
    def forward(ctx, x, a, b, ramp, gamma):
        n, c, h, w = x.shape
        z = torch.baddbmm(b.view(n, c, 1), a, x.reshape(n, c, h * w)).view(n, c, h, w)
        if ramp is not None:
            z = z.mul_(ramp)
        if gamma is None:
            ctx.save_for_backward(a, ramp)
            return z
        # in place where possible: every fresh image-sized buffer costs page faults on a CPU
        g = gamma.view(n, 1, 1, 1)
        lit = z > 1e-4
        floor = z.clamp_min_(1e-4)
        y = floor.pow(g)
        # dy/dx = γ·y/z·ramp where z > 0 (and 0 where the floor holds)
        slope = torch.div(y, floor, out=floor).mul_(g if ramp is None else g * ramp).mul_(lit)
        ctx.save_for_backward(a, slope)
        return y

    @staticmethod
    def backward(ctx, grad):
        a, scale = ctx.saved_tensors
        if scale is not None:
            grad = grad * scale
        n, c, h, w = grad.shape
        gx = torch.bmm(a.transpose(1, 2), grad.reshape(n, c, h * w)).view(n, c, h, w)
        return gx, None, None, None, None


class _Sensor(torch.autograd.Function):
    """The blur's edge normalisation (a per-pixel factor, see :func:`_blur`), sensor noise,
    clipping to [0, 1] and the JPEG round trip in one step. The codec is straight-through
    (BPDA: identity in the backward pass), so the stage's backward pass is one multiply by
    the edge normalisation where the clip let the value through."""

    @staticmethod
    def forward(ctx, x, edge_norm, noise, quality):
        if edge_norm is not None:
            v = x * edge_norm
            if noise is not None:
                v.add_(noise)
        else:
            v = x + noise if noise is not None else x.clone()
        inside = (v >= 0) & (v <= 1)  # where the clip lets the value through
        y = v.clamp_(0, 1)
        ctx.save_for_backward(inside, edge_norm)
        rows = quality > 0
        if bool(rows.any()):
            if bool(rows.all()):
                y = jpeg(y, quality)
            else:
                idx = rows.nonzero().squeeze(1)
                y.index_copy_(0, idx, jpeg(y.index_select(0, idx), quality.index_select(0, idx)))
        return y

    @staticmethod
    def backward(ctx, grad):
        inside, edge_norm = ctx.saved_tensors
        grad = grad * inside
        return grad if edge_norm is None else grad.mul_(edge_norm), None, None, None


def render(texture: torch.Tensor, params: EOTParams) -> torch.Tensor:
    """Render ``texture`` through every transformation of ``params``.

    Args:
        texture: ``(1, 3, S, S)`` or ``(3, S, S)`` RGB in [0, 1] at print resolution, or
            ``(N, 3, S, S)``: one texture per row of ``params`` (black-box estimators render
            N perturbed textures in one pass).
        params: a draw from :func:`sample` (same device).

    Returns:
        ``(N, 3, out, out)`` in [0, 1], differentiable with respect to ``texture`` (through
        the draw's stages too, when it has any).
    """
    if texture.ndim == 3:
        texture = texture.unsqueeze(0)
    x = warp_texture(texture, params)
    gamma = params.gamma.to(x.dtype) if bool((params.gamma != 1).any()) else None
    x = _Photometric.apply(x, params.colour_a.to(x.dtype), params.colour_b.to(x.dtype), _light_field(params, x), gamma)
    if params.channel is not None:
        x = params.channel.apply(x)
    edge_norm = None
    if params.blur_radius:
        x, edge_norm = _blur_parts(x, params.blur_sigma, params.motion_length, params.motion_angle, params.blur_radius)
    noise = None if params.noise is None else params.noise.to(x.dtype)
    x = _Sensor.apply(x, edge_norm, noise, params.jpeg_quality)
    return apply_stages(x, params.stages, params.stage_seeds) if params.stages else x


def _light_field(params: EOTParams, x: torch.Tensor) -> torch.Tensor | None:
    """The per-pixel light multiplier ``(N, 1, h, w)`` of each sample's lighting ramp, or
    ``None`` when no sample has one (``x`` gives the frame size, device and dtype)."""
    if not bool((params.light_ramp != 0).any()):
        return None
    n, _, h, w = x.shape
    coords = (torch.arange(h, device=x.device, dtype=x.dtype) + 0.5) / h - 0.5
    ramp = params.light_ramp.to(x.dtype)
    return (1 + ramp[:, 0].view(n, 1, 1) * coords.view(1, 1, w) + ramp[:, 1].view(n, 1, 1) * coords.view(1, h, 1)).unsqueeze(1)
