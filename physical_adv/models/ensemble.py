"""Several classifiers as one: the mean of their logits (Liu et al. 2017; Dong et al. 2018
found averaging logits the strongest of the fusions for transfer)."""

from __future__ import annotations

import torch
from torch import nn

from physical_adv.errors import UserError
from physical_adv.models.base import Classifier, ModelCard


class EnsembleClassifier(Classifier):
    """``(N, 3, H, W)`` in [0, 1] → the mean of the members' logits.

    Each member resizes the batch to its own input size, so one EOT batch drives every
    member with one batched forward (and backward) pass each. ``input_size`` is the largest
    member's, the resolution at which nothing any member sees is lost.
    """

    def __init__(self, members: list[Classifier]) -> None:
        names = list(members[0].class_names)
        for m in members[1:]:
            if list(m.class_names) != names:
                raise UserError(f"an ensemble needs models with the same classes in the same order; "
                                f"{m.spec} differs from {members[0].spec}")
        card = ModelCard(
            spec=",".join(m.spec for m in members), class_names=tuple(names),
            input_size=max(m.input_size for m in members), weights=";".join(m.card.weights for m in members),
            extra={"members": [{"spec": m.spec, "input_size": m.input_size, "weights": m.card.weights} for m in members]},
        )
        super().__init__(nn.Identity(), card, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        self.members = nn.ModuleList(members)

    @property
    def device(self) -> torch.device:
        return self.members[0].device

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(images) for m in self.members]).mean(0)
