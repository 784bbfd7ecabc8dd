"""Outdoor conditions for street signs as an EOT stage: ``--eot print-camera+outdoor_stages:outdoor``.

Put this folder on the import path (``PYTHONPATH=examples``) and each EOT sample of the attack
and of its held-out check also gets, independently: a soft shadow (half the views), rain streaks
(a third) and a small occluder — a leaf, dirt or a sticker — over part of the view (a quarter).
Any factory that returns a batch → batch callable ``(N, 3, H, W)`` in [0, 1] works the same way.
"""

import kornia.augmentation as K


def outdoor() -> K.AugmentationSequential:
    """Shadows, rain and small occluders, each drawn per sample (kornia 0.7 or later).

    Returns:
        A kornia ``AugmentationSequential`` taking and returning ``(N, 3, H, W)`` in [0, 1].
    """
    return K.AugmentationSequential(
        K.RandomPlasmaShadow(roughness=(0.1, 0.5), shade_intensity=(-0.5, -0.1), shade_quantity=(0.1, 0.4), p=0.5),
        K.RandomRain(number_of_drops=(30, 120), drop_height=(3, 8), drop_width=(-2, 2), p=0.33),
        K.RandomErasing(scale=(0.01, 0.05), ratio=(0.5, 2.0), value=0.2, p=0.25),
    )
