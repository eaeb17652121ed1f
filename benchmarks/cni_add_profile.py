"""Where podnet's CNI ADD (and DEL) time goes: shim start, agent hop, store, netlink.

Each layer is timed on its own, in one run, inside a host namespace of the script's
own (re-exec under nsenter, prefix `pnb` + 4 hex, removed at the end):

  1. exec costs, spawn to exit, as a runtime execs a plugin: the bare interpreter the
     shim's shebang names (`-I -S -c pass`), the shim against a no-op agent (a unix
     socket answering at once: interpreter + shim + connect), two prototypes of a
     faster shim against the same no-op agent (a self-contained Python one using only
     the builtin posix and _socket modules; a C one, where a C compiler exists; both
     written to the temp dir only), the reference `bridge` plugin's VERSION (Go
     start-up), and full ADD/DEL through the shim to a real agent;
  2. the agent hop without the shim: podnet.agent.server.call_cni from this process
     to the real agent (socket, per-connection thread, handler);
  3. the handler in-process (podnet.api.cni.handle on a ServiceCache, no socket),
     once on one warm thread and once on a fresh thread per call as the agent does,
     split into store (SQLite), netlink (podnet.kernel.links/addr calls), namespace
     sockets (setns thread), pyroute2 IPRoute open/close, sysctl, and the rest;
  4. cProfile of the in-process ADD+DEL loop, top functions by own time;
  5. a real agent sampled with py-spy (if installed) during a burst of concurrent
     ADDs and then DELs through the shim: where its request threads spend wall time.

    python3 benchmarks/cni_add_profile.py --pods 100
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import io
import json
import os
import pstats
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import benchlib as bl

AGENT_SUBNET = "10.94.0.0/16"
INPROC_SUBNET = "10.95.0.0/16"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


# -- 1. exec costs -----------------------------------------------------------------------------
class NoopAgent:
    """A unix socket that answers every CNI request with success at once."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(64)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                while conn.recv(65536):
                    pass
                conn.sendall(b'0\n{"cniVersion": "1.0.0"}\n')

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        os.unlink(self.path)


def shim_interpreter(plugin: str) -> list[str]:
    with open(plugin) as fh:
        return fh.readline()[2:].split()


# Prototypes of faster shims, measured against the no-op agent only (same wire format).
POSIX_SHIM = """#!{python} -IS
import posix, _socket
def main():
    chunks = []
    while True:
        c = posix.read(0, 65536)
        if not c:
            break
        chunks.append(c)
    data = b"".join(chunks)
    env = b"\\0".join(k + b"=" + v for k, v in posix.environ.items()
                     if k.startswith(b"CNI_") or k.startswith(b"PODNET_"))
    path = posix.environ.get(b"PODNET_AGENT_SOCKET") or {sock!r}
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    s.connect(path)
    s.sendall(b"CNI %d %d\\n" % (len(env), len(data)) + env + data)
    s.shutdown(_socket.SHUT_WR)
    out = []
    while True:
        c = s.recv(65536)
        if not c:
            break
        out.append(c)
    head, _, body = b"".join(out).partition(b"\\n")
    posix.write(1, body)
    posix._exit(int(head))
main()
"""

