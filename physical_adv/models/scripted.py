"""User models as TorchScript files."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from physical_adv.errors import UserError
from physical_adv.models.base import Classifier, ModelCard


def read_class_names(path: str | Path) -> tuple[str, ...]:
    """Class names from a text file, one per line (blank lines and ``#`` comments skipped)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"class list file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read class list file {path}: {exc}") from None
    names = tuple(line.strip() for line in lines if line.strip() and not line.strip().startswith("#"))
    if not names:
        raise UserError(f"class list file {path} holds no class names")
    return names


def load_torchscript(path: Path, classes: str | Path | None, input_size: int | None) -> Classifier:
    """A TorchScript classifier that takes ``(N, 3, S, S)`` RGB in [0, 1] (normalising itself)."""
    if not path.is_file():
        raise UserError(f"model file not found: {path}")
    if classes is None:
        raise UserError(f"a TorchScript model needs --classes FILE (one class name per line) for {path}")
    names = read_class_names(classes)
    try:
        net: nn.Module = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"{path} is not a TorchScript model: {str(exc).splitlines()[0]}") from None
    size = int(input_size or 224)
    with torch.no_grad():
        try:
            out = net(torch.zeros(1, 3, size, size))
        except Exception as exc:  # noqa: BLE001 - any failure of user code is a user error
            raise UserError(f"{path} fails on a 1x3x{size}x{size} input: {str(exc).splitlines()[0]}") from None
    if out.ndim != 2 or out.shape[1] != len(names):
        raise UserError(f"{path} returns shape {tuple(out.shape)} but {classes} lists {len(names)} classes")
    card = ModelCard(spec=str(path), class_names=names, input_size=size, weights=str(path), extra={"classes": str(classes)})
    return Classifier(net, card, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
