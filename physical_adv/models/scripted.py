"""User models: TorchScript files, or ``module:factory`` for a user's own ``nn.Module``."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from physical_adv.errors import UserError
from physical_adv.models.base import Classifier, ModelCard


def read_class_names(path: str | Path | list | tuple) -> tuple[str, ...]:
    """Class names from a text file, one per line (blank lines and ``#`` comments skipped),
    or given directly as a list (as a manifest records them)."""
    if isinstance(path, (list, tuple)):
        if not path:
            raise UserError("the class list is empty")
        return tuple(str(n) for n in path)
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


def _check_and_wrap(net: nn.Module, spec: str, classes, input_size: int | None) -> Classifier:
    names = read_class_names(classes)
    size = int(input_size or 224)
    net.eval()
    with torch.no_grad():
        try:
            out = net(torch.zeros(1, 3, size, size))
        except Exception as exc:  # noqa: BLE001 - any failure of user code is a user error
            raise UserError(f"{spec} fails on a 1x3x{size}x{size} input: {str(exc).splitlines()[0]}") from None
    if out.ndim != 2 or out.shape[1] != len(names):
        raise UserError(f"{spec} returns shape {tuple(out.shape)} but the class list has {len(names)} classes")
    source = "inline list" if isinstance(classes, (list, tuple)) else str(classes)
    card = ModelCard(spec=spec, class_names=names, input_size=size, weights=spec, extra={"classes": source})
    return Classifier(net, card, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def import_factory(spec: str, purpose: str) -> Callable:
    """The callable ``factory`` of a ``module:factory`` spec (the module imported from ``sys.path``).

    Args:
        spec: ``module:factory``, e.g. ``my_models:make``.
        purpose: what the factory is for, for the error message (e.g. ``model my_models:make``).

    Raises:
        UserError: the module cannot be imported, or has no callable of that name.
    """
    import importlib

    module_name, _, factory_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"cannot import {module_name!r} for {purpose}: {exc}") from None
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise UserError(f"{module_name} has no callable {factory_name!r} ({purpose})")
    return factory


def load_factory(spec: str, classes: str | Path | None, input_size: int | None) -> Classifier:
    """``module:factory``: import ``module`` and call ``factory()`` for an ``nn.Module`` that takes
    ``(N, 3, S, S)`` RGB in [0, 1] and returns logits (it normalises itself)."""
    if classes is None:
        raise UserError(f"a module:factory model needs --classes FILE (one class name per line) for {spec}")
    net = import_factory(spec, f"model {spec}")()
    if not isinstance(net, nn.Module):
        raise UserError(f"{spec}() returned {type(net).__name__}, not a torch nn.Module")
    return _check_and_wrap(net, spec, classes, input_size)


def load_torchscript(path: Path, classes: str | Path | None, input_size: int | None) -> Classifier:
    """A TorchScript classifier that takes ``(N, 3, S, S)`` RGB in [0, 1] (normalising itself)."""
    if not path.is_file():
        raise UserError(f"model file not found: {path}")
    if classes is None:
        raise UserError(f"a TorchScript model needs --classes FILE (one class name per line) for {path}")
    read_class_names(classes)  # a bad class file is reported before the model is loaded
    try:
        net: nn.Module = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"{path} is not a TorchScript model: {str(exc).splitlines()[0]}") from None
    return _check_and_wrap(net, str(path), classes, input_size)
