"""Drive real container runtimes (containerd 1.6 via ctr, podman 4.3) against a CNI plugin.

Why: podnet's CNI plugin must work with the clients that really call it, with their quirks
(argument order, empty CNI_NETNS on DEL, VERSION probes, CNI_ARGS). This module starts each
runtime *inside a test host network namespace* (``nsenter --net=/run/netns/HOST``, never
``ip netns exec``, which remounts /sys and hides the cgroup mounts runc needs), so whatever
the plugin builds on the "host" side lands in that namespace and never in the root one.

It holds helpers only (no tests): a locally built busybox image (no registry is reachable),
the two runtime wrappers with one common surface (``run``/``exec``/``stop``), and a
reusable two-container scenario plus leftover checks, so the very same scenario runs with
the CNI reference plugins (bridge + host-local) and with ``podnet-cni``.

How each runtime finds CNI config and plugins
---------------------------------------------
* ``ctr run --cni`` (containerd 1.6.20) calls ``gocni.New(gocni.WithDefaultConf)``: config
  from the first file (sorted) in /etc/cni/net.d, plugins from /opt/cni/bin then
  /usr/lib/cni (Debian). No flag or environment variable changes either. The CNI calls are
  made by the ``ctr`` process itself, not by containerd. So every ``ctr run`` is started in a
  private mount namespace (``unshare --mount``) where the test's conf dir is bind-mounted
  over /etc/cni/net.d and a per-runtime directory holding hard links (or copies) of the
  given plugin executables over whichever of /opt/cni/bin and /usr/lib/cni exist. Nothing
  under /etc or /opt of the machine is touched (a missing mount point is created empty and
  removed again), and concurrent users of the real /etc/cni/net.d are not disturbed. Inside
  that namespace /usr/lib/cni *is* the links dir: a plugin delegating to host-local via
  CNI_PATH finds it there; one exec'ing a path under /usr/lib/cni gets the linked copy.
* ``ctr run -d`` never calls CNI DEL in 1.6 (only the foreground ``ctr run`` does, after
  the task exits and is deleted: empty CNI_NETNS, prevResult set). So containers are run
  with a *foreground* ``ctr run --cni --rm`` child process held by the harness; ``stop``
  kills the task and waits for that ctr process, which then issues DEL and removes the
  container. CNI_CONTAINERID is ``<ctr namespace>-<container id>``, CNI_ARGS is empty.
* podman 4.3 reads ``network_config_dir`` / ``cni_plugin_dirs`` from the containers.conf
  named by ``CONTAINERS_CONF`` (written under the work dir); no mount tricks are needed.
  When a container exits, conmon runs ``podman container cleanup`` (which can be the one
  calling DEL) with only PATH, CONTAINERS_CONF and ``conmon_env_vars``, so extra plugin
  environment is written into ``conmon_env_vars``. podman calls VERSION (CNI_NETNS and
  CNI_IFNAME "dummy") before ADD and before DEL; its DEL still has the netns path.

Some state paths are compiled into the tools (see SystemPathsGuard); they are removed at
the end if the harness created them.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import io
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

BUSYBOX = "/bin/busybox"
IMAGE_REF = "localhost/podnet-test-busybox:latest"
NETNS_RUN_DIR = Path("/run/netns")

# Applets linked even if `busybox --list` cannot be run (it always can with busybox-static).
_MIN_APPLETS = (
    "sh", "ash", "ping", "nc", "wget", "httpd", "ip", "sleep", "cat", "echo", "ls", "md5sum",
    "head", "dd", "ifconfig", "route", "hostname", "mkdir", "ps", "kill", "true", "false",
    "test", "seq", "timeout", "env", "grep", "sed", "awk", "wc", "tr", "cut",
)

_image_cache: dict[str, Path] = {}


def new_prefix() -> str:
    """The naming prefix of a test: ``pnt`` + 4 random hex chars."""
    return "pnt" + secrets.token_hex(2)


def missing_runtime_reason(kind: str) -> str | None:
    """Why `kind` ("containerd"/"podman") cannot run here, or None (for pytest.skip)."""
    tools = ["nsenter", "unshare", "ip", "runc"]
    tools += ["containerd", "ctr"] if kind == "containerd" else ["podman", "conmon"]
    missing = [t for t in tools if shutil.which(t) is None]
    if not Path(BUSYBOX).exists():
        missing.append(BUSYBOX)
    return f"missing: {', '.join(missing)}" if missing else None


def _run(
    cmd: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 60,
    env: dict[str, str] | None = None,
    input_: str | None = None,
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(cmd), capture_output=True, text=True, timeout=timeout, env=env, input=input_
    )
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} -> rc={proc.returncode}\nstdout: {proc.stdout}\n"
            f"stderr: {proc.stderr}"
        )
    return proc


# --------------------------------------------------------------------------------------
# Image


def _busybox_applets() -> list[str]:
    names = set(_MIN_APPLETS)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, timeout=10)
        names.update(n for n in out.stdout.split() if re.fullmatch(r"[A-Za-z0-9_.+-]+", n))
    names.discard("busybox")
    return sorted(names)


def _layer_tar() -> bytes:
    """An uncompressed, deterministic rootfs tar: /bin/busybox plus applet symlinks."""
    buf = io.BytesIO()
    mtime = 1_700_000_000

    def add_dir(tf: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, mode, mtime
        tf.addfile(ti)

    def add_file(tf: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
        ti = tarfile.TarInfo(name)
        ti.size, ti.mode, ti.mtime = len(data), mode, mtime
        tf.addfile(ti, io.BytesIO(data))

    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for d in ("bin", "dev", "etc", "proc", "sys", "root", "run", "var", "www"):
            add_dir(tf, d, 0o700 if d == "root" else 0o755)
        add_dir(tf, "tmp", 0o1777)
        add_file(tf, "bin/busybox", Path(BUSYBOX).read_bytes(), 0o755)
        for applet in _busybox_applets():
            ti = tarfile.TarInfo(f"bin/{applet}")
            ti.type, ti.linkname, ti.mode, ti.mtime = tarfile.SYMTYPE, "busybox", 0o777, mtime
            tf.addfile(ti)
        add_file(tf, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"
                 b"nobody:x:65534:65534:nobody:/:/bin/false\n")
        add_file(tf, "etc/group", b"root:x:0:\nnogroup:x:65534:\n")
        add_file(tf, "etc/hosts", b"127.0.0.1 localhost\n")
        add_file(tf, "etc/resolv.conf", b"")
    return buf.getvalue()


def build_busybox_image(tmpdir: Path | str) -> Path:
    """A docker-archive tarball of a one-layer busybox image; built once per process.

    The archive is what both ``ctr image import`` and ``podman load`` accept:
    manifest.json + <config digest>.json + <layer>/layer.tar, image ``IMAGE_REF``.
    """
    cached = _image_cache.get("busybox")
    if cached is not None and cached.exists():
        return cached
    tmpdir = Path(tmpdir)
    tmpdir.mkdir(parents=True, exist_ok=True)
    layer = _layer_tar()
    diff_id = hashlib.sha256(layer).hexdigest()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "2023-11-14T22:13:20Z",
        "config": {
            "Env": ["PATH=/bin:/usr/bin:/sbin:/usr/sbin"],
            "Cmd": ["sh"],
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
        "history": [{"created": "2023-11-14T22:13:20Z", "created_by": "podnet tests"}],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    layer_name = f"{diff_id}/layer.tar"
    manifest = [{"Config": config_name, "RepoTags": [IMAGE_REF], "Layers": [layer_name]}]
    repo, tag = IMAGE_REF.rsplit(":", 1)
    repositories = {repo: {tag: diff_id}}
    path = tmpdir / "busybox-image.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in (
            (config_name, config_bytes),
            (layer_name, layer),
            ("manifest.json", json.dumps(manifest).encode()),
            ("repositories", json.dumps(repositories).encode()),
        ):
            if "/" in name:
                ti = tarfile.TarInfo(name.split("/")[0])
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(ti)
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode = len(data), 0o644
            tf.addfile(ti, io.BytesIO(data))
    _image_cache["busybox"] = path
    return path


# --------------------------------------------------------------------------------------
# Namespaces, CNI configuration


@contextlib.contextmanager
def host_netns(name: str) -> Iterator[str]:
    """Create /run/netns/NAME with lo up; delete it (and all it holds) on exit."""
    _run(["ip", "netns", "add", name])
    try:
        _run(["ip", "-n", name, "link", "set", "lo", "up"])
        yield name
    finally:
        _run(["ip", "netns", "del", name], check=False)


def bridge_conflist(
    name: str, bridge: str, subnet: str, ipam_data_dir: Path | str, cni_version: str = "1.0.0"
) -> dict[str, Any]:
    """A reference-plugin conflist: bridge + host-local with its records in ipam_data_dir."""
    return {
        "cniVersion": cni_version,
        "name": name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": False,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(ipam_data_dir),
                },
            }
        ],
    }


def write_conflist(conf_dir: Path | str, conflist: dict[str, Any], stem: str = "00") -> Path:
    """Write conflist as ``<stem>-<name>.conflist`` (ctr takes the first file by name)."""
    conf_dir = Path(conf_dir)
    conf_dir.mkdir(parents=True, exist_ok=True)
    path = conf_dir / f"{stem}-{conflist['name']}.conflist"
    path.write_text(json.dumps(conflist, indent=2))
    return path


def first_conf_network(conf_dir: Path | str) -> str:
    """The network name ctr would use: the first .conf/.conflist/.json file, sorted."""
    files = sorted(
        p for p in Path(conf_dir).iterdir() if p.suffix in (".conf", ".conflist", ".json")
    )
    if not files:
        raise RuntimeError(f"no CNI config in {conf_dir}")
    return str(json.loads(files[0].read_text())["name"])


def netns_inode(path: str) -> int:
    return os.stat(path).st_ino


_SO_NETNS_COOKIE = 71  # Linux >= 5.14; a 64-bit id never reused, unlike nsfs inodes
_CLONE_NEWNET = 0x40000000


def netns_cookie(path: str) -> int | None:
    """The netns cookie of the namespace at path (read from a socket made inside it by a
    throwaway thread), or None if the namespace is gone or the kernel lacks the option."""
    result: list[int | None] = [None]

    def probe() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_RDONLY)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    return
            finally:
                os.close(fd)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sk:
                raw = sk.getsockopt(socket.SOL_SOCKET, _SO_NETNS_COOKIE, 8)
                result[0] = struct.unpack("=Q", raw)[0]

    t = threading.Thread(target=probe)
    t.start()
    t.join()
    return result[0]


def netns_holders(inode: int, cookie: int | None = None) -> list[str]:
    """Processes (``pid N``) and bind mounts (``mount PATH``) holding a netns.

    Matched by nsfs inode; those numbers are reused as soon as a namespace dies (and other
    tests create namespaces concurrently), so when the cookie is known each candidate's
    cookie must match as well.
    """
    found: list[str] = []
    candidates: list[tuple[str, str]] = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{pid}/ns/net").st_ino == inode:
                    candidates.append((f"pid {pid}", f"/proc/{pid}/ns/net"))
    with open("/proc/self/mountinfo") as f:
        for line in f:
            if f"net:[{inode}]" in line:
                point = line.split()[4].replace("\\040", " ")
                candidates.append((f"mount {point}", point))
    for label, path in candidates:
        if cookie is None or netns_cookie(path) in (cookie, None):
            found.append(label)
    return found


def ip_json(netns: str | None, *args: str) -> list[dict[str, Any]]:
    """``ip -j`` as a witness; netns is a /run/netns name, a /proc/PID/ns/net path or None."""
    if netns is None:
        cmd = ["ip", "-j", *args]
    elif netns.startswith("/"):
        cmd = ["nsenter", f"--net={netns}", "ip", "-j", *args]
    else:
        cmd = ["ip", "-n", netns, "-j", *args]
    out = _run(cmd).stdout.strip()
    return json.loads(out) if out else []


def _unmount_under(root: Path) -> None:
    """Unmount whatever a runtime left mounted below root (deepest first)."""
    prefix = str(root.resolve()) + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        point = point.replace("\\040", " ")
        if subprocess.run(["umount", point], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", point], capture_output=True)


def _rmdir_cgroups(name: str) -> None:
    """Remove the (empty) per-test cgroup parents the runtimes left in every hierarchy."""
    base = Path("/sys/fs/cgroup")
    candidates = [base / name] + [d / name for d in base.iterdir() if d.is_dir()]
    for cg in candidates:
        if cg.is_dir():
            for sub in sorted(cg.rglob("*"), key=lambda p: len(str(p)), reverse=True):
                if sub.is_dir():
                    with contextlib.suppress(OSError):
                        sub.rmdir()
            with contextlib.suppress(OSError):
                cg.rmdir()


class SystemPathsGuard:
    """Remove, at the end, the well-known system paths a runtime created that did not exist.

    Some state locations are compiled into the tools and cannot be redirected: libcni's
    result cache /var/lib/cni (ctr and podman), containerd 1.6's shim socket dir
    /run/containerd/s and runc root /run/containerd/runc, podman's runc root /run/runc and
    c/image's blob-info cache /var/lib/containers/cache. Files are removed, directories only
    when empty (rmdir), so a concurrent user of the same paths keeps its data.
    """

    def __init__(self, paths: Sequence[Path | str]) -> None:
        self.paths = [Path(p) for p in paths]
        self.created = [p for p in self.paths if not p.exists()]

    def cleanup(self) -> None:
        for p in sorted(self.created, key=lambda x: len(x.parts), reverse=True):
            with contextlib.suppress(OSError):
                if p.is_dir() and not p.is_symlink():
                    p.rmdir()
                elif p.exists():
                    p.unlink()


_CNI_CACHE_PATHS = ("/var/lib/cni", "/var/lib/cni/results")


# --------------------------------------------------------------------------------------
# Runtimes


@dataclass
class Container:
    """One running container as seen from outside (the witness's view)."""

    runtime: Runtime
    name: str
    pid: int
    netns_path: str  # /proc/PID/ns/net
    netns_ino: int
    named_netns: str | None = None  # /run/netns/... when the runtime made one (podman)
    extra: dict[str, Any] = field(default_factory=dict)
    netns_cookie: int | None = None

    def __post_init__(self) -> None:
        if self.netns_cookie is None:
            self.netns_cookie = netns_cookie(self.netns_path)

    def ipv4(self, ifname: str = "eth0") -> str:
        for link in ip_json(self.netns_path, "-4", "addr", "show", "dev", ifname):
            for a in link.get("addr_info", []):
                if a.get("family") == "inet":
                    return str(a["local"])
        raise RuntimeError(f"{self.name}: no IPv4 address on {ifname}")

    def links(self) -> list[dict[str, Any]]:
        return ip_json(self.netns_path, "link", "show")

    def exec(self, cmd: Sequence[str], timeout: float = 30) -> tuple[int, str]:
        return self.runtime.exec(self.name, cmd, timeout=timeout)


class Runtime(Protocol):
    """What the scenario needs from a runtime wrapper."""

    kind: str
    host_netns: str
    prefix: str

    def run(
        self, name: str, cmd: Sequence[str], network: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> Container: ...

    def exec(self, name: str, cmd: Sequence[str], timeout: float = 30) -> tuple[int, str]: ...

    def stop(self, name: str) -> None: ...


def _link_plugins(dest: Path, bin_dirs: Sequence[Path | str]) -> None:
    """Hard-link (or copy) every executable of bin_dirs into dest; earlier dirs win."""
    dest.mkdir(parents=True, exist_ok=True)
    for d in bin_dirs:
        d = Path(d)
        if not d.is_dir():
            continue
        for src in sorted(d.iterdir()):
            target = dest / src.name
            real = src.resolve()
            if target.exists() or not real.is_file() or not os.access(real, os.X_OK):
                continue
            try:
                os.link(real, target)
            except OSError:
                shutil.copy2(real, target)


class Containerd:
    """containerd started in a host netns, driven with ``ctr`` (see module docstring)."""

    kind = "containerd"
    CTR_CNI_CONF_DIR = Path("/etc/cni/net.d")
    CTR_CNI_BIN_DIRS = (Path("/opt/cni/bin"), Path("/usr/lib/cni"))

    def __init__(
        self,
        host_netns: str,
        workdir: Path | str,
        cni_conf_dir: Path | str,
        cni_bin_dirs: Sequence[Path | str] = ("/usr/lib/cni",),
        *,
        image_tar: Path | None = None,
        prefix: str | None = None,
        start_timeout: float = 20,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.host_netns = host_netns
        self.workdir = Path(workdir)
        self.cni_conf_dir = Path(cni_conf_dir)
        self.cni_bin_dirs = [Path(d) for d in cni_bin_dirs]
        self.image_tar = image_tar
        self.prefix = prefix or new_prefix()
        self.namespace = f"{self.prefix}-ctr"  # containerd namespace, also the cgroup parent
        self.start_timeout = start_timeout
        # Extra environment for ctr, hence for the CNI plugin it executes.
        self.env = {**os.environ, **(env or {})}
        self.address = str(self.workdir / "containerd.sock")
        self.proc: subprocess.Popen[bytes] | None = None
        self._runs: dict[str, subprocess.Popen[bytes]] = {}
        self._containers: dict[str, Container] = {}
        self._created_mountpoints: list[Path] = []
        self._exec_seq = 0
        self._guard: SystemPathsGuard | None = None

    # -- lifecycle
    def __enter__(self) -> Containerd:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> None:
        self._guard = SystemPathsGuard([
            "/run/containerd", "/run/containerd/s", "/run/containerd/runc", *_CNI_CACHE_PATHS,
        ])
        w = self.workdir
        for d in ("root", "state", "opt", "fifo", "cni-bin", "logs"):
            (w / d).mkdir(parents=True, exist_ok=True)
        _link_plugins(w / "cni-bin", self.cni_bin_dirs)
        cfg = w / "config.toml"
        cfg.write_text(
            "version = 2\n"
            f'root = "{w / "root"}"\n'
            f'state = "{w / "state"}"\n'
            "disabled_plugins = [\"io.containerd.grpc.v1.cri\",\n"
            '  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",\n'
            '  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",\n'
            '  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]\n'
            "[grpc]\n"
            f'  address = "{self.address}"\n'
            "[ttrpc]\n"
            f'  address = "{self.address}.ttrpc"\n'
            "[debug]\n"
            '  address = ""\n'
            "[metrics]\n"
            '  address = ""\n'
            '[plugins."io.containerd.internal.v1.opt"]\n'
            f'  path = "{w / "opt"}"\n'
        )
        log = open(w / "logs" / "containerd.log", "wb")  # noqa: SIM115
        with log:
            self.proc = subprocess.Popen(
                ["nsenter", f"--net={NETNS_RUN_DIR / self.host_netns}",
                 "containerd", "--config", str(cfg)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"containerd exited: {self._log_tail('containerd.log')}")
            if Path(self.address).exists() and self._ctr(["version"], check=False).returncode == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"containerd not ready: {self._log_tail('containerd.log')}")
            time.sleep(0.05)
        self._prepare_mountpoints()
        tar = self.image_tar or build_busybox_image(w / "image")
        self._ctr(["images", "import", str(tar)], timeout=120)

    def _log_tail(self, name: str, n: int = 4000) -> str:
        with contextlib.suppress(OSError):
            return (self.workdir / "logs" / name).read_text(errors="replace")[-n:]
        return ""

    def _bin_mount_targets(self) -> list[Path]:
        """Shadow every plugin dir ctr searches that exists; /opt/cni/bin if none does."""
        found = [d for d in self.CTR_CNI_BIN_DIRS if d.is_dir()]
        return found or [self.CTR_CNI_BIN_DIRS[0]]

    def _prepare_mountpoints(self) -> None:
        """Bind mounts need existing mount points: create missing ones (empty), note them."""
        for d in (self.CTR_CNI_CONF_DIR, *self._bin_mount_targets()):
            missing: list[Path] = []
            p = d
            while not p.exists():
                missing.append(p)
                p = p.parent
            for m in reversed(missing):
                m.mkdir()
                self._created_mountpoints.append(m)

    def _ctr_cmd(self, args: Sequence[str]) -> list[str]:
        return ["nsenter", f"--net={NETNS_RUN_DIR / self.host_netns}", "ctr",
                "--address", self.address, "--namespace", self.namespace, *args]

    def _ctr(
        self, args: Sequence[str], *, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return _run(self._ctr_cmd(args), check=check, timeout=timeout)

    def _cni_mount_wrapper(self) -> list[str]:
        """``unshare --mount`` + bind mounts so ctr sees only the test's CNI dirs."""
        binds = [(self.cni_conf_dir, self.CTR_CNI_CONF_DIR)] + [
            (self.workdir / "cni-bin", d) for d in self._bin_mount_targets()
        ]
        script = " && ".join(
            f"mount --bind {shlex.quote(str(src))} {shlex.quote(str(dst))}" for src, dst in binds
        )
        return ["unshare", "--mount", "--propagation", "private",
                "sh", "-c", script + ' && exec "$@"', "ctr-cni"]

    # -- containers
    def run(
        self, name: str, cmd: Sequence[str], network: str | None = None,
        extra_args: Sequence[str] = (), timeout: float = 30,
    ) -> Container:
        """Start ``ctr run --cni --rm`` in the foreground (a child we hold) and wait RUNNING."""
        if network is not None and network != first_conf_network(self.cni_conf_dir):
            raise ValueError(
                f"ctr uses the first conf in {self.cni_conf_dir}, not network {network!r}"
            )
        args = ["run", "--cni", "--rm", "--fifo-dir", str(self.workdir / "fifo"),
                *extra_args, IMAGE_REF, name, *cmd]
        full = ["nsenter", f"--net={NETNS_RUN_DIR / self.host_netns}",
                *self._cni_mount_wrapper(), "ctr", "--address", self.address,
                "--namespace", self.namespace, *args]
        log = open(self.workdir / "logs" / f"run-{name}.log", "wb")  # noqa: SIM115
        with log:
            proc = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    env=self.env)
        self._runs[name] = proc
        deadline = time.monotonic() + timeout
        pid = 0
        while True:
            pid = self._task_pid(name, want="RUNNING")
            if pid:
                break
            if proc.poll() is not None:
                raise RuntimeError(f"ctr run {name} exited rc={proc.returncode}: "
                                   f"{self._log_tail(f'run-{name}.log')}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"ctr run {name}: not RUNNING after {timeout}s")
            time.sleep(0.05)
        path = f"/proc/{pid}/ns/net"
        c = Container(self, name, pid, path, netns_inode(path))
        self._containers[name] = c
        return c

    def _task_pid(self, name: str, want: str | None = None) -> int:
        out = self._ctr(["tasks", "ls"], check=False).stdout
        for line in out.splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 3 and parts[0] == name and (want is None or parts[2] == want):
                return int(parts[1])
        return 0

    def exec(self, name: str, cmd: Sequence[str], timeout: float = 30) -> tuple[int, str]:
        self._exec_seq += 1
        proc = self._ctr(
            ["tasks", "exec", "--exec-id", f"x{self._exec_seq}", "--fifo-dir",
             str(self.workdir / "fifo"), name, *cmd],
            check=False, timeout=timeout,
        )
        return proc.returncode, proc.stdout + proc.stderr

    def stop(self, name: str, timeout: float = 30) -> None:
        """Kill the task; the foreground ctr then calls CNI DEL and removes the container."""
        proc = self._runs.pop(name, None)
        self._ctr(["tasks", "kill", "--signal", "SIGKILL", name], check=False)
        if proc is not None:
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                # Only our own ctr process, by PID.
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        # Fallbacks when the foreground ctr did not get to it (it normally did).
        if self._task_pid(name):
            self._ctr(["tasks", "delete", "--force", name], check=False)
        names = self._ctr(["containers", "ls", "-q"], check=False).stdout.split()
        if name in names:
            self._ctr(["containers", "delete", name], check=False)
        self._containers.pop(name, None)

    remove = stop

    def close(self) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                for name in list(self._runs):
                    with contextlib.suppress(Exception):
                        self.stop(name)
                out = self._ctr(["containers", "ls", "-q"], check=False).stdout.split()
                for name in out:
                    with contextlib.suppress(Exception):
                        self.stop(name)
                with contextlib.suppress(Exception):
                    self._ctr(["images", "rm", IMAGE_REF], check=False)
            for proc in self._runs.values():
                if proc.poll() is None:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
            self._runs.clear()
            if self.proc is not None and self.proc.poll() is None:
                self.proc.terminate()  # our containerd, by PID
                try:
                    self.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
            self._kill_own_shims()
        finally:
            _unmount_under(self.workdir)
            _rmdir_cgroups(self.namespace)
            runc_root = Path("/run/containerd/runc") / self.namespace
            with contextlib.suppress(OSError):
                shutil.rmtree(runc_root)
            if self._guard is not None:
                self._guard.cleanup()
            for m in reversed(self._created_mountpoints):
                with contextlib.suppress(OSError):
                    m.rmdir()
            self._created_mountpoints.clear()
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _kill_own_shims(self) -> None:
        """Shims our containerd started (recognised by our socket path) that outlived it."""
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if b"containerd-shim" in argv[0] and self.address.encode() in argv:
                    os.kill(int(pid), signal.SIGKILL)


class Podman:
    """podman with its whole state under workdir, run inside a host netns via nsenter."""

    kind = "podman"

    def __init__(
        self,
        host_netns: str,
        workdir: Path | str,
        cni_conf_dir: Path | str,
        cni_plugin_dirs: Sequence[Path | str] = ("/usr/lib/cni",),
        *,
        image_tar: Path | None = None,
        prefix: str | None = None,
        extra_capabilities: Sequence[str] = ("NET_RAW",),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.host_netns = host_netns
        self.workdir = Path(workdir)
        self.cni_conf_dir = Path(cni_conf_dir)
        self.cni_plugin_dirs = [Path(d) for d in cni_plugin_dirs]
        self.image_tar = image_tar
        self.prefix = prefix or new_prefix()
        self.cgroup_parent = f"{self.prefix}-podman"
        self.extra_capabilities = list(extra_capabilities)
        self.extra_env = dict(env or {})
        self._containers: dict[str, Container] = {}
        self.env: dict[str, str] = {}
        self._guard: SystemPathsGuard | None = None
        # podman 4.3 refuses a runroot longer than 50 characters: a short dir of its own.
        self.runroot = Path(f"/tmp/{self.prefix}-podrun-{secrets.token_hex(4)}")

    def __enter__(self) -> Podman:
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _setup(self) -> None:
        self._guard = SystemPathsGuard([
            "/run/runc", *_CNI_CACHE_PATHS, "/var/lib/containers", "/var/lib/containers/cache",
            "/var/lib/containers/cache/blob-info-cache-v1.boltdb",
        ])
        w = self.workdir
        for d in ("root", "tmp", "libpod-tmp", "volumes", "logs"):
            (w / d).mkdir(parents=True, exist_ok=True)
        self.runroot.mkdir(mode=0o700)
        caps = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "NET_BIND_SERVICE",
                "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
                *self.extra_capabilities]
        toml_list = ", ".join(json.dumps(x) for x in caps)
        plugin_dirs = ", ".join(json.dumps(str(d)) for d in self.cni_plugin_dirs)
        own_env = {
            "CONTAINERS_CONF": str(w / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(w / "storage.conf"),
            "CONTAINERS_REGISTRIES_CONF": str(w / "registries.conf"),
            "TMPDIR": str(w / "tmp"),
        }
        # conmon runs `podman container cleanup` (network teardown, CNI DEL) when a
        # container exits; it only gets PATH, CONTAINERS_CONF and conmon_env_vars, so the
        # plugin's extra environment must be listed there too.
        conmon_env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                      **own_env, **self.extra_env}
        conmon_env_list = ", ".join(json.dumps(f"{k}={v}") for k, v in conmon_env.items())
        (w / "containers.conf").write_text(
            "[containers]\n"
            f"default_capabilities = [{toml_list}]\n"
            'default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
            'log_driver = "k8s-file"\n'
            "[network]\n"
            'network_backend = "cni"\n'
            f'network_config_dir = "{self.cni_conf_dir}"\n'
            f"cni_plugin_dirs = [{plugin_dirs}]\n"
            "[engine]\n"
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'events_logfile_path = "{w / "logs" / "events.log"}"\n'
            f'tmp_dir = "{w / "libpod-tmp"}"\n'
            f'static_dir = "{w / "root" / "libpod"}"\n'
            f'volume_path = "{w / "volumes"}"\n'
            f'image_copy_tmp_dir = "{w / "tmp"}"\n'
            'lock_type = "file"\n'
            f"conmon_env_vars = [{conmon_env_list}]\n"
            "[engine.runtimes]\n"
            'runc = ["/usr/sbin/runc", "/usr/bin/runc"]\n'
        )
        (w / "storage.conf").write_text(
            "[storage]\n"
            'driver = "overlay"\n'
            f'graphroot = "{w / "root"}"\n'
            f'runroot = "{self.runroot}"\n'
        )
        (w / "registries.conf").write_text("unqualified-search-registries = []\n")
        self.env = {**os.environ, **own_env, **self.extra_env}
        tar = self.image_tar or build_busybox_image(w / "image")
        self._podman(["load", "-q", "-i", str(tar)], timeout=120)

    def _podman(
        self, args: Sequence[str], *, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        cmd = ["nsenter", f"--net={NETNS_RUN_DIR / self.host_netns}", "podman",
               "--root", str(self.workdir / "root"), "--runroot", str(self.runroot),
               *args]
        return _run(cmd, check=check, timeout=timeout, env=self.env)

    def run(
        self, name: str, cmd: Sequence[str], network: str | None = None,
        extra_args: Sequence[str] = (), timeout: float = 60,
    ) -> Container:
        network = network or first_conf_network(self.cni_conf_dir)
        self._podman(
            ["run", "-d", "--name", name, "--network", network,
             "--cgroup-parent", f"/{self.cgroup_parent}", *extra_args, IMAGE_REF, *cmd],
            timeout=timeout,
        )
        info = json.loads(self._podman(["inspect", "--type", "container", name]).stdout)[0]
        pid = int(info["State"]["Pid"])
        if not pid:
            raise RuntimeError(f"podman {name}: not running: {info['State']}")
        path = f"/proc/{pid}/ns/net"
        sandbox = info.get("NetworkSettings", {}).get("SandboxKey") or None
        c = Container(self, name, pid, path, netns_inode(path), named_netns=sandbox,
                      extra={"inspect": info})
        self._containers[name] = c
        return c

    def exec(self, name: str, cmd: Sequence[str], timeout: float = 30) -> tuple[int, str]:
        proc = self._podman(["exec", name, *cmd], check=False, timeout=timeout)
        return proc.returncode, proc.stdout + proc.stderr

    def stop(self, name: str, timeout: float = 30) -> None:
        """Stop (network teardown: CNI DEL) then remove."""
        self._podman(["stop", "--time", "0", name], check=False, timeout=timeout)
        self._podman(["rm", "--force", "--time", "0", name], check=False, timeout=timeout)
        self._containers.pop(name, None)

    remove = stop

    def close(self) -> None:
        try:
            if self.env:
                with contextlib.suppress(Exception):
                    self._podman(["rm", "--all", "--force", "--time", "0"], check=False)
                with contextlib.suppress(Exception):
                    self._podman(["rmi", "--all", "--force"], check=False)
        finally:
            for d in (self.runroot, self.workdir):
                _unmount_under(d)
                shutil.rmtree(d, ignore_errors=True)
            _rmdir_cgroups(self.cgroup_parent)
            if self._guard is not None:
                self._guard.cleanup()


# --------------------------------------------------------------------------------------
# Sessions: host netns + conflist + runtime, for fixtures

RUNTIME_KINDS = ("containerd", "podman")
ConflistFactory = Callable[[str, Path], dict[str, Any]]


def reference_conflist(subnet: str, cni_version: str = "1.0.0") -> ConflistFactory:
    """Factory for bridge + host-local named after the session prefix, records under workdir."""

    def make(prefix: str, workdir: Path) -> dict[str, Any]:
        return bridge_conflist(f"{prefix}-net", f"{prefix}-br", subnet, workdir / "ipam",
                               cni_version)

    return make


def host_local_data_dir(conflist: dict[str, Any]) -> Path | None:
    """The dataDir of the conflist's host-local IPAM, if it uses one with a dataDir."""
    for plugin in conflist.get("plugins", []):
        ipam = plugin.get("ipam") or {}
        if ipam.get("type") == "host-local" and ipam.get("dataDir"):
            return Path(ipam["dataDir"])
    return None


@dataclass
class RuntimeSession:
    kind: str
    prefix: str
    host_netns: str
    workdir: Path
    conf_dir: Path
    conflist: dict[str, Any]
    runtime: Containerd | Podman

    @property
    def network(self) -> str:
        return str(self.conflist["name"])

    @property
    def ipam_data_dir(self) -> Path | None:
        return host_local_data_dir(self.conflist)


@contextlib.contextmanager
def runtime_session(
    kind: str,
    workdir: Path | str,
    conflist: dict[str, Any] | ConflistFactory,
    *,
    cni_bin_dirs: Sequence[Path | str] = ("/usr/lib/cni",),
    image_tar: Path | None = None,
    prefix: str | None = None,
    host_netns_name: str | None = None,
    conf_stem: str = "00",
    env: Mapping[str, str] | None = None,
) -> Iterator[RuntimeSession]:
    """A runtime of `kind` started in a host netns with one conflist; all removed at exit.

    conflist may be a dict or a factory ``(prefix, workdir) -> dict`` so names (bridge,
    network, IPAM dir) follow the session prefix. host_netns_name reuses an existing
    namespace (left in place); otherwise ``<prefix>-host`` is created and deleted.
    The session owns workdir and removes it. cni_bin_dirs: where plugin executables are
    looked up (for podnet: the dir holding ``podnet-cni`` first, then /usr/lib/cni).
    env: extra environment for the runtime processes, which the CNI plugin inherits
    (including podman's conmon-started cleanup, see Podman).
    """
    if kind not in RUNTIME_KINDS:
        raise ValueError(f"unknown runtime {kind!r}")
    prefix = prefix or new_prefix()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        conf = conflist(prefix, workdir) if callable(conflist) else conflist
        conf_dir = workdir / "net.d"
        write_conflist(conf_dir, conf, conf_stem)
        with contextlib.ExitStack() as stack:
            ns = host_netns_name or stack.enter_context(host_netns(f"{prefix}-host"))
            rt: Containerd | Podman
            if kind == "containerd":
                rt = Containerd(ns, workdir / "containerd", conf_dir, cni_bin_dirs,
                                image_tar=image_tar, prefix=prefix, env=env)
            else:
                rt = Podman(ns, workdir / "podman", conf_dir, cni_bin_dirs,
                            image_tar=image_tar, prefix=prefix, env=env)
            stack.enter_context(rt)
            yield RuntimeSession(kind, prefix, ns, workdir, conf_dir, conf, rt)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# --------------------------------------------------------------------------------------
# Scenario and leftover checks


SERVER_PORT = 8080


def _server_cmd(payload_bytes: int) -> list[str]:
    return ["sh", "-c",
            f"head -c {payload_bytes} /dev/urandom > /www/blob && "
            "md5sum /www/blob | cut -d' ' -f1 > /www/blob.md5 && "
            f"exec httpd -f -p {SERVER_PORT} -h /www"]


@dataclass
class ScenarioReport:
    runtime: str
    ips: dict[str, str]
    timings: dict[str, float]
    records: list[Container]


def host_veths(netns: str) -> list[str]:
    return [link["ifname"] for link in ip_json(netns, "link", "show", "type", "veth")]


def host_local_records(ipam_data_dir: Path | str, network: str) -> list[str]:
    """host-local's per-address files (not its lock or last_reserved_ip.* bookkeeping)."""
    d = Path(ipam_data_dir) / network
    if not d.is_dir():
        return []
    return sorted(
        p.name for p in d.iterdir() if p.name != "lock" and not p.name.startswith("last_")
    )


def leftovers(
    host_netns: str, records: Sequence[Container], ipam_data_dir: Path | str | None = None,
    network: str | None = None,
) -> list[str]:
    """What the containers left behind, as problems (empty list = clean)."""
    problems: list[str] = []
    veths = host_veths(host_netns)
    if veths:
        problems.append(f"veths left in {host_netns}: {veths}")
    problems.extend(pod_netns_leftovers(records))
    if ipam_data_dir is not None and network is not None:
        recs = host_local_records(ipam_data_dir, network)
        if recs:
            problems.append(f"host-local records left: {recs}")
    return problems


def pod_netns_leftovers(records: Sequence[Container]) -> list[str]:
    """Pod namespaces still alive: named ones via ``ip netns list``, others by holders."""
    problems: list[str] = []
    named = {n["name"] for n in ip_json(None, "netns", "list")}
    for c in records:
        if c.named_netns and Path(c.named_netns).name in named:
            problems.append(f"{c.name}: named netns {c.named_netns} still listed")
        holders = netns_holders(c.netns_ino, c.netns_cookie)
        if holders:
            problems.append(f"{c.name}: pod netns {c.netns_ino} still held by {holders}")
    return problems


def wait_for(check: Callable[[], list[str]], timeout: float = 10) -> list[str]:
    """Poll a problems-returning check until it returns [] or timeout; the last result."""
    deadline = time.monotonic() + timeout
    while True:
        problems = check()
        if not problems or time.monotonic() > deadline:
            return problems
        time.sleep(0.1)


def wait_clean(
    host_netns: str, records: Sequence[Container], ipam_data_dir: Path | str | None = None,
    network: str | None = None, timeout: float = 10,
) -> list[str]:
    """Poll leftovers() until clean or timeout (namespaces die asynchronously)."""
    return wait_for(lambda: leftovers(host_netns, records, ipam_data_dir, network), timeout)


def run_two_containers_scenario(
    runtime: Runtime,
    network: str | None = None,
    *,
    ipam_data_dir: Path | str | None = None,
    payload_bytes: int = 1 << 20,
    check_cleanup: bool = True,
) -> ScenarioReport:
    """Two containers on one CNI network: ping both ways, HTTP transfer, stop, no leftovers.

    Works for any runtime wrapper and any plugin; ipam_data_dir enables the host-local
    record check (leave None for plugins with their own IPAM and check those yourself).
    Raises AssertionError with details on any failure; containers are always removed.
    """
    names = [f"{runtime.prefix}-{secrets.token_hex(2)}-{r}" for r in ("a", "b")]
    records: list[Container] = []
    timings: dict[str, float] = {}
    ips: dict[str, str] = {}
    t0 = time.monotonic()
    try:
        a = runtime.run(names[0], _server_cmd(payload_bytes), network)
        records.append(a)
        b = runtime.run(names[1], ["sleep", "3600"], network)
        records.append(b)
        timings["start_both"] = time.monotonic() - t0
        ips = {a.name: a.ipv4(), b.name: b.ipv4()}
        assert ips[a.name] != ips[b.name], ips
        t1 = time.monotonic()
        for src, dst in ((a, b), (b, a)):
            rc, out = src.exec(["ping", "-c", "3", "-A", "-W", "2", ips[dst.name]])
            assert rc == 0, f"{runtime.kind}: ping {src.name} -> {dst.name} failed: {out}"
        timings["ping"] = time.monotonic() - t1
        t2 = time.monotonic()
        url = f"http://{ips[a.name]}:{SERVER_PORT}/blob"
        script = (f"for i in $(seq 50); do wget -q -O - {url} > /tmp/blob && break; "
                  "sleep 0.1; done; md5sum /tmp/blob | cut -d' ' -f1; wc -c < /tmp/blob")
        rc, got = b.exec(["sh", "-c", script])
        assert rc == 0, f"{runtime.kind}: wget failed: {got}"
        rc, want = a.exec(["cat", "/www/blob.md5"])
        assert rc == 0, want
        lines = got.split()
        assert lines[:1] == [want.strip()] and int(lines[1]) == payload_bytes, (
            f"{runtime.kind}: transfer mismatch: got {got!r}, want md5 {want!r}"
        )
        timings["transfer"] = time.monotonic() - t2
    finally:
        t3 = time.monotonic()
        errors: list[str] = []
        for n in names:
            try:
                runtime.stop(n)
            except Exception as e:  # keep stopping the other one
                errors.append(f"stop {n}: {e!r}")
        timings["stop_both"] = time.monotonic() - t3
    assert not errors, errors
    if check_cleanup:
        net = network
        if net is None:
            conf_dir = getattr(runtime, "cni_conf_dir", None)
            net = first_conf_network(conf_dir) if conf_dir is not None else None
        problems = wait_clean(runtime.host_netns, records, ipam_data_dir, net)
        assert not problems, f"{runtime.kind}: leftovers: {problems}"
    timings["total"] = time.monotonic() - t0
    return ScenarioReport(runtime.kind, ips, timings, records)
