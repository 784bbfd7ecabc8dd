"""physical-adv: physical-world adversarial examples for image classifiers.

The public Python API mirrors the command line; start with
:func:`physical_adv.load_model` and :mod:`physical_adv.signs`.
"""

__version__ = "0.1.0"

from physical_adv.errors import UserError
from physical_adv.models import list_models, load_model


__all__ = ["__version__", "UserError", "load_model", "list_models"]
