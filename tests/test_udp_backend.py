"""The udp backend's datapath on real kernels: TUN + userspace UDP forwarder.

Topology (one prefix, built once per module, removed at the end even on failure):

    p1 (10.99.1.2) --veth-- h1 [tun, forwarder 192.168.250.1:8285]
                              |  veth "underlay" 192.168.250.0/24
    p2 (10.99.2.2) --veth-- h2 [tun, forwarder 192.168.250.2:8285]

Pods reach each other only through the TUN devices and UDP between h1 and h2 (the hosts
have no route to the other pod subnet except the cluster route into the TUN).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from podnet.kernel import tun
from podnet.udp import control
from podnet.udp.peers import Router

sys.path.insert(0, os.path.dirname(__file__))
from podnet_fixtures import Namespaces, new_prefix, sh  # noqa: E402

PORT = 8285
MTU = 1500 - 28
CLUSTER = "10.99.0.0/16"
UNDER = {1: "192.168.250.1", 2: "192.168.250.2"}
POD = {1: "10.99.1.2", 2: "10.99.2.2"}
SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/net/tun"),
                                reason="needs root and /dev/net/tun")


class Lab:
    def __init__(self) -> None:
        self.prefix = new_prefix()
        self.spaces = Namespaces(self.prefix)
        self.tun = f"{self.prefix}-t"
        self.pids: set[int] = set()

    def host(self, i: int) -> str:
        return f"{self.prefix}-h{i}"

    def pod(self, i: int) -> str:
        return f"{self.prefix}-p{i}"

    def ctl(self, i: int) -> str:
        return f"/tmp/{self.prefix}-h{i}.ctl"

    def log(self, i: int) -> str:
        return f"/tmp/{self.prefix}-h{i}.log"

    def peers(self, i: int) -> dict[str, tuple[str, int]]:
        other = 3 - i
        return {f"10.99.{other}.0/24": (UNDER[other], PORT)}

    def build(self) -> None:
        for role in ("h1", "h2", "p1", "p2"):
            self.spaces.add(role)
        p = self.prefix
        subprocess.run(["ip", "link", "add", f"{p}-u", "netns", self.host(1), "type", "veth",
                        "peer", "name", f"{p}-u", "netns", self.host(2)], check=True)
        for i in (1, 2):
            h = self.host(i)
            sh(h, f"ip addr add {UNDER[i]}/24 dev {p}-u && ip link set {p}-u up && "
                  "sysctl -qw net.ipv4.ip_forward=1")
            subprocess.run(["ip", "link", "add", f"{p}-p", "netns", h, "type", "veth", "peer",
                            "name", "eth0", "netns", self.pod(i)], check=True)
            sh(h, f"ip addr add 10.99.{i}.1/24 dev {p}-p && ip link set {p}-p up")
            sh(self.pod(i), f"ip addr add {POD[i]}/24 dev eth0 && ip link set eth0 up && "
                            f"ip route add default via 10.99.{i}.1")
            tun.ensure_tun_setup(h, self.tun, f"10.99.{i}.0/32", MTU, CLUSTER)
            self.start(i)

    def start(self, i: int) -> int:
        pid = control.ensure_forwarder(self.host(i), self.tun, f"{UNDER[i]}:{PORT}",
                                       self.ctl(i), MTU, log_path=self.log(i))
        self.pids.add(pid)
        control.set_peers(self.ctl(i), self.peers(i))
        return pid

    def teardown(self) -> None:
        for i in (1, 2):
            try:
                control.stop_forwarder(self.ctl(i))
            except Exception:  # noqa: BLE001 - keep cleaning
                pass
        for pid in self.pids:  # anything that did not answer: ours, by PID
            if control._alive(pid) and (control._is_forwarder(pid, self.ctl(1))
                                        or control._is_forwarder(pid, self.ctl(2))):
                os.kill(pid, signal.SIGKILL)
        self.spaces.remove_all()
        for i in (1, 2):
            for path in (self.ctl(i), self.log(i)):
                if os.path.exists(path):
                    os.unlink(path)


@pytest.fixture(scope="module")
def lab():
    lab = Lab()
    try:
        lab.build()
        yield lab
    finally:
        lab.teardown()


def ping(ns: str, dst: str, count: int = 3, interval: float = 0.2,
         check: bool = True) -> tuple[int, int]:
    out = subprocess.run(["ip", "netns", "exec", ns, "ping", "-n", "-q", "-c", str(count),
                          "-i", str(interval), "-W", "2", dst],
                         capture_output=True, text=True).stdout
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m, out
    sent, got = int(m.group(1)), int(m.group(2))
    if check:
        assert got == sent, out
    return sent, got


def ping_stream(ns: str, dst: str, count: int, interval: float) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", ns, "ping", "-n", "-q", "-c", str(count),
                             "-i", str(interval), "-W", "2", dst],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def stream_result(proc: subprocess.Popen) -> tuple[int, int, str]:
    out, _ = proc.communicate(timeout=30)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m, out
    return int(m.group(1)), int(m.group(2)), out


def test_router_longest_prefix_and_validation() -> None:
    import socket

    r = Router({"10.0.0.0/8": ["192.0.2.1", 1], "10.1.0.0/16": "192.0.2.2:2",
                "10.1.2.0/24": ["192.0.2.3", 3]}, socket.AF_INET)
    assert r.resolve(bytes([10, 1, 2, 9])) == ("192.0.2.3", 3)
    assert r.resolve(bytes([10, 1, 9, 9])) == ("192.0.2.2", 2)
    assert r.resolve(bytes([10, 9, 9, 9])) == ("192.0.2.1", 1)
    assert r.resolve(bytes([11, 0, 0, 1])) is None
    for bad in ({"10.1.2.3/24": ["192.0.2.1", 1]}, {"10.0.0.0/8": ["fd00::1", 1]},
                {"10.0.0.0/8": ["192.0.2.1", 0]}, {"nonsense": ["192.0.2.1", 1]}):
        with pytest.raises(ValueError):
            Router(bad, socket.AF_INET)


def test_tun_helpers_idempotent(lab: Lab) -> None:
    h = lab.host(1)
    before = sh(h, f"ip -o addr show dev {lab.tun}; ip route show dev {lab.tun}")
    tun.ensure_tun_setup(h, lab.tun, "10.99.1.0/32", MTU, CLUSTER)
    assert sh(h, f"ip -o addr show dev {lab.tun}; ip route show dev {lab.tun}") == before
    details = sh(h, f"ip -d link show dev {lab.tun}")
    assert f"mtu {MTU}" in details and "vnet_hdr on" in details and "persist on" in details
    assert "10.99.0.0/16" in before and "src 10.99.1.0" in before
    tun.remove_tun(h, f"{lab.prefix}-x")  # absent: tolerated
    tun.remove_cluster_route(h, f"{lab.prefix}-x", CLUSTER)


def test_ping_both_ways(lab: Lab) -> None:
    before = control.stats(lab.ctl(1))
    ping(lab.pod(1), POD[2])
    ping(lab.pod(2), POD[1])
    ping(lab.host(1), POD[2])  # host to remote pod, sourced from the TUN address
    after = control.stats(lab.ctl(1))
    assert after["tx_packets"] - before["tx_packets"] >= 9
    assert after["rx_packets"] - before["rx_packets"] >= 9
    assert after["tx_send_errors"] == 0 and after["rx_drop_bad"] == 0


RECEIVER = textwrap.dedent("""
    import hashlib, socket, sys
    srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", 5001)); srv.listen(1); print("ready", flush=True)
    conn, _ = srv.accept(); h = hashlib.sha256(); n = 0
    while True:
        b = conn.recv(1 << 20)
        if not b: break
        h.update(b); n += len(b)
    print(n, h.hexdigest(), flush=True)
