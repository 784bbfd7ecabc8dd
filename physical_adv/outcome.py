"""When a classification counts as the attack working: the one rule that capture, report,
the HTML report, the EOT preview and the attack's own metrics all call.

An *untargeted* attack succeeds on an observation when the prediction is not the tile's true
class ("fooled"); a *targeted* one succeeds only when the prediction is the target class. A
clean control is *correct* when the prediction is its true class. "Survival" of an
adversarial tile through print and camera is attack success on the photographed tile.
"""

from __future__ import annotations

import torch

from physical_adv.classes import normalise


def same_class(a: str, b: str | None) -> bool:
    """Whether two class names name the same class (compared as :func:`physical_adv.classes.normalise`
    keys, so a manifest's ``stop`` and a model's ``Stop`` agree)."""
    return b is not None and normalise(a) == normalise(b)


def is_fooled(pred: str, true_class: str) -> bool:
    """Whether a prediction is anything other than the true class (untargeted success)."""
    return not same_class(pred, true_class)


def in_top(top: list[str], true_class: str, k: int) -> bool:
    """Whether ``true_class`` is among the first ``k`` names of ``top`` (top-k correct)."""
    return any(same_class(name, true_class) for name in top[:k])


def attack_succeeded(pred: str, true_class: str, target_class: str | None) -> bool:
    """Whether one observation counts as success for an attack with this goal.

    Args:
        pred: the predicted class name.
        true_class: the source's true class name.
        target_class: the target class name, or ``None`` for an untargeted attack.

    Returns:
        ``pred == target_class`` when targeted, else ``pred != true_class``.
    """
    return same_class(pred, target_class) if target_class is not None else is_fooled(pred, true_class)


def succeeded_mask(pred: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
    """The same rule on class indices, for a batch: ``pred == labels`` when targeted (labels are
    the target), else ``pred != labels`` (labels are the true class).

    Args:
        pred: ``(N,)`` predicted class indices.
        labels: ``(N,)`` or broadcastable target (targeted) or true (untargeted) indices.
        targeted: the attack's goal.

    Returns:
        ``(N,)`` bool.
    """
    return pred == labels if targeted else pred != labels
