"""Threat models: what the attacker may change, as pluggable step / projection strategies
(after MadryLab/robustness's ``AttackerStep``). Every method works on batches
``(N, 3, H, W)`` in [0, 1]; ``clean`` is the unperturbed image or texture."""

from __future__ import annotations

from dataclasses import dataclass

import torch


class ThreatModel:
    """Interface: ``random_start``, ``step`` (ascend along ``grad``) and ``project`` (back into
    the allowed set)."""

    def random_start(self, clean: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        raise NotImplementedError

    def step(self, x: torch.Tensor, grad: torch.Tensor, alpha: float) -> torch.Tensor:
        raise NotImplementedError

    def project(self, x: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def _uniform_like(t: torch.Tensor, lo: float, hi: float, generator) -> torch.Tensor:
    return torch.empty_like(t).uniform_(lo, hi, generator=generator)


@dataclass(frozen=True)
class LinfBall(ThreatModel):
    """‖x − clean‖∞ ≤ eps: signed-gradient steps, clipping projection (same ops as torchattacks' PGD)."""

    eps: float

    def random_start(self, clean, generator=None):
        return torch.clamp(clean + _uniform_like(clean, -self.eps, self.eps, generator), 0, 1)

    def step(self, x, grad, alpha):
        return x + alpha * grad.sign()

    def project(self, x, clean):
        delta = torch.clamp(x - clean, min=-self.eps, max=self.eps)
        return torch.clamp(clean + delta, min=0, max=1)


@dataclass(frozen=True)
class L2Ball(ThreatModel):
    """‖x − clean‖₂ ≤ eps per image: normalised-gradient steps, radial projection (as torchattacks' PGDL2)."""

    eps: float

    def random_start(self, clean, generator=None):
        n = clean.shape[0]
        delta = torch.empty_like(clean).normal_(generator=generator)
        norms = delta.reshape(n, -1).norm(p=2, dim=1).view(n, 1, 1, 1)
        r = torch.zeros_like(norms).uniform_(0, 1, generator=generator)
        return torch.clamp(clean + delta * r / norms * self.eps, 0, 1)

    def step(self, x, grad, alpha):
        n = x.shape[0]
        norms = torch.norm(grad.reshape(n, -1), p=2, dim=1) + 1e-10
        return x + alpha * grad / norms.view(n, 1, 1, 1)

    def project(self, x, clean):
        n = x.shape[0]
        delta = x - clean
        norms = torch.norm(delta.reshape(n, -1), p=2, dim=1)
        factor = torch.clamp(self.eps / norms, max=1.0)
        return torch.clamp(clean + delta * factor.view(n, 1, 1, 1), min=0, max=1)


@dataclass(frozen=True)
class Patch(ThreatModel):
    """A sticker: free values in [0, 1] where ``mask`` is 1, the clean image exactly elsewhere
    (RP2 / Brown et al. style). ``mask`` is ``(1, 1, H, W)`` of 0/1."""

    mask: torch.Tensor

    def random_start(self, clean, generator=None):
        return self.project(torch.rand(clean.shape, generator=generator, device=clean.device, dtype=clean.dtype), clean)

    def step(self, x, grad, alpha):
        return x + alpha * grad.sign() * self.mask

    def project(self, x, clean):
        return torch.where(self.mask > 0, x.clamp(0, 1), clean)
