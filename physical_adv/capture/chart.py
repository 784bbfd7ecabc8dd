"""Reading the calibration chart in a photo: each patch's colour, as the camera saw it.

The chart (``manifest["calibration"]``, see :mod:`physical_adv.sheet.chart`) is located by
its page's homography — every marker seen on the page — and read only when that homography
places it precisely (:data:`MAX_SD_PATCH` of a patch's side, :func:`corner_sd`). The chart's
band is un-warped to :data:`PX_PER_MM` pixels per millimetre, and each patch's colour is the
trimmed mean (the brightest and darkest :data:`TRIM` of its pixels per channel left out, so
a glare spot or a speck does not move it) of the central :data:`INNER` of its square, away
from the edges that blur into the white gaps. Patches not wholly inside the frame are
``null``.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from physical_adv.capture.locate import Locator, PageFit
from physical_adv.markers import Detections

PX_PER_MM = 4.0
INNER = 0.6  # the central share of a patch's side that is read
TRIM = 0.2  # share of pixels left out at each end, per channel
MAX_SD_PATCH = 0.15  # the chart is read when its corners are placed to this share of a patch's side


def read_chart(frame: np.ndarray, chart: dict, fit: PageFit, locator: Locator, detections: Detections) -> dict | None:
    """The chart's patches as seen in ``frame``, or ``None`` when it cannot be read precisely.

    Args:
        frame: ``(H, W, 3)`` uint8 BGR.
        chart: the manifest's ``calibration`` entry.
        fit: the homography of the chart's page in this frame.
        locator: the locator that made ``fit`` (for its precision).
        detections: the frame's markers.

    Returns:
        ``{"corner_sd_px", "rgb"}``: the chart corners' σ in frame pixels and one ``[r, g, b]``
        (0–255, two decimals) per patch in manifest order, ``None`` for a patch not wholly in
        the frame.
    """
    if fit.homography is None or not fit.markers:
        return None
    x, y, w, h = chart["bbox_mm"]
    quad = np.float64([[x, y], [x + w, y], [x + w, y + h], [x, y + h]])
    sd = locator.page_precision(detections, fit, quad)
    corners = cv2.perspectiveTransform(quad[None], fit.homography)[0]
    patch_px = chart["patch_mm"] * math.sqrt(abs(cv2.contourArea(corners.astype(np.float32)))) / math.sqrt(w * h)
    if not math.isfinite(sd) or sd > MAX_SD_PATCH * patch_px:
        return None
    cols, rows = int(round(w * PX_PER_MM)), int(round(h * PX_PER_MM))
    to_mm = np.array([[1 / PX_PER_MM, 0, x + 0.5 / PX_PER_MM], [0, 1 / PX_PER_MM, y + 0.5 / PX_PER_MM], [0, 0, 1.0]])
    band = cv2.warpPerspective(frame, fit.homography @ to_mm, (cols, rows), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    fh, fw = frame.shape[:2]
    rgb = []
    for patch in chart["patches"]:
        px, py, pw, ph = patch["bbox_mm"]
        pts = cv2.perspectiveTransform(np.float64([[[px, py], [px + pw, py], [px + pw, py + ph], [px, py + ph]]]),
                                       fit.homography)[0]
        if (pts < -0.5).any() or (pts[:, 0] > fw - 0.5).any() or (pts[:, 1] > fh - 0.5).any():
            rgb.append(None)
            continue
        margin = (1 - INNER) / 2
        c0, c1 = int(round((px - x + margin * pw) * PX_PER_MM)), int(round((px - x + (1 - margin) * pw) * PX_PER_MM))
        r0, r1 = int(round((py - y + margin * ph) * PX_PER_MM)), int(round((py - y + (1 - margin) * ph) * PX_PER_MM))
        pixels = np.sort(band[r0:r1, c0:c1].reshape(-1, 3).astype(np.float64), axis=0)
        cut = int(len(pixels) * TRIM)
        mean_bgr = pixels[cut:len(pixels) - cut].mean(0)
        rgb.append([round(float(v), 2) for v in mean_bgr[::-1]])
    return {"corner_sd_px": round(float(sd), 3), "rgb": rgb}
