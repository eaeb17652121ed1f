"""kernel/'s boundary: every kernel failure leaves it as one PodnetError (code 102) that
names the operation and the object, with the kernel's own words as details.

    with failing("add route", dst):
        nl.route("add", ...)

Callers above kernel/ then never see pyroute2's NetlinkError or a bare OSError, and
decide on error codes (errno values carried as `.errno`), never on message text.
"""

from __future__ import annotations

import contextlib
import errno as errno_mod
import os
import sys
from collections.abc import Iterator

from podnet.errors import KERNEL_FAILURE, PodnetError


class KernelError(PodnetError):
    """A kernel operation failed; `errno` is the kernel's error number (0 if none)."""

    def __init__(self, operation: str, obj: str, errno: int, text: str) -> None:
        super().__init__(KERNEL_FAILURE, f"{operation} {obj} failed".strip(), text)
        self.errno = errno


def describe(exc: BaseException) -> tuple[int, str]:
    """(errno, "the kernel's words") of a NetlinkError or OSError."""
    code = getattr(exc, "code", None)
    if code is None:
        code = getattr(exc, "errno", None) or 0
    args: tuple[object, ...] = tuple(getattr(exc, "args", ()))
    text = str(args[1]) if len(args) > 1 and isinstance(args[1], str) else ""
    name = os.strerror(code) if code else ""
    if not text:
        text = name or str(exc)
    elif name and name != text:
        text = f"{text} ({name})"
    return code, f"[Errno {code}] {text}" if code else text


@contextlib.contextmanager
def failing(operation: str, obj: str = "") -> Iterator[None]:
    try:
        yield
    except PodnetError:
        raise
    except Exception as exc:
        if not is_kernel_error(exc):
            raise
        code, text = describe(exc)
        raise KernelError(operation, obj, code, text) from exc


def is_kernel_error(exc: BaseException) -> bool:
    """An OSError or pyroute2's NetlinkError (checked without importing pyroute2)."""
    if isinstance(exc, OSError):
        return True
    module = sys.modules.get("pyroute2.netlink.exceptions")
    return module is not None and isinstance(exc, module.NetlinkError)


def is_errno(exc: BaseException, *codes: int) -> bool:
    """Whether a netlink/OS error carries one of `codes` (e.g. errno.EEXIST)."""
    code = getattr(exc, "code", None)
    if code is None:
        code = getattr(exc, "errno", None)
    return code in codes


ENOENT_LIKE = (errno_mod.ENOENT, errno_mod.ESRCH, errno_mod.ENODEV, errno_mod.EADDRNOTAVAIL)
