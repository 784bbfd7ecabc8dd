"""Transfer: the field's techniques for making an attack carry to models it never saw, and the
check of a finished run on those models.

Techniques, each a small piece the one loop of :mod:`.loop` composes:

* :class:`Momentum` — MI-FGSM (Dong et al. 2018, "Boosting Adversarial Attacks with
  Momentum"): the step follows ``g_t = μ·g_{t−1} + ∇/mean|∇|``, an accumulated, normalised
  gradient that escapes the source model's poor local maxima;
* :class:`TranslationInvariance` — TI (Dong et al. 2019, "Evading Defenses to Transferable
  Adversarial Examples by Translation-Invariant Attacks"): the gradient convolved with a
  Gaussian kernel, i.e. the gradient of the objective averaged over small shifts;
* :class:`InputDiversity` — DI (Xie et al. 2019, "Improving Transferability of Adversarial
  Examples with Input Diversity"): each view, with probability ``p``, shrunk by a random
  factor in ``[scale, 1]`` and placed at a random spot of a zero canvas before the model sees
  it. The EOT distribution already rescales and shifts every view; DI is the extra stage.

The first two are *gradient transforms* (``grad → grad``, applied in order before the threat
model's step); DI transforms the rendered batch. The check (:func:`open_transfer_targets`,
:func:`evaluate_transfer`) classifies the held-out print-camera views of the run with other
models — model specs (a comma-joined spec is an ensemble) or label-detection URLs asked in
``label`` mode (:func:`physical_adv.blackbox.target.open_target`), every image counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from physical_adv.classes import class_index, normalise
from physical_adv.errors import UserError
from physical_adv.outcome import attack_succeeded
from physical_adv.stats import wilson_interval

GradientTransform = Callable[[torch.Tensor], torch.Tensor]  # grad (1, 3, S, S) → grad (1, 3, S, S)


class Momentum:
    """MI-FGSM's accumulator (Dong et al. 2018): ``g_t = decay·g_{t−1} + ∇ / mean|∇|``.

    Stateful: make one per optimisation run. The normalisation is per image over every pixel
    and channel, as in the paper (an L1 normalisation; the sign step ignores the scale).
    """

    def __init__(self, decay: float = 1.0) -> None:
        if not decay >= 0:
            raise ValueError(f"momentum decay must be ≥ 0, got {decay}")
        self.decay = decay
        self.velocity: torch.Tensor | None = None

    def __call__(self, grad: torch.Tensor) -> torch.Tensor:
        """``grad`` ``(N, 3, H, W)`` → the accumulated direction, same shape."""
        scale = grad.abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
        g = grad / scale
        self.velocity = g if self.velocity is None else self.decay * self.velocity + g
        return self.velocity


@dataclass(frozen=True)
class TranslationInvariance:
    """TI (Dong et al. 2019): the gradient convolved with a normalised Gaussian of ``sigma``
    pixels (of the texture the gradient lives on), radius ``ceil(3σ)``, zero padding, one
    separable depthwise pass per axis."""

    sigma: float

    def __post_init__(self) -> None:
        if not self.sigma > 0:
            raise ValueError(f"TI sigma must be > 0 pixels, got {self.sigma}")

    def kernel(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The 1-D kernel ``(2r+1,)``, summing to 1."""
        r = max(1, math.ceil(3 * self.sigma))
        x = torch.arange(-r, r + 1, device=device, dtype=dtype)
        k = torch.exp(-0.5 * (x / self.sigma) ** 2)
        return k / k.sum()

    def __call__(self, grad: torch.Tensor) -> torch.Tensor:
        """``grad`` ``(N, C, H, W)`` → smoothed, same shape."""
        k = self.kernel(grad.device, grad.dtype)
        c, r = grad.shape[1], (len(k) - 1) // 2
        out = F.conv2d(grad, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), padding=(0, r), groups=c)
        return F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), padding=(r, 0), groups=c)


