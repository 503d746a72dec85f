"""StatefulSet pod names through real ``twistd`` processes (issue 12): a headless Service
``web`` whose EndpointSlice endpoints carry ``hostname`` web-0 (on edge-1), web-1 (on
edge-2) and web-2 (not ready).  ``web-1.web``, ``web-0.web.default.svc.cluster.local``...
reach that one pod by HTTP (Host), by CONNECT, from an edge and from the cloud; the edge's
DNS server (queried with ``dig``) gives each pod an address of its own."""

from __future__ import annotations

import os
import re
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from meshkit import (
    LOOPBACK,
    Mesh,
    RawConnection,
    Topology,
    _connects,
    _node,
    dns_query,
    free_ports,
    request,
    write_catalog,
)
from twisted.names import dns

HERE = Path(__file__).resolve().parent
PODSERVER = HERE / "podserver.py"
EDGES = ("edge-1", "edge-2")
DIG = shutil.which("dig")
DNSMASQ = shutil.which("dnsmasq") or next(
    (path for path in ("/usr/sbin/dnsmasq", "/sbin/dnsmasq") if os.access(path, os.X_OK)), None)
MANY = 60
"""Addresses of many.example.org at the upstream: 994 bytes, too many for 512."""


def headless(topology: Topology) -> list[dict[str, Any]]:
    service = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"clusterIP": "None",
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]},
    }

    def piece(pod: str, node: str, port: int, ready: bool) -> dict[str, Any]:
        # One slice per pod: the pods share 127.0.0.1, so each needs its own port number.
        return {
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"web-{pod}", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": [LOOPBACK], "hostname": pod, "nodeName": node,
                           "conditions": {"ready": ready},
                           "targetRef": {"kind": "Pod", "name": pod, "namespace": "default"}}],
        }

    t = topology
    return [service, piece("web-0", "edge-1", t.pods["web-0"], True),
            piece("web-1", "edge-2", t.pods["web-1"], True),
            piece("web-2", "edge-2", t.dead["web-2"], False)]


def start_dnsmasq(directory: Path, port: int) -> subprocess.Popen[bytes]:
    """dnsmasq on LOOPBACK:port, answering example.org from a hosts file (no other upstream,
    nothing read from the machine's own files)."""
    assert DNSMASQ is not None
    hosts = directory / "upstream-hosts"
    hosts.write_text("192.0.2.80 www.example.org\n" + "".join(
        f"198.51.100.{i + 1} many.example.org\n" for i in range(MANY)))
    log = (directory / "dnsmasq.log").open("ab")
    return subprocess.Popen(
        [DNSMASQ, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
         f"--addn-hosts={hosts}", "--local=/example.org/", f"--listen-address={LOOPBACK}",
         "--bind-interfaces", f"--port={port}", "--pid-file=", "--log-facility=-",
         *(["--user=root"] if os.geteuid() == 0 else [])],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log)


