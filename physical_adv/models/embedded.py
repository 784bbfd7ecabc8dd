"""Loading the embedded ``signs`` classifier from the safetensors file in the package."""

from __future__ import annotations

import json
from pathlib import Path

from physical_adv.errors import UserError
from physical_adv.models.base import Classifier, ModelCard
from physical_adv.models.signs_net import SIGNS_INPUT_SIZE, SIGNS_MEAN, SIGNS_STD, SignNet

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
SIGNS_WEIGHTS = WEIGHTS_DIR / "signs.safetensors"
SIGNS_RECORD = WEIGHTS_DIR / "signs.json"


def load_signs(path: Path = SIGNS_WEIGHTS) -> Classifier:
    """The embedded traffic-sign classifier (class names stored with the weights)."""
    from safetensors.torch import load_file
    from safetensors import safe_open

    if not path.is_file():
        raise UserError(f"the signs weights are missing from the package ({path}); reinstall physical-adv "
                        "or retrain with `physical-adv train-signs`")
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    class_names = tuple(json.loads(meta["class_names"]))
    net = SignNet(len(class_names), width=int(meta.get("width", 32)))
    net.load_state_dict(load_file(str(path)))
    card = ModelCard(
        spec="signs",
        class_names=class_names,
        input_size=int(meta.get("input_size", SIGNS_INPUT_SIZE)),
        weights=str(path),
        extra={"sha256_of_training_record": meta.get("record_sha256", "")},
    )
    return Classifier(net, card, SIGNS_MEAN, SIGNS_STD)
