"""Reading images from disk or from the built-in sign renderer, as uint8 RGB arrays."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from physical_adv.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def load_image(source: str | Path) -> np.ndarray:
    """Load ``source`` as ``(H, W, 3)`` uint8 RGB.

    Args:
        source: an image file path, or ``sign:NAME`` for a clean 512 px rendering of a
            built-in sign class (see ``physical_adv.signs.CLASS_NAMES``).

    Transparent pixels are composited onto white, as they would print on paper.
    Raises :class:`UserError` for a missing, unreadable or non-image file.
    """
    text = str(source)
    if text.startswith("sign:"):
        from physical_adv.signs.designs import CLASS_NAMES, class_index, render_clean

        return render_clean(CLASS_NAMES[class_index(text[5:])])  # an unknown sign is a UserError naming the closest
    path = Path(text)
    if not path.exists():
        raise UserError(f"image not found: {path}")
    if path.is_dir():
        raise UserError(f"expected an image file, got a directory: {path}")
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise UserError(f"cannot read {path} as an image (unsupported or corrupt file)")
    if img.dtype == np.uint16:
        img = (img / 257).round().astype(np.uint8)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif img.shape[2] == 4:
        alpha = img[..., 3:4].astype(np.float32) / 255.0
        rgb = img[..., 2::-1].astype(np.float32)
        img = np.round(rgb * alpha + 255.0 * (1 - alpha)).astype(np.uint8)
    else:
        img = np.ascontiguousarray(img[..., 2::-1])
    return img


def save_png(path: str | Path, rgb: np.ndarray) -> None:
    """Write ``(H, W, 3)`` uint8 RGB losslessly as PNG, atomically."""
    from physical_adv.artifacts import atomic_write_bytes

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise RuntimeError(f"PNG encoding failed for {path}")
    atomic_write_bytes(path, buf.tobytes())


def to_batch(images: list[np.ndarray] | np.ndarray, size: int | None = None) -> torch.Tensor:
    """uint8 RGB image(s) — one ``(H, W, 3)``, a list, or an ``(N, H, W, 3)`` array — to
    ``(N, 3, H, W)`` float32 in [0, 1], optionally area-resized to ``size``²."""
    if isinstance(images, np.ndarray) and images.ndim == 3:
        images = images[None]
    if isinstance(images, np.ndarray) and (size is None or images.shape[1:3] == (size, size)):
        return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    out = []
    for img in images:
        if size is not None and img.shape[:2] != (size, size):
            interp = cv2.INTER_AREA if min(img.shape[:2]) > size else cv2.INTER_LINEAR
            img = cv2.resize(img, (size, size), interpolation=interp)
        out.append(torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1))
    return torch.stack(out).float().div_(255.0)
