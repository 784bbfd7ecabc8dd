"""The one interface every model has: RGB in [0, 1] in, logits out."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ModelCard:
    """What a loaded model is and where it came from (recorded in every artifact)."""

    spec: str
    class_names: tuple[str, ...]
    input_size: int
    weights: str  # where the weights were read from
    extra: dict = field(default_factory=dict)


class Classifier(nn.Module):
    """Wraps a network so that it takes ``(N, 3, H, W)`` RGB in [0, 1] and returns logits.

    Resizing to the network's input size (antialiased bilinear, differentiable) and
    normalisation live here, so attack code never needs to know them.

    Attributes:
        class_names: one name per output logit.
        input_size: the side the network expects; other sizes are resized.
        card: provenance of the model.
    """

    def __init__(self, net: nn.Module, card: ModelCard, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.net = net
        self.card = card
        self.class_names = list(card.class_names)
        self.input_size = card.input_size
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    @property
    def spec(self) -> str:
        return self.card.spec

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, C)`` for ``images`` ``(N, 3, H, W)`` in [0, 1]."""
        if images.shape[-2:] != (self.input_size, self.input_size):
            images = F.interpolate(images, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False, antialias=True)
        return self.net((images - self.mean) / self.std)
