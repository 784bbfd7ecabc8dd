"""White-box digital attacks with the standard semantics (images in [0, 1], cross-entropy,
results clipped to [0, 1]; for ``targeted=True`` the labels are the targets), so results
compare with torchattacks and other tools. Both run the one loop of :mod:`.loop`."""

from __future__ import annotations

import torch

from physical_adv.attack.loop import optimize
from physical_adv.attack.objectives import cross_entropy_objective
from physical_adv.attack.threat import L2Ball, LinfBall


def _check(images: torch.Tensor, eps: float) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, H, W), got {tuple(images.shape)}")
    if eps < 0:
        raise ValueError(f"eps must be ≥ 0, got {eps}")


def fgsm(model, images: torch.Tensor, labels: torch.Tensor, eps: float, targeted: bool = False) -> torch.Tensor:
    """Fast Gradient Sign Method (Goodfellow et al. 2015): one signed-gradient step of size ``eps``.

    Args:
        model: logits for ``(N, 3, H, W)`` in [0, 1].
        images: ``(N, 3, H, W)`` in [0, 1].
        labels: ``(N,)`` true classes (or targets when ``targeted``).
        eps: L∞ budget in [0, 1] units (e.g. 8/255).

    Returns:
        Adversarial images ``(N, 3, H, W)`` in [0, 1].
    """
    _check(images, eps)
    objective = lambda logits, y: cross_entropy_objective(logits, y, targeted)  # noqa: E731
    result = optimize(model, images.detach(), labels, threat=_OneStep(eps), objective=objective, steps=1, alpha=eps, targeted=targeted)
    return result.x


class _OneStep(LinfBall):
    """FGSM's single step needs no projection beyond clipping to [0, 1]."""

    def project(self, x, clean):
        return torch.clamp(x, min=0, max=1)


def pgd(
    model,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    alpha: float,
    steps: int,
    random_start: bool = True,
    norm: str = "linf",
    targeted: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Projected Gradient Descent (Madry et al. 2018) in the L∞ or L2 ball.

    Args:
        model: logits for ``(N, 3, H, W)`` in [0, 1].
        images: ``(N, 3, H, W)`` in [0, 1].
        labels: ``(N,)`` true classes (or targets when ``targeted``).
        eps: budget in [0, 1] units (L∞: per pixel; L2: per image).
        alpha: step size; steps: number of steps.
        random_start: start uniformly in the L∞ ball (or at a random radius in the L2 ball).
        norm: ``"linf"`` or ``"l2"``.
        generator: randomness of the random start.

    Returns:
        Adversarial images ``(N, 3, H, W)`` in [0, 1] (the last iterate).
    """
    _check(images, eps)
    if steps < 1:
        raise ValueError(f"steps must be ≥ 1, got {steps}")
    threats = {"linf": LinfBall, "l2": L2Ball}
    if norm not in threats:
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    objective = lambda logits, y: cross_entropy_objective(logits, y, targeted)  # noqa: E731
    result = optimize(
        model, images.detach(), labels, threat=threats[norm](eps), objective=objective, steps=steps, alpha=alpha,
        targeted=targeted, random_start=random_start, generator=generator,
    )
    return result.x