""")
SENDER = textwrap.dedent("""
    import hashlib, os, socket, sys
    data = os.urandom(int(sys.argv[2])); s = socket.create_connection((sys.argv[1], 5001))
    s.sendall(data); s.shutdown(socket.SHUT_WR); s.recv(1)
    print(len(data), hashlib.sha256(data).hexdigest(), flush=True)
""")


def transfer(lab: Lab, nbytes: int) -> tuple[list[str], list[str]]:
    rx = subprocess.Popen(["ip", "netns", "exec", lab.pod(2), sys.executable, "-c", RECEIVER],
                          stdout=subprocess.PIPE, text=True)
    try:
        assert rx.stdout is not None and rx.stdout.readline().strip() == "ready"
        sent = subprocess.run(["ip", "netns", "exec", lab.pod(1), sys.executable, "-c", SENDER,
                               POD[2], str(nbytes)], capture_output=True, text=True,
                              timeout=60, check=True).stdout.split()
        return sent, rx.communicate(timeout=30)[0].split()
    finally:
        if rx.poll() is None:
            rx.kill()
            rx.wait()


def test_tcp_transfer_checksum(lab: Lab) -> None:
    before = control.stats(lab.ctl(1))
    sent, got = transfer(lab, 24 << 20)
    assert got == sent
    after = control.stats(lab.ctl(1))
    packets = after["tx_packets"] - before["tx_packets"]
    sized = (after["tx_bytes"] - before["tx_bytes"]) / packets
    assert sized > 8000, f"no GSO super-packets through the TUN (mean {sized:.0f} bytes)"
    assert after["tx_datagrams"] - before["tx_datagrams"] > packets  # chunked, GSO-sent
    two = control.stats(lab.ctl(2))
    assert two["rx_drop_bad"] == 0 and two["rx_write_errors"] == 0


def test_lost_datagrams_lose_only_their_packets(lab: Lab) -> None:
    """Every 50th underlay UDP skb dropped at h2's input: inner TCP recovers, data intact."""
    table = f"{lab.prefix}loss"
    sh(lab.host(2), f"nft add table inet {table} && nft add chain inet {table} in "
                    f"'{{ type filter hook input priority 0; }}' && nft add rule inet {table} in "
                    f"udp dport {PORT} numgen inc mod 50 == 7 counter drop")
    try:
        before = control.stats(lab.ctl(2))
        sent, got = transfer(lab, 8 << 20)
        dropped = sh(lab.host(2), f"nft list chain inet {table} in")
    finally:
        sh(lab.host(2), f"nft delete table inet {table}", check=False)
    assert got == sent
    assert not re.search(r"counter packets 0 ", dropped), dropped
    after = control.stats(lab.ctl(2))
    assert after["rx_drop_bad"] == before["rx_drop_bad"]
    assert after["rx_write_errors"] == before["rx_write_errors"]
    ping(lab.pod(1), POD[2], count=2)


