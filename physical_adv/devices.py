"""Turning the ``--device`` option into a ``torch.device``; the only place that probes hardware."""

from __future__ import annotations

import torch

from physical_adv.errors import UserError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """Pick the device to compute on.

    Args:
        name: ``auto`` (CUDA, then Apple MPS, then CPU), ``cpu``, ``cuda``, ``cuda:N``,
            ``mps``, an existing ``torch.device``, or ``None`` (same as ``auto``).

    Returns:
        The ``torch.device``. Raises :class:`UserError` when the device named is absent.
    """
    if isinstance(name, torch.device):
        return name
    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but no CUDA GPU is available (try --device cpu)")
        try:
            return torch.device(name)
        except RuntimeError as exc:
            raise UserError(f"bad device {name!r}: {exc}") from None
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise UserError("--device mps was asked for but Apple MPS is not available (try --device cpu)")
        return torch.device("mps")
    raise UserError(f"unknown device {name!r}; choose one of {', '.join(DEVICE_CHOICES)}")
