"""Network namespaces: create, open, delete, and netlink sockets bound inside them.

Why a throwaway thread: pyroute2's IPRoute(netns=...) forks a child to create its
socket inside the namespace (about 10 ms in a large process). A netlink socket belongs
to the namespace it was created in, so a short-lived thread can setns(2) itself, create
the socket, and exit; the calling thread never changes namespace and the socket is
handed to IPRoute(use_socket=...). This costs about 1.5 ms per namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import socket
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from podnet.errors import UNKNOWN_CONTAINER, PodnetError

if TYPE_CHECKING:
    from pyroute2 import IPRoute

    Netlink = IPRoute  # the handle every kernel helper takes (opened by iproute())
else:
    Netlink = Any

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"
_libc = ctypes.CDLL(None, use_errno=True)


def netns_path(name_or_path: str) -> str:
    """A namespace name (as `ip netns` uses) or a path, as a path."""
    if "/" in name_or_path:
        return name_or_path
    return os.path.join(NETNS_RUN_DIR, name_or_path)


def exists(name_or_path: str) -> bool:
    path = netns_path(name_or_path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        return _is_netns(fd)
    finally:
        os.close(fd)


def _is_netns(fd: int) -> bool:
    # NS_GET_NSTYPE ioctl would be exact; comparing the nsfs device is enough here.
    try:
        st = os.fstat(fd)
        ref = os.stat("/proc/self/ns/net")
    except OSError:
        return False
    return st.st_dev == ref.st_dev


def open_netns(name_or_path: str) -> int:
    """An O_RDONLY fd of the namespace; PodnetError(3) if it does not exist."""
    path = netns_path(name_or_path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise PodnetError(UNKNOWN_CONTAINER, "network namespace does not exist", path) from exc
    if not _is_netns(fd):
        os.close(fd)
        raise PodnetError(UNKNOWN_CONTAINER, "not a network namespace", path)
    return fd


def require(name_or_path: str) -> None:
    """Raise PodnetError(3) unless the namespace exists."""
    os.close(open_netns(name_or_path))


def _libc_check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), what)


def _in_throwaway_thread(fn):  # type: ignore[no-untyped-def]
    """fn() run in a short-lived thread (which may change its own namespace); its result
    or exception comes back to the caller, whose namespace never changes."""
    result: dict = {}

    def run() -> None:
        try:
            result["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            result["error"] = exc

    thread = threading.Thread(target=run, name="podnet-netns")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


def _in_thread_setns(fd: int, fn):  # type: ignore[no-untyped-def]
    def joined():  # type: ignore[no-untyped-def]
        _libc_check(_libc.setns(fd, CLONE_NEWNET), "setns")
        return fn()

    return _in_throwaway_thread(joined)


def socket_in(name_or_path: str, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A socket created inside the namespace (the calling thread does not switch)."""
    fd = open_netns(name_or_path)
    try:
        return _in_thread_setns(fd, lambda: socket.socket(family, kind, proto))
    finally:
        os.close(fd)


@contextlib.contextmanager
def iproute(name_or_path: str | None = None) -> Iterator[IPRoute]:
    """pyroute2 IPRoute for a namespace (None: the caller's own namespace)."""
    from pyroute2 import IPRoute

    if name_or_path is None:
        ipr = IPRoute()
    else:
        sock = socket_in(name_or_path, socket.AF_NETLINK, socket.SOCK_DGRAM, 0)
        ipr = IPRoute(use_socket=sock)
    try:
        yield ipr
    finally:
        ipr.close()


MS_BIND = 0x1000
MS_REC = 0x4000
MS_SHARED = 1 << 20


def _mount(source: str, target: str, flags: int) -> None:
    _libc_check(_libc.mount(source.encode(), target.encode(), b"none", flags, None), target)


def _ensure_run_dir() -> None:
    """/run/netns as a shared mount point, as `ip netns add` leaves it."""
    os.makedirs(NETNS_RUN_DIR, exist_ok=True)
    try:
        _mount("none", NETNS_RUN_DIR, MS_SHARED | MS_REC)
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # EINVAL: not a mount point yet
            raise
        _mount(NETNS_RUN_DIR, NETNS_RUN_DIR, MS_BIND | MS_REC)
        _mount("none", NETNS_RUN_DIR, MS_SHARED | MS_REC)


def create(name: str) -> str:
    """Create a named namespace (like `ip netns add`); idempotent. Returns its path.

    A throwaway thread unshares a new network namespace and bind-mounts its own
    /proc/self/task/TID/ns/net onto /run/netns/NAME (about 1 ms; forking a helper
    process, as pyroute2 does, costs about 25 ms in a large process).
    """
    path = netns_path(name)
    if exists(path):
        return path
    _ensure_run_dir()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o444)
        os.close(fd)
    except FileExistsError:
        if exists(path):
            return path

    def unshare_and_bind() -> None:
        _libc_check(_libc.unshare(CLONE_NEWNET), "unshare")
        _mount(f"/proc/self/task/{threading.get_native_id()}/ns/net", path, MS_BIND)

    try:
        _in_throwaway_thread(unshare_and_bind)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    return path


def remove(name: str) -> None:
    """Delete a named namespace; tolerates absence."""
    from pyroute2 import netns as pr_netns

    try:
        pr_netns.remove(name)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.EINVAL):
            raise


def list_named() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_RUN_DIR))
    except FileNotFoundError:
        return []


def run_in(name_or_path: str, fn):  # type: ignore[no-untyped-def]
    """Run `fn()` in a throwaway thread that has joined the namespace (sysctl writes)."""
    fd = open_netns(name_or_path)
    try:
        return _in_thread_setns(fd, fn)
    finally:
        os.close(fd)


def warm_up() -> None:
    """Import the netlink library now (about 0.2 s), so a long-lived process does not
    pay it on its first request."""
    import pyroute2  # noqa: F401