def test_unknown_destination_dropped_and_counted(lab: Lab) -> None:
    before = control.stats(lab.ctl(1))["tx_drop_no_peer"]
    sent, got = ping(lab.pod(1), "10.99.77.7", count=3, interval=0.2, check=False)
    assert got == 0
    assert control.stats(lab.ctl(1))["tx_drop_no_peer"] - before >= sent
    ping(lab.pod(1), POD[2], count=2)  # still forwarding


def test_bad_control_request_changes_nothing(lab: Lab) -> None:
    from podnet.errors import PodnetError

    with pytest.raises(PodnetError):
        control.set_peers(lab.ctl(1), {"10.99.2.0/24": ("not-an-ip", PORT)})
    with pytest.raises(PodnetError):
        control.request(lab.ctl(1), {"op": "reboot"})
    assert control.get_peers(lab.ctl(1)) == lab.peers(1)


def test_replacing_peer_table_loses_no_packet(lab: Lab) -> None:
    stream = ping_stream(lab.pod(1), POD[2], count=200, interval=0.01)
    try:
        variants = [
            lab.peers(1),
            {**lab.peers(1), "10.99.3.0/24": ("192.168.250.3", PORT)},
            {"10.99.0.0/16": ("192.168.250.9", PORT), **lab.peers(1)},  # LPM must still win
        ]
        t_end = time.monotonic() + 1.5
        n = 0
        while time.monotonic() < t_end:
            control.set_peers(lab.ctl(1), variants[n % 3])
            control.set_peers(lab.ctl(2), {**lab.peers(2), "10.99.4.0/24": ("192.168.250.4",
                                                                            PORT)}
                              if n % 2 else lab.peers(2))
            n += 1
    finally:
        control.set_peers(lab.ctl(1), lab.peers(1))
        control.set_peers(lab.ctl(2), lab.peers(2))
        sent, got, out = stream_result(stream)
    assert n > 20
    assert sent == 200 and got == 200, out


