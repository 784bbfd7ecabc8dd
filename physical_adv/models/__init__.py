"""The model registry: every model is named by a spec string.

* ``signs`` — the embedded traffic-sign classifier (weights inside the package);
* ``signs-resnet`` — a second, independently trained one (another architecture, seed and
  input size), so transfer between two models is measurable offline;
* a model directory (``model.safetensors`` + ``model.json``, as ``substitute`` and
  ``train-signs`` write) or a ``.safetensors`` file written by them;
* ``a,b,c`` — an ensemble of any of these with the same classes (mean of their logits);
* ``torchvision:NAME`` — a torchvision classifier with its default ImageNet weights,
  read from the torch cache (downloaded there on first use when online);
* ``PATH.pt`` / ``PATH.ts`` — a TorchScript file that takes RGB in [0, 1], with class
  names from a text file (one per line);
* ``module:factory`` — ``factory()`` from an importable module returns your own
  ``nn.Module`` taking RGB in [0, 1], with class names from a text file.

Every loader returns a :class:`~physical_adv.models.base.Classifier` in eval mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from physical_adv.devices import resolve_device
from physical_adv.errors import UserError
from physical_adv.models.base import Classifier, ModelCard
from physical_adv.models.embedded import EMBEDDED, load_embedded
from physical_adv.models.ensemble import EnsembleClassifier
from physical_adv.models.scripted import load_factory, load_torchscript
from physical_adv.models.stored import is_model_dir, load_stored
from physical_adv.models.tv import load_torchvision, torchvision_catalogue

DEFAULT_MODEL = "signs"


@dataclass(frozen=True)
class ModelEntry:
    spec: str
    description: str
    weights: str
    available: bool


def list_models(include_torchvision: bool = True) -> list[ModelEntry]:
    """Every model spec this installation knows, and where its weights come from."""
    entries = [ModelEntry(spec, desc, str(path), path.is_file()) for spec, (path, desc) in EMBEDDED.items()]
    if include_torchvision:
        for name, path, cached in torchvision_catalogue():
            entries.append(ModelEntry(f"torchvision:{name}", "torchvision ImageNet classifier, 1000 classes", str(path), cached))
    return entries


_LOADERS: dict[str, Callable[..., Classifier]] = {
    **{spec: (lambda arg, classes, spec=spec: load_embedded(spec)) for spec in EMBEDDED},
    "torchvision": lambda arg, classes: load_torchvision(arg),
}


def load_model(
    spec: str = DEFAULT_MODEL,
    device: str | torch.device | None = None,
    classes: str | Path | None = None,
    input_size: int | None = None,
) -> Classifier:
    """Load a model by spec, in eval mode with gradients off for its parameters.

    Args:
        spec: ``signs``, ``signs-resnet``, a model directory or ``.safetensors`` file,
            ``torchvision:NAME``, a TorchScript file, ``module:factory``, or several of these
            joined by commas (an :class:`EnsembleClassifier`).
        device: ``auto``/``cpu``/``cuda``/``mps`` or a ``torch.device`` (``None`` = auto).
        classes: class names for TorchScript and ``module:factory`` models: a file (one name
            per line) or a list; built-in models carry their own and ignore it.
        input_size: input side for TorchScript and ``module:factory`` models (default 224).

    Returns:
        A :class:`Classifier`: ``(N, 3, H, W)`` in [0, 1] → logits ``(N, C)``.
    """
    spec = spec.strip()
    if "," in spec:
        members = [s.strip() for s in spec.split(",")]
        if len(members) < 2 or not all(members):
            raise UserError(f"an ensemble is named by model specs joined with commas, e.g. signs,signs-resnet; got {spec!r}")
        return EnsembleClassifier([load_model(m, device, classes, input_size) for m in members])
    family, _, arg = spec.partition(":")
    if family in _LOADERS and (family != "torchvision" or arg):
        model = _LOADERS[family](arg, classes)
    elif is_model_dir(spec) or (Path(spec).suffix == ".safetensors" and Path(spec).is_file()):
        model = load_stored(spec, spec=spec)
    elif Path(spec).is_dir():
        raise UserError(f"model directory {spec} has no model.safetensors (write one with "
                        "`physical-adv substitute` or `physical-adv train-signs --out DIR`)")
    elif family == "torchvision":
        raise UserError("torchvision models are named torchvision:NAME, e.g. torchvision:resnet18")
    elif Path(spec).suffix.lower() in (".pt", ".pth", ".ts", ".jit") or Path(spec).is_file():
        model = load_torchscript(Path(spec), classes, input_size)
    elif arg and family.replace(".", "").replace("_", "").isalnum() and arg.isidentifier():
        model = load_factory(spec, classes, input_size)
    else:
        raise UserError(
            f"unknown model {spec!r}; use 'signs', 'signs-resnet', a model directory, 'torchvision:NAME', "
            "a TorchScript file, module:factory or a comma-joined ensemble "
            "(see `physical-adv models`)"
        )
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(resolve_device(device))


__all__ = ["Classifier", "EnsembleClassifier", "ModelCard", "ModelEntry", "DEFAULT_MODEL", "list_models", "load_model"]
