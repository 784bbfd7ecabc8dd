"""Black-box targets: classifiers an attacker can only query for labels (Ilyas et al. 2018).

:mod:`~physical_adv.blackbox.target` holds the query targets (a walled-off local model, an
HTTP label-detection API) and :mod:`~physical_adv.blackbox.protocol` the Cloud-Vision
``images:annotate`` wire format that ``physical-adv serve`` and the HTTP client share.
"""

from physical_adv.blackbox.protocol import Label, ProtocolError
from physical_adv.blackbox.target import MODES, BudgetExhausted, HttpTarget, ModelTarget, QueryTarget, open_target

__all__ = ["MODES", "BudgetExhausted", "HttpTarget", "Label", "ModelTarget", "ProtocolError", "QueryTarget", "open_target"]
