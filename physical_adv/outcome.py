"""When a classification counts as the attack working: the one rule that capture, report,
the HTML report, the EOT preview and the attack's own metrics all call.

An *untargeted* attack succeeds on an observation when the prediction is not the tile's true
class ("fooled"); a *targeted* one succeeds only when the prediction is the target class. A
clean control is *correct* when the prediction is its true class. "Survival" of an
adversarial tile through print and camera is attack success on the photographed tile.
"""

from __future__ import annotations


def is_fooled(pred: str, true_class: str) -> bool:
    """Whether a prediction is anything other than the true class (untargeted success)."""
    return pred != true_class


def attack_succeeded(pred: str, true_class: str, target_class: str | None) -> bool:
    """Whether one observation counts as success for an attack with this goal.

    Args:
        pred: the predicted class name.
        true_class: the source's true class name.
        target_class: the target class name, or ``None`` for an untargeted attack.

    Returns:
        ``pred == target_class`` when targeted, else ``pred != true_class``.
    """
    return pred == target_class if target_class is not None else is_fooled(pred, true_class)