@pytest.fixture(scope="module")
def pods_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mesh, int]]:
    directory = tmp_path_factory.mktemp("podnames")
    topology = Topology.allocate(EDGES, ["web-0", "web-1"], ["web-2"])
    transparent, dns_port, upstream_port = free_ports(3)
    t = topology
    objects = [_node("cloud-1", False, None),
               *(_node(name, True, t.edges[name]["hub"]) for name in EDGES), *headless(t)]
    catalog = directory / "catalog.yaml"
    write_catalog(catalog, objects)
    mesh = Mesh(directory, topology, catalog)
    upstream = None
    try:
        mesh._spawn("pods", [str(PODSERVER), *(f"{p}={t.pods[p]}" for p in ("web-0", "web-1"))],
                    None, mesh=False)
        mesh.start_router(wait=False)
        forwarding = []
        if DNSMASQ is not None:
            upstream = dnsmasq = start_dnsmasq(directory, upstream_port)
            forwarding = ["--dns-upstream", f"{LOOPBACK}:{upstream_port}"]

            def answers() -> bool:  # (no reply in time: a TimeoutError, which wait_for retries)
                assert dnsmasq.poll() is None, (directory / "dnsmasq.log").read_text()
                dns_query(LOOPBACK, upstream_port, "www.example.org", timeout=0.5)
                return True

            mesh.wait_for("dnsmasq to answer", answers, [])
        # edge-1 also runs the DNS server; its virtual IPs come with a transparent listener
        # (no capture rules: nothing is redirected here).
        mesh.start_edge("edge-1", "--transparent", f"tcp:{transparent}:interface={LOOPBACK}",
                        "--dns", f"{LOOPBACK}:{dns_port}", *forwarding, wait=False)
        mesh.start_edge("edge-2", wait=False)
        mesh.wait_healthy(mesh.procs["router"])
        mesh.wait_edges_acked(EDGES)
        mesh.wait_for("the pods to listen",
                      lambda: all(_connects(t.pods[p]) for p in ("web-0", "web-1")),
                      [mesh.procs["pods"]])
        yield mesh, dns_port
    finally:
        mesh.stop_all()
        if upstream is not None:
            upstream.terminate()
            try:
                upstream.wait(timeout=10)
            except subprocess.TimeoutExpired:
                upstream.kill()
                upstream.wait(timeout=10)


def pod_behind(mesh: Mesh, via: str, host: str) -> str | None:
    response = request(mesh.proxy(via), "GET", "/", [("Host", host)], timeout=20)
    assert response.status == 200, (host, response.status, response.body[:200])
    return response.header("X-Pod")


@pytest.mark.parametrize(("via", "host", "pod"), [
    ("edge-1", "web-1.web", "web-1"),  # edge -> edge, the pod on edge-2
    ("edge-1", "web-0.web.default", "web-0"),  # the pod on this edge
    ("edge-2", "web-0.web.default.svc", "web-0"),
    ("edge-2", "web-0.web.default.svc.cluster.local", "web-0"),
    ("router", "web-1.web.default.svc.cluster.local:80", "web-1"),  # cloud -> edge
])
def test_http_by_pod_name_reaches_that_pod_every_time(pods_mesh: tuple[Mesh, int], via: str,
                                                     host: str, pod: str) -> None:
    mesh, _ = pods_mesh
    assert [pod_behind(mesh, via, host) for _ in range(6)] == [pod] * 6


def test_the_service_name_still_balances_over_both(pods_mesh: tuple[Mesh, int]) -> None:
    mesh, _ = pods_mesh
    seen = {pod_behind(mesh, "router", "web.default") for _ in range(8)}
    assert seen == {"web-0", "web-1"}


@pytest.mark.parametrize(("via", "target", "pod"), [
    ("edge-1", b"web-1.web:80", "web-1"),
    ("edge-2", b"web-0.web.default.svc.cluster.local:80", "web-0"),
    ("router", b"web-0.web.default:80", "web-0"),
])
def test_connect_by_pod_name_reaches_that_pod(pods_mesh: tuple[Mesh, int], via: str,
                                              target: bytes, pod: str) -> None:
    """A byte stream to the pod: an HTTP request sent inside the CONNECT tunnel is answered
    by that pod itself."""
    mesh, _ = pods_mesh
    with RawConnection(mesh.proxy(via), timeout=20) as conn:
        conn.send(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, target))
        assert conn._line().startswith(b"HTTP/1.1 200 ")
        while conn._line():
            pass
        conn.send(b"GET / HTTP/1.1\r\nHost: whatever\r\nConnection: close\r\n\r\n")
        response = conn.read_response()
        assert response.status == 200
        assert response.header("X-Pod") == pod


@pytest.mark.parametrize("via", ["edge-1", "router"])
def test_a_pod_that_is_not_ready_is_503_no_endpoint(pods_mesh: tuple[Mesh, int],
                                                     via: str) -> None:
    mesh, _ = pods_mesh
    response = request(mesh.proxy(via), "GET", "/", [("Host", "web-2.web")], timeout=20)
    assert response.status == 503
    assert response.header("X-Edgemesh-Error") == "no-endpoint"
    with RawConnection(mesh.proxy(via), timeout=20) as conn:
        conn.send(b"CONNECT web-2.web:80 HTTP/1.1\r\nHost: web-2.web:80\r\n\r\n")
        refused = conn.read_response()
        assert refused.status == 503
        assert refused.header("X-Edgemesh-Error") == "no-endpoint"


