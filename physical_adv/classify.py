"""Top-k classification of image files (``physical-adv classify``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from physical_adv.images import load_image, to_batch
from physical_adv.models import DEFAULT_MODEL, load_model


@dataclass(frozen=True)
class ClassifyConfig:
    images: tuple[str, ...]
    model: str = DEFAULT_MODEL
    top_k: int = 5
    device: str = "auto"
    classes: str | None = None

    def __post_init__(self) -> None:
        if not self.images:
            raise ValueError("give at least one image")
        if self.top_k < 1:
            raise ValueError(f"top-k must be at least 1, got {self.top_k}")


def top_k(probs: torch.Tensor, class_names: list[str], k: int) -> list[list[dict]]:
    """``[[{"class": name, "prob": p}, …], …]`` for each row of ``probs`` ``(N, C)``."""
    k = min(k, probs.shape[1])
    values, indices = probs.topk(k, dim=1)
    return [
        [{"class": class_names[int(i)], "prob": round(float(v), 6)} for v, i in zip(vs, ix)]
        for vs, ix in zip(values, indices)
    ]


def classify_images(cfg: ClassifyConfig) -> list[dict]:
    """Classify every image of ``cfg``.

    Returns:
        ``[{"path": PATH, "top": [{"class": NAME, "prob": P}, …]}, …]`` in input order.
    """
    images = [load_image(p) for p in cfg.images]  # fail on a bad file before loading the model
    model = load_model(cfg.model, cfg.device, classes=cfg.classes)
    with torch.no_grad():
        batch = to_batch(images, model.input_size).to(model.device)
        probs = torch.softmax(model(batch), dim=1).cpu()
    return [{"path": p, "top": top} for p, top in zip(cfg.images, top_k(probs, model.class_names, cfg.top_k))]
