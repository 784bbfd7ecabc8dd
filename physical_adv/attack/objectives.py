"""Attack objectives (to be maximised) and regularisers (to be subtracted)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy_objective(logits: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
    """Mean cross-entropy: ascend it away from the true ``labels``, or descend it towards the targets."""
    loss = F.cross_entropy(logits, labels)
    return -loss if targeted else loss


def margin_objective(logits: torch.Tensor, labels: torch.Tensor, targeted: bool, kappa: float = 5.0) -> torch.Tensor:
    """Mean C&W-style margin, capped at ``kappa``: target logit minus the best other (targeted),
    or best other logit minus the true one (untargeted)."""
    own = logits.gather(1, labels.view(-1, 1)).squeeze(1)
    others = logits.scatter(1, labels.view(-1, 1), float("-inf")).amax(1)
    margin = own - others if targeted else others - own
    return margin.clamp(max=kappa).mean()


OBJECTIVES = {"ce": cross_entropy_objective, "margin": margin_objective}


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels of ``(N, 3, H, W)`` (smoothness term)."""
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def default_palette() -> torch.Tensor:
    """27 printable colours: every combination of {0.1, 0.5, 0.9} per channel, ``(27, 3)``."""
    levels = torch.tensor([0.1, 0.5, 0.9])
    return torch.cartesian_prod(levels, levels, levels)


def non_printability(x: torch.Tensor, palette: torch.Tensor, size: int = 128) -> torch.Tensor:
    """Non-printability score (Sharif et al. 2016): mean over pixels of the distance to the
    nearest colour of the printer ``palette`` ``(P, 3)``, on ``x`` area-downsampled to ``size``
    for speed. Sharif et al. write it as the product ∏_p ‖x − p‖, which is zero at every
    palette colour too but underflows for a measured palette of hundreds of colours (a
    product of hundreds of distances below 1) and then has no gradient; the nearest
    distance, as in Thys et al. 2019's implementation, does not."""
    if x.shape[-1] > size:
        x = F.adaptive_avg_pool2d(x, size)
    pixels = x.permute(0, 2, 3, 1).reshape(-1, 1, 3)
    dist = (pixels - palette.to(x).view(1, -1, 3)).norm(dim=2)
    return dist.min(dim=1).values.mean()
