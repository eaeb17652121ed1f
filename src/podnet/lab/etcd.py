"""The lab's etcd: one real member (Debian's etcd-server) inside the switch namespace.

Why not tests/etcd_server.py: product code cannot import tests, and the lab needs less
(fixed ports in a namespace of its own, a data dir under the lab dir) but must stop a
process it did not spawn itself (`lab down` from a later CLI call), by PID, after
checking the PID still runs etcd with this lab's data dir.

Why the tuning flags: a 10 ms heartbeat and 100 ms election timeout make a single member
elect itself at once (also after a restart) and bring etcd's minimum lease TTL down to
about one second, so lease-TTL experiments in the lab take seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
from collections.abc import Callable

from podnet.errors import STORE_FAILURE, PodnetError
from podnet.kernel import netns
from podnet.lab import procs
from podnet.lab.state import EtcdState


class LabEtcd:
    """Start/stop the lab's etcd; `on_pid` is told the new PID (or None) to record it."""

    def __init__(self, st: EtcdState, on_pid: Callable[[int | None], None] | None = None,
                 name: str = "podnet-lab") -> None:
        self.st = st
        self.on_pid = on_pid
        self.name = name
        self._popen: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"etcd://{self.st.host}:{self.st.port}"

    @property
    def pid(self) -> int | None:
        return self.st.pid

    def command(self) -> list[str]:
        client = f"http://{self.st.host}:{self.st.port}"
        peer = f"http://{self.st.host}:{self.st.peer_port}"
        return [
            "nsenter", f"--net={netns.netns_path(self.st.netns)}",  # execs etcd: same PID
            "etcd", "--name", self.name, "--data-dir", self.st.data_dir,
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{self.name}={peer}", "--initial-cluster-state", "new",
            "--heartbeat-interval", "10", "--election-timeout", "100",
            "--logger", "zap", "--log-outputs", "stderr",
        ]

    def running(self) -> bool:
        return self.st.pid is not None and procs.matches(self.st.pid, self.st.data_dir)

    def start(self, timeout: float = 15.0) -> int:
        """Start etcd (no-op if it runs) and wait until it answers /health."""
        if self.running():
            assert self.st.pid is not None
            return self.st.pid
        os.makedirs(os.path.dirname(self.st.data_dir), exist_ok=True)
        with open(self.st.log, "ab") as log:
            try:
                self._popen = subprocess.Popen(
                    self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                    start_new_session=True,
                )
            except OSError as exc:
                raise PodnetError(STORE_FAILURE, "cannot start etcd (is etcd-server "
                                  "installed?)", str(exc)) from exc
        self._set_pid(self._popen.pid)
        try:
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        return self._popen.pid

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the lab's etcd by its recorded PID (tolerates one already gone)."""
        procs.stop(self.st.pid, self.st.data_dir, timeout=timeout, popen=self._popen)
        self._popen = None
        self._set_pid(None)

    def _set_pid(self, pid: int | None) -> None:
        self.st.pid = pid
        if self.on_pid is not None:
            self.on_pid(pid)

    def healthy(self) -> bool:
        """etcd answers /health with true, asked from inside the switch namespace."""
        try:
            sock = netns.socket_in(self.st.netns, socket.AF_INET, socket.SOCK_STREAM)
        except (OSError, PodnetError):
            return False
        with sock:
            try:
                sock.settimeout(1.0)
                sock.connect((self.st.host, self.st.port))
                sock.sendall(f"GET /health HTTP/1.0\r\nHost: {self.st.host}\r\n\r\n".encode())
                data = b""
                while chunk := sock.recv(4096):
                    data += chunk
            except OSError:
                return False
        head, _, body = data.partition(b"\r\n\r\n")
        with contextlib.suppress(ValueError):
            return head.split(b" ")[1:2] == [b"200"] and json.loads(body).get("health") == "true"
        return False

    def wait_healthy(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._popen is not None and self._popen.poll() is not None:
                raise PodnetError(STORE_FAILURE, "etcd exited during start-up",
                                  f"rc {self._popen.returncode}; log: {self.log_tail()}")
            if self.healthy():
                return
            time.sleep(0.05)
        raise PodnetError(STORE_FAILURE, f"etcd not healthy after {timeout:.0f} s",
                          f"log: {self.log_tail()}")

    def log_tail(self, n: int = 5) -> str:
        try:
            with open(self.st.log, "rb") as fh:
                lines = fh.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(lines[-n:])
