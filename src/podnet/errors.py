"""One exception type for every failure podnet reports, carrying a CNI error code.

The CNI spec reserves codes 0-99; podnet's own conditions use 100 and up. The same
codes are used by the CLI (exit status 1, one-line message) and the Docker driver.
"""

from __future__ import annotations

# CNI spec codes
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
PLUGIN_NOT_AVAILABLE = 50

# podnet codes (>= 100)
POOL_EXHAUSTED = 100
ALREADY_ATTACHED = 101
KERNEL_FAILURE = 102
STORE_FAILURE = 103
IN_USE = 104
NOT_FOUND = 105
INTERNAL = 199

CODE_NAMES = {
    INCOMPATIBLE_VERSION: "incompatible CNI version",
    UNSUPPORTED_FIELD: "unsupported field in network configuration",
    UNKNOWN_CONTAINER: "container or network namespace does not exist",
    INVALID_ENV: "invalid or missing CNI_* environment variables",
    IO_FAILURE: "I/O failure",
    DECODE_FAILURE: "failed to decode content",
    INVALID_CONFIG: "invalid network configuration",
    TRY_AGAIN_LATER: "try again later",
    PLUGIN_NOT_AVAILABLE: "plugin not available",
    POOL_EXHAUSTED: "address pool exhausted",
    ALREADY_ATTACHED: "container interface already attached",
    KERNEL_FAILURE: "kernel operation failed",
    STORE_FAILURE: "store operation failed",
    IN_USE: "object in use",
    NOT_FOUND: "object not found",
    INTERNAL: "internal error",
}


class PodnetError(Exception):
    """A failure with a CNI-style code, a one-line message and optional details."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_cni(self, cni_version: str = "1.0.0") -> dict:
        out = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out

    def __str__(self) -> str:
        return f"{self.msg}: {self.details}" if self.details else self.msg


class StoreUnavailable(PodnetError):
    """The store cannot be reached right now (maps to CNI code 11, try again later)."""

    def __init__(self, details: str, msg: str = "store unavailable") -> None:
        super().__init__(TRY_AGAIN_LATER, msg, details)


# The resource layer's three kinds of failure, which every front end maps to its own
# answer (CNI code, Docker {"Err": ...}, CLI line): not found, conflict, unavailable.
Unavailable = StoreUnavailable


class NotFound(PodnetError):
    """A network, subnet, pool or port that does not exist (CNI code 105)."""

    def __init__(self, msg: str, details: str = "", *, kind: str = "") -> None:
        super().__init__(NOT_FOUND, msg, details)
        self.kind = kind


class ResourceConflict(PodnetError):
    """The resource exists or is in use: IN_USE (104) or ALREADY_ATTACHED (101)."""

    def __init__(self, msg: str, details: str = "", *, code: int = IN_USE) -> None:
        super().__init__(code, msg, details)


def invalid(msg: str, details: str = "") -> PodnetError:
    """An invalid configuration or argument (CNI code 7)."""
    return PodnetError(INVALID_CONFIG, msg, details)


class Conflict(PodnetError):
    """A put-if-revision lost a race: the key changed (or exists) since it was read."""

    def __init__(self, key: str) -> None:
        super().__init__(STORE_FAILURE, "store revision conflict", key)
        self.key = key
