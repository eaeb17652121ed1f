"""sysctls of the caller's network namespace (or another one, through netns.run_in)."""

from __future__ import annotations


def _path(name: str) -> str:
    return "/proc/sys/" + name.replace(".", "/")


def read(name: str) -> str:
    with open(_path(name)) as fh:
        return fh.read().strip()


def ensure(name: str, value: str) -> None:
    """Write `value` unless it is already set (a read is cheaper than a write)."""
    if read(name) != value:
        with open(_path(name), "w") as fh:
            fh.write(value)
