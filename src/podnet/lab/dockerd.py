"""A real dockerd (Debian's docker.io, 20.10) inside a host network namespace of ours.

Tests and `podnet lab up --docker` start one per host. The machine's own docker service,
/etc/docker, /run/docker and /var/run/docker.sock are never used or touched:

- `nsenter --net=/run/netns/HOST` first, then `unshare --mount` (private propagation), then
  a small sh that prepares that mount namespace and execs dockerd (one PID all along). So
  the daemon's bridges, veths and published-port proxies live in HOST, and every mount it
  makes (container root filesystems, network namespace references) exists only in its own
  mount namespace and disappears with it.
- In that mount namespace: the copies of other namespaces' nsfs mounts (everybody's
  /run/netns/*) are unmounted first, so the daemon does not keep namespaces alive that
  their owners delete meanwhile; a tmpfs covers /run, so /run/docker/plugins can be a bind
  mount of our plugin directory without creating anything in the machine's /run (dockerd
  discovers plugins there by name: NAME.sock) and the machine's
  /run/containerd/containerd.sock is hidden (dockerd 20.10 would use a running system
  containerd instead of starting its own; containerd 1.6 puts shim sockets under
  /run/containerd/s, which stay private too); a tmpfs covers /etc/docker (dockerd 20.10
  would otherwise create /etc/docker/key.json and read the machine's plugin specs).
- `--config-file` is ours: key.json under our directory, a short shutdown timeout, and
  `init` (docker-init as PID 1 of every container, so a plain `sleep` stops on SIGTERM at
  once instead of after the 10 s stop timeout; a daemon stop or restart takes about 1 s),
  `--cgroup-parent=podnet-NAME` keeps container cgroups out of the machine's /docker, and
  `--iptables=false --ip-forward=false --bridge=none` means no iptables rules, no sysctl
  writes and no docker0.

Where container network namespaces end up: libnetwork bind-mounts each sandbox's namespace
at EXEC_ROOT/netns/SANDBOX_ID (the `SandboxKey` a remote driver's Join receives). That
mount exists only in dockerd's mount namespace: from anywhere else the path is an empty
file, so reach a container's namespace through /proc/PID/ns/net (`docker inspect -f
{{.State.Pid}}`). Its interfaces come from HOST; nothing is created in the root network
namespace. When the last container of a sandbox is removed, or dockerd stops, the mount
goes and the namespace with it.

stop() sends SIGTERM to dockerd's PID and waits: it stops its containers (within the
configured shutdown timeout) and then its own containerd. teardown() also removes
containers and networks first and, after the daemon is gone, anything that could survive
a crash: processes in its mount namespace or its cgroup parent, the cgroup directories,
the directory tree.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tarfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from podnet.errors import IN_USE, INTERNAL, PodnetError
from podnet.kernel import netns
from podnet.lab import procs

DOCKER_CLI = "/usr/bin/docker"  # docker.io's own CLI (another may come first on PATH)
BUSYBOX = "/bin/busybox"  # busybox-static
CGROUP_ROOT = "/sys/fs/cgroup"
SUN_PATH_MAX = 107
BUILTIN_DRIVERS = {"bridge", "host", "null", "macvlan", "ipvlan", "overlay"}
_APPLETS = ("sh", "ash", "ping", "nc", "netstat", "sleep", "ip", "cat", "echo", "hostname",
            "nslookup", "wget", "httpd", "ls", "true", "false", "kill", "ps", "seq", "head",
            "dd", "md5sum", "timeout", "grep", "sed", "wc", "env", "mkdir", "test")


class DockerCommandError(PodnetError):
    """A docker CLI call failed; `stderr` holds the CLI's own text."""

    def __init__(self, args: Sequence[str], returncode: int, stderr: str) -> None:
        last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
        super().__init__(INTERNAL, f"docker {' '.join(args)} failed (rc {returncode})", last)
        self.returncode = returncode
        self.stderr = stderr


