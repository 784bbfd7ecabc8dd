"""Shared helpers for the files every stage writes: atomic writes and provenance."""

from __future__ import annotations

import errno
import json
import os
import platform
import secrets
import shutil
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


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename,
    so a reader never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):  # mkstemp's 0600 would hide the file from everyone else
            os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.filename is None:  # a full disk fails the write, which names no file: name it
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def commit_files(moves: list[tuple[Path, Path]], remove: tuple[Path, ...] | list[Path] = ()) -> None:
    """Move finished temporary files onto their destinations, and delete stale files, all or nothing.

    Each destination is replaced atomically by a rename; if any step fails (or is interrupted),
    every destination and every file of ``remove`` is put back exactly as it was before.

    Args:
        moves: ``(temporary, destination)`` pairs, each temporary on its destination's file system,
            in the order to apply them (put last the file whose presence implies the others).
        remove: files that must not survive the commit, e.g. stale outputs of an earlier run.
    """
    for _, dst in moves:
        if Path(dst).is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(dst))
    token = secrets.token_hex(4)
    undo: list[tuple[Path, Path | None]] = []  # (destination, its earlier content or None)
    try:
        for src, dst in moves:
            kept = _keep_aside(Path(dst), token, move=False)
            try:
                os.replace(src, dst)
            except BaseException:
                if kept is not None:
                    kept.unlink()
                raise
            undo.append((Path(dst), kept))
        for path in remove:
            if Path(path).exists():
                undo.append((Path(path), _keep_aside(Path(path), token, move=True)))
    except BaseException:
        _put_back(undo)
        raise
    for _, kept in undo:
        if kept is not None:
            kept.unlink(missing_ok=True)


def _put_back(undo: list[tuple[Path, Path | None]]) -> None:
    """Undo a partial commit, newest first; one file that cannot be restored does not stop the rest."""
    for dst, kept in reversed(undo):
        try:
            if kept is None:
                dst.unlink(missing_ok=True)
            else:
                os.replace(kept, dst)
        except OSError:
            continue


def _keep_aside(path: Path, token: str, move: bool) -> Path | None:
    """A hidden copy of ``path`` beside it (moved there, or a hard link, else a copy); None if absent."""
    if not path.exists():
        return None
    kept = path.with_name(f".{path.name}.{token}.kept")
    if move:
        os.replace(path, kept)
        return kept
    try:
        os.link(path, kept)
    except OSError:  # a file system without hard links
        shutil.copy2(path, kept)
    return kept


def replace_folder(new: str | Path, dst: str | Path) -> None:
    """Put the finished folder ``new`` at ``dst`` (same file system); what was at ``dst`` is
    removed only once ``new`` is in place, with no moment at which a crash loses both.

    One atomic exchange where the OS has it (Linux's ``renameat2``), else two renames, the
    earlier folder kept under a hidden sibling name in between and restored if the second fails.
    """
    new, dst = Path(new), Path(dst)
    if not dst.exists():
        os.replace(new, dst)
        return
    if _exchange(new, dst):
        shutil.rmtree(new, ignore_errors=True)  # now the earlier folder
        return
    old = dst.with_name(f".{dst.name}.{secrets.token_hex(4)}.old")
    os.replace(dst, old)
    try:
        os.replace(new, dst)
    except BaseException:
        os.replace(old, dst)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with ``renameat2(RENAME_EXCHANGE)``; False where unsupported."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError, TypeError):  # not Linux with glibc ≥ 2.28
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


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

    text = str(name_or_path)
    path = folder / f"{text}.toml"
    if not path.is_file():
        path = Path(text)
        if not (path.suffix == ".toml" and path.is_file()):
            names = ", ".join(sorted(p.stem for p in folder.glob("*.toml")))
            raise UserError(f"unknown {what} {text!r}; available: {names} (or a .toml file)")
    return path, read_toml(path, what)


def read_toml(path: str | Path, what: str = "file") -> dict:
    """A TOML file's data; a one-line :class:`UserError` naming ``what`` when it is missing or
    not TOML (the one TOML reader: ``tomllib``, or ``tomli`` on Python 3.10)."""
    from physical_adv.errors import UserError

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"cannot read {what} {path}: {exc}") from None
