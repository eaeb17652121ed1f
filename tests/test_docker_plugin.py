"""Contract tests of the Docker plugin server (no daemon): real HTTP over a real unix socket.

The request bodies are the ones a real dockerd 20.10 sent (tests/data/docker_payloads.json,
recorded by test_dockerd_harness.py) plus the variants kuryr-libnetwork's unit tests use
(IPv6 data, no aux addresses, no options, discovery notifications). Checked: status codes,
content type, the exact handshake answers, that a backend sees the request unchanged and
its answer goes back unchanged, the error shapes of both families, and the socket's claim
semantics, mode, worker bound and read timeout.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from podnet.api.docker import handlers
from podnet.api.docker.plugin import PluginServer, Router, claim_socket
from podnet.api.docker.protocol import CONTENT_TYPE, validate
from podnet.errors import IN_USE, INVALID_CONFIG, PodnetError

PAYLOADS = Path(__file__).parent / "data" / "docker_payloads.json"
HANDSHAKE = {
    "/Plugin.Activate": {"Implements": ["NetworkDriver", "IpamDriver"]},
    "/NetworkDriver.GetCapabilities": {"Scope": "local", "ConnectivityScope": "local"},
    "/IpamDriver.GetCapabilities": {"RequiresMACAddress": False,
                                    "RequiresRequestReplay": False},
    "/IpamDriver.GetDefaultAddressSpaces": {"LocalDefaultAddressSpace": "PodnetLocal",
                                            "GlobalDefaultAddressSpace": "PodnetGlobal"},
}
KURYR_STYLE = [  # shapes from kuryr-libnetwork's unit tests and libnetwork's docs
    ("/NetworkDriver.CreateNetwork", {
        "NetworkID": "a" * 64,
        "IPv4Data": [{"AddressSpace": "foo", "Pool": "192.168.42.0/24",
                      "Gateway": "192.168.42.1/24"}],
        "IPv6Data": [{"AddressSpace": "bar", "Pool": "fe80::/64",
                      "Gateway": "fe80::f816:3eff:fe20:57c3/64"}],
        "Options": {"com.docker.network.enable_ipv6": False,
                    "com.docker.network.generic": {"neutron.net.name": "my_network"}}}),
    ("/NetworkDriver.CreateEndpoint", {
        "NetworkID": "a" * 64, "EndpointID": "b" * 64, "Options": {},
        "Interface": {"Address": "192.168.1.2/24", "AddressIPv6": "fe80::f816:3eff:fe1c:36a9/64"}}),
    ("/NetworkDriver.Join", {"NetworkID": "a" * 64, "EndpointID": "b" * 64,
                             "SandboxKey": "/var/run/docker/netns/12bbda391ed0"}),
    ("/NetworkDriver.DiscoverNew", {"DiscoveryType": 1,
                                    "DiscoveryData": {"Address": "10.0.0.2", "self": True}}),
    ("/NetworkDriver.DiscoverDelete", {"DiscoveryType": 1,
                                       "DiscoveryData": {"Address": "10.0.0.2", "self": False}}),
    ("/NetworkDriver.AllocateNetwork", {"NetworkID": "a" * 64, "Options": None,
                                        "IPv4Data": [], "IPv6Data": []}),
    ("/NetworkDriver.FreeNetwork", {"NetworkID": "a" * 64}),
    ("/IpamDriver.RequestPool", {"AddressSpace": "PodnetGlobal", "Pool": "", "SubPool": "",
                                 "Options": {}, "V6": True}),
    ("/IpamDriver.RequestAddress", {
        "PoolID": "p1", "Address": "",
        "Options": {"com.docker.network.endpoint.macaddress": "fa:16:3e:00:00:01"}}),
]


class EchoBackend:
    """Records each call and answers what it is told (or fails with `fail`)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.answers: dict[str, dict[str, Any]] = {}
        self.fail: Exception | None = None
        self.gate: threading.Event | None = None

    def __getattr__(self, attr: str) -> Any:
        if attr not in handlers.BACKEND_METHODS.values():
            raise AttributeError(attr)

        def method(req: dict[str, Any]) -> dict[str, Any]:
            self.calls.append((attr, req))
            if self.gate is not None:
                self.gate.wait(10)
            if self.fail is not None:
                raise self.fail
            return self.answers.get(attr, {})

        return method


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 10.0) -> None:
        super().__init__("plugin", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def post(path: str, method: str, body: bytes | str | None = b"", *, verb: str = "POST",
         headers: dict[str, str] | None = None) -> tuple[int, str, dict[str, Any]]:
    conn = UnixHTTPConnection(path)
    try:
        data = body.encode() if isinstance(body, str) else body
        conn.request(verb, method, body=data, headers={
            "Accept": CONTENT_TYPE, **(headers or {})})
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, resp.getheader("Content-Type", ""), json.loads(raw) if raw else {}
    finally:
        conn.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, EchoBackend, list[tuple[str, int]]]]:
    backend = EchoBackend()
    seen: list[tuple[str, int]] = []
    path = str(tmp_path / "podnet.sock")
    server = handlers.serve(path, backend, observer=lambda m, _r, s, _a: seen.append((m, s)))
    try:
        yield path, backend, seen
    finally:
        server.close()