C_SHIM = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/un.h>
extern char **environ;
static char buf[1 << 20], envb[1 << 16], out[1 << 20];
int main(void) {
  size_t n = 0, e = 0, o = 0; ssize_t r;
  while ((r = read(0, buf + n, sizeof buf - n)) > 0) n += r;
  for (char **p = environ; *p; p++)
    if (!strncmp(*p, "CNI_", 4) || !strncmp(*p, "PODNET_", 7)) {
      size_t l = strlen(*p); if (e) envb[e++] = 0; memcpy(envb + e, *p, l); e += l; }
  const char *path = getenv("PODNET_AGENT_SOCKET"); if (!path) path = NOOP_SOCKET_PATH;
  int s = socket(AF_UNIX, SOCK_STREAM, 0);
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  strncpy(a.sun_path, path, sizeof a.sun_path - 1);
  if (connect(s, (void *)&a, sizeof a) < 0) return 2;
  char head[64]; int h = snprintf(head, sizeof head, "CNI %zu %zu\n", e, n);
  if (write(s, head, h) < 0 || write(s, envb, e) < 0 || write(s, buf, n) < 0) return 2;
  shutdown(s, SHUT_WR);
  while ((r = read(s, out + o, sizeof out - o)) > 0) o += r;
  char *nl = memchr(out, '\n', o); if (!nl) return 1;
  if (write(1, nl + 1, o - (nl + 1 - out)) < 0) return 1;
  return atoi(out);
}
"""


def shim_prototypes(tmp: str, python: str, noop_sock: str) -> dict[str, str]:
    """Write the prototypes (the C one only where a C compiler exists)."""
    out = {}
    posix_shim = os.path.join(tmp, "shim-posix")
    with open(posix_shim, "w") as fh:
        fh.write(POSIX_SHIM.format(python=python, sock=noop_sock.encode()))
    os.chmod(posix_shim, 0o755)
    out["prototype: self-contained shim (posix + _socket only) -> no-op agent"] = posix_shim
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc:
        src, binary = os.path.join(tmp, "shim.c"), os.path.join(tmp, "shim-c")
        with open(src, "w") as fh:
            fh.write(C_SHIM.replace("NOOP_SOCKET_PATH", json.dumps(noop_sock)))
        if subprocess.run([cc, "-O2", "-o", binary, src], capture_output=True).returncode == 0:
            out["prototype: C shim -> no-op agent"] = binary
    return out


def exec_costs(plugin: str, noop_sock: str, agent_sock: str, pods: int,
               prototypes: dict[str, str]) -> list[list[str]]:
    python = shim_interpreter(plugin)[0]
    noop_conf = json.dumps({"cniVersion": "1.0.0", "name": "noop", "type": "podnet-cni",
                            "subnet": AGENT_SUBNET, "agentSocket": noop_sock}).encode()
    conf = {"cniVersion": "1.0.0", "name": "pnprof", "type": "podnet-cni",
            "subnet": AGENT_SUBNET, "agentSocket": agent_sock}
    cni_path = f"{os.path.dirname(plugin)}:{bl.REF_PLUGINS}"
    samples: dict[str, list[float]] = defaultdict(list)
    pfx = bl.prefix()
    names = [f"{pfx}-e{i:04d}" for i in range(pods)]
    bl.create_netns(names)
    env_v = bl.cni_env("VERSION", "", "", bl.REF_PLUGINS)
    for i in range(pods):
        env = bl.cni_env("ADD", f"noop{i}", f"/run/netns/{names[i]}", cni_path)
        t0 = time.perf_counter()
        subprocess.run([python, "-I", "-S", "-c", "pass"], env=env, check=True)
        samples["python -I -S -c pass (shim interpreter)"].append(time.perf_counter() - t0)
        samples["installed shim -> no-op agent"].append(
            bl.checked(bl.exec_plugin(plugin, env, noop_conf), "noop").seconds)
        for what, binary in prototypes.items():
            samples[what].append(bl.checked(bl.exec_plugin(binary, env, noop_conf), what).seconds)
        samples["reference bridge VERSION (Go start)"].append(bl.checked(bl.exec_plugin(
            os.path.join(bl.REF_PLUGINS, "bridge"), env_v, b'{"cniVersion":"1.0.0"}'),
            "VERSION").seconds)
        cid = secrets.token_hex(16)
        add = bl.checked(bl.exec_plugin(
            plugin, bl.cni_env("ADD", cid, f"/run/netns/{names[i]}", cni_path),
            json.dumps(conf).encode()), "ADD")
        samples["podnet ADD via shim + agent"].append(add.seconds)
        dele = bl.checked(bl.exec_plugin(
            plugin, bl.cni_env("DEL", cid, f"/run/netns/{names[i]}", cni_path),
            json.dumps({**conf, "prevResult": add.json()}).encode()), "DEL")
        samples["podnet DEL via shim + agent"].append(dele.seconds)
    return [[k, ms(bl.pct(v, 50)), ms(bl.pct(v, 95))] for k, v in samples.items()]


# -- 2. agent hop without the shim ---------------------------------------------------------
def agent_hop(agent_sock: str, pods: int) -> list[list[str]]:
    from podnet.agent.server import call_cni

    conf = {"cniVersion": "1.0.0", "name": "pnprof", "type": "podnet-cni",
            "subnet": AGENT_SUBNET, "agentSocket": agent_sock}
    pfx = bl.prefix()
    names = [f"{pfx}-h{i:04d}" for i in range(pods)]
    bl.create_netns(names)
    adds, dels = [], []
    for ns in names:
        cid = secrets.token_hex(16)
        env = bl.cni_env("ADD", cid, f"/run/netns/{ns}", "")
        t0 = time.perf_counter()
        rc, out = call_cni(agent_sock, env, json.dumps(conf).encode())
        adds.append(time.perf_counter() - t0)
        assert rc == 0, out
        env["CNI_COMMAND"] = "DEL"
        t0 = time.perf_counter()
        rc, out2 = call_cni(agent_sock, env,
                            json.dumps({**conf, "prevResult": json.loads(out)}).encode())
        dels.append(time.perf_counter() - t0)
        assert rc == 0, out2
    return [["agent ADD via socket (no shim)", ms(bl.pct(adds, 50)), ms(bl.pct(adds, 95))],
            ["agent DEL via socket (no shim)", ms(bl.pct(dels, 50)), ms(bl.pct(dels, 95))]]


# -- 3. the handler in-process, split by layer -------------------------------------------------
class Split:
    """Accumulates time per category, counting only the outermost instrumented call."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.local = threading.local()
        self.undo: list[Callable[[], None]] = []

    def wrap(self, owner: Any, attr: str, category: str) -> None:
        orig = getattr(owner, attr)
        split = self

        @functools.wraps(orig)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if getattr(split.local, "busy", False):
                return orig(*args, **kwargs)
            split.local.busy = True
            t0 = time.perf_counter()
            try:
                return orig(*args, **kwargs)
            finally:
                split.totals[category] += time.perf_counter() - t0
                split.counts[category] += 1
                split.local.busy = False

        setattr(owner, attr, timed)
        self.undo.append(lambda: setattr(owner, attr, orig))

    def restore(self) -> None:
        for fn in reversed(self.undo):
            fn()
        self.undo.clear()

    def reset(self) -> None:
        self.totals.clear()
        self.counts.clear()