def test_an_unknown_pod_is_404(pods_mesh: tuple[Mesh, int]) -> None:
    mesh, _ = pods_mesh
    response = request(mesh.proxy("edge-1"), "GET", "/", [("Host", "web-9.web")], timeout=20)
    assert response.status == 404
    assert response.header("X-Edgemesh-Error") == "unknown-service"


def run_dig(port: int, *arguments: str) -> str:
    """What ``dig`` prints for ``arguments``, asked of LOOPBACK:port (one try of 5 s)."""
    assert DIG is not None
    done = subprocess.run([DIG, "@" + LOOPBACK, "-p", str(port), "+tries=1", "+time=5",
                           *arguments], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr + done.stdout
    return done.stdout


def dig(port: int, name: str, *options: str) -> list[str]:
    """The addresses of ``name``."""
    out = run_dig(port, "+short", *options, name, "A")
    return [line for line in out.split() if re.fullmatch(r"[0-9.]+", line)]


@pytest.mark.skipif(DIG is None, reason="dig is not installed (.ci/run installs bind9-dnsutils)")
def test_the_edge_dns_gives_each_pod_its_own_address(pods_mesh: tuple[Mesh, int]) -> None:
    _, dns_port = pods_mesh
    found = {pod: dig(dns_port, f"{pod}.web.default.svc.cluster.local")
             for pod in ("web-0", "web-1", "web-2")}
    service = dig(dns_port, "web.default.svc.cluster.local")
    addresses = [*found.values(), service]
    assert all(len(a) == 1 for a in addresses), addresses
    assert len({a[0] for a in addresses}) == 4, addresses
    assert all(a[0].startswith("240.240.") for a in addresses), addresses
    assert dig(dns_port, "web-9.web.default.svc.cluster.local") == []



def dig_reply(port: int, name: str, *options: str) -> tuple[set[str], int, int]:
    """(header flags, answer records, message size) of ``dig``'s full output; ``+ignore``
    keeps a truncated UDP reply instead of asking again over TCP."""
    out = run_dig(port, *options, name, "A")
    assert "malformed" not in out.lower(), out
    flags = re.search(r";; flags: ([a-z ]*);.*ANSWER: (\d+)", out)
    size = re.search(r"MSG SIZE\s+rcvd: (\d+)", out)
    assert flags is not None and size is not None, out
    return set(flags.group(1).split()), int(flags.group(2)), int(size.group(1))


@pytest.mark.skipif(DIG is None or DNSMASQ is None,
                    reason="needs dig and dnsmasq (.ci/run installs bind9-dnsutils, dnsmasq-base)")
def test_a_long_forwarded_answer_fits_the_udp_size_the_client_offered(
    pods_mesh: tuple[Mesh, int],
) -> None:
    """dnsmasq answers many.example.org with 60 addresses (994 bytes).  Over UDP the edge
    sends the whole records that fit and TC to a client without EDNS (before: 989 bytes and
    no TC, so a resolver that reads 512 got a cut message and no reason to ask over TCP);
    the size an EDNS client offers, within 1232; everything over TCP."""
    _, dns_port = pods_mesh
    flags, answers, size = dig_reply(dns_port, "many.example.org", "+noedns", "+ignore")
    assert "tc" in flags and 0 < answers < MANY and size <= 512, (flags, answers, size)
    flags, answers, size = dig_reply(dns_port, "many.example.org", "+bufsize=600", "+ignore")
    assert "tc" in flags and answers < MANY and size <= 600, (flags, answers, size)
    flags, answers, size = dig_reply(dns_port, "many.example.org", "+bufsize=4096")
    assert "tc" not in flags and answers == MANY and size <= 1232, (flags, answers, size)
    # dig's own retry over TCP after TC, as a resolver does: every address.
    assert sorted(dig(dns_port, "many.example.org", "+noedns")) == sorted(
        f"198.51.100.{i + 1}" for i in range(MANY))
    flags, answers, _ = dig_reply(dns_port, "many.example.org", "+noedns", "+tcp")
    assert "tc" not in flags and answers == MANY
    assert dig(dns_port, "www.example.org") == ["192.0.2.80"]


@pytest.mark.skipif(DIG is None, reason="dig is not installed (.ci/run installs bind9-dnsutils)")
def test_srv_and_ptr_records_as_kubernetes_dns_has_them(pods_mesh: tuple[Mesh, int]) -> None:
    """SRV of the headless service's named port: one per ready pod (web-2 is not), the
    pod's own name; PTR of each address the edge's DNS gives out, back to its name."""
    _, dns_port = pods_mesh

    def short(*query: str) -> list[str]:
        return run_dig(dns_port, "+short", *query).splitlines()

    srv = sorted(short("SRV", "_http._tcp.web.default.svc.cluster.local"))
    assert srv == ["0 50 80 web-0.web.default.svc.cluster.local.",
                   "0 50 80 web-1.web.default.svc.cluster.local."], srv
    for name in ("web-0.web.default.svc.cluster.local", "web-2.web.default.svc.cluster.local",
                 "web.default.svc.cluster.local"):
        [address] = dig(dns_port, name)
        assert short("-x", address) == [name + "."], (name, address)
    if DNSMASQ is not None:  # another address: the upstream's answer
        assert short("-x", "192.0.2.80") == ["www.example.org."]


@pytest.mark.skipif(DIG is None, reason="dig is not installed (.ci/run installs bind9-dnsutils)")
def test_edns_version_1_gets_badvers_and_dig_asks_again_in_version_0(
    pods_mesh: tuple[Mesh, int],
) -> None:
    _, dns_port = pods_mesh
    name = "web.default.svc.cluster.local"
    out = run_dig(dns_port, "+edns=1", "+noednsnegotiation", name, "A")
    assert "status: BADVERS" in out, out
    assert len(dig(dns_port, name, "+edns=1")) == 1  # negotiated down to version 0


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _query_spoofed_from(port: int) -> None:
    """One DNS query in a UDP datagram from LOOPBACK:port to LOOPBACK:port, as if the
    server had sent it to itself (a raw socket: root; loopback only)."""
    message = dns.Message(id=4242, recDes=True)
    message.queries = [dns.Query(b"web.default.svc.cluster.local", dns.A, dns.IN)]
    payload = message.toStr()
    datagram = struct.pack("!HHHH", port, port, 8 + len(payload), 0) + payload  # no checksum
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP) as raw:
        raw.sendto(datagram, (LOOPBACK, 0))


@pytest.mark.skipif(os.geteuid() != 0, reason="the spoofed source needs a raw socket (root)")
@pytest.mark.skipif(DIG is None, reason="dig is not installed (.ci/run installs bind9-dnsutils)")
def test_a_query_spoofed_from_the_dns_server_itself_is_answered_once(
    pods_mesh: tuple[Mesh, int],
) -> None:
    """The answer to itself is a response, and a response is never answered.  Before, the
    server answered its own answer, and that again, forever: one 55-byte datagram kept the
    edge at 100 % of a CPU."""
    mesh, dns_port = pods_mesh
    pid = mesh.procs["edge-1"].pid
    before = _cpu_seconds(pid)
    watch_until = time.monotonic() + 1.5
    _query_spoofed_from(dns_port)
    while time.monotonic() < watch_until:  # a loop would spin at once: watch the edge's CPU
        assert _cpu_seconds(pid) - before < 0.5, "the DNS server is answering itself"
        time.sleep(0.05)
    assert dig(dns_port, "web.default.svc.cluster.local") != []


def test_zz_no_crash_in_the_logs(pods_mesh: tuple[Mesh, int]) -> None:
    mesh, _ = pods_mesh
    mesh.check_alive()
    assert mesh.new_problems({}) == []
