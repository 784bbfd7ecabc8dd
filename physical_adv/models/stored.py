"""Stored models: safetensors weights whose metadata says how to rebuild the network.

Two layouts, both accepted by every command's ``--model``:

* a file ``NAME.safetensors`` with its training record ``NAME.json`` beside it (the
  embedded models in the package);
* a **model directory** ``DIR/`` holding ``model.safetensors`` and ``model.json`` (what
  ``substitute``, ``train-signs --out DIR`` and later ``harden`` write).

The safetensors metadata holds ``arch`` (a name in :data:`~physical_adv.models.archs.ARCHS`),
``arch_kwargs``, ``input_size``, ``class_names``, ``mean`` and ``std`` (JSON strings), and
``record_sha256``, the hash of the record written with it. Nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

from torch import nn

from physical_adv.artifacts import atomic_write_bytes, atomic_write_json
from physical_adv.errors import UserError
from physical_adv.models.archs import build_arch
from physical_adv.models.base import Classifier, ModelCard

WEIGHTS_NAME = "model.safetensors"
RECORD_NAME = "model.json"


def stored_paths(out: str | Path) -> tuple[Path, Path]:
    """``(weights, record)`` for a ``.safetensors`` file or a model directory."""
    out = Path(out)
    if out.suffix == ".safetensors":
        return out, out.with_suffix(".json")
    return out / WEIGHTS_NAME, out / RECORD_NAME


def is_model_dir(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / WEIGHTS_NAME).exists()


def save_model(net: nn.Module, out: str | Path, record: dict, *, arch: str, arch_kwargs: dict, input_size: int,
               class_names: Sequence[str], mean: Sequence[float], std: Sequence[float]) -> Path:
    """Write the weights and the record (each atomically; the record last names the weights' hash).

    Returns:
        The weights path.
    """
    from safetensors.torch import save

    weights, record_path = stored_paths(out)
    weights.parent.mkdir(parents=True, exist_ok=True)
    record_bytes = (json.dumps(record, indent=2) + "\n").encode()
    state = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    meta = {
        "arch": arch,
        "arch_kwargs": json.dumps(arch_kwargs),
        "class_names": json.dumps(list(class_names)),
        "input_size": str(int(input_size)),
        "mean": json.dumps([float(m) for m in mean]),
        "std": json.dumps([float(s) for s in std]),
        "record_sha256": hashlib.sha256(record_bytes).hexdigest(),
    }
    if arch == "signnet":
        meta["width"] = str(arch_kwargs.get("width", 32))  # what releases before model directories read
    atomic_write_bytes(weights, save(state, metadata=meta))
    atomic_write_json(record_path, record)
    return weights


def load_stored(path: str | Path, spec: str | None = None) -> Classifier:
    """Load a stored model (file or directory) as a :class:`Classifier`.

    Raises:
        UserError: missing or unreadable weights, metadata naming an unknown architecture,
            or weights that do not fit it — one sentence each.
    """
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    from physical_adv.models.signs_net import SIGNS_MEAN, SIGNS_STD

    path = Path(path)
    weights, _ = stored_paths(path)
    where = f"model directory {path}" if weights != path else f"model file {path}"
    if not weights.is_file():
        raise UserError(f"{where} has no weights ({weights.name} is missing)")
    try:
        with safe_open(str(weights), framework="pt") as fh:
            meta = fh.metadata() or {}
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"cannot read the weights of {where}: {exc}") from None
    try:
        names = tuple(json.loads(meta["class_names"]))
        arch = meta.get("arch", "signnet")
        kwargs = json.loads(meta["arch_kwargs"]) if "arch_kwargs" in meta else {"width": int(meta.get("width", 32))}
        size = int(meta.get("input_size", 64))
        mean = tuple(json.loads(meta["mean"])) if "mean" in meta else SIGNS_MEAN
        std = tuple(json.loads(meta["std"])) if "std" in meta else SIGNS_STD
    except (KeyError, ValueError, TypeError) as exc:
        raise UserError(f"{where}: its weights' metadata is incomplete or malformed ({exc})") from None
    net = build_arch(arch, len(names), **kwargs)
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "mismatch"
        raise UserError(f"{where}: the weights do not fit architecture {arch!r} ({first})") from None
    card = ModelCard(spec=spec or str(path), class_names=names, input_size=size, weights=str(weights),
                     extra={"arch": arch, "arch_kwargs": kwargs, "sha256_of_training_record": meta.get("record_sha256", "")})
    return Classifier(net, card, mean, std).eval()