class Dockerd:
    """One dockerd in network namespace `netns` with all its state under `root`.

    `plugin_dir` (default ROOT/plugins) is what the daemon sees as /run/docker/plugins.
    `name` must be unique among running daemons (it names the cgroup parent); the
    default derives it from the namespace, which carries the test's or lab's prefix.
    `pid` adopts a daemon started earlier (for example by another CLI call); `on_pid` is
    told every new PID (or None) so a caller can record it.
    """

    def __init__(self, netns_name: str, root: str, *, name: str | None = None,
                 plugin_dir: str | None = None, shutdown_timeout: int = 5,
                 extra_args: Sequence[str] = (), pid: int | None = None,
                 on_pid: Callable[[int | None], None] | None = None) -> None:
        self.netns = netns_name
        self.root = os.path.abspath(root)
        self.name = name or os.path.basename(netns_name)
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise PodnetError(INTERNAL, "invalid dockerd name", self.name)
        self.plugin_dir = os.path.abspath(plugin_dir or os.path.join(self.root, "plugins"))
        self.data_root = os.path.join(self.root, "data")
        self.exec_root = os.path.join(self.root, "exec")
        self.sock = os.path.join(self.root, "docker.sock")
        self.pidfile = os.path.join(self.root, "docker.pid")
        self.config_file = os.path.join(self.root, "daemon.json")
        self.log = os.path.join(self.root, "dockerd.log")
        self.cli_config = os.path.join(self.root, "cli")
        self.cgroup_parent = f"podnet-{self.name}"
        self.shutdown_timeout = shutdown_timeout
        self.extra_args = list(extra_args)
        self.pid = pid
        self.on_pid = on_pid
        self._popen: subprocess.Popen[bytes] | None = None
        self._mntns: tuple[int, int] | None = None

    # ---- lifecycle --------------------------------------------------------------------

    def command(self) -> list[str]:
        daemon = [
            "dockerd", "--config-file", self.config_file,
            "--iptables=false", "--ip-forward=false", "--bridge=none",
            f"--cgroup-parent={self.cgroup_parent}",
            "--data-root", self.data_root, "--exec-root", self.exec_root,
            "--pidfile", self.pidfile, "-H", f"unix://{self.sock}", *self.extra_args,
        ]
        q = shlex.quote
        script = "; ".join([
            "set -e",
            # drop the copies of everybody's namespace mounts (they would pin namespaces)
            "grep ' - nsfs ' /proc/self/mountinfo | cut -d' ' -f5 | sort -r"
            " | while read -r m; do umount -l \"$m\" 2>/dev/null || true; done",
            f"cd {q(self.plugin_dir)}",  # still reachable as . once /run is covered
            "mount -t tmpfs -o mode=0755,size=64m podnet-dockerd-run /run",
            "mkdir -p /run/docker/plugins",
            "mount --no-canonicalize --bind . /run/docker/plugins",
            "cd /",
            "if [ -d /etc/docker ]; then"
            " mount -t tmpfs -o mode=0755,size=1m podnet-dockerd-etc /etc/docker; fi",
            "exec " + " ".join(q(a) for a in daemon),
        ])
        return ["nsenter", f"--net={netns.netns_path(self.netns)}",
                "unshare", "--mount", "--propagation", "private", "sh", "-c", script]

    def running(self) -> bool:
        return self.pid is not None and procs.matches(self.pid, self.data_root)

    def start(self, timeout: float = 60.0) -> int:
        """Start dockerd (no-op if ours runs) and wait until it answers /_ping."""
        if self.running():
            assert self.pid is not None
            return self.pid
        self._preflight()
        for d in (self.root, self.plugin_dir, self.data_root, self.exec_root, self.cli_config):
            os.makedirs(d, exist_ok=True)
        with open(self.config_file, "w") as fh:
            json.dump({"deprecated-key-path": os.path.join(self.root, "key.json"),
                       "shutdown-timeout": self.shutdown_timeout, "init": True}, fh)
        with open(self.log, "ab") as log:
            self._popen = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True)
        self._set_pid(self._popen.pid)
        try:
            self.wait_ready(timeout)
            self._mntns = _ns_id(self._popen.pid, "mnt")
        except BaseException:
            self.stop()
            raise
        return self._popen.pid

    def _preflight(self) -> None:
        missing = [t for t in ("dockerd", "containerd", "runc", "nsenter", "unshare")
                   if shutil.which(t) is None]
        if missing:
            raise PodnetError(INTERNAL, "cannot start dockerd (install docker.io)",
                              "missing: " + ", ".join(missing))
        netns.require(self.netns)
        for path in (self.sock, os.path.join(self.exec_root, "containerd", "containerd.sock")):
            if len(path.encode()) > SUN_PATH_MAX:
                raise PodnetError(INTERNAL, "dockerd directory too deep for a unix socket path",
                                  path)
        if self.answers():
            raise PodnetError(IN_USE, "a dockerd already answers on this socket", self.sock)

    def answers(self) -> bool:
        """The daemon answers GET /_ping with 200 on its socket."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(2.0)
                sock.connect(self.sock)
                sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
                head = sock.recv(64)
        except OSError:
            return False
        return head.split(b" ")[1:2] == [b"200"]

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._popen is not None and self._popen.poll() is not None:
                raise PodnetError(INTERNAL, "dockerd exited during start-up",
                                  f"rc {self._popen.returncode}; log: {self.log_tail()}")
            if self.answers():
                return
            time.sleep(0.05)
        raise PodnetError(INTERNAL, f"dockerd did not answer within {timeout:.0f} s",
                          f"log: {self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM dockerd by PID and wait (it stops its containers and containerd)."""
        if self.pid is not None and self._mntns is None and self.running():
            self._mntns = _ns_id(self.pid, "mnt")
        procs.stop(self.pid, self.data_root, timeout=timeout, popen=self._popen)
        self._popen = None
        self._set_pid(None)

    def restart(self, timeout: float = 60.0) -> int:
        """Stop and start again on the same data root (containers with a restart policy
        come back)."""
        self.stop()
        return self.start(timeout)

    def _set_pid(self, pid: int | None) -> None:
        self.pid = pid
        if self.on_pid is not None:
            self.on_pid(pid)

    def log_tail(self, n: int = 8) -> str:
        try:
            lines = Path(self.log).read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(lines[-n:])

    # ---- the docker CLI ---------------------------------------------------------------

    def docker(self, *args: str, check: bool = True, timeout: float = 120.0,
               input: str | None = None) -> subprocess.CompletedProcess[str]:  # noqa: A002
        """Run the docker CLI against this daemon; DockerCommandError if check and rc != 0."""
        cli = DOCKER_CLI if os.path.exists(DOCKER_CLI) else (shutil.which("docker") or "docker")
        env = {k: v for k, v in os.environ.items()
               if k not in ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_TLS_VERIFY")}
        env["DOCKER_CONFIG"] = self.cli_config  # never root's ~/.docker
        proc = subprocess.run([cli, "-H", f"unix://{self.sock}", *args], capture_output=True,
                              text=True, timeout=timeout, env=env, input=input)
        if check and proc.returncode != 0:
            raise DockerCommandError(args, proc.returncode, proc.stderr)
        return proc

    def import_busybox(self, name: str = "podnet-busybox:latest") -> str:
        """Import a tiny image made from busybox-static (no registry needed); its ID."""
        if not os.path.exists(BUSYBOX):
            raise PodnetError(INTERNAL, "cannot build the busybox image (install busybox-static)",
                              BUSYBOX)
        tar = os.path.join(self.root, "busybox-rootfs.tar")
        if not os.path.exists(tar):
            Path(tar + ".tmp").write_bytes(busybox_rootfs())
            os.replace(tar + ".tmp", tar)
        out = self.docker("import", "--change", 'CMD ["sh"]', tar, name).stdout
        return out.strip()

    # ---- teardown ---------------------------------------------------------------------

    def remove_all(self, timeout: float = 60.0) -> None:
        """Remove every container, and every network whose driver can still answer."""
        if not self.answers():
            return
        ids = self.docker("ps", "-aq", check=False).stdout.split()
        if ids:
            self.docker("rm", "-f", *ids, check=False, timeout=timeout)
        out = self.docker("network", "ls", "--no-trunc", "--format", "{{.ID}} {{.Driver}}",
                          check=False).stdout
        removable = []
        for line in out.splitlines():
            nid, _, driver = line.partition(" ")
            if driver in ("host", "null"):
                continue  # the predefined ones
            plugin = os.path.join(self.plugin_dir, f"{driver}.sock")
            if driver in BUILTIN_DRIVERS or _listening(plugin):
                removable.append(nid)
        if removable:
            self.docker("network", "rm", *removable, check=False, timeout=timeout)

    def teardown(self, *, remove_files: bool = True, timeout: float = 60.0) -> list[str]:
        """Remove containers and networks, stop the daemon, sweep what a crash could leave,
        and (by default) delete ROOT. Returns `leftovers()` afterwards (empty when clean)."""
        with contextlib.suppress(PodnetError, OSError, subprocess.SubprocessError):
            self.remove_all(timeout)
        self.stop()
        self._sweep_processes()
        self._remove_cgroups()
        if remove_files:
            shutil.rmtree(self.root, ignore_errors=True)
        return self.leftovers(files=remove_files)

    def _stray_pids(self) -> list[int]:
        """Processes of this daemon that outlive it after a crash: containerd and its
        shims (its mount namespace, or naming its exec root), containers (its cgroups)."""
        found = []
        marker_paths = (self.data_root, self.exec_root, self.sock)
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            if pid == os.getpid():
                continue
            if self._mntns is not None and _ns_id(pid, "mnt") == self._mntns:
                found.append(pid)
                continue
            args = procs.cmdline(pid) or []
            prog = os.path.basename(args[0]) if args else ""
            if prog.startswith(("dockerd", "containerd", "docker-proxy")) and any(
                    m in a for m in marker_paths for a in args):
                found.append(pid)
                continue
            if self._in_our_cgroup(pid):
                found.append(pid)
        return [p for p in found if procs.alive(p)]

    def _in_our_cgroup(self, pid: int) -> bool:
        try:
            text = Path(f"/proc/{pid}/cgroup").read_text()
        except OSError:
            return False
        return f":/{self.cgroup_parent}/" in text or text.rstrip().endswith(
            f":/{self.cgroup_parent}")

    def _sweep_processes(self, timeout: float = 10.0) -> None:
        stray = self._stray_pids()
        for pid in stray:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in stray:
            procs.wait_gone(pid, timeout)

    def cgroup_dirs(self) -> list[str]:
        """This daemon's cgroup parent directories, in every mounted hierarchy."""
        found = []
        with contextlib.suppress(OSError):
            for entry in sorted(os.listdir(CGROUP_ROOT)):
                for path in (os.path.join(CGROUP_ROOT, entry, self.cgroup_parent),
                             os.path.join(CGROUP_ROOT, self.cgroup_parent)):
                    if os.path.isdir(path) and path not in found:
                        found.append(path)
        return found

    def _remove_cgroups(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        for top in self.cgroup_dirs():
            subdirs = [os.path.join(d, s) for d, dirs, _ in os.walk(top) for s in dirs]
            for path in sorted(subdirs, key=len, reverse=True) + [top]:
                while True:
                    try:
                        os.rmdir(path)
                        break
                    except FileNotFoundError:
                        break
                    except OSError:  # EBUSY: a killed process is still leaving
                        if time.monotonic() > deadline:
                            break
                        time.sleep(0.05)

    def leftovers(self, *, files: bool = True) -> list[str]:
        """What of this daemon still exists (processes, cgroups, mounts, files)."""
        out = [f"process {p}: {' '.join(procs.cmdline(p) or [])[:100]}"
               for p in self._stray_pids()]
        if self.running():
            out.append(f"dockerd {self.pid}")
        out += [f"cgroup {d}" for d in self.cgroup_dirs()]
        with contextlib.suppress(OSError):
            for line in Path("/proc/self/mountinfo").read_text().splitlines():
                if self.root + "/" in line or f" {self.root} " in line:
                    out.append(f"mount {line.split()[4]}")
        if files and os.path.exists(self.root):
            out.append(f"directory {self.root}")
        return out

    def __enter__(self) -> Dockerd:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()


def _ns_id(pid: int, kind: str) -> tuple[int, int] | None:
    try:
        st = os.stat(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _listening(path: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            sock.connect(path)
    except OSError:
        return False
    return True


def _applets() -> list[str]:
    """Every applet busybox-static has (`busybox --list`), at least the usual ones."""
    names = set(_APPLETS)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, timeout=10)
        names.update(n for n in out.stdout.split() if re.fullmatch(r"[A-Za-z0-9_.+-]+", n))
    names.discard("busybox")
    return sorted(names)


def busybox_rootfs() -> bytes:
    """A rootfs tar: /bin/busybox (static) plus applet symlinks and the usual dirs."""
    buf = io.BytesIO()
    mtime = 1_700_000_000

    def add(tf: tarfile.TarFile, name: str, kind: bytes, mode: int, data: bytes = b"",
            link: str = "") -> None:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.mtime, info.linkname = kind, mode, mtime, link
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data) if data else None)

    with tarfile.open(fileobj=buf, mode="w") as tf:
        for d in ("bin", "dev", "etc", "proc", "sys", "root", "run", "var", "www"):
            add(tf, d, tarfile.DIRTYPE, 0o700 if d == "root" else 0o755)
        add(tf, "tmp", tarfile.DIRTYPE, 0o1777)
        add(tf, "etc/passwd", tarfile.REGTYPE, 0o644, b"root:x:0:0:root:/root:/bin/sh\n")
        add(tf, "etc/group", tarfile.REGTYPE, 0o644, b"root:x:0:\n")
        add(tf, "bin/busybox", tarfile.REGTYPE, 0o755, Path(BUSYBOX).read_bytes())
        for applet in _applets():
            add(tf, f"bin/{applet}", tarfile.SYMTYPE, 0o777, link="busybox")
    return buf.getvalue()
