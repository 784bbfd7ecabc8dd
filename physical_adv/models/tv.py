"""torchvision ImageNet classifiers, with weights from the user's torch cache."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import torch

from physical_adv.errors import UserError
from physical_adv.models.base import Classifier, ModelCard

OFFLINE_ENV = "PHYSICAL_ADV_OFFLINE"  # set to 1 to forbid any download


def _weights_file(weights) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def torchvision_catalogue() -> list[tuple[str, Path, bool]]:
    """``(name, cache path, cached?)`` for every torchvision classification model."""
    import torchvision.models as tvm

    rows = []
    for name in sorted(tvm.list_models(module=tvm)):
        try:
            weights = tvm.get_model_weights(name).DEFAULT
        except (ValueError, AttributeError):
            continue
        path = _weights_file(weights)
        rows.append((name, path, path.is_file()))
    return rows


def load_torchvision(name: str) -> Classifier:
    """``torchvision:NAME`` with its DEFAULT weights through torchvision's weights API.

    The weights are read from the torch cache (``$TORCH_HOME/hub/checkpoints``). When they
    are not there, torchvision downloads them, unless ``PHYSICAL_ADV_OFFLINE=1``; either
    failure ends in a :class:`UserError` that says how to get them.
    """
    import torchvision.models as tvm

    if name not in tvm.list_models(module=tvm):
        raise UserError(f"unknown torchvision classifier {name!r} (see `physical-adv models`)")
    weights = tvm.get_model_weights(name).DEFAULT
    path = _weights_file(weights)
    if not path.is_file():
        hint = (f"weights for torchvision:{name} are not in the torch cache ({path}); run once with network access, "
                f"or copy {path.name} from {weights.url} into {path.parent}")
        if os.environ.get(OFFLINE_ENV, "") not in ("", "0"):
            raise UserError(hint + f" ({OFFLINE_ENV} is set)")
        try:
            net = tvm.get_model(name, weights=weights)
        except (OSError, RuntimeError) as exc:  # URLError is an OSError
            raise UserError(f"{hint} (download failed: {exc})") from None
    else:
        net = tvm.get_model(name, weights=None)
        try:
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except (RuntimeError, OSError, ValueError) as exc:
            raise UserError(f"cached weights {path} do not load into torchvision:{name}: {exc}") from None
    preprocess = weights.transforms()
    card = ModelCard(
        spec=f"torchvision:{name}",
        class_names=tuple(weights.meta["categories"]),
        input_size=int(preprocess.crop_size[0]),
        weights=str(path),
        extra={"weights": str(weights)},
    )
    return Classifier(net, card, tuple(preprocess.mean), tuple(preprocess.std))
