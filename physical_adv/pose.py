"""How a square tile looks from a pose: the one rule that the training scenes
(:mod:`physical_adv.signs.scenes`) and the EOT renderer (:mod:`physical_adv.attack.eot`) share.

A square seen at an out-of-plane ``tilt`` about an in-plane ``axis`` is foreshortened by
``cos(tilt)`` along that axis and tapered (the far edge looks up to a quarter smaller),
then rotated in plane. Callers draw the pose from their own random source (numpy for the
scenes, a batched ``torch.Generator`` for EOT) and add their own corner jitter and centre.
"""

from __future__ import annotations

TAPER = 0.25  # how much smaller the far edge of a tilted square looks, at sin(tilt) = 1


def posed_square(corners, half, sin_tilt, cos_tilt, axis, rotation):
    """Corners of a centred square seen tilted out of plane and rotated in plane.

    Written with arithmetic operators and ``@`` only, so the same function serves one pose
    in numpy (the scenes) and a batch in torch (EOT), each with its own arithmetic exactly as
    before (the scenes' shipped weights are reproduced bit for bit from it).

    Args:
        corners: ``(..., 4, 2)`` corners (TL, TR, BR, BL) of the square of half-side ``half``
            centred on the origin, in pixels.
        half: half the square's side; a number, or broadcastable to ``(..., 1, 1)``.
        sin_tilt, cos_tilt: sine and cosine of the out-of-plane tilt (numbers or broadcastable).
        axis: ``(..., 2)`` or ``(..., 1, 2)`` unit vector of the tilt axis.
        rotation: ``(..., 2, 2)`` in-plane rotation matrix.

    Returns:
        ``(..., 4, 2)`` corners, same type as ``corners``, still centred on the origin.
    """
    along = corners[..., 0:1] * axis[..., 0:1] + corners[..., 1:2] * axis[..., 1:2]  # (..., 4, 1)
    taper = 1 - TAPER * sin_tilt * along / half  # perspective: the far side looks smaller
    pts = (corners - along * (1 - cos_tilt) * axis) * taper
    return pts @ rotation.mT
