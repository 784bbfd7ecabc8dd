"""Area-pyramid resampling: the one rule for sampling an image at a smaller scale without aliasing.

Whenever an image is warped to a coarser grid (the EOT renderer warping a texture to the
model's input, ``simulate`` warping a printed page into a photo, capture rectifying a tile
to the model's input), bilinear interpolation alone only *samples*: it does not integrate,
so detail finer than the destination grid aliases. The fix used everywhere in this package
is the mip-map's: warp from level ``l`` of an area pyramid (2^l × 2^l block means), choosing
the level nearest to the warp's footprint, ``l = round(log2(ratio))`` clamped to
``[0, max_level]``, where ``ratio`` is source pixels per destination pixel. The remaining
scale change of the bilinear warp then lies within [1/√2, √2].

Capture rectifies in the other direction (there is no pyramid of the frame): it warps at
``2^l`` times the destination size and area-downsamples by ``2^l``, with the same ``l``.
"""

from __future__ import annotations

import math

import cv2
import numpy as np


def pyramid_level(ratio, max_level: int):
    """The area-pyramid level to sample from: ``round(log2(ratio))`` clamped to ``[0, max_level]``.

    Args:
        ratio: source pixels per destination pixel along one side (> 0; < 1 magnifies), a
            float or an array of them (e.g. one per EOT sample: ``ratio.cpu().numpy()``).
        max_level: the coarsest level available (≥ 0).

    Returns:
        The level ``l`` (an int, or an int array shaped like ``ratio``): sample from the
        source area-downsampled by ``2**l``. Halves round up (``ratio = 2**1.5`` gives 2); a
        ratio that is not positive (or NaN) gives 0.
    """
    if max_level < 0:
        raise ValueError(f"max_level must be ≥ 0, got {max_level}")
    r = np.asarray(ratio, dtype=np.float64)
    positive = np.where(r > 0, r, 1.0)  # NaN and ≤ 0 → level 0
    level = np.clip(np.floor(np.log2(positive) + 0.5), 0, max_level).astype(np.int64)
    return int(level) if level.ndim == 0 else level


def max_pyramid_level(shape: tuple[int, ...], min_side: int) -> int:
    """The coarsest level whose image keeps at least ``min_side`` pixels on its shorter side.

    Args:
        shape: the level-0 image's shape, ``(H, W, …)``.
        min_side: the smallest side a level may have (≥ 1).

    Returns:
        The largest ``l ≥ 0`` with ``min(H, W) / 2**l ≥ min_side`` (0 when even level 0 is smaller).
    """
    side = min(shape[:2])
    return max(0, int(math.floor(math.log2(side / min_side)))) if side >= min_side else 0


def area_downsample(img: np.ndarray, level: int) -> np.ndarray:
    """Level ``level`` of the area pyramid: the mean of each ``2**level`` square block.

    A trailing partial block (rows or columns beyond a multiple of ``2**level``) is dropped,
    so output pixel ``j`` covers input pixels ``[j·2^l, (j+1)·2^l)`` exactly and the scale is
    exactly ``2**-level``.

    Args:
        img: ``(H, W)`` or ``(H, W, C)`` array (uint8 or float32), ``H, W ≥ 2**level``.
        level: ``≥ 0``; 0 returns ``img`` itself.

    Returns:
        ``(H // 2**level, W // 2**level[, C])``, same dtype (uint8 means round to nearest).
    """
    if level < 0:
        raise ValueError(f"level must be ≥ 0, got {level}")
    if level == 0:
        return img
    f = 1 << level
    h, w = img.shape[0] // f, img.shape[1] // f
    if h < 1 or w < 1:
        raise ValueError(f"a {img.shape[1]}x{img.shape[0]} image has no pyramid level {level}")
    # an integer-factor INTER_AREA resize is exactly the block mean (and much faster than numpy)
    return cv2.resize(img[: h * f, : w * f], (w, h), interpolation=cv2.INTER_AREA)
