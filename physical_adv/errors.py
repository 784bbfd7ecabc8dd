"""The one exception type that means "the user asked for something we cannot do", and which
operating-system errors count as such."""

from __future__ import annotations

import errno


class UserError(ValueError):
    """A bad input or option. The CLI prints it as one line ``physical-adv: error: …``
    and exits with code 2; library callers get an ordinary ``ValueError``."""


# errno → what the user can do about it; errors outside this table (EIO, ENOMEM, …) stay internal
_USER_OS_ERRORS = {
    errno.EACCES: "check the permissions",
    errno.EPERM: "check the permissions",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a file stands where a folder should be",
    errno.EISDIR: "a folder stands where a file should be",
    errno.EEXIST: "something already stands at that path",
    errno.ENOTEMPTY: "the folder is not empty",
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "the file system is read-only",
    errno.ENAMETOOLONG: "choose a shorter path",
    errno.ELOOP: "too many symbolic links",
    errno.EXDEV: "the paths are on different file systems",
    errno.EBUSY: "the path is in use",
}


def os_error_message(exc: OSError) -> str | None:
    """One line naming the path and what went wrong, when ``exc`` is caused by the user's files
    or disk (permissions, a full or read-only disk, a file where a folder should be); else None.

    Args:
        exc: the error an operating-system call raised.

    Returns:
        E.g. ``"/out/sheet.pdf: Not a directory (a file stands where a folder should be)"``, or None.
    """
    hint = _USER_OS_ERRORS.get(exc.errno)
    if hint is None:
        return None
    what = exc.strerror or errno.errorcode.get(exc.errno, str(exc.errno))
    paths = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p is not None)
    return f"{paths}: {what} ({hint})" if paths else f"{what} ({hint})"
