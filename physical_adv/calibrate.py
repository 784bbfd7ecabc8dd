"""``physical-adv calibrate``: the user's own printer and camera, measured from the printed chart.

Capture logs, in ``chart.jsonl``, each chart patch's colour as the camera saw it (see
:mod:`physical_adv.capture.chart`). This module pools those readings over frames and
sessions of one sheet (the median per patch over the frames that saw it) and fits the
colour channel from printed RGB ``x`` to observed RGB ``y`` (both in [0, 1]):

    y_c = g_c((M x + b)_c)

a 3×3 matrix and offset (saturation loss, ink cross-talk, white balance) followed by a
monotone tone curve per channel (``g_c``, piecewise linear on :data:`KNOTS` knots: the
printer's S-shaped tone reproduction, black level and paper white, the camera's gamma).
It is the smallest model that holds both what a printer does to a colour (mix, then a
tone curve) and what a camera does (a gain per channel, then a curve); a 3-D LUT would
need many more patches than a chart has. The fit is judged on **held-out patches** (every
:data:`HOLD_OUT`-th patch, not used to fit) — the error it prints — and the frame-to-frame
spread (each frame's readings against the pooled ones) is recorded beside it.

Written: ``--out FILE.toml`` (the fitted model, its held-out error, the spread and the
measured printable palette: the chart's colours as the camera saw them) and, beside it,
``FILE.png`` — the chart as printed (observed) above the chart as the model predicts it.
Written only when every check passed; a capture with no chart read, too few patches seen,
or sessions of different sheets are one error line and write nothing.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from physical_adv.artifacts import atomic_write_bytes, read_json, software_versions, utc_now
from physical_adv.errors import UserError

KNOTS = 12  # knots of each channel's tone curve
HOLD_OUT = 5  # every HOLD_OUT-th patch is held out of the fit
MIN_PATCHES = 60  # a fit needs at least this many patches seen


@dataclass(frozen=True)
class ColourModel:
    """``y = g((M x + b))`` per channel: ``matrix`` (3, 3), ``offset`` (3,), and each channel's
    tone curve through ``knots_in`` (K,) → ``knots_out`` (3, K), increasing."""

    matrix: np.ndarray
    offset: np.ndarray
    knots_in: np.ndarray
    knots_out: np.ndarray

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        """Observed colours predicted for printed ``rgb`` ``(n, 3)`` in [0, 1]."""
        lin = rgb @ self.matrix.T + self.offset
        return np.stack([np.interp(lin[:, c], self.knots_in, self.knots_out[c]) for c in range(3)], 1)


@dataclass
class Readings:
    """The chart of one sheet and its readings pooled over sessions."""

    sheet_id: str
    chart: dict
    frames: np.ndarray  # (F, P, 3) observed RGB in [0, 1], NaN where a patch was not seen
    sessions: list[str]


def load_readings(captures: list[Path]) -> Readings:
    """Every chart reading of ``captures`` (capture folders of one sheet).

    Raises:
        UserError: not a capture folder, no chart read in a session, or sessions of different sheets.
    """
    if not captures:
        raise UserError("give at least one capture folder")
    sheet_id, chart, frames = None, None, []
    for folder in map(Path, captures):
        if not (folder / "session.json").is_file():
            raise UserError(f"{folder} is not a capture folder (no session.json)")
        manifest = read_json(folder / "session.json", "capture session").get("manifest") or {}
        if not manifest.get("calibration"):
            raise UserError(f"{folder}: its sheet {manifest.get('sheet_id')} has no calibration chart "
                            "(made with --no-calibration, or before sheets carried one)")
        if sheet_id is not None and manifest.get("sheet_id") != sheet_id:
            raise UserError(f"{folder} captured sheet {manifest.get('sheet_id')}, not {sheet_id}: its chart is another "
                            "sheet's; calibrate one sheet at a time")
        sheet_id, chart = manifest.get("sheet_id"), manifest["calibration"]
        log = folder / "chart.jsonl"
        lines = []
        if log.is_file():
            for raw in log.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    line = json.loads(raw)
                except json.JSONDecodeError:
                    continue  # a line cut by a killed capture
                if _valid_reading(line, len(chart["patches"])):
                    lines.append(line["rgb"])
        if not lines:
            raise UserError(f"{folder}: the calibration chart was not read in any frame (was it in view, unobstructed "
                            "and sharp?)")
        frames += [[[np.nan] * 3 if v is None else v for v in rgb] for rgb in lines]
    return Readings(sheet_id, chart, np.asarray(frames, np.float64) / 255, [str(c) for c in captures])


def _valid_reading(line, patches: int) -> bool:
    """Whether a parsed ``chart.jsonl`` line is a reading of ``patches`` patches: each ``null``
    or three finite numbers in [0, 255] (a line another tool wrote, or a crash cut, is skipped)."""
    rgb = line.get("rgb") if isinstance(line, dict) else None
    return isinstance(rgb, list) and len(rgb) == patches and all(
        v is None or (isinstance(v, list) and len(v) == 3 and all(
            isinstance(c, (int, float)) and not isinstance(c, bool) and 0 <= c <= 255 for c in v)) for v in rgb)


def _unpack(theta: np.ndarray, lo: float, hi: float) -> ColourModel:
    """The model from its free parameters: M, b, and per channel a start and K − 1 positive steps."""
    from scipy.special import softplus

    m, b, rest = theta[:9].reshape(3, 3), theta[9:12], theta[12:].reshape(3, KNOTS)
    knots_out = rest[:, :1] + np.concatenate([np.zeros((3, 1)), np.cumsum(softplus(rest[:, 1:]), 1)], 1)
    return ColourModel(m, b, np.linspace(lo, hi, KNOTS), knots_out)


def fit(printed: np.ndarray, observed: np.ndarray) -> ColourModel:
    """Least-squares fit of :class:`ColourModel` to ``printed`` → ``observed`` ``(n, 3)`` in [0, 1]."""
    from scipy.optimize import least_squares

    lo, hi = -0.2, 1.2  # the linear stage's output range the curves cover (M x + b may leave [0, 1])
    start_steps = np.full((3, KNOTS - 1), np.log(np.expm1((hi - lo) / (KNOTS - 1))))
    theta0 = np.concatenate([np.eye(3).ravel(), np.zeros(3), np.column_stack([np.full(3, lo), start_steps]).ravel()])

    def residuals(theta):
        return (_unpack(theta, lo, hi).apply(printed) - observed).ravel()

    result = least_squares(residuals, theta0, method="trf", x_scale="jac", max_nfev=4000)
    return _unpack(result.x, lo, hi)


@dataclass
class Calibration:
    """A fitted channel and how good it is (errors in 0–255 units)."""

    model: ColourModel
    printed: np.ndarray  # (P, 3) [0, 1]
    observed: np.ndarray  # (P, 3) pooled, NaN where never seen
    held_out: np.ndarray  # (P,) bool
    heldout_error: float  # mean |predicted − observed| over held-out patches and channels
    train_error: float
    per_patch_error: np.ndarray  # (P,) mean over channels, NaN where not seen
    spread: np.ndarray  # (3,) frame-to-frame standard deviation per channel
    frames: int


def calibrate(readings: Readings) -> Calibration:
    """Pool the readings, fit the channel on the patches not held out, measure it on the rest."""
    printed = np.asarray([p["rgb"] for p in readings.chart["patches"]], np.float64) / 255
    seen_in = np.isfinite(readings.frames).all(2)
    with warnings.catch_warnings():  # a patch no frame saw has an all-NaN median: NaN, as meant
        warnings.simplefilter("ignore", RuntimeWarning)
        observed = np.nanmedian(np.where(seen_in[..., None], readings.frames, np.nan), 0)
    seen = np.isfinite(observed).all(1)
    if seen.sum() < MIN_PATCHES:
        raise UserError(f"only {int(seen.sum())} of {len(printed)} chart patches were seen; a fit needs {MIN_PATCHES} "
                        "(show the whole chart, closer)")
    held_out = (np.arange(len(printed)) % HOLD_OUT == HOLD_OUT - 1) & seen
    train = seen & ~held_out
    model = fit(printed[train], observed[train])
    error = np.abs(model.apply(printed) - observed) * 255
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        spread = np.nanstd(readings.frames - observed[None], axis=(0, 1)) * 255
    return Calibration(model, printed, observed, held_out, float(error[held_out].mean()), float(error[train].mean()),
                       error.mean(1), spread, int(len(readings.frames)))


def _toml(value) -> str:
    if isinstance(value, (list, tuple, np.ndarray)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)
    return f"{float(value):.6g}"


def calibration_toml(cal: Calibration, readings: Readings) -> str:
    """The calibration as TOML: ``[calibration]`` (what was measured and how well), ``[model]``,
    ``[spread]`` and ``[palette]`` (the printable colours as the camera saw them)."""
    m = cal.model
    seen = np.isfinite(cal.observed).all(1)
    lines = [
        "# physical-adv calibrate: the printer and camera colour channel measured from the sheet's chart",
        "[calibration]",
        f"sheet_id = {_toml(readings.sheet_id)}",
        f"created = {_toml(utc_now())}",
        f"sessions = {_toml(readings.sessions)}",
        f"frames = {cal.frames}",
        f"patches = {len(cal.printed)}",
        f"patches_seen = {int(seen.sum())}",
        f"heldout_patches = {int(cal.held_out.sum())}",
        f"heldout_error = {_toml(cal.heldout_error)}  # mean |predicted - observed| on held-out patches, 0-255",
        f"train_error = {_toml(cal.train_error)}",
        f"versions = {_toml([f'{k} {v}' for k, v in software_versions().items()])}",
        "",
        "[model]  # observed_c = curve_c((matrix . printed + offset)_c), RGB in [0, 1]",
        f"matrix = {_toml(m.matrix.round(6).tolist())}",
        f"offset = {_toml(m.offset.round(6))}",
        f"curve_in = {_toml(m.knots_in.round(6))}",
        f"curve_out = {_toml(m.knots_out.round(6).tolist())}  # R, G, B",
        "",
        "[spread]  # frame-to-frame standard deviation of the readings per channel, 0-255",
        f"rgb = {_toml(cal.spread.round(3))}",
        "",
        "[palette]  # the chart's colours as printed and photographed: what this printer can reproduce",
        f"colours = {_toml((cal.observed[seen] * 255).round(1).tolist())}",
    ]
    return "\n".join(lines) + "\n"


def chart_image(cal: Calibration, chart: dict, px: int = 12) -> np.ndarray:
    """The chart as observed (top) above the chart as predicted (bottom), BGR uint8; patches
    never seen are grey hatched."""
    rows, cols = chart["rows"], chart["cols"]
    predicted = cal.model.apply(cal.printed)

    def grid(colours: np.ndarray) -> np.ndarray:
        img = np.full((rows * px, cols * px, 3), 255, np.uint8)
        for i, c in enumerate(colours):
            r, k = divmod(i, cols)
            block = np.full((px - 2, px - 2, 3), 128, np.uint8) if not np.isfinite(c).all() else \
                np.clip(c[::-1] * 255, 0, 255).astype(np.uint8)
            img[r * px + 1:(r + 1) * px - 1, k * px + 1:(k + 1) * px - 1] = block
        return img

    gap = np.full((px, cols * px, 3), 255, np.uint8)
    return np.vstack([grid(cal.observed), gap, grid(predicted)])


def run_calibrate(captures: list[Path], out: Path) -> Calibration:
    """Fit and write ``out`` (TOML) and ``out.with_suffix('.png')``; nothing when a check fails."""
    import cv2

    out = Path(out)
    if out.suffix.lower() != ".toml":
        raise UserError(f"--out must end in .toml, got {out}")
    readings = load_readings(captures)
    cal = calibrate(readings)
    ok, png = cv2.imencode(".png", chart_image(cal, readings.chart))
    atomic_write_bytes(out.with_suffix(".png"), png.tobytes())
    atomic_write_bytes(out, calibration_toml(cal, readings).encode())
    return cal