LAUNCHER = textwrap.dedent("""
    import json, sys, time
    from podnet.udp import control
    a = json.loads(sys.argv[1])
    pid = control.ensure_forwarder(a["netns"], a["tun"], a["bind"], a["ctl"], a["mtu"],
                                   log_path=a["log"])
    control.set_peers(a["ctl"], a["peers"])
    print(pid, flush=True)
    if a["linger"]:
        time.sleep(600)
""")


def launch(lab: Lab, i: int, linger: bool) -> subprocess.Popen:
    import json

    arg = json.dumps({"netns": lab.host(i), "tun": lab.tun, "bind": f"{UNDER[i]}:{PORT}",
                      "ctl": lab.ctl(i), "mtu": MTU, "log": lab.log(i),
                      "peers": {k: list(v) for k, v in lab.peers(i).items()},
                      "linger": linger})
    env = dict(os.environ, PYTHONPATH=SRC)
    return subprocess.Popen([sys.executable, "-c", LAUNCHER, arg], stdout=subprocess.PIPE,
                            text=True, env=env)


def test_forwarder_outlives_sigkilled_agent(lab: Lab) -> None:
    control.stop_forwarder(lab.ctl(1))
    agent = launch(lab, 1, linger=True)
    try:
        assert agent.stdout is not None
        pid = int(agent.stdout.readline())
        lab.pids.add(pid)
        assert pid != agent.pid and control._alive(pid)
        with open(f"/proc/{pid}/stat") as f:
            assert int(f.read().rsplit(")", 1)[1].split()[1]) != agent.pid  # not its child
        stream = ping_stream(lab.pod(1), POD[2], count=150, interval=0.01)
        time.sleep(0.3)
        agent.send_signal(signal.SIGKILL)
        agent.wait()
        assert control._alive(pid)
        again = launch(lab, 1, linger=False)  # a new agent adopts it, pushes the table
        out, _ = again.communicate(timeout=30)
        assert again.returncode == 0 and int(out) == pid
        sent, got, text = stream_result(stream)
        assert sent == 150 and got == 150, text
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    ping(lab.pod(2), POD[1], count=2)


def test_sigterm_removes_control_socket_keeps_tun(lab: Lab) -> None:
    info = control.ping(lab.ctl(2))
    assert info is not None
    pid, receiver = info["pid"], info["receiver_pid"]
    control.stop_forwarder(lab.ctl(2), pid)
    assert not os.path.exists(lab.ctl(2))
    assert not control._alive(pid) and not control._alive(receiver)
    assert lab.tun in sh(lab.host(2), "ip -o link show")  # persistent: stays
    ping(lab.pod(1), POD[2], count=1, check=False)  # nobody forwards now: no crash
    lab.start(2)  # and a new forwarder re-attaches to the same device
    ping(lab.pod(1), POD[2], count=2)
