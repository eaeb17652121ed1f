"""One end of a measured path: where commands run, and the address the other end uses.

Why a command prefix and not a namespace handle: the same scenarios must run between lab
namespaces (`nsenter --net=/run/netns/X`), between two real machines (`ssh host`), or in
the caller's own namespace (no prefix). Every runner only ever asks an Endpoint to run
an argv, so it never knows which of these it talks to. Remote prefixes get the argv as
one shell-quoted string (ssh concatenates its arguments into a remote command line).
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Endpoint:
    """A place to run commands (`prefix`) plus the address peers reach it at."""

    label: str
    address: str
    prefix: tuple[str, ...] = ()
    remote: bool = False  # prefix is a remote shell (ssh): quote the command
    netns: str | None = field(default=None, compare=False)  # local namespace, if any

    @classmethod
    def namespace(cls, netns: str, address: str, label: str | None = None) -> Endpoint:
        """An endpoint inside a named network namespace of this machine."""
        return cls(label or netns, address, ("nsenter", f"--net=/run/netns/{netns}"),
                   netns=netns)

    @classmethod
    def ssh(cls, host: str, address: str, label: str | None = None,
            options: Sequence[str] = ("-o", "BatchMode=yes")) -> Endpoint:
        """An endpoint on a real machine reached through ssh (keys must be set up)."""
        return cls(label or host, address, ("ssh", *options, host), remote=True)

    @classmethod
    def command(cls, prefix: str | Sequence[str], address: str, label: str,
                remote: bool = False) -> Endpoint:
        """Any command prefix, e.g. `docker exec c1` (local) or `ssh -p 2222 h` (remote)."""
        parts = tuple(shlex.split(prefix)) if isinstance(prefix, str) else tuple(prefix)
        return cls(label, address, parts, remote=remote)

    def argv(self, cmd: Sequence[str]) -> list[str]:
        if self.remote:
            return [*self.prefix, shlex.join(cmd)]
        return [*self.prefix, *cmd]

    def run(self, cmd: Sequence[str], *, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run cmd to completion (text output; a timeout kills the child by its PID)."""
        return subprocess.run(self.argv(cmd), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, check=False)

    def start(self, cmd: Sequence[str], *, lifetime: float = 3600) -> subprocess.Popen:
        """Start a server in the background. A remote one is wrapped in `timeout` so it
        cannot outlive the run even if the ssh session's death does not reach it."""
        if self.remote:
            cmd = ["timeout", str(int(lifetime)), *cmd]
        return subprocess.Popen(self.argv(cmd), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)
