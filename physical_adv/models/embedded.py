"""The embedded ``signs``-family classifiers, stored as safetensors files in the package."""

from __future__ import annotations

from pathlib import Path

from physical_adv.errors import UserError
from physical_adv.models.base import Classifier
from physical_adv.models.stored import load_stored

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
SIGNS_WEIGHTS = WEIGHTS_DIR / "signs.safetensors"
SIGNS_RECORD = WEIGHTS_DIR / "signs.json"

# spec → (weights file, one-line description); trained by `physical-adv train-signs` (signs-hardened: `harden`)
EMBEDDED = {
    "signs": (SIGNS_WEIGHTS, "embedded traffic-sign classifier (SignNet CNN, seed 0), 14 classes, 64 px"),
    "signs-resnet": (WEIGHTS_DIR / "signs-resnet.safetensors",
                     "second, independently trained traffic-sign classifier (residual net, seed 1), 14 classes, 48 px"),
    "signs-hardened": (WEIGHTS_DIR / "signs-hardened.safetensors",
                       "signs adversarially fine-tuned (physical-adv harden: DOA occlusion + L∞ 32/255 on printed tiles "
                       "through print-camera draws), 14 classes, 64 px"),
}


def load_embedded(spec: str = "signs", path: Path | None = None) -> Classifier:
    """An embedded classifier by spec (class names and architecture stored with the weights)."""
    path = Path(path) if path is not None else EMBEDDED[spec][0]
    if not path.is_file():
        raise UserError(f"the {spec} weights are missing from the package ({path}); reinstall physical-adv "
                        "or retrain with `physical-adv train-signs`")
    return load_stored(path, spec=spec)


def load_signs(path: Path = SIGNS_WEIGHTS) -> Classifier:
    """The embedded ``signs`` classifier (or a file trained like it)."""
    return load_embedded("signs", path)
