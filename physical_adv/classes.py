"""Class names: the one lookup every command uses (``--target``, ``sign:NAME``, manifests).

Names match case-insensitively, with ``-``, ``_`` and runs of spaces treated as one space, so
``speed-limit-80``, ``Speed_Limit_80`` and ``speed limit 80`` all name the same class. An
unknown name is a :class:`~physical_adv.errors.UserError` that names the closest classes.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from physical_adv.errors import UserError


def normalise(name: str) -> str:
    """The comparison key of a class name: lower case, ``-``/``_`` as spaces, single spaces."""
    return " ".join(str(name).strip().lower().replace("_", " ").replace("-", " ").split())


def class_index(class_names: Sequence[str], name: str, what: str = "class", owner: str | None = None) -> int:
    """The index of ``name`` in ``class_names``.

    Args:
        class_names: the model's (or the sign set's) class names, in order.
        name: the name as a user typed it.
        what: what the name is for, used in the error (``"target"``, ``"source"``, …).
        owner: who the classes belong to (e.g. the model spec), used in the error.

    Returns:
        The index of the matching class.

    Raises:
        UserError: no class matches; the message names the closest ones.
    """
    key = normalise(name)
    keys = [normalise(c) for c in class_names]
    if key in keys:
        return keys.index(key)
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(class_names[keys.index(c)]) for c in close)}?" if close else ""
    sample = ", ".join(class_names[:20]) + (" …" if len(class_names) > 20 else "")
    where = f" of {owner}" if owner else ""
    raise UserError(f"unknown {what} class {name!r}{where}{hint} (classes: {sample})")
