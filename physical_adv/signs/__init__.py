"""Procedural traffic signs: designs, training scenes, and the ``signs`` classifier's training."""

from physical_adv.signs.designs import CLASS_NAMES, SignStyle, class_index, draw_sign, render_clean

__all__ = ["CLASS_NAMES", "SignStyle", "class_index", "draw_sign", "render_clean"]
