"""Removing labs: by PID and by name, safe twice and after a crash.

Why it works from the lab's name alone: `lab down` may run long after `lab up` (another
process), after `lab up` crashed half-way, or after the state file was lost. The state
file gives the PIDs of agents and etcd; the agents' pid files give the udp forwarders
(which outlive agents on purpose); the lab's own directories, named in their command
lines, identify anything left after that; every namespace named LAB-* goes; and
processes found inside those namespaces that the lab did not start are only reported.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess

from podnet.errors import PodnetError
from podnet.kernel import netns
from podnet.lab import procs, state
from podnet.lab.state import LabState

FORWARDER_MODULE = "podnet.udp.forwarder"


def stop_forwarders(lab: str, only_netns: str | None = None) -> list[str]:
    """Stop the udp forwarders whose pid files the lab's agents left in the run dir
    (only those inside `only_netns`, if given). They outlive agents on purpose."""
    ino = None
    if only_netns is not None:
        try:
            ino = os.stat(netns.netns_path(only_netns)).st_ino
        except OSError:
            return []
    found = []
    for path in glob.glob(os.path.join(state.run_dir(lab), "**", "*.pid"), recursive=True):
        pid = procs.read_pid_file(path)
        if pid is None:
            continue
        if ino is not None:
            try:
                if os.stat(f"/proc/{pid}/ns/net").st_ino != ino:
                    continue
            except OSError:
                continue
        found.append(pid)
        with contextlib.suppress(OSError):
            os.unlink(path)
    stopped = procs.stop_many([(pid, FORWARDER_MODULE, None) for pid in found])
    return [f"forwarder {pid}" for pid in stopped]


def teardown(name: str, popens: dict[int, subprocess.Popen] | None = None
             ) -> dict[str, list[str]]:
    """Remove lab `name`: agents, forwarders, etcd (by PID, identity-checked), every
    namespace named `name-*`, its directories. Idempotent; works without a state file."""
    state.check_name(name)
    popens = popens or {}
    report: dict[str, list[str]] = {"processes": [], "namespaces": [], "dirs": [],
                                    "left_running": []}
    st: LabState | None = None
    with contextlib.suppress(PodnetError):
        st = state.load(name)
    if st is not None:
        agents = [(h.agent_pid, h.socket, popens.get(h.agent_pid or 0))
                  for h in [*st.hosts, *st.vms]]  # VMs' agents too (podnet.lab.vms)
        report["processes"] += [f"agent {pid}" for pid in procs.stop_many(agents)]
    report["processes"] += stop_forwarders(name)
    if st is not None and st.etcd is not None:
        if procs.stop(st.etcd.pid, st.etcd.data_dir):
            report["processes"].append(f"etcd {st.etcd.pid}")
    # After a crash lost the state file: the lab's own paths identify its processes.
    markers = (state.run_dir(name) + "/", state.lab_dir(name) + "/")
    leftovers = []
    for pid in procs.find_with_marker(markers):
        marker = next((m for m in markers if procs.matches(pid, m)), None)
        if marker is not None:
            leftovers.append((pid, marker, popens.get(pid)))
    report["processes"] += [f"leftover {pid}" for pid in procs.stop_many(leftovers)]
    mine = [ns for ns in netns.list_named() if ns.startswith(name + "-")]
    report["left_running"] = [f"{pid} in {os.path.basename(path)}: {cmd}" for pid, path, cmd
                              in procs.in_namespaces([netns.netns_path(n) for n in mine])]
    for ns in mine:
        netns.remove(ns)
        report["namespaces"].append(ns)
    for d in (state.run_dir(name), state.lab_dir(name)):
        if os.path.exists(d):
            shutil.rmtree(d, ignore_errors=True)
            report["dirs"].append(d)
    return report


def is_running(name: str) -> bool:
    """The lab has a readable state file and at least one of its agents still runs."""
    try:
        st = state.load(name)
    except PodnetError:
        return False
    return any(h.agent_pid is not None and procs.matches(h.agent_pid, h.socket)
               for h in st.hosts)


def cleanup_all_labs(*, only_stale: bool = False) -> dict[str, dict[str, list[str]]]:
    """Tear down every lab this machine knows of (for `podnet cleanup`).

    only_stale: spare labs that still run (an agent alive), removing only what crashed
    runs left behind, so a cleanup cannot pull a lab from under a running experiment.
    """
    names = [n for n in state.known_labs() if not (only_stale and is_running(n))]
    return {name: teardown(name) for name in names}
