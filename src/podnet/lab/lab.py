"""The lab: many podnet hosts on one machine, each a network namespace with a real agent.

    with Lab(Topo(hosts=3, pods_per_host=2), backend="vxlan") as lab:
        assert all(r.ok for r in lab.ping_all())

Why a context manager (Mininet lacks one): a lab owns namespaces, processes and files,
and every one of them must go also when the experiment fails half-way. `up()` records
each step in the state file before taking the next one, and a failed `up()` tears down
whatever was built; `down()` (and `podnet lab down`, `cleanup_all_labs()`) works from the
state file and from the lab's name alone, so it is safe twice and after a crash.

Why pods go through the CNI shim exec'd in the host namespace (and not through the
Python API): the lab exercises exactly the path a container runtime takes, including
the agent's socket, CNI_ARGS and the result parsing.

The root network namespace is never touched: every address and route lives in one of
the lab's own namespaces (LAB-sw, LAB-rt, LAB-hI, LAB-hI-pJ).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import podnet
from podnet import config
from podnet.agent.server import call
from podnet.errors import (
    IN_USE,
    INVALID_CONFIG,
    KERNEL_FAILURE,
    NOT_FOUND,
    TRY_AGAIN_LATER,
    PodnetError,
)
from podnet.install import install_cni
from podnet.kernel import netns
from podnet.lab import procs, state
from podnet.lab import topo as plan
from podnet.lab.etcd import LabEtcd, client_settings
from podnet.lab.state import (
    BACKENDS,
    DEFAULT_LEASE_TTL,
    DEFAULT_RENEW_MARGIN,
    DEFAULT_RESYNC_PERIOD,
    ETCD_PORTS,
    OVERLAY_BACKENDS,
    STORES,
    EtcdState,
    HostState,
    LabState,
    PodState,
)
from podnet.lab.teardown import cleanup_all_labs as cleanup_all_labs  # for podnet cleanup
from podnet.lab.teardown import is_running as is_running
from podnet.lab.teardown import stop_forwarders, teardown
from podnet.lab.topo import Topo

CNI_CONF_NAME = "labnet"


@dataclass(frozen=True)
class Host:
    name: str
    netns: str
    ip: str
    segment: int
    subnet: str | None = None


@dataclass(frozen=True)
class Pod:
    name: str
    netns: str
    ip: str | None
    host: str


@dataclass(frozen=True)
class PingResult:
    src: str
    dst: str
    ok: bool
    rtt_ms: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"src": self.src, "dst": self.dst, "ok": self.ok, "rtt_ms": self.rtt_ms}


def random_name() -> str:
    return "pl" + secrets.token_hex(2)


def _num(value: float) -> str:
    """A CLI number: '60' for 60.0 (an int-typed flag would refuse '60.0')."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _src_dir() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(podnet.__file__)))


def _enter(ns: str) -> list[str]:
    return ["nsenter", f"--net={netns.netns_path(ns)}"]