def instrument(split: Split) -> None:
    import pyroute2

    from podnet.kernel import addr, links, netns, sysctl
    from podnet.store.sqlite import SqliteStore

    for name in ("get", "put", "list", "delete", "revision", "_db"):
        split.wrap(SqliteStore, name, "store (SQLite)")
    for mod in (links, addr):
        for name in dir(mod):
            fn = getattr(mod, name)
            if (callable(fn) and not name.startswith("_") and getattr(fn, "__module__", "")
                    == mod.__name__ and not isinstance(fn, type)):
                short = mod.__name__.rsplit(".", 1)[1]
                split.wrap(mod, name, f"netlink: {short}.{name}")
    split.wrap(netns, "socket_in", "namespace socket (setns thread)")
    split.wrap(netns, "open_netns", "open namespace fd")
    split.wrap(sysctl, "ensure", "sysctl")

    orig_ipr = pyroute2.IPRoute

    class TimedIPRoute(orig_ipr):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            t0 = time.perf_counter()
            super().__init__(*args, **kwargs)
            split.totals["pyroute2 IPRoute open+close"] += time.perf_counter() - t0

        def close(self, *args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return super().close(*args, **kwargs)
            finally:
                split.totals["pyroute2 IPRoute open+close"] += time.perf_counter() - t0

    pyroute2.IPRoute = TimedIPRoute  # netns.iproute imports it at call time
    split.undo.append(lambda: setattr(pyroute2, "IPRoute", orig_ipr))


@contextlib.contextmanager
def service(store_path: str) -> Iterator[Any]:
    from podnet.agent.server import ServiceCache

    services = ServiceCache(store_path, "bench")
    try:
        yield services
    finally:
        close = getattr(services.default.store, "close", None)
        if close:
            close()


def in_process(store_path: str, pods: int, fresh_thread: bool, split: Split | None,
               tag: str, profile: cProfile.Profile | None = None) -> dict[str, list[float]]:
    from podnet.api import cni

    conf = {"cniVersion": "1.0.0", "name": "pnprof2", "type": "podnet-cni",
            "subnet": INPROC_SUBNET}
    pfx = bl.prefix()
    names = [f"{pfx}-{tag}{i:04d}" for i in range(pods)]
    bl.create_netns(names)
    out: dict[str, list[float]] = defaultdict(list)
    with service(store_path) as services:
        warm_ns = f"{pfx}-{tag}warm"
        bl.create_netns([warm_ns])
        env = bl.cni_env("ADD", "warm", f"/run/netns/{warm_ns}", "")
        cni.handle(env, json.dumps(conf).encode(), services.for_conf)
        cni.handle({**env, "CNI_COMMAND": "DEL"}, json.dumps(conf).encode(), services.for_conf)
        if split:
            split.reset()

        def call(env: dict[str, str], data: bytes) -> tuple[int, str, float]:
            box: list[Any] = []

            def run() -> None:
                t0 = time.perf_counter()
                code, text = cni.handle(env, data, services.for_conf)
                box.append((code, text, time.perf_counter() - t0))

            if fresh_thread:
                th = threading.Thread(target=run)
                th.start()
                th.join()
            else:
                run()
            return box[0]

        if profile:
            profile.enable()
        for ns in names:
            cid = secrets.token_hex(16)
            env = bl.cni_env("ADD", cid, f"/run/netns/{ns}", "")
            code, text, secs = call(env, json.dumps(conf).encode())
            assert code == 0, text
            out["ADD"].append(secs)
            prev = json.loads(text)
            code, text, secs = call({**env, "CNI_COMMAND": "DEL"},
                                    json.dumps({**conf, "prevResult": prev}).encode())
            assert code == 0, text
            out["DEL"].append(secs)
        if profile:
            profile.disable()
    return out


def new_connection_cost(store_path: str, n: int = 50) -> float:
    """What a fresh thread pays for its first store call (the agent's per-request thread)."""
    from podnet.store.sqlite import SqliteStore

    store = SqliteStore(store_path)
    times = []
    for _ in range(n):
        def run() -> None:
            t0 = time.perf_counter()
            store.revision()
            times.append(time.perf_counter() - t0)

        th = threading.Thread(target=run)
        th.start()
        th.join()
    store.close()
    return bl.median(times)


def inner(args: argparse.Namespace) -> int:
    from podnet.install import install_cni

    pfx = bl.prefix()
    bl.console.print(f"[bold]podnet ADD profile[/bold] prefix {pfx}, {args.pods} calls each, "
                     f"load {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix=f"{pfx}-") as tmp:
        plugin = install_cni(os.path.join(tmp, "bin"))
        agent = bl.Agent(os.path.join(tmp, "agent.db"), os.path.join(tmp, "agent.sock"),
                         os.path.join(tmp, "agent.log")).start()
        noop = NoopAgent(os.path.join(tmp, "noop.sock"))
        try:
            protos = shim_prototypes(tmp, shim_interpreter(plugin)[0], noop.path)
            rows = exec_costs(plugin, noop.path, agent.socket, args.pods, protos)
            rows += agent_hop(agent.socket, args.pods)
        finally:
            noop.close()
            agent.stop()
        store = os.path.join(tmp, "inproc.db")
        warm = in_process(store, args.pods, False, None, "i")
        fresh = in_process(store, args.pods, True, None, "f")
        rows += [["handler in-process ADD, one warm thread", ms(bl.pct(warm["ADD"], 50)),
                  ms(bl.pct(warm["ADD"], 95))],
                 ["handler in-process DEL, one warm thread", ms(bl.pct(warm["DEL"], 50)),
                  ms(bl.pct(warm["DEL"], 95))],
                 ["handler in-process ADD, fresh thread per call", ms(bl.pct(fresh["ADD"], 50)),
                  ms(bl.pct(fresh["ADD"], 95))],
                 ["handler in-process DEL, fresh thread per call", ms(bl.pct(fresh["DEL"], 50)),
                  ms(bl.pct(fresh["DEL"], 95))],
                 ["fresh thread's first store call (new SQLite connection)",
                  ms(new_connection_cost(store)), ""]]
        bl.console.print(bl.table("Layer by layer (ms)", ["what", "p50", "p95"], rows))

        split = Split()
        instrument(split)
        try:
            timed = split_by_command(store, args.pods, split)
        finally:
            split.restore()
        bl.console.print(timed)

        prof = cProfile.Profile()
        in_process(store, args.pods, False, None, "p", prof)
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(args.top)
        bl.console.print(f"[bold]cProfile, in-process ADD+DEL x {args.pods}, by own time[/bold]")
        print(buf.getvalue())
        agent_burst_profile(tmp, plugin, args.burst, 12)
    return 0


# -- 5. the real agent under a concurrent burst, sampled with py-spy ---------------------------
def agent_burst_profile(tmp: str, plugin: str, count: int, top: int) -> None:
    """Where the agent's request threads spend their wall time during a burst of ADDs/DELs."""
    spy = shutil.which("py-spy")
    if not spy:
        bl.console.print("py-spy not installed (pip install py-spy): burst profile skipped")
        return
    pfx = bl.prefix()
    agent = bl.Agent(os.path.join(tmp, "burst.db"), os.path.join(tmp, "burst.sock"),
                     os.path.join(tmp, "burst.log")).start()
    conf = json.dumps({"cniVersion": "1.0.0", "name": "pnburst", "type": "podnet-cni",
                       "subnet": AGENT_SUBNET, "agentSocket": agent.socket}).encode()
    cni_path = f"{os.path.dirname(plugin)}:{bl.REF_PLUGINS}"
    names = [f"{pfx}-b{i:04d}" for i in range(count)]
    bl.create_netns(names)
    raw = os.path.join(tmp, "pyspy.raw")
    rate = 100  # --nonblocking: sampling does not pause the agent
    walls = {}
    with open(os.path.join(tmp, "pyspy.log"), "wb") as log:
        spy_proc = subprocess.Popen(
            [spy, "record", "--pid", str(agent.pid), "--format", "raw", "-o", raw, "--idle",
             "--nolineno", "--nonblocking", "-r", str(rate)], stdout=log, stderr=log)
    try:
        time.sleep(1.0)  # let py-spy attach
        for command in ("ADD", "DEL"):
            def one(i: int, command: str = command) -> bl.Exec:
                env = bl.cni_env(command, f"burst{i}", f"/run/netns/{names[i]}", cni_path)
                return bl.checked(bl.exec_plugin(plugin, env, conf), f"burst {command}")

            with ThreadPoolExecutor(max_workers=count) as pool:
                t0 = time.perf_counter()
                list(pool.map(one, range(count)))
                walls[command] = time.perf_counter() - t0
    finally:
        if spy_proc.poll() is None:
            os.kill(spy_proc.pid, signal.SIGINT)
        try:
            spy_proc.wait(30)
        except subprocess.TimeoutExpired:
            bl.stop_process(spy_proc)
        agent.stop()
    if not os.path.exists(raw):
        bl.console.print("py-spy wrote no samples (see pyspy.log)")
        return
    leaf: dict[str, int] = defaultdict(int)
    ours: dict[str, int] = defaultdict(int)
    total = 0
    with open(raw) as fh:
        for line in fh:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            frames = stack.split(";")
            if not any("handle (podnet/agent/server.py)" in f for f in frames):
                continue  # idle server/main threads
            samples = int(n)
            total += samples
            leaf[frames[-1]] += samples
            mine = [f for f in frames if "(podnet/" in f]
            ours[mine[-1] if mine else "?"] += samples
    bl.console.print(
        f"[bold]Real agent under {count} concurrent ADDs ({walls.get('ADD', 0):.2f} s wall) then "
        f"{count} DELs ({walls.get('DEL', 0):.2f} s)[/bold]: py-spy, request threads only, "
        f"{total / rate:.1f} thread-seconds sampled")
    for title, counts in (("innermost podnet frame", ours), ("leaf frame", leaf)):
        rows = [[frame, f"{c / rate:.2f}", f"{100 * c / max(total, 1):.1f}%"]
                for frame, c in sorted(counts.items(), key=lambda kv: -kv[1])[:top]]
        bl.console.print(bl.table(f"Request-thread wall time by {title}",
                                  [title, "thread-s", "share"], rows))


def split_by_command(store_path: str, pods: int, split: Split) -> Any:
    """Handler time per category for ADD and DEL separately (ms per call, medians of sums)."""
    from podnet.api import cni

    conf = {"cniVersion": "1.0.0", "name": "pnprof2", "type": "podnet-cni",
            "subnet": INPROC_SUBNET}
    pfx = bl.prefix()
    names = [f"{pfx}-x{i:04d}" for i in range(pods)]
    bl.create_netns(names)
    per: dict[str, dict[str, float]] = {"ADD": defaultdict(float), "DEL": defaultdict(float)}
    totals: dict[str, float] = defaultdict(float)
    with service(store_path) as services:
        for ns in names:
            cid = secrets.token_hex(16)
            env = bl.cni_env("ADD", cid, f"/run/netns/{ns}", "")
            prev: dict = {}
            for command in ("ADD", "DEL"):
                data = {**conf, "prevResult": prev} if command == "DEL" else conf
                split.reset()
                t0 = time.perf_counter()
                code, text = cni.handle({**env, "CNI_COMMAND": command},
                                        json.dumps(data).encode(), services.for_conf)
                totals[command] += time.perf_counter() - t0
                assert code == 0, text
                if command == "ADD":
                    prev = json.loads(text)
                for cat, secs in split.totals.items():
                    per[command][cat] += secs
    cats = sorted({c for d in per.values() for c in d})
    rows = []
    for cat in cats:
        rows.append([cat, ms(per["ADD"][cat] / pods), ms(per["DEL"][cat] / pods)])
    rows.append(["rest (Python glue: JSON, model, ipam logic, result)",
                 ms((totals["ADD"] - sum(per["ADD"].values())) / pods),
                 ms((totals["DEL"] - sum(per["DEL"].values())) / pods)])
    rows.append(["[bold]total handler[/bold]", ms(totals["ADD"] / pods), ms(totals["DEL"] / pods)])
    return bl.table("In-process handler split by layer (mean ms per call)",
                    ["layer", "ADD", "DEL"], rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pods", type=int, default=100, help="calls per measurement")
    ap.add_argument("--top", type=int, default=25, help="cProfile rows")
    ap.add_argument("--burst", type=int, default=200, help="concurrent calls sampled by py-spy")
    args = ap.parse_args()
    return bl.run_in_host_namespace(lambda: inner(args))


if __name__ == "__main__":
    sys.exit(main())