def recorded_calls() -> list[dict[str, Any]]:
    return [c for step in json.loads(PAYLOADS.read_text())["steps"] for c in step["calls"]]


def test_replays_every_recorded_dockerd_call(served: Any) -> None:
    path, backend, seen = served
    calls = recorded_calls()
    assert len({c["method"] for c in calls}) >= 17  # every method dockerd used
    for call in calls:
        method, request, answer = call["method"], call["request"], call["answer"]
        attr = handlers.BACKEND_METHODS.get(method)
        if attr:
            backend.answers[attr] = answer
        body = json.dumps(request) if request else ""  # handshake calls have no body
        status, ctype, got = post(path, method, body)
        assert (status, ctype) == (200, CONTENT_TYPE), (method, got)
        if method in HANDSHAKE:
            assert got == HANDSHAKE[method]
        else:
            assert got == answer
            assert backend.calls[-1] == (attr, request)  # unchanged, no extra keys
    assert [s for _m, s in seen] == [200] * len(calls)


@pytest.mark.parametrize(("method", "request_body"), KURYR_STYLE,
                         ids=[m for m, _b in KURYR_STYLE])
def test_accepts_kuryr_style_requests(served: Any, method: str,
                                      request_body: dict[str, Any]) -> None:
    path, backend, _seen = served
    status, ctype, got = post(path, method, json.dumps(request_body))
    assert (status, ctype, got) == (200, CONTENT_TYPE, {})
    assert backend.calls == [(handlers.BACKEND_METHODS[method], request_body)]


@pytest.mark.parametrize("body", ["", "null", "{}"])
def test_handshake_with_empty_null_or_object_body(served: Any, body: str) -> None:
    path, backend, _seen = served
    for method, answer in HANDSHAKE.items():
        assert post(path, method, body) == (200, CONTENT_TYPE, answer)
    assert backend.calls == []


def test_backend_errors_use_the_family_key(served: Any) -> None:
    path, backend, _seen = served
    backend.fail = PodnetError(INVALID_CONFIG, "subnet 10.0.0.0/8 overlaps network web")
    status, ctype, got = post(path, "/NetworkDriver.CreateNetwork", json.dumps(
        {"NetworkID": "n1", "Options": {}, "IPv4Data": [], "IPv6Data": []}))
    assert (status, ctype, got) == (200, CONTENT_TYPE,
                                    {"Err": "subnet 10.0.0.0/8 overlaps network web"})
    backend.fail = PodnetError(100, "pool 10.1.0.0/30 has no free address")
    got = post(path, "/IpamDriver.RequestAddress", json.dumps({"PoolID": "p", "Address": ""}))
    assert got == (200, CONTENT_TYPE, {"Error": "pool 10.1.0.0/30 has no free address"})
    backend.fail = KeyError("boom")
    status, _ctype, got = post(path, "/NetworkDriver.Join",
                               json.dumps({"NetworkID": "n", "EndpointID": "e"}))
    assert status == 200 and list(got) == ["Err"]
    assert got["Err"].startswith("podnet internal error in NetworkDriver.Join: KeyError")


@pytest.mark.parametrize(("method", "body", "text"), [
    ("/NetworkDriver.CreateNetwork", "{not json", "the request body is not valid JSON"),
    ("/IpamDriver.RequestPool", b"\xff\xfe", "the request body is not valid JSON"),
    ("/NetworkDriver.CreateNetwork", "[1, 2]", "the request body must be a JSON object"),
    ("/NetworkDriver.CreateEndpoint", '{"NetworkID": "n"}',
     "NetworkDriver.CreateEndpoint: the request has no EndpointID"),
    ("/NetworkDriver.DeleteNetwork", '{"NetworkID": ""}',
     "NetworkDriver.DeleteNetwork: NetworkID is empty"),
    ("/NetworkDriver.Join", '{"NetworkID": 7, "EndpointID": "e"}',
     "NetworkDriver.Join: NetworkID must be a string, not a number"),
    ("/IpamDriver.RequestPool", '{"AddressSpace": "x", "Options": ["a"]}',
     "IpamDriver.RequestPool: Options must be an object or null, not an array"),
    ("/IpamDriver.ReleaseAddress", '{"PoolID": "p"}',
     "IpamDriver.ReleaseAddress: the request has no Address"),
])
def test_malformed_requests_answer_400_and_reach_no_backend(
        served: Any, method: str, body: str | bytes, text: str) -> None:
    path, backend, seen = served
    status, ctype, got = post(path, method, body)
    assert (status, ctype) == (400, CONTENT_TYPE)
    # Docker reads only `Err` from a non-200 answer, whatever the family: both are set.
    assert set(got) == {"Err", "Error"} and got["Err"] == got["Error"]
    assert text in got["Err"]
    assert backend.calls == [] and seen == [(method, 400)]