@dataclass(frozen=True)
class InputDiversity:
    """DI (Xie et al. 2019), batched: each view of ``(M, 3, h, w)``, with probability ``p``,
    shrunk by a factor uniform in ``[scale, 1]`` to a random place on a black canvas of the
    same size (one ``grid_sample``; untouched views are reproduced exactly). As torchattacks'
    DIFGSM with ``resize_rate = scale`` but one draw per view instead of one per batch."""

    p: float
    scale: float = 0.9

    def __post_init__(self) -> None:
        if not 0 < self.p <= 1:
            raise ValueError(f"input-diversity probability must be in (0, 1], got {self.p}")
        if not 0 < self.scale < 1:
            raise ValueError(f"input-diversity scale must be in (0, 1), got {self.scale}")

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        m, dev = images.shape[0], images.device
        on = torch.rand(m, generator=generator, device=dev) < self.p
        u = self.scale + (1 - self.scale) * torch.rand(m, generator=generator, device=dev)
        u = torch.where(on, u, torch.ones_like(u))
        offset = (1 - u).unsqueeze(1) * (2 * torch.rand(m, 2, generator=generator, device=dev) - 1)
        theta = torch.zeros(m, 2, 3, device=dev, dtype=images.dtype)
        theta[:, 0, 0] = theta[:, 1, 1] = 1 / u
        theta[:, :, 2] = -offset / u.unsqueeze(1)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


# ---------------------------------------------------------------- the transfer check


@dataclass
class TransferTarget:
    """One model a run is checked on: a local classifier, or a URL asked for top-1 labels.

    Attributes:
        spec: as given (a model spec, a comma-joined ensemble, or a URL).
        model: the local classifier, or ``None`` for a URL.
        oracle: the :class:`~physical_adv.blackbox.target.QueryTarget` of a URL, else ``None``.
    """

    spec: str
    model: torch.nn.Module | None = None
    oracle: object | None = None

    @property
    def input_size(self) -> int | None:
        return None if self.model is None else self.model.input_size

    def labels(self, images: torch.Tensor) -> list[str]:
        """Top-1 class names for ``images`` ``(N, 3, h, w)`` in [0, 1]."""
        if self.model is not None:
            return classify(self.model, images)[0]
        return [answer[0].description if answer else "" for answer in self.oracle.query(images)]


def classify(model, images: torch.Tensor) -> tuple[list[str], torch.Tensor]:
    """A local model's top-1 names and probabilities ``(N, C)`` for ``images`` ``(N, 3, h, w)``."""
    with torch.no_grad():
        probs = torch.softmax(model(images), 1)
    return [model.class_names[i] for i in probs.argmax(1).tolist()], probs


def open_transfer_targets(specs: tuple[str, ...], class_names: list[str], probe: torch.Tensor,
                          device: torch.device, classes: str | None = None) -> list[TransferTarget]:
    """Load every ``--transfer-to`` model, or open and probe every URL, before an attack starts.

    Args:
        specs: model specs (``a,b`` = an ensemble) or ``http(s)://`` URLs.
        class_names: the attacked model's classes; a model must have the same set, a URL's
            probe answer must be one of them.
        probe: ``(1, 3, h, w)`` in [0, 1], sent once to each URL (one query, counted) to
            prove it answers before any optimisation is spent.
        device: where the models run.
        classes: the class-name file of TorchScript and ``module:factory`` models (``--classes``).

    Raises:
        UserError: an unknown spec, a URL that does not answer, or other classes.
    """
    from physical_adv.blackbox.target import is_url, open_target
    from physical_adv.models import load_model

    known = {normalise(n) for n in class_names}
    targets = []
    for spec in specs:
        if is_url(spec):
            target = TransferTarget(spec, oracle=open_target(spec, "label", 1, None, device))
            answer = target.labels(probe)[0]
            if normalise(answer) not in known:
                raise UserError(f"--transfer-to {spec} answered {answer!r}, which is not one of the attacked "
                                f"model's {len(class_names)} classes")
        else:
            target = TransferTarget(spec, model=load_model(spec, device, classes=classes))
            if {normalise(n) for n in target.model.class_names} != known:
                raise UserError(f"--transfer-to {spec} has other classes than the attacked model "
                                f"({len(target.model.class_names)} vs {len(class_names)}); transfer is "
                                "scored by class name, so both must know the same classes")
        targets.append(target)
    return targets


