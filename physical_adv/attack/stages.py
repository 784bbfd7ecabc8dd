"""Your own transformations on top of an EOT distribution: ``--eot BASE+module:factory``.

``factory()`` (imported by the one ``module:factory`` loader,
:func:`physical_adv.models.scripted.import_factory`) returns a *stage*: any callable that takes
a batch ``(N, 3, H, W)`` in [0, 1] and returns one of the same shape — typically a kornia
``AugmentationSequential`` of outdoor effects (rain, plasma shadows, erasing, noise). Stages run
in the order given, on the batch :func:`physical_adv.attack.eot.render` made (the model-input
batch), each output clipped to [0, 1]; a kornia stage draws its own parameters per sample.

Replay: :func:`physical_adv.attack.eot.sample` draws one seed per stage from the attack's
generator, and :func:`apply_stages` runs each stage from that seed — given a ``generator=``
argument when the stage's signature has one, else with the global CPU (and the batch's CUDA
device's) random state set to the seed for the call and restored afterwards
(``torch.random.fork_rng``; kornia draws from the global state). So the same draw renders the
same batch, the optimisation's stage draws come from ``--seed``, and the held-out check's from
its own seed, like every other part of the distribution.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from physical_adv.errors import UserError
from physical_adv.models.scripted import import_factory

PROBE_SHAPE = (2, 3, 64, 64)  # the batch a stage is checked on when it is loaded


@dataclass(frozen=True)
class Stage:
    """A loaded stage: its ``module:factory`` spec, the callable ``factory()`` returned, and
    whether that callable takes a ``generator=`` argument (else it draws from the global state)."""

    spec: str
    transform: Callable[..., torch.Tensor] = field(compare=False, repr=False)
    takes_generator: bool = field(compare=False, default=False)


def is_stage_spec(text: str) -> bool:
    """Whether ``text`` has the shape of a stage spec: ``dotted.module:factory``."""
    module, sep, factory = text.partition(":")
    return bool(sep) and all(part.isidentifier() for part in module.split(".")) and factory.isidentifier()


def load_stage(spec: str) -> Stage:
    """Import ``module:factory``, call ``factory()`` and check the stage it returns on a
    :data:`PROBE_SHAPE` batch: same shape out, and gradients pass through it.

    Raises:
        UserError: a malformed spec, an unimportable module, a factory that is not callable,
        fails, or returns something that is not a differentiable batch → batch callable.
    """
    if not is_stage_spec(spec):
        raise UserError(f"an EOT stage is named module:factory (e.g. --eot print-camera+my_stages:rain), got {spec!r}")
    purpose = f"EOT stage {spec}"
    factory = import_factory(spec, purpose)
    try:
        transform = factory()
    except Exception as exc:  # noqa: BLE001 - any failure of user code is a user error
        raise UserError(f"{spec}() fails: {_first_line(exc)}") from None
    if not callable(transform):
        raise UserError(f"{spec}() returned {type(transform).__name__}, not a callable batch → batch transformation")
    stage = Stage(spec, transform, _takes_generator(transform))
    probe = torch.rand(PROBE_SHAPE, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    try:
        out = apply_stages(probe, (stage,), (0,))
    except UserError:  # a batch of another shape: already said in one line
        raise
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"{purpose} fails on a {'x'.join(map(str, PROBE_SHAPE))} batch: {_first_line(exc)}") from None
    if not out.requires_grad:
        raise UserError(f"{purpose} does not pass gradients: its output does not depend on its input through autograd")
    return stage


def apply_stages(batch: torch.Tensor, stages: tuple[Stage, ...], seeds: tuple[int, ...]) -> torch.Tensor:
    """Run ``stages`` in order on ``batch``, stage ``i`` from ``seeds[i]`` (see the module docs).

    Args:
        batch: ``(N, 3, H, W)`` in [0, 1].
        stages: the stages of a distribution.
        seeds: one seed per stage (drawn by :func:`physical_adv.attack.eot.sample`).

    Returns:
        ``(N, 3, H, W)`` in [0, 1], differentiable with respect to ``batch`` where the stages are.

    Raises:
        UserError: a stage returned something other than a tensor of the input's shape.
    """
    for stage, seed in zip(stages, seeds):
        if stage.takes_generator:
            out = stage.transform(batch, generator=torch.Generator(device=batch.device).manual_seed(seed))
        else:
            with _global_rng_from(seed, batch.device):
                out = stage.transform(batch)
        if not isinstance(out, torch.Tensor) or out.shape != batch.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise UserError(f"EOT stage {stage.spec} must return a batch of the shape it was given, "
                            f"{tuple(batch.shape)}; it returned {got}")
        batch = out.clamp(0, 1)
    return batch


@contextlib.contextmanager
def _global_rng_from(seed: int, device: torch.device) -> Iterator[None]:
    """The global CPU random state, and ``device``'s when it is a CUDA device, set to ``seed``
    inside the block and restored after it (the caller's random stream is left as it was)."""
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.random.default_generator.manual_seed(seed)
        for d in cuda:
            with torch.cuda.device(d):
                torch.cuda.manual_seed(seed)
        yield


def _takes_generator(transform: Callable) -> bool:
    try:
        return "generator" in inspect.signature(transform).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
