"""Shared helpers for the files every stage writes: atomic writes and provenance."""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def software_versions() -> dict[str, str]:
    """Versions of Python and of the libraries that shape results, for every artifact."""
    import numpy
    import torch

    versions = {
        "physical_adv": _package_version(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
    }
    for name in ("torchvision", "kornia", "cv2", "reportlab", "pypdfium2"):
        module = sys.modules.get(name)
        if module is None:
            try:
                module = __import__(name)
            except ImportError:
                continue
        versions["opencv" if name == "cv2" else name] = str(getattr(module, "__version__", "?"))
    return versions


def _package_version() -> str:
    from physical_adv import __version__

    return __version__


def utc_now() -> str:
    """The current time as an ISO-8601 UTC string (seconds precision)."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename,
    so a reader never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented UTF-8 JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def read_json(path: str | Path, what: str = "file") -> Any:
    """Parse a JSON file, turning any failure into a one-line :class:`UserError`."""
    from physical_adv.errors import UserError

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {what} {path}: {exc}") from None


def read_named_toml(name_or_path: str | Path, folder: Path, what: str) -> tuple[Path, dict]:
    """A built-in TOML file ``folder/NAME.toml`` by name, or a ``.toml`` path; returns its path and data.

    An unknown name is a :class:`UserError` that lists the built-in ones.
    """
    from physical_adv.errors import UserError

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    text = str(name_or_path)
    path = folder / f"{text}.toml"
    if not path.is_file():
        path = Path(text)
        if not (path.suffix == ".toml" and path.is_file()):
            names = ", ".join(sorted(p.stem for p in folder.glob("*.toml")))
            raise UserError(f"unknown {what} {text!r}; available: {names} (or a .toml file)")
    try:
        return path, tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"cannot read {what} {path}: {exc}") from None
