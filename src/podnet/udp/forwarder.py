"""The `udp` backend's forwarder process: TUN super-packets in, UDP chunks out, and back.

Run inside a host network namespace:

    python -m podnet.udp.forwarder --tun NAME --bind IP:PORT --control PATH [--mtu N]

Why it is built this way (FACTS.md, "A userspace UDP tunnel in Python"): Python pays a
fixed cost per system call, so the lever is moving ~64 KB per call.
- The TUN device has IFF_VNET_HDR and TSO/checksum offloads: the kernel hands over
  unsegmented TCP super-packets behind a 12-byte virtio-net header, which travels
  unchanged; the receiving kernel finishes checksums and segmentation when the packet
  is written back into its TUN device.
- A super-packet is cut into chunks that each fit one underlay datagram (`--mtu` = UDP
  payload per datagram = TUN MTU = underlay MTU - 28, so nothing is IP-fragmented) and
  handed to the kernel with one sendmsg and UDP_SEGMENT (UDP GSO); above 65,507 bytes of
  UDP payload it takes two sendmsg calls. The receiver enables UDP_GRO, gets many chunks
  per recvmsg and writes a super-packet back with one writev (datapath.py).
- One process per direction, not one thread: with threads, the two directions contend
  for the GIL on every system call (measured: ~15% more CPU per byte, and 4-stream runs
  that collapsed). The main process reads the TUN device and sends (it owns the peer
  table) and serves the control socket; a forked child receives and writes the TUN
  device. The child gets the peer addresses (to drop datagrams from strangers) and
  answers stats requests over a socketpair; it dies with its parent (PR_SET_PDEATHSIG),
  and the parent exits if the child dies, so the pair always lives and dies together.
- Detached: `--daemon` forks once every fd is open and prints the daemon's pid, so the
  launcher's exit means "ready"; the daemon has its own session and outlives whoever
  started it. SIGTERM/SIGINT: remove the control socket, stop the child, exit; the TUN
  device is persistent and stays (unless --remove-tun-on-exit), so a restarted
  forwarder re-attaches to it with addresses and routes intact.

Control channel (unix stream socket, one JSON object per line each way):
  {"op": "ping"}                      -> {"ok": true, "pid": ..., "tun": ..., ...}
  {"op": "set_peers", "peers": {"10.1.2.0/24": ["192.168.1.2", 8285], ...}}
  {"op": "get_peers"}                 -> {"ok": true, "peers": {...}}
  {"op": "stats"}                     -> {"ok": true, "stats": {...}}
Errors answer {"ok": false, "error": "..."} and change nothing. set_peers replaces the
whole table in one reference swap: packets in flight use the old or the new table.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import signal
import socket
import sys
import threading
import time
import traceback
from typing import Any, NoReturn

from podnet.kernel.tun import open_tun, set_persist
from podnet.udp.datapath import MAX_UDP_PAYLOAD, Receiver, Sender
from podnet.udp.peers import Router, family_of, parse_hostport

SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
SOL_UDP = 17
UDP_GRO = 104
PR_SET_PDEATHSIG = 1
SOCK_BUF = 16 << 20
PROTOCOL_VERSION = 1
DEFAULT_MTU = 1472  # a 1500-byte underlay
LINK_TIMEOUT = 2.0
LINK_BUF = 8 << 20


def log(msg: str) -> None:
    sys.stderr.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} podnet-udp[{os.getpid()}] {msg}\n")
    sys.stderr.flush()


def _big_buffers(sock: socket.socket, size: int) -> None:
    """Socket buffers of `size` (beyond rmem_max/wmem_max with CAP_NET_ADMIN)."""
    for force, plain in ((SO_SNDBUFFORCE, socket.SO_SNDBUF),
                         (SO_RCVBUFFORCE, socket.SO_RCVBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, plain, size)


class Forwarder:
    def __init__(self, tun_name: str, bind: tuple[str, int], control_path: str, mtu: int,
                 accept_any: bool = False, remove_tun_on_exit: bool = False) -> None:
        if not 576 <= mtu <= MAX_UDP_PAYLOAD:
            raise ValueError(f"--mtu {mtu} out of range 576..{MAX_UDP_PAYLOAD}")
        self.tun_name = tun_name
        self.bind = bind
        self.control_path = control_path
        self.mtu = mtu
        self.accept_any = accept_any
        self.remove_tun_on_exit = remove_tun_on_exit
        self.family = family_of(bind[0])
        self.started = time.time()
        self.stop = threading.Event()
        self.failed = False
        self.gro = False
        self.tun_fd = -1
        self.sock: socket.socket | None = None
        self.ctl: socket.socket | None = None
        self._ctl_ino = 0
        self.sender: Sender | None = None
        self.child_pid = 0
        self._link: socket.socket | None = None
        self._link_lock = threading.Lock()
        self._link_seq = 0

    # --- setup ---------------------------------------------------------------------

    def open(self) -> None:
        """Open every fd (TUN, UDP, control socket); SystemExit with a message on failure."""
        try:
            self.tun_fd = open_tun(self.tun_name)
        except OSError as exc:
            raise SystemExit(f"cannot open tun {self.tun_name}: {exc}") from exc
        sock = socket.socket(self.family, socket.SOCK_DGRAM)
        _big_buffers(sock, SOCK_BUF)
        try:
            sock.setsockopt(SOL_UDP, UDP_GRO, 1)
            self.gro = True
        except OSError as exc:
            log(f"UDP_GRO unavailable ({exc}): one datagram per recvmsg")
        try:
            sock.bind(self.bind)
        except OSError as exc:
            raise SystemExit(f"cannot bind udp {self.bind[0]}:{self.bind[1]}: {exc}") from exc
        self.sock = sock
        self.ctl = self._open_control()
        self.sender = Sender(self.tun_fd, sock, self.mtu, self.family)

    def _open_control(self) -> socket.socket:
        path = self.control_path
        if os.path.exists(path):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            probe.settimeout(1.0)
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)  # stale: nobody listens
            else:
                raise SystemExit(f"another forwarder answers on {path}")
            finally:
                probe.close()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o077)
        try:
            ctl.bind(path)
        finally:
            os.umask(old)
        ctl.listen(16)
        self._ctl_ino = os.stat(path).st_ino
        return ctl

    # --- receiver child ------------------------------------------------------------

    def _fork_receiver(self) -> None:
        """Fork the receiving process (called while this process has a single thread)."""
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for end in (parent_end, child_end):  # one message carries a whole peer list
            _big_buffers(end, LINK_BUF)
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            parent_end.close()
            self._receiver_main(child_end, parent)
        child_end.close()
        self.child_pid = pid
        self._link = parent_end

    def _receiver_main(self, link: socket.socket, parent: int) -> NoReturn:
        code = 1
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != parent:  # the parent died before prctl took effect
                os._exit(0)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            assert self.ctl is not None and self.sock is not None
            self.ctl.close()
            rx = Receiver(self.tun_fd, self.sock, self.mtu, self.accept_any)
            threading.Thread(target=self._receiver_link, args=(link, rx),
                             name="podnet-udp-link", daemon=True).start()
            gc.freeze()
            gc.disable()
            rx.run()
        except BaseException:  # noqa: BLE001 - report anything, then die
            log("receiver failed:\n" + traceback.format_exc())
        finally:
            os._exit(code)

    def _receiver_link(self, link: socket.socket, rx: Receiver) -> None:
        """In the child: peer addresses and stats requests from the parent."""
        link.settimeout(60.0)
        while True:
            try:
                msg = link.recv(LINK_BUF)
            except TimeoutError:
                gc.collect()
                continue
            except OSError:
                msg = b""
            if not msg:
                os._exit(0)  # parent gone
            req = json.loads(msg)
            if req.get("op") == "peers":
                rx.peer_ips = frozenset(req["ips"])
                resp: dict[str, Any] = {"ok": True}
            else:
                resp = {"ok": True, "stats": rx.stats.as_dict(), "pending": len(rx.pending),
                        "last_error": rx.last_error}
            resp["id"] = req.get("id")
            link.send(json.dumps(resp).encode())

    def _link_call(self, req: dict) -> dict:
        """One request to the receiver child; answers to timed-out requests are skipped."""
        assert self._link is not None
        with self._link_lock:
            self._link_seq += 1
            req = dict(req, id=self._link_seq)
            self._link.settimeout(LINK_TIMEOUT)
            self._link.send(json.dumps(req).encode())
            while True:
                resp = json.loads(self._link.recv(LINK_BUF))
                if resp.get("id") == req["id"]:
                    return resp

    # --- control -------------------------------------------------------------------

    def control_loop(self) -> None:
        assert self.ctl is not None
        while True:
            try:
                conn, _ = self.ctl.accept()
            except OSError:
                time.sleep(0.05)
                continue
            try:
                conn.settimeout(5.0)
                self._serve(conn)
            except (OSError, ValueError):
                pass  # the client went away or spoke garbage: next one
            finally:
                conn.close()

    def _serve(self, conn: socket.socket) -> None:
        with conn.makefile("rwb") as f:
            while True:
                line = f.readline(4 << 20)
                if not line:
                    return
                try:
                    req = json.loads(line)
                    if not isinstance(req, dict):
                        raise ValueError("request must be a JSON object")
                    resp = self.handle(req)
                except (ValueError, TypeError, KeyError, IndexError, OSError) as exc:
                    resp = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                f.write(json.dumps(resp).encode() + b"\n")
                f.flush()

    def handle(self, req: dict) -> dict:
        assert self.sender is not None
        op = req.get("op")
        if op == "ping":
            return {"ok": True, "pid": os.getpid(), "receiver_pid": self.child_pid,
                    "tun": self.tun_name, "bind": f"{self.bind[0]}:{self.bind[1]}",
                    "mtu": self.mtu, "version": PROTOCOL_VERSION, "started": self.started}
        if op == "set_peers":
            peers = req["peers"]
            if not isinstance(peers, dict):
                raise ValueError("peers must be an object {cidr: [ip, port]}")
            router = Router(peers, self.family)
            changed = router.table != self.sender.router.table
            # Receiver first: a new peer's packets are accepted before we send to it.
            self._link_call({"op": "peers", "ips": router.peer_ips})
            self.sender.router = router
            if changed:
                log(f"peers: {json.dumps(router.table, sort_keys=True)}")
            return {"ok": True, "count": len(router.table), "changed": changed}
        if op == "get_peers":
            return {"ok": True, "peers": self.sender.router.table}
        if op == "stats":
            stats: dict[str, Any] = self.sender.stats.as_dict()
            errors = [self.sender.last_error]
            try:
                rx = self._link_call({"op": "stats"})
                stats.update(rx["stats"], pending=rx["pending"])
                errors.append(rx["last_error"])
            except (OSError, ValueError) as exc:
                errors.append(f"receiver unreachable: {exc}")
            stats.update(gso=self.sender.gso, gro=self.gro,
                         peers=len(self.sender.router.table),
                         last_error="; ".join(e for e in errors if e),
                         uptime=round(time.time() - self.started, 3))
            return {"ok": True, "stats": stats}
        raise ValueError(f"unknown op {op!r}")

    # --- lifecycle -----------------------------------------------------------------

    def run(self) -> int:
        assert self.sender is not None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop.set())
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        self._fork_receiver()
        for name, target in (("tx", self.sender.run), ("control", self.control_loop)):
            threading.Thread(target=self._guard, args=(name, target), name=f"podnet-udp-{name}",
                             daemon=True).start()
        log(f"forwarding tun {self.tun_name} <-> udp {self.bind[0]}:{self.bind[1]} "
            f"(segment {self.mtu}, gro {self.gro}, receiver pid {self.child_pid}), "
            f"control {self.control_path}")
        # Data path objects are short-lived and acyclic: keep the cyclic collector from
        # pausing the sender at allocation-driven moments; collect rarely instead.
        gc.freeze()
        gc.disable()
        code = 0
        ticks = 0
        while not self.stop.wait(1.0):
            ticks += 1
            if ticks % 60 == 0:
                gc.collect()
            pid, status = os.waitpid(self.child_pid, os.WNOHANG)
            if pid:
                log(f"receiver process {pid} died (status {status}): exiting")
                self.child_pid = 0
                code = 1
                break
        self.shutdown()
        return 1 if self.failed else code

    def _guard(self, name: str, target: Any) -> None:
        """A loop that ends is a bug: log it and stop the whole forwarder (non-zero)."""
        try:
            target()
        except BaseException:  # noqa: BLE001 - reported, then the process exits
            log(f"{name} loop failed:\n{traceback.format_exc()}")
        self.failed = True
        self.stop.set()

    def shutdown(self) -> None:
        try:
            if os.stat(self.control_path).st_ino == self._ctl_ino:
                os.unlink(self.control_path)
        except OSError:
            pass
        if self.child_pid:
            try:
                os.kill(self.child_pid, signal.SIGKILL)
                os.waitpid(self.child_pid, 0)  # it holds the TUN fd: gone before we are
            except OSError:
                pass
        if self.remove_tun_on_exit and self.tun_fd >= 0:
            try:
                set_persist(self.tun_fd, False)  # the device goes when our fd closes
            except OSError as exc:
                log(f"cannot clear persistence of {self.tun_name}: {exc}")
        log("stopped")


def _daemonize(log_path: str | None) -> None:
    """Fork; the parent prints the daemon's pid and exits; the child leaves the session."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        print(pid, flush=True)
        os._exit(0)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    out = devnull
    if log_path:
        out = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(devnull, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    for fd in {devnull, out}:
        if fd > 2:
            os.close(fd)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m podnet.udp.forwarder",
                                 description="podnet udp backend forwarder (TUN <-> UDP)")
    ap.add_argument("--tun", required=True, help="TUN device name (created if absent)")
    ap.add_argument("--bind", required=True, help="underlay IP:PORT to listen on")
    ap.add_argument("--control", required=True, help="unix socket path for control")
    ap.add_argument("--mtu", type=int, default=DEFAULT_MTU,
                    help="UDP payload per datagram = TUN MTU = underlay MTU - 28")
    ap.add_argument("--accept-any", action="store_true",
                    help="accept datagrams from any source, not only from known peers")
    ap.add_argument("--remove-tun-on-exit", action="store_true")
    ap.add_argument("--daemon", action="store_true",
                    help="detach once ready; print the daemon's pid")
    ap.add_argument("--log", help="log file (with --daemon; default: discard)")
    args = ap.parse_args(argv)
    try:
        bind = parse_hostport(args.bind)
        fwd = Forwarder(args.tun, bind, args.control, args.mtu, accept_any=args.accept_any,
                        remove_tun_on_exit=args.remove_tun_on_exit)
    except ValueError as exc:
        ap.error(str(exc))
    fwd.open()
    if args.daemon:
        _daemonize(args.log)
    code = fwd.run()
    os._exit(code)  # daemon threads sit in blocking system calls: do not join them


if __name__ == "__main__":
    sys.exit(main())