def test_unknown_method_404_and_other_verbs_405(served: Any) -> None:
    path, backend, _seen = served
    status, ctype, got = post(path, "/NetworkDriver.Frobnicate", "{}")
    assert (status, ctype) == (404, CONTENT_TYPE)
    assert got == {"Err": "podnet does not implement /NetworkDriver.Frobnicate"}
    assert post(path, "/VolumeDriver.Create", "{}")[0] == 404
    status, ctype, got = post(path, "/Plugin.Activate", None, verb="GET")
    assert (status, ctype) == (405, CONTENT_TYPE) and "POST" in got["Err"]
    assert backend.calls == []


def test_chunked_body_and_size_limit(served: Any) -> None:
    path, backend, _seen = served
    conn = UnixHTTPConnection(path)
    body = json.dumps({"NetworkID": "n1"}).encode()
    conn.request("POST", "/NetworkDriver.DeleteNetwork", body=iter([body[:5], body[5:]]),
                 headers={"Transfer-Encoding": "chunked"}, encode_chunked=True)
    resp = conn.getresponse()
    assert (resp.status, json.loads(resp.read())) == (200, {})
    conn.close()
    assert backend.calls == [("delete_network", {"NetworkID": "n1"})]
    status, _ctype, got = post(path, "/NetworkDriver.DeleteNetwork", b"{}",
                               headers={"Content-Length": str(2 << 20)})
    assert status == 400 and "too large" in got["Err"]


def test_socket_mode_claim_and_removal(tmp_path: Path) -> None:
    path = str(tmp_path / "sub" / "podnet.sock")
    first = handlers.serve(path, EchoBackend())
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660 and stat.S_ISSOCK(
            os.stat(path).st_mode)
        with pytest.raises(PodnetError) as live:
            handlers.serve(path, EchoBackend())
        assert live.value.code == IN_USE and "already listening" in live.value.msg
        assert post(path, "/Plugin.Activate")[0] == 200  # the first one is unharmed
    finally:
        first.close()
    assert not os.path.exists(path)

    # A stale socket (bound, nobody listening) is replaced.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()
    with handlers.serve(path, EchoBackend()):
        assert post(path, "/Plugin.Activate")[0] == 200
    # Something that is not a socket is never removed.
    Path(path).write_text("keep me")
    with pytest.raises(PodnetError) as other:
        claim_socket(path)
    assert other.value.code == IN_USE and Path(path).read_text() == "keep me"


def test_close_leaves_a_successors_socket_alone(tmp_path: Path) -> None:
    path = str(tmp_path / "podnet.sock")
    old = handlers.serve(path, EchoBackend())
    os.unlink(path)  # someone removed ours and a successor took the path
    with handlers.serve(path, EchoBackend()):
        old.close()
        assert post(path, "/Plugin.Activate")[0] == 200


def test_workers_are_bounded_and_stalled_clients_cut_off(tmp_path: Path) -> None:
    path = str(tmp_path / "podnet.sock")
    backend = EchoBackend()
    backend.gate = threading.Event()
    server = PluginServer(path, Router(handlers.routes(backend), validate=validate),
                          workers=2, read_timeout=0.5).serve_in_thread()
    try:
        # A client that connects and says nothing is disconnected after the read timeout.
        idle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        idle.settimeout(5)
        idle.connect(path)
        started = time.monotonic()
        assert idle.recv(1) == b""
        assert time.monotonic() - started < 3
        idle.close()

        results: list[int] = []
        body = json.dumps({"NetworkID": "n"})

        def call() -> None:
            results.append(post(path, "/NetworkDriver.DeleteNetwork", body)[0])

        threads = [threading.Thread(target=call) for _ in range(3)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 5
        while len(backend.calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        # A negative observation needs a window: a third worker, if there were one, would
        # pick the third call up at once.
        time.sleep(0.3)
        assert len(backend.calls) == 2  # two workers busy, the third call waits
        backend.gate.set()
        for t in threads:
            t.join(10)
        assert results == [200, 200, 200] and len(backend.calls) == 3
    finally:
        backend.gate.set()
        server.close()
