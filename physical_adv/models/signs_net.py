"""The architecture of the embedded ``signs`` classifier: a compact CNN for 64 px crops."""

from __future__ import annotations

from torch import nn

SIGNS_INPUT_SIZE = 64
SIGNS_MEAN = (0.5, 0.5, 0.5)
SIGNS_STD = (0.25, 0.25, 0.25)


def _conv(cin: int, cout: int, stride: int = 1, kernel: int = 3) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SignNet(nn.Module):
    """Five-stage VGG-like CNN, 64×64 input, about 0.29 M parameters.

    The 5×5 stride-2 stem halves the resolution at once, which keeps a forward+backward
    pass on a batch of 32 at roughly 40 ms on two CPU cores.
    """

    def __init__(self, num_classes: int, width: int = 32, dropout: float = 0.2) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            *_conv(3, w, stride=2, kernel=5),
            *_conv(w, w),
            nn.MaxPool2d(2),
            *_conv(w, 2 * w),
            *_conv(2 * w, 2 * w),
            nn.MaxPool2d(2),
            *_conv(2 * w, 4 * w),
            *_conv(4 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(4 * w, num_classes))

    def forward(self, x):
        return self.head(self.features(x))