class Lab:
    """Build, use and remove a lab. Use as a context manager, or `up()` / `down()`."""

    def __init__(
        self,
        topo: Topo | None = None,
        backend: str = "vxlan",
        store: str = "sqlite",
        name: str | None = None,
        *,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        renew_margin: float = DEFAULT_RENEW_MARGIN,
        resync_period: float = DEFAULT_RESYNC_PERIOD,
        backend_options: dict[str, Any] | None = None,
        start_timeout: float = 30.0,
        etcd_auth: bool = False,
    ) -> None:
        if backend not in BACKENDS:
            raise PodnetError(INVALID_CONFIG, f"unknown lab backend {backend!r}",
                              f"known: {', '.join(BACKENDS)}")
        if store not in STORES:
            raise PodnetError(INVALID_CONFIG, f"unknown lab store {store!r}", "sqlite or etcd")
        if etcd_auth and store != "etcd":
            raise PodnetError(INVALID_CONFIG, "etcd auth needs the etcd store", "--store etcd")
        if store == "etcd" and not shutil.which("etcd"):
            raise PodnetError(INVALID_CONFIG, "--store etcd needs the etcd binary",
                              "install Debian's etcd-server")
        self.topo = topo or Topo()
        self.name = state.check_name(name or random_name())
        self.start_timeout = start_timeout
        store_url = state.sqlite_url(self.name)
        etcd_st = None
        if store == "etcd":
            sw = state.netns_name(self.name, plan.switch_role(1, self.topo.segments))
            etcd_st = EtcdState(
                netns=sw, host=plan.switch_ip(1), port=ETCD_PORTS[0], peer_port=ETCD_PORTS[1],
                data_dir=os.path.join(state.lab_dir(self.name), "etcd", "data"),
                log=os.path.join(state.lab_dir(self.name), "etcd.log"),
                tls=True, pki_dir=os.path.join(state.lab_dir(self.name), "etcd", "pki"),
                auth=etcd_auth,
            )
            store_url = LabEtcd(etcd_st).url
        self.state = LabState(
            name=self.name, backend=backend, store=store, store_url=store_url,
            segments=self.topo.segments, pods_per_host=self.topo.pods_per_host,
            lease_ttl=lease_ttl, renew_margin=renew_margin, resync_period=resync_period,
            backend_options=dict(backend_options or {}), etcd=etcd_st, created=time.time(),
        )
        self._runtime()

    def _runtime(self) -> None:
        self._popens: dict[int, subprocess.Popen] = {}  # agents this process started
        self._etcd: LabEtcd | None = None

    @classmethod
    def attach(cls, name: str, *, start_timeout: float = 30.0) -> Lab:
        """The lab `name` as built by another process (e.g. `podnet lab up`)."""
        st = state.load(name)
        lab = cls.__new__(cls)
        lab.topo = Topo(hosts=max(1, len(st.hosts)), pods_per_host=st.pods_per_host,
                        segments=st.segments, **_vm_topo(st))
        lab.name = st.name
        lab.state = st
        lab.start_timeout = start_timeout
        lab._runtime()
        return lab

    # -- views ---------------------------------------------------------------------------
    @property
    def backend(self) -> str:
        return self.state.backend

    @property
    def store_url(self) -> str:
        return self.state.store_url

    @property
    def store_settings(self) -> dict[str, str]:
        """TLS files and credentials for the lab's etcd (open_store's `etcd`); {} else."""
        return client_settings(self.state.etcd) if self.state.etcd is not None else {}

    @property
    def hosts(self) -> list[Host]:
        return [Host(h.name, h.netns, h.ip, h.segment, h.subnet) for h in self.state.hosts]

    @property
    def pods(self) -> list[Pod]:
        return [Pod(p.name, p.netns, p.ip, p.host) for p in self.state.pods()]

    # -- VMs (built by podnet.lab.vms) -------------------------------------------------------
    @property
    def vms(self) -> list[Host]:
        """VMs as hosts of the VM cluster: name hI-vmJ, netns, VM NIC address, subnet."""
        return [Host(v.name, v.netns, v.ip, 0, v.subnet) for v in self.state.vms]

    @property
    def vm_pods(self) -> list[Pod]:
        """Pods inside VMs (attached through the VM's own agent): name hI-vmJ-pK."""
        return [Pod(p.name, p.netns, p.ip, p.host) for v in self.state.vms for p in v.pods]

    def host(self, name: str) -> Host:
        h = self.state.host(name)
        return Host(h.name, h.netns, h.ip, h.segment, h.subnet)

    def pod(self, name: str) -> Pod:
        for p in self.pods:
            if p.name == name:
                return p
        raise PodnetError(NOT_FOUND, f"lab {self.name} has no pod {name!r}")

    @property
    def etcd(self) -> LabEtcd | None:
        """The lab's etcd (stop()/start() it to test store outages); None with sqlite."""
        if self.state.etcd is None:
            return None
        if self._etcd is None:
            self._etcd = LabEtcd(self.state.etcd, on_pid=lambda pid: self._save())
        return self._etcd

    def netns_of(self, name: str) -> str:
        """The namespace of a host, pod, `sw`/`sw1`/`sw2`/`rt`, or a full LAB-... name."""
        roles = {h.name for h in self.state.hosts} | {p.name for p in self.state.pods()}
        roles |= set(self.state.infra_roles()) | set(self.state.vm_roles())
        if name in roles:
            return state.netns_name(self.name, name)
        if name.startswith(self.name + "-") and name.removeprefix(self.name + "-") in roles:
            return name
        raise PodnetError(NOT_FOUND, f"lab {self.name} has no host, pod or switch {name!r}",
                          f"known: {', '.join(sorted(roles))}")

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> Lab:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self) -> Lab:
        """Build everything; on any failure remove what was built and re-raise."""
        self._refuse_existing()
        try:
            self._build()
        except BaseException:
            with contextlib.suppress(Exception):
                self.down()
            raise
        return self

    def down(self) -> dict[str, list[str]]:
        """Stop the lab's processes by PID, delete its namespaces and directories."""
        report = teardown(self.name, popens=self._popens)
        self._popens.clear()
        return report

    def _refuse_existing(self) -> None:
        leftovers = [n for n in netns.list_named() if n.startswith(self.name + "-")]
        if state.exists(self.name) or os.path.exists(state.lab_dir(self.name)) or leftovers:
            raise PodnetError(IN_USE, f"lab {self.name!r} already exists",
                              f"`podnet lab down {self.name}` removes it")

    def _save(self) -> None:
        state.save(self.state)

    def _build(self) -> None:
        self.state.hosts = []  # a Lab object may be brought up again after down()
        self.state.status = "building"
        os.makedirs(state.run_dir(self.name), exist_ok=True)
        self._save()  # from here on, `down` finds the lab even if this process dies
        install_cni(self._bin_dir())
        self._build_underlay()
        if self.etcd is not None:
            self.etcd.start()
        self._create_network()
        specs = [self._build_host(i) for i in range(1, self.topo.hosts + 1)]
        self._static_neighbours(specs)
        self._start_agents([h.name for h in specs])
        self._attach_pods([(h.name, plan.pod_name(h.name, j))
                           for h in specs for j in range(1, self.topo.pods_per_host + 1)])
        self._check_agents()
        if self.topo.vms_per_host:
            from podnet.lab import vms  # VMs, their network and their own cluster

            vms.build(self)
        self.state.status = "up"
        self._save()

    def _bin_dir(self) -> str:
        return os.path.join(state.lab_dir(self.name), "bin")

    def _build_underlay(self) -> None:
        from podnet.lab import underlay  # pyroute2: only where kernel objects are made

        segs = self.state.segments
        switches = [state.netns_name(self.name, r) for r in self.state.switch_roles()]
        for seg, sw in enumerate(switches, start=1):
            has_etcd = self.state.etcd is not None and self.state.etcd.netns == sw
            underlay.build_switch(
                sw,
                address=f"{plan.switch_ip(seg)}/{plan.UNDERLAY_PREFIX}" if has_etcd else None,
                gateway=plan.router_ip(seg) if has_etcd and segs == 2 else None,
            )
        if segs == 2:
            underlay.build_router(state.netns_name(self.name, "rt"), switches)

    def _build_host(self, index: int) -> HostState:
        name = plan.host_name(index)
        seg = plan.segment_of(index, self.state.segments)
        h = HostState(
            name=name, index=index, netns=state.netns_name(self.name, name),
            ip=plan.host_ip(index, self.state.segments), segment=seg,
            mac=plan.host_mac(index, self.state.segments),
            socket=state.agent_socket(self.name, name), log=state.agent_log(self.name, name),
        )
        self.state.hosts.append(h)
        self._save()
        sw = state.netns_name(self.name, plan.switch_role(seg, self.state.segments))
        from podnet.lab import underlay

        underlay.build_host(h.netns, sw, name, h.ip, h.mac,
                            gateway=plan.router_ip(seg) if self.state.segments == 2 else None)
        return h

    def _static_neighbours(self, new: list[HostState]) -> None:
        """Permanent underlay neighbour entries between hosts of one segment: the new
        hosts learn everybody, everybody learns the new hosts (see lab.underlay why)."""
        from podnet.lab import underlay

        fresh = {h.name for h in new}
        for h in self.state.hosts:
            peers = self.state.hosts if h.name in fresh else new
            underlay.set_neighbours(h.netns, [(o.ip, o.mac) for o in peers
                                              if o.name != h.name and o.segment == h.segment])

    def _create_network(self) -> None:
        """The lab's one network, stored before any agent starts (agents lease from it)."""
        from podnet.model import Network
        from podnet.resources import open_resources

        overlay = self.backend in OVERLAY_BACKENDS
        net = Network(
            name=self.state.network, driver=self.backend, subnet=plan.POD_CIDR,
            subnet_len=plan.POD_SUBNET_LEN if overlay else None,
            backend={"Type": self.backend, **self.state.backend_options} if overlay else {},
        )
        url = self.store_url

        def create() -> None:
            with open_resources(url, etcd=self.store_settings) as res:
                res.create_network(net)

        if self.state.etcd is not None:  # etcd is reachable only inside the lab
            netns.run_in(self.state.etcd.netns, create)
        else:
            create()

    # -- agents ------------------------------------------------------------------------------
    def _agent_cmd(self, h: HostState) -> list[str]:
        st = self.state
        tls = [f"--etcd-{k}={v}" for k, v in self.store_settings.items()
               if k in ("cacert", "cert", "key")]
        return [*_enter(h.netns), sys.executable, "-m", "podnet", "--store", st.store_url,
                *tls, "--socket", h.socket, "agent", "--node-name", h.name, "--public-ip", h.ip,
                "--lease-ttl", _num(st.lease_ttl), "--renew-margin", _num(st.renew_margin),
                "--resync-period", _num(st.resync_period)]

    def _spawn_agent(self, h: HostState) -> int:
        env = {k: v for k, v in os.environ.items() if k not in config.ENV_ETCD.values()}
        settings = self.store_settings  # the password goes by environment, not argv
        env.update({config.ENV_ETCD[k]: settings[k] for k in ("user", "password")
                    if k in settings})
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_src_dir(), env.get("PYTHONPATH")) if p)
        with open(h.log, "ab") as log:
            proc = subprocess.Popen(self._agent_cmd(h), stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=log, env=env, start_new_session=True)
        self._popens[proc.pid] = proc
        h.agent_pid = proc.pid
        self._save()
        return proc.pid

    def _start_agents(self, names: Sequence[str]) -> None:
        hosts = [self.state.host(n) for n in names]
        for h in hosts:
            self._spawn_agent(h)
        self._wait_agents(hosts)
        self._save()

    def _wait_agents(self, hosts: list[HostState]) -> None:
        """Until every agent answers its socket and (overlay) holds its host subnet and
        knows every other running host as a peer, so pods can talk once we return."""
        deadline = time.monotonic() + self.start_timeout
        pending = {h.name: h for h in hosts}
        why: dict[str, str] = {}
        while pending:
            running = {h.name for h in self.state.hosts if h.agent_pid is not None}
            for name, h in list(pending.items()):
                if h.agent_pid is None or not procs.alive(h.agent_pid):
                    raise PodnetError(KERNEL_FAILURE, f"agent on {name} exited during start-up",
                                      f"log {h.log}: {_tail(h.log)}")
                ready, why[name] = self._agent_ready(h, running - {name})
                if ready:
                    del pending[name]
            if not pending:
                break
            if time.monotonic() > deadline:
                detail = "; ".join(f"{n}: {why.get(n, '?')}" for n in sorted(pending))
                raise PodnetError(TRY_AGAIN_LATER, f"agents not ready after "
                                  f"{self.start_timeout:.0f} s", detail)
            time.sleep(0.05)

    def _agent_ready(self, h: HostState, peers: set[str]) -> tuple[bool, str]:
        try:
            if self.backend not in OVERLAY_BACKENDS:
                call(h.socket, "ping", timeout=2.0)
                return True, "ready"
            status = call(h.socket, "status", timeout=2.0)
        except OSError as exc:
            return False, f"socket not answering ({exc.strerror or exc})"
        except PodnetError as exc:
            if "unknown method" in exc.msg:
                return False, "agent has no `status` RPC (needs the agent's lease keeper)"
            return False, f"status failed: {exc}"
        _raise_errors(h.name, status)
        lease = ((status or {}).get("leases") or {}).get(self.state.network) or {}
        if not lease.get("subnet"):
            return False, "no host subnet leased yet"
        h.subnet = str(lease["subnet"])
        missing = peers - set(lease.get("peers") or [])
        if "peers" in lease and missing:
            return False, f"has not programmed peers {', '.join(sorted(missing))} yet"
        return True, "ready"

    def _check_agents(self) -> None:
        """A last look for errors an agent reported after leasing (e.g. host-gw refusing
        a peer that is not on-link, noticed only once the peer's lease arrived)."""
        if self.backend not in OVERLAY_BACKENDS:
            return
        for h in self.state.hosts:
            with contextlib.suppress(OSError):
                _raise_errors(h.name, call(h.socket, "status", timeout=5.0))

    def agent_status(self, host: str) -> dict[str, Any]:
        return call(self.state.host(host).socket, "status")

    def agent_pid(self, host: str) -> int | None:
        h = self.state.host(host)
        if h.agent_pid is not None and procs.matches(h.agent_pid, h.socket):
            return h.agent_pid
        return None

    def kill_agent(self, host: str, sig: int = signal.SIGKILL) -> None:
        """Signal the host's agent (SIGKILL: a crash, no clean-up) and wait until it is gone."""
        h = self.state.host(host)
        procs.stop(h.agent_pid, h.socket, sig=sig, popen=self._popens.pop(h.agent_pid or 0, None))
        h.agent_pid = None
        self._save()

    def start_agent(self, host: str, *, wait: bool = True) -> int:
        """(Re)start the host's agent with the lab's flags; waits until it is ready."""
        h = self.state.host(host)
        pid = self.agent_pid(host)
        if pid is None:
            pid = self._spawn_agent(h)
        if wait:
            self._wait_agents([h])
            self._save()
        return pid

    # -- hosts and pods ------------------------------------------------------------------
    def add_host(self, pods: int | None = None, *, wait_peers: bool = True) -> Host:
        """A new host hN+1 on the underlay (alternating segments), its agent, its pods.

        wait_peers=False returns as soon as the new agent is ready, so a test can time
        how long the other hosts take to learn about it.
        """
        index = max((h.index for h in self.state.hosts), default=0) + 1
        h = self._build_host(index)
        self._static_neighbours([h])
        self._start_agents([h.name])
        if wait_peers:  # the other agents have programmed the new host
            self._wait_agents([o for o in self.state.hosts if o.agent_pid is not None])
        n = self.state.pods_per_host if pods is None else pods
        self._attach_pods([(h.name, plan.pod_name(h.name, j)) for j in range(1, n + 1)])
        return self.host(h.name)

    def remove_host(self, name: str, *, graceful: bool = True) -> None:
        """Take a host away. graceful: CNI DEL its pods and SIGTERM its agent; otherwise
        SIGKILL the agent (its lease then expires by TTL, as after a crash)."""
        h = self.state.host(name)
        if graceful:
            for p in list(h.pods):
                with contextlib.suppress(PodnetError):
                    self._cni(h, p, "DEL")
        self.kill_agent(name, signal.SIGTERM if graceful else signal.SIGKILL)
        stop_forwarders(self.name, only_netns=h.netns)
        for p in h.pods:
            netns.remove(p.netns)
        netns.remove(h.netns)
        self.state.hosts.remove(h)
        self._save()
        from podnet.lab import underlay

        for o in self.state.hosts:
            if o.segment == h.segment:
                underlay.remove_neighbours(o.netns, [h.ip])

    def add_pod(self, host: str) -> Pod:
        h = self.state.host(host)
        used = [int(m.group(2)) for p in h.pods if (m := plan.POD_NAME_RE.match(p.name))]
        name = plan.pod_name(h.name, max(used, default=0) + 1)
        self._attach_pods([(h.name, name)])
        return self.pod(name)

    def remove_pod(self, name: str) -> None:
        for h in self.state.hosts:
            for p in h.pods:
                if p.name == name:
                    self._cni(h, p, "DEL")
                    netns.remove(p.netns)
                    h.pods.remove(p)
                    self._save()
                    return
        raise PodnetError(NOT_FOUND, f"lab {self.name} has no pod {name!r}")

    def _attach_pods(self, pairs: list[tuple[str, str]]) -> None:
        """Create the pods' namespaces, then CNI ADD them all in parallel."""
        self._add_pods([(self.state.host(host), pod) for host, pod in pairs])

    def _add_pods(self, pairs: list[tuple[Any, str]]) -> None:
        """Pods named `pod` under owners (a HostState, or a VmState: anything with a name,
        netns, socket and pods), attached through each owner's agent."""
        from podnet.lab import underlay

        todo = []
        for owner, pod in pairs:
            p = PodState(name=pod, netns=state.netns_name(self.name, pod), ip=None,
                         host=owner.name, container_id=f"{self.name}-{pod}")
            owner.pods.append(p)
            self._save()
            underlay.make_ns(p.netns)
            todo.append((owner, p))
        if not todo:
            return
        with cf.ThreadPoolExecutor(max_workers=min(16, len(todo))) as pool:
            futures = [pool.submit(self._cni, h, p, "ADD") for h, p in todo]
            errors = []
            for fut in futures:
                try:
                    fut.result()
                except PodnetError as exc:
                    errors.append(exc)
        self._save()
        if errors:
            raise errors[0]

    def _cni(self, h: HostState, p: PodState, command: str) -> None:
        """Exec the podnet-cni shim inside the host namespace, as a runtime would."""
        conf = {"cniVersion": "1.0.0", "name": CNI_CONF_NAME, "type": "podnet-cni",
                "network": self.state.network, "agentSocket": h.socket}
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
               "CNI_COMMAND": command, "CNI_CONTAINERID": p.container_id,
               "CNI_NETNS": netns.netns_path(p.netns), "CNI_IFNAME": "eth0",
               "CNI_ARGS": f"K8S_POD_NAMESPACE={self.name};K8S_POD_NAME={p.name}",
               "CNI_PATH": self._bin_dir()}
        shim = os.path.join(self._bin_dir(), "podnet-cni")
        proc = subprocess.run([*_enter(h.netns), shim], input=json.dumps(conf).encode(),
                              env=env, capture_output=True, timeout=60)
        try:
            out = json.loads(proc.stdout) if proc.stdout.strip() else {}
        except ValueError:
            out = {"msg": proc.stdout.decode(errors="replace")}
        if proc.returncode != 0:
            raise PodnetError(int(out.get("code", KERNEL_FAILURE)),
                              f"CNI {command} of pod {p.name} on {h.name} failed: "
                              f"{out.get('msg', '')}",
                              str(out.get("details") or proc.stderr.decode(errors="replace")))
        if command == "ADD":
            ips = out.get("ips") or []
            p.ip = ips[0]["address"].split("/")[0] if ips else None

    # -- using the lab -------------------------------------------------------------------
    def exec(self, name: str, cmd: str | Sequence[str], *, timeout: float | None = 60,
             capture: bool = True) -> subprocess.CompletedProcess:
        """Run cmd (a string: through sh -c) in the namespace of a host, pod or switch."""
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        return subprocess.run([*_enter(self.netns_of(name)), *argv], capture_output=capture,
                              text=True, timeout=timeout, check=False)

    def ping(self, src: str, dst: str, *, timeout: float = 1.0, tries: int = 2
             ) -> PingResult:
        """ICMP echo from pod (or host) src to pod dst's address."""
        return self.ping_all(pairs=[(src, dst)], timeout=timeout, tries=tries)[0]

    def ping_all(self, *, pairs: Sequence[tuple[str, str]] | None = None,
                 timeout: float = 1.0, tries: int = 2) -> list[PingResult]:
        """Every ordered pair of distinct pods (or the given pairs), all at once: one
        raw ICMP socket per source namespace (see podnet.lab.ping). A pair that does not
        answer within `timeout` is asked again, `tries` times in all."""
        from podnet.lab.ping import ping_pairs

        if pairs is None:
            names = [p.name for p in self.pods]
            pairs = [(a, b) for a in names for b in names if a != b]
        addrs = {p.name: p.ip for p in self.pods}
        todo = []
        for src, dst in pairs:
            ip = addrs.get(dst) if dst in addrs else self.pod(dst).ip
            if ip is not None:
                todo.append((self.netns_of(src), ip, (src, dst)))
        rtts = ping_pairs(todo, timeout=timeout, tries=tries)
        return [PingResult(src, dst, rtts.get((src, dst)) is not None, rtts.get((src, dst)))
                for src, dst in pairs]


def _vm_topo(st: LabState) -> dict[str, Any]:
    """The VM part of a Topo, read back from a state file (for Lab.attach)."""
    if not st.vms:
        return {}
    per_host = max(sum(1 for v in st.vms if v.host == h.name) for h in st.hosts)
    return {"vms_per_host": per_host, "vm_network": st.vm_network or "flat",
            "pods_per_vm": st.pods_per_vm, "vm_backend": st.vm_backend}


def _tail(path: str, n: int = 3) -> str:
    try:
        with open(path, "rb") as fh:
            lines = fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(lines[-n:]) or "(empty log)"


def _raise_errors(host: str, status: dict | None) -> None:
    errors = (status or {}).get("errors") or []
    if errors:
        texts = [e if isinstance(e, str) else str(e.get("msg") or e.get("error") or e)
                 if isinstance(e, dict) else str(e) for e in errors]
        raise PodnetError(INVALID_CONFIG, f"agent on {host} reports: {texts[0]}",
                          "; ".join(texts[1:]))
