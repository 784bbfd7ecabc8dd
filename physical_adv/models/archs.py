"""The architectures a stored model file can name, each built from keyword arguments.

A stored model (:mod:`physical_adv.models.stored`) records ``arch`` and ``arch_kwargs``
in its safetensors metadata; :func:`build_arch` rebuilds the network from them, so no
pickled code is ever loaded.
"""

from __future__ import annotations

from torch import nn

from physical_adv.errors import UserError
from physical_adv.models.signs_net import SignNet


class _Block(nn.Module):
    """Pre-activation-free basic residual block (two 3×3 convolutions, BN, ReLU)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
        )
        self.skip = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.body(x) + self.skip(x))


class SignResNet(nn.Module):
    """A small wide residual net: 3×3 stride-2 stem, three stages of two basic blocks.

    With ``width=32`` it has about 0.69 M parameters (2.8 MB as float32) — a different
    family from :class:`SignNet` (no max-pooling, skip connections, wider early layers).
    """

    def __init__(self, num_classes: int, width: int = 32, dropout: float = 0.1) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(3, w, 3, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True))
        self.features = nn.Sequential(
            _Block(w, w, 1), _Block(w, w, 1),
            _Block(w, 2 * w, 2), _Block(2 * w, 2 * w, 1),
            _Block(2 * w, 4 * w, 2), _Block(4 * w, 4 * w, 1),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(4 * w, num_classes))

    def forward(self, x):
        return self.head(self.features(self.stem(x)))


ARCHS: dict[str, type[nn.Module]] = {"signnet": SignNet, "resnet": SignResNet}
DEFAULT_INPUT_SIZE = {"signnet": 64, "resnet": 48}


def check_arch(arch: str, input_size: int | None) -> None:
    """Validate a training config's architecture and input side (``None``: the architecture's).

    Raises:
        ValueError: an unknown architecture or an input side outside [16, 256].
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHS))}")
    if input_size is not None and not 16 <= input_size <= 256:
        raise ValueError(f"input-size must be in [16, 256], got {input_size}")


def build_arch(arch: str, num_classes: int, **kwargs) -> nn.Module:
    """The network ``arch`` with ``num_classes`` outputs (``kwargs``: e.g. ``width``)."""
    try:
        cls = ARCHS[arch]
    except KeyError:
        raise UserError(f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHS))}") from None
    try:
        return cls(num_classes, **kwargs)
    except TypeError as exc:
        raise UserError(f"architecture {arch!r} does not take {kwargs}: {exc}") from None
