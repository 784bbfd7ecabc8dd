"""The measured colour channel of ``physical-adv calibrate``, as a differentiable torch stage.

``calibrate`` fits ``observed_c = curve_c((M · printed + b)_c)`` (see
:mod:`physical_adv.calibrate`) and writes it, with the frame-to-frame spread of the readings
and the printable palette, to a TOML file. This module reads that file
(:func:`load_calibration`) and applies the channel to a batch of images with gradients
(:meth:`CalibratedChannel.apply`): the tone curves are piecewise linear on uniform knots, so
each pixel's curve value is one gather and one linear interpolation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from physical_adv.artifacts import read_toml
from physical_adv.errors import UserError


@dataclass(frozen=True)
class CalibratedChannel:
    """A fitted printer and camera channel.

    Attributes:
        matrix: ``(3, 3)``; offset: ``(3,)``: the linear stage.
        curve_in: ``(K,)`` uniform knots of the tone curves' input; curve_out: ``(3, K)``.
        spread: ``(3,)`` frame-to-frame standard deviation of the readings, in [0, 1] units.
        palette: ``(P, 3)`` the chart's colours as printed and photographed, in [0, 1].
        source: the file it was read from.
    """

    matrix: torch.Tensor
    offset: torch.Tensor
    curve_in: torch.Tensor
    curve_out: torch.Tensor
    spread: torch.Tensor
    palette: torch.Tensor
    source: str

    def to(self, device) -> CalibratedChannel:
        return CalibratedChannel(*(getattr(self, f).to(device) for f in ("matrix", "offset", "curve_in", "curve_out",
                                                                         "spread", "palette")), self.source)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The channel applied to ``x`` ``(N, 3, H, W)`` in [0, 1]: differentiable in ``x``.

        Inputs of the tone curves beyond their first and last knot are held at the end values
        (as :func:`numpy.interp` does in :class:`physical_adv.calibrate.ColourModel`).
        """
        lin = torch.einsum("ij,njhw->nihw", self.matrix.to(x), x) + self.offset.to(x).view(1, 3, 1, 1)
        knots = self.curve_in.to(x)
        k = knots.numel()
        step = (knots[-1] - knots[0]) / (k - 1)
        pos = ((lin - knots[0]) / step).clamp(0, k - 1)
        lo = pos.detach().floor().clamp(max=k - 2).long()
        frac = pos - lo.to(x)
        table = self.curve_out.to(x)  # (3, K)
        flat = lo.permute(1, 0, 2, 3).reshape(3, -1)
        left = torch.gather(table, 1, flat).reshape(3, *lo.shape[:1], *lo.shape[2:]).permute(1, 0, 2, 3)
        right = torch.gather(table, 1, flat + 1).reshape(3, *lo.shape[:1], *lo.shape[2:]).permute(1, 0, 2, 3)
        return left + frac * (right - left)


def is_calibration(data: dict) -> bool:
    """Whether parsed TOML is a ``calibrate`` output (its ``[calibration]`` and ``[model]`` tables)."""
    return isinstance(data.get("calibration"), dict) and isinstance(data.get("model"), dict)


def load_calibration(path: str | Path) -> CalibratedChannel:
    """Read a ``physical-adv calibrate`` TOML; a one-line :class:`UserError` when it is not one."""
    path = Path(path)
    data = read_toml(path, "calibration file")
    if not is_calibration(data):
        raise UserError(f"{path} is not a calibration (no [calibration] and [model] tables; made by physical-adv calibrate?)")
    model = data["model"]
    try:
        channel = CalibratedChannel(
            torch.tensor(model["matrix"], dtype=torch.float32), torch.tensor(model["offset"], dtype=torch.float32),
            torch.tensor(model["curve_in"], dtype=torch.float32), torch.tensor(model["curve_out"], dtype=torch.float32),
            torch.tensor(data.get("spread", {}).get("rgb", [0.0, 0.0, 0.0]), dtype=torch.float32) / 255,
            torch.tensor(data.get("palette", {}).get("colours", [[0.0, 0.0, 0.0]]), dtype=torch.float32).reshape(-1, 3) / 255,
            str(path))
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise UserError(f"{path}: a malformed [model] table ({exc})") from None
    k = channel.curve_in.numel()
    if channel.matrix.shape != (3, 3) or channel.offset.shape != (3,) or k < 2 or channel.curve_out.shape != (3, k):
        raise UserError(f"{path}: [model] needs a 3x3 matrix, 3 offsets and 3 curves of as many points as curve_in")
    steps = channel.curve_in[1:] - channel.curve_in[:-1]
    if not bool((steps > 0).all()) or not torch.allclose(steps, steps.mean(), rtol=1e-3, atol=1e-5):
        raise UserError(f"{path}: curve_in must increase in equal steps (as calibrate writes it)")
    return channel
