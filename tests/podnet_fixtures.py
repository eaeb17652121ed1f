"""Test helpers: namespaces under one prefix, a real agent process, CNI calls as a
runtime makes them (a separate process, environment + stdin, inside a host namespace)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def new_prefix() -> str:
    return "pnt" + secrets.token_hex(2)


@dataclass
class Namespaces:
    """Named network namespaces created by one test, all removed at the end."""

    prefix: str
    names: list[str] = field(default_factory=list)

    def add(self, role: str) -> str:
        name = f"{self.prefix}-{role}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.names.append(name)
        sh(name, "ip link set lo up")
        return name

    def remove_all(self) -> None:
        existing = set(subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True).stdout.split())
        for name in reversed(self.names):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        for name in existing:
            if name.startswith(self.prefix + "-"):
                subprocess.run(["ip", "netns", "del", name], capture_output=True)


def sh(netns: str | None, cmd: str, *, check: bool = True, timeout: float = 60) -> str:
    """Run a shell command inside a namespace (the test's independent witness)."""
    argv = ["ip", "netns", "exec", netns, "sh", "-c", cmd] if netns else ["sh", "-c", cmd]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd!r} in {netns}: rc={proc.returncode}\n{proc.stderr}")
    return proc.stdout


def nsenter(netns: str) -> list[str]:
    return ["nsenter", f"--net=/run/netns/{netns}"]


def links(netns: str) -> set[str]:
    out = sh(netns, "ip -o link show")
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def kernel_state(netns: str) -> str:
    """Links, addresses, routes and nft rules of a namespace, for before/after checks."""
    return "\n".join([
        sh(netns, "ip -o link show | sed 's/^[0-9]*: //' | cut -d' ' -f1 | sort"),
        sh(netns, "ip -o addr show | sort"),
        sh(netns, "ip route show table all | sort"),
        sh(netns, "nft list ruleset", check=False),
    ])


class Agent:
    """A real `podnet agent` process inside a host namespace."""

    def __init__(self, host_ns: str, store: str, socket_path: str, node: str = "test") -> None:
        self.host_ns = host_ns
        self.store = store
        self.socket = socket_path
        self.node = node
        self.proc: subprocess.Popen | None = None
        self.log = socket_path + ".log"

    def start(self) -> Agent:
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [*nsenter(self.host_ns), sys.executable, "-m", "podnet", "--store", self.store,
             "--socket", self.socket, "agent", "--node-name", self.node],
            stdout=logf, stderr=logf, start_new_session=True,
        )
        logf.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited: {open(self.log).read()}")
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
                s.connect(self.socket)
                return self
            time.sleep(0.05)
        raise RuntimeError("agent did not start")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class CniResult:
    rc: int
    out: dict | None
    raw: str


class CniRunner:
    """Execs the podnet-cni shim the way a runtime does, inside a host namespace."""

    def __init__(self, host_ns: str, plugin: str, extra_env: dict[str, str] | None = None) -> None:
        self.host_ns = host_ns
        self.plugin = plugin
        self.extra_env = extra_env or {}

    def __call__(
        self,
        command: str,
        conf: dict | bytes | str,
        *,
        container_id: str = "",
        netns: str = "",
        ifname: str = "eth0",
        args: str = "",
        env: dict[str, str] | None = None,
        unset: tuple[str, ...] = (),
    ) -> CniResult:
        full = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                "CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns,
                "CNI_IFNAME": ifname, "CNI_PATH": f"{os.path.dirname(self.plugin)}:/usr/lib/cni",
                **self.extra_env, **(env or {})}
        if args:
            full["CNI_ARGS"] = args
        for name in unset:
            full.pop(name, None)
        data = conf if isinstance(conf, bytes | str) else json.dumps(conf)
        proc = subprocess.run(
            [*nsenter(self.host_ns), self.plugin], input=data if isinstance(data, bytes)
            else data.encode(), capture_output=True, env=full, timeout=60,
        )
        raw = proc.stdout.decode()
        try:
            out = json.loads(raw) if raw.strip() else None
        except ValueError:
            out = None
        return CniResult(proc.returncode, out, raw + proc.stderr.decode())


@contextlib.contextmanager
def agent_running(host_ns: str, store: str, sock: str) -> Iterator[Agent]:
    agent = Agent(host_ns, store, sock).start()
    try:
        yield agent
    finally:
        agent.stop()