def render_size(source_size: int, targets: list[TransferTarget]) -> int:
    """The side the transfer views are rendered at: the largest input among the attacked model
    and the local transfer models (a camera's image is downsampled by each model, never
    upsampled); URLs get the views at that size."""
    return max([source_size] + [t.input_size for t in targets if t.input_size is not None])


def evaluate_transfer(targets: list[TransferTarget], source, adv: torch.Tensor, dist, n: int, held_seed: int,
                      true_class: str, target_class: str | None, batch: int = 100) -> dict:
    """Classify the same held-out draws of ``dist`` on ``adv`` with the source and every target.

    The views are rendered once per batch (seed ``held_seed``, fresh noise, as the run's
    held-out check) at :func:`render_size`; when that is the source's input size they are
    exactly the held-out check's images.

    Args:
        targets: from :func:`open_transfer_targets`.
        source: the attacked classifier (its rate on these views is recorded beside).
        adv: the texture ``(1, 3, S, S)`` in [0, 1].
        dist: the held-out distribution; n: draws.
        true_class, target_class: the run's goal (``target_class`` ``None`` = untargeted).

    Returns:
        The ``attack.json`` ``transfer`` record: views, the source's rate on them, and per target
        spec, success rate, Wilson 95 % interval, n (and queries for a URL).
    """
    from physical_adv.attack import eot

    size = render_size(source.input_size, targets)
    g = torch.Generator(device=adv.device).manual_seed(held_seed)
    goal_class = target_class if target_class is not None else true_class
    locals_ = [source] + [t.model for t in targets]  # None for a URL: no probabilities
    hits, goal_prob = [0] * len(locals_), [0.0] * len(locals_)
    asked = [t.oracle.queries if t.oracle is not None else 0 for t in targets]
    for start in range(0, n, batch):
        params = eot.sample(dist, min(batch, n - start), adv.shape[-1], size, g, adv.device, fresh_noise=True)
        with torch.no_grad():
            images = eot.render(adv, params)
        for k, model in enumerate(locals_):
            if model is None:
                names = targets[k - 1].labels(images)
            else:
                names, probs = classify(model, images)
                goal_prob[k] += float(probs[:, class_index(model.class_names, goal_class)].sum())
            hits[k] += sum(attack_succeeded(name, true_class, target_class) for name in names)

    def rate(k: int) -> dict:
        row = {"success": hits[k] / n, "success_ci95": [round(v, 4) for v in wilson_interval(hits[k], n)], "n": n}
        if locals_[k] is not None:  # how close the model came: the mean probability of the goal's class
            row["mean_target_prob" if target_class is not None else "mean_true_prob"] = round(goal_prob[k] / n, 4)
        return row

    models = []
    for k, t in enumerate(targets, 1):
        row = {"spec": t.spec, "kind": "url" if t.oracle is not None else "model", **rate(k)}
        if t.oracle is not None:
            row["queries"] = t.oracle.queries - asked[k - 1]
            row["probe_queries"] = asked[k - 1]
        models.append(row)
    return {
        "views": {"distribution": dist.name, "draws": n, "seed": held_seed, "render_size": size,
                  "same_as_heldout_check": size == source.input_size},
        "goal": "reads the target" if target_class is not None else "wrong (not the true class)",
        "source": {"spec": source.spec, **rate(0)},
        "models": models,
    }
