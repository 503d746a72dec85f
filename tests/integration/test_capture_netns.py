"""Transparent capture and DNS for real: root, network namespaces, iptables, twistd.

Two namespaces made for the test, joined by a veth pair, neither with a route out:

    edge ns (10.250.0.2)                               cloud ns (10.250.0.1)
      edge-1  --capture, transparent 127.0.0.1:15001     router  tunnel 10.250.0.1:7700
              DNS 169.254.96.16:53 → upstream            edge-2  hub 10.250.0.1:7702
      pods    pod-e1-0, cart-0 (shop), db-0 (shop)       pods    pod-e2-0, pod-cloud-0
      fake upstream DNS 127.0.0.1:5300                   "kube-proxy": 10.96.0.30:80 → pod-cloud-0
      "dummy" device (a bridge: this kernel has no       (a bridge holding 10.96.0.0/12 too)
      dummy driver) holding 10.96.0.0/12,
      240.240.0.0/16 and 169.254.96.16

The router and edge-2 live apart because the router reaches cloud services at their
clusterIP: on the edge's host its connections would be captured, as a cloud node's are not.

An unmodified client in the edge namespace (curl, Python's urllib; glibc's resolver reading
the resolv.conf that ``ip netns exec`` bind-mounts from /etc/netns/NAME) calls services by
name and by clusterIP and gets the pod's answer on the four paths.  Then: rules installed
twice are the same, removed leave nothing, a kill -9 leaves them and a restart repairs them;
DNS names, search domains, unknown names, upstream forwarding, and answers from the persisted
catalog after a restart with the router gone.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: capturekit

from capturekit import Netns, netns, netns_unavailable
from meshkit import PODSERVER, REPO_ROOT, TWISTD, Proc, sha256_of, write_catalog
from meshkit import dns_query as ask_dns
from podserver import pattern

from edgemesh.capture import CaptureRules, Exclusion, Iptables, expected


@pytest.fixture(scope="module", autouse=True)
def _requires_netns() -> None:
    """Probed once, when a test of this module first runs (not at collection)."""
    why = netns_unavailable()
    if why is not None:
        pytest.skip(f"capture netns tests: {why}")


EDGE_IP, CLOUD_IP = "10.250.0.2", "10.250.0.1"
DNS_IP = "169.254.96.16"
UPSTREAM_DNS_PORT = 5300
TRANSPARENT = 15001
PORTS = {"router-tunnel": 7700, "router-http": 7780, "router-admin": 7790,
         "edge-1-hub": 7701, "edge-1-proxy": 7781, "edge-1-admin": 7791,
         "edge-2-hub": 7702, "edge-2-proxy": 7782, "edge-2-admin": 7792}
POD_PORTS = {"pod-e1-0": 18001, "pod-e2-0": 18002, "pod-cloud-0": 18003, "db-0": 18004,
             "cart-0": 18005, "echo-e1-0": 18006, "echo-e2-0": 18007}
CLUSTER_IPS = {"pod-e1": "10.96.0.11", "pod-e2": "10.96.0.12", "pod-cloud": "10.96.0.30",
               "shop/cart": "10.96.0.40", "echo-e1": "10.96.0.50", "echo-e2": "10.96.0.51"}
ECHOSERVER = Path(__file__).resolve().parent / "echoserver.py"
"""A TCP echo origin, for the stream ports (byte streams, docs/protocols.md)."""
DEADLINE = 30.0
RESOLV_CONF = (f"nameserver {DNS_IP}\n"
               "search default.svc.cluster.local svc.cluster.local cluster.local\n"
               "options ndots:5 timeout:2 attempts:2\n")
CAPTURE_RULES = CaptureRules(port=TRANSPARENT, mesh_ports=(7700, 7701))
"""What edge-1's options amount to (its --router and --hub ports are 7700 and 7701)."""

UPSTREAM_DNS = f"""
from twisted.internet import reactor
from twisted.internet.defer import fail, succeed
from twisted.names import common, dns, error, server

class Fixed(common.ResolverBase):
    def _lookup(self, name, cls, type, timeout):
        if name.lower() == b"www.example.org" and type == dns.A:
            record = dns.Record_A("192.0.2.80", 30)
            return succeed(([dns.RRHeader(name, dns.A, dns.IN, 30, record, auth=True)], [], []))
        return fail(error.AuthoritativeDomainError(name))

factory = server.DNSServerFactory(authorities=[Fixed()])
reactor.listenUDP({UPSTREAM_DNS_PORT}, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
reactor.listenTCP({UPSTREAM_DNS_PORT}, factory, interface="127.0.0.1")
print("ready", flush=True)
reactor.run()
"""


# -- the catalog --------------------------------------------------------------------------------


def _node(name: str, edge: bool, hub: str | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "labels": {"kubernetes.io/hostname": name}}
    if edge:
        metadata["labels"]["node-role.kubernetes.io/edge"] = ""
        metadata["annotations"] = {"edgemesh.io/hub-address": hub}
    return {"apiVersion": "v1", "kind": "Node", "metadata": metadata}


def _service(namespace: str, name: str, cluster_ip: str | None, node: str,
             pod: str, port_name: str = "http", port: int = 80) -> list[dict[str, Any]]:
    service = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"clusterIP": cluster_ip or "None",
                 "ports": [{"name": port_name, "port": port, "targetPort": POD_PORTS[pod],
                            "protocol": "TCP"}]},
    }
    endpoints = {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": f"{name}-1", "namespace": namespace,
                     "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "ports": [{"name": port_name, "port": POD_PORTS[pod], "protocol": "TCP"}],
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True},
                       "nodeName": node,
                       "targetRef": {"kind": "Pod", "name": pod, "namespace": namespace}}],
    }
    return [service, endpoints]


def catalog_objects() -> list[dict[str, Any]]:
    return [
        _node("cloud-1", False),
        _node("edge-1", True, f"{EDGE_IP}:{PORTS['edge-1-hub']}"),
        _node("edge-2", True, f"{CLOUD_IP}:{PORTS['edge-2-hub']}"),
        *_service("default", "pod-e1", CLUSTER_IPS["pod-e1"], "edge-1", "pod-e1-0"),
        *_service("default", "pod-e2", CLUSTER_IPS["pod-e2"], "edge-2", "pod-e2-0"),
        *_service("default", "pod-cloud", CLUSTER_IPS["pod-cloud"], "cloud-1", "pod-cloud-0"),
        *_service("shop", "cart", CLUSTER_IPS["shop/cart"], "edge-1", "cart-0"),
        *_service("shop", "db", None, "edge-1", "db-0"),
        # Stream ports (their name says tcp): captured connections are byte streams.
        *_service("default", "echo-e1", CLUSTER_IPS["echo-e1"], "edge-1", "echo-e1-0",
                  "tcp-echo", 7),
        *_service("default", "echo-e2", CLUSTER_IPS["echo-e2"], "edge-2", "echo-e2-0",
                  "tcp-echo", 7),
    ]


# -- processes in namespaces -----------------------------------------------------------------------


def _tls_args(tap: str) -> list[str]:
    """``--insecure`` when this version's taps have TLS options (these tests are about capture)."""
    from importlib import import_module

    options = import_module(f"edgemesh.roles.{tap}").Options()
    return ["--insecure"] if "insecure" in dict.keys(options) else []


@dataclass
class World:
    directory: Path
    edge: Netns
    cloud: Netns
    catalog: Path
    procs: dict[str, Proc] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def spawn(self, name: str, space: Netns, argv: list[str], twistd: bool,
              admin: int | None = None) -> Proc:
        log = self.directory / f"{name}.log"
        if twistd:
            command = [*TWISTD, "-n", "--pidfile=", f"--logfile={log}", *argv]
        else:
            command = [sys.executable, *argv]
        with log.open("ab") as output:
            output.write(
                f"# ip netns exec {space.name} {' '.join(command[-len(argv):])}\n".encode())
            output.flush()
            popen = subprocess.Popen(space.argv(*command), cwd=self.directory, env=self.env(),
                                     stdin=subprocess.DEVNULL, stdout=output, stderr=output)
        proc = Proc(name, popen, log, admin, twistd)
        self.procs[name] = proc
        return proc

    def start_router(self) -> Proc:
        return self.spawn("router", self.cloud, [
            "edgemesh-router", "--catalog", str(self.catalog),
            "--tunnel", f"tcp:{PORTS['router-tunnel']}:interface={CLOUD_IP}",
            "--http", f"tcp:{PORTS['router-http']}:interface=127.0.0.1",
            "--admin", f"tcp:{PORTS['router-admin']}:interface=127.0.0.1",
            *_tls_args("router_tap"),
        ], twistd=True, admin=PORTS["router-admin"])

    def start_edge(self, name: str, space: Netns, hub_ip: str, *extra: str) -> Proc:
        return self.spawn(name, space, [
            "edgemesh-edge", "--node", name, "--state-dir", str(self.directory / f"state-{name}"),
            "--router", f"tcp:{CLOUD_IP}:{PORTS['router-tunnel']}",
            "--hub", f"tcp:{PORTS[name + '-hub']}:interface={hub_ip}",
            "--proxy", f"tcp:{PORTS[name + '-proxy']}:interface=127.0.0.1",
            "--admin", f"tcp:{PORTS[name + '-admin']}:interface=127.0.0.1",
            *_tls_args("edge_tap"), *extra,
        ], twistd=True, admin=PORTS[name + "-admin"])

    def start_edge_1(self) -> Proc:
        return self.start_edge(
            "edge-1", self.edge, EDGE_IP,
            "--capture", "--transparent", f"tcp:{TRANSPARENT}:interface=127.0.0.1",
            "--service-cidr", "10.96.0.0/12",
            "--dns", f"{DNS_IP}:53", "--dns-upstream", f"127.0.0.1:{UPSTREAM_DNS_PORT}",
        )

    # -- waiting ---------------------------------------------------------------------------------

    def wait_for(self, what: str, check: Callable[[], bool], procs: list[Proc]) -> None:
        end = time.monotonic() + DEADLINE
        while True:
            for proc in procs:
                if not proc.alive():
                    raise AssertionError(f"{proc.name} exited ({proc.popen.returncode}) while "
                                         f"waiting for {what}\n{self.tails()}")
            with contextlib.suppress(OSError, ValueError, http.client.HTTPException):
                if check():
                    return
            if time.monotonic() > end:
                raise AssertionError(f"timed out after {DEADLINE}s waiting for {what}\n"
                                     f"{self.tails()}")
            time.sleep(0.1)

    def healthy(self, space: Netns, port: int) -> bool:
        return space.run(_get, port, "/healthz", "admin")[0] == 200

    def wait_healthy(self, name: str) -> None:
        proc = self.procs[name]
        space = self.cloud if name in ("router", "edge-2") else self.edge
        assert proc.admin is not None
        self.wait_for(f"{name} /healthz", lambda: self.healthy(space, proc.admin or 0), [proc])

    def wait_acked(self, names: list[str]) -> None:
        def acked() -> bool:
            _status, body = self.cloud.run(_get, PORTS["router-admin"], "/status", "admin")
            revision = json.loads(body)["catalog_revision"]
            _, body = self.cloud.run(_get, PORTS["router-admin"], "/edges", "admin")
            edges = {e["node"]: e for e in json.loads(body)}
            return all(n in edges and edges[n]["acked_revision"] == revision for n in names)

        self.wait_for(f"{', '.join(names)} to ack the catalog", acked,
                      [self.procs["router"], *(self.procs[n] for n in names)])

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None:
            proc.stop()

    def kill9(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.popen.send_signal(signal.SIGKILL)
        proc.popen.wait(10)

    def tails(self) -> str:
        return "\n".join(f"----- {p.name} ({'running' if p.alive() else 'exited'}) -----\n"
                         f"{p.tail(30)}" for p in self.procs.values())

    def log_of(self, name: str) -> str:
        return (self.directory / f"{name}.log").read_text(errors="replace")

    # -- clients in the edge namespace ----------------------------------------------------------

    def curl(self, url: str, *extra: str) -> tuple[int, dict[str, str], bytes]:
        done = self.edge.exec("curl", "-sS", "-i", "--max-time", "15", *extra, url,
                              check=False, timeout=30)
        assert done.returncode == 0, f"curl {url}: {done.returncode} {done.stderr}\n{self.tails()}"
        return _parse_http(done.stdout.encode("latin-1"))

    def resolve(self, name: str) -> str:
        """What glibc's getaddrinfo says in the edge namespace (its resolv.conf, search list)."""
        done = self.edge.exec(sys.executable, "-c", (
            "import socket, sys\n"
            "try:\n"
            "    print(socket.gethostbyname(sys.argv[1]))\n"
            "except socket.gaierror as error:\n"
            "    print('error', error.errno)\n"), name, timeout=30)
        return done.stdout.strip()

    def rules(self, command: str = "iptables") -> list[str]:
        return Iptables(command, run=self.edge.runner()).show()


def _get(port: int, path: str, host: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Host": host})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _parse_http(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """curl -i output (read as text: line ends are already plain newlines)."""
    raw = raw.replace(b"\r\n", b"\n")
    head, _, body = raw.partition(b"\n\n")
    while head.startswith(b"HTTP/1.1 100 "):
        head, _, body = body.partition(b"\n\n")
    lines = head.decode("latin-1").split("\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def dns_query(space: Netns, name: str, kind: int = 1, server: str = DNS_IP,
              port: int = 53) -> tuple[int, list[str]]:
    """(rcode, A records) of one query over UDP, sent from inside ``space``."""
    return space.run(ask_dns, server, port, name, kind)


# -- the world -------------------------------------------------------------------------------------


def _plumb(edge: Netns, cloud: Netns) -> None:
    edge.exec("ip", "link", "add", "eme0", "type", "veth", "peer", "name", "emc0",
              "netns", cloud.name)
    edge.exec("ip", "addr", "add", f"{EDGE_IP}/30", "dev", "eme0")
    edge.exec("ip", "link", "set", "eme0", "up")
    cloud.exec("ip", "addr", "add", f"{CLOUD_IP}/30", "dev", "emc0")
    cloud.exec("ip", "link", "set", "emc0", "up")
    for space, addresses in ((edge, ["10.96.0.1/12", "240.240.0.1/16", f"{DNS_IP}/32"]),
                             (cloud, ["10.96.0.1/12"])):
        # A device holding the service CIDR, so that connect() finds a route (nothing routes
        # out): "dummy" where the kernel has it, else an empty bridge, which does the same.
        if space.exec("ip", "link", "add", "emsvc", "type", "dummy", check=False).returncode:
            space.exec("ip", "link", "add", "emsvc", "type", "bridge")
        space.exec("ip", "link", "set", "emsvc", "up")
        for address in addresses:
            space.exec("ip", "addr", "add", address, "dev", "emsvc")
    # The cloud's own service proxy (kube-proxy's part): pod-cloud's clusterIP to its pod.
    cloud.exec("iptables", "-t", "nat", "-A", "OUTPUT", "-d", f"{CLUSTER_IPS['pod-cloud']}/32",
               "-p", "tcp", "--dport", "80", "-j", "REDIRECT", "--to-ports",
               str(POD_PORTS["pod-cloud-0"]))
    edge.write_resolv_conf(RESOLV_CONF)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    directory = tmp_path_factory.mktemp("capture")
    catalog = directory / "catalog.yaml"
    write_catalog(catalog, catalog_objects())
    with netns("eme") as edge, netns("emc") as cloud:
        instance = World(directory, edge, cloud, catalog)
        try:
            _plumb(edge, cloud)
            (directory / "upstream_dns.py").write_text(UPSTREAM_DNS)
            instance.spawn("upstream-dns", edge, [str(directory / "upstream_dns.py")], twistd=False)
            pods_edge = [f"{p}={POD_PORTS[p]}" for p in ("pod-e1-0", "cart-0", "db-0")]
            pods_cloud = [f"{p}={POD_PORTS[p]}" for p in ("pod-e2-0", "pod-cloud-0")]
            instance.spawn("pods-edge", edge, [str(PODSERVER), *pods_edge], twistd=False)
            instance.spawn("pods-cloud", cloud, [str(PODSERVER), *pods_cloud], twistd=False)
            instance.spawn("echo-edge", edge, [str(ECHOSERVER), str(POD_PORTS["echo-e1-0"])],
                           twistd=False)
            instance.spawn("echo-cloud", cloud, [str(ECHOSERVER), str(POD_PORTS["echo-e2-0"])],
                           twistd=False)
            instance.start_router()
            instance.start_edge("edge-2", cloud, CLOUD_IP)
            instance.start_edge_1()
            for name in ("router", "edge-2", "edge-1"):
                instance.wait_healthy(name)
            instance.wait_acked(["edge-1", "edge-2"])
            yield instance
        finally:
            for name in list(instance.procs):
                instance.stop(name)


@pytest.fixture
def live(world: World) -> Iterator[World]:
    for name in ("router", "edge-1", "edge-2"):
        assert name in world.procs and world.procs[name].alive(), world.tails()
    yield world


# -- the four paths, by name and by clusterIP -----------------------------------------------------


@pytest.mark.parametrize(
    ("url", "pod"),
    [
        ("http://pod-e1/echo?path=same-node", "pod-e1-0"),
        ("http://pod-e1.default.svc.cluster.local/echo", "pod-e1-0"),
        (f"http://{CLUSTER_IPS['pod-e1']}:80/echo", "pod-e1-0"),
        ("http://pod-e2/echo?path=edge-to-edge", "pod-e2-0"),
        ("http://pod-e2.default.svc.cluster.local/echo", "pod-e2-0"),
        (f"http://{CLUSTER_IPS['pod-e2']}/echo", "pod-e2-0"),
        ("http://pod-cloud/echo?path=edge-to-cloud", "pod-cloud-0"),
        ("http://pod-cloud.default.svc.cluster.local/echo", "pod-cloud-0"),
        (f"http://{CLUSTER_IPS['pod-cloud']}:80/echo", "pod-cloud-0"),
        ("http://cart.shop/echo", "cart-0"),
        ("http://db.shop.svc.cluster.local/echo?headless=1", "db-0"),
    ],
)
def test_an_unmodified_client_reaches_the_pod(live: World, url: str, pod: str) -> None:
    status, headers, body = live.curl(url, "-H", "X-Probe: capture", "--data-binary", "hello")
    assert status == 200, body[:300]
    assert headers.get("x-pod") == pod
    seen = json.loads(body)
    assert seen["pod"] == pod
    assert seen["method"] == "POST" and seen["body_length"] == 5
    assert ["X-Probe", "capture"] in seen["headers"]
    host = url.split("/")[2].removesuffix(":80")  # curl leaves the default port out
    assert ["Host", host] in seen["headers"], "the Host header reaches the pod unchanged"


def test_cloud_to_edge_with_capture_on(live: World) -> None:
    """The fourth path: a cloud app through the router to edge-1's pod.  Edge-1 reaches its
    pod at 127.0.0.1, outside the captured ranges: capture does not touch the mesh's own
    connections."""
    status, body = live.cloud.run(_get, PORTS["router-http"], "/echo?path=cloud-to-edge", "pod-e1")
    assert status == 200
    assert json.loads(body)["pod"] == "pod-e1-0"


@pytest.mark.skipif(shutil.which("socat") is None, reason="socat is not installed (.ci/run)")
@pytest.mark.parametrize(("target", "path"), [
    (f"{CLUSTER_IPS['echo-e1']}:7", "a pod on this node, by clusterIP"),
    ("echo-e1:7", "by name (the mesh's DNS)"),
    ("echo-e2.default.svc.cluster.local:7", "edge -> edge, by name"),
])
def test_a_captured_stream_port_is_carried_as_bytes(live: World, target: str, path: str) -> None:
    """An unmodified TCP client (socat) connects to a stream port: not HTTP, carried as a
    byte stream from its first byte, both half-closes included (socat exits by the far
    end's FIN, well before its own 10 s wait)."""
    lines = "".join(f"line {i} of a plain TCP conversation\n" for i in range(2000))
    started = time.monotonic()
    done = live.edge.exec("socat", "-t", "10", "-", f"TCP:{target}", stdin=lines, timeout=30,
                          check=False)
    took = time.monotonic() - started
    assert done.returncode == 0, f"{path}: {done.stderr}\n{live.tails()}"
    assert done.stdout == lines, path
    assert took < 8, f"{path}: the far end's FIN did not come back ({took:.1f}s)"


def test_python_urllib_through_capture(live: World) -> None:
    done = live.edge.exec(sys.executable, "-c", (
        "import json, urllib.request\n"
        "with urllib.request.urlopen('http://pod-e2/echo?client=urllib', timeout=15) as r:\n"
        "    print(r.status, r.headers['X-Pod'], json.load(r)['path'])\n"), timeout=30)
    assert done.stdout.split() == ["200", "pod-e2-0", "/echo?client=urllib"]


@contextlib.contextmanager
def shaped(space: Netns, device: str, rate: str) -> Iterator[None]:
    """``device``'s sending in ``space`` held to ``rate`` (a token bucket), for the block."""
    space.exec("tc", "qdisc", "add", "dev", device, "root", "tbf", "rate", rate,
               "burst", "32kb", "limit", "1mb")
    try:
        yield
    finally:
        space.exec("tc", "qdisc", "del", "dev", device, "root", check=False)


def switches(pid: int) -> int:
    """Times the process's main thread (its reactor) gave up the CPU: its wake-ups."""
    with open(f"/proc/{pid}/status") as status:
        return sum(int(line.split()[1]) for line in status
                   if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")))


SLOW_LINK_WAKEUPS = 400
"""edge-1's most wake-ups for the 4 MiB below: 1039 and 1215 before its link waited for large
pieces of a large frame's rest (SO_RCVLOWAT), 95, 105 and 95 since, in 1.75 s each time."""


@pytest.mark.skipif(shutil.which("tc") is None, reason="needs tc (iproute2)")
def test_a_download_over_a_slow_link_arrives_whole_and_wakes_edge_1_for_large_pieces(
        live: World) -> None:
    """Edge → edge over the veth held to 20 Mbit/s both ways, as a slow network between two
    edge nodes: the spliced body comes to edge-1 a packet at a time, and edge-1 takes it in
    large pieces, its link alive and the body unchanged."""
    size = 4 << 20
    out = live.directory / "slow-link.bin"
    edge1 = live.procs["edge-1"].pid
    with shaped(live.edge, "eme0", "20mbit"), shaped(live.cloud, "emc0", "20mbit"):
        before = switches(edge1)
        done = live.edge.exec("curl", "-sS", "--max-time", "30", "-o", str(out), "-w",
                              "%{http_code} %{size_download} %{time_total}",
                              f"http://pod-e2/bytes?n={size}&seed=31", check=False, timeout=60)
        woke = switches(edge1) - before
    assert done.returncode == 0, f"{done.stderr}\n{live.tails()}"
    code, length, seconds = done.stdout.split()
    assert (code, int(length)) == ("200", size)
    assert float(seconds) > size * 8 / 20e6 * 0.9, "the link was not held to 20 Mbit/s"
    with out.open("rb") as body:
        assert sha256_of(iter(lambda: body.read(1 << 16), b"")) == sha256_of(pattern(31, size))
    assert woke < SLOW_LINK_WAKEUPS, f"edge-1 woke {woke} times for {size} bytes"
    status, _, reply = live.curl("http://pod-e2/echo?after=slow-link")  # the link goes on
    assert status == 200 and json.loads(reply)["pod"] == "pod-e2-0"


def test_unknown_service_ip_and_non_http(live: World) -> None:
    status, headers, body = live.curl("http://10.96.0.99/")
    assert status == 404 and headers.get("x-edgemesh-error") == "unknown-service"
    assert b"10.96.0.99" in body

    def tls_hello() -> bytes:
        with socket.create_connection((CLUSTER_IPS["pod-e1"], 443), timeout=10) as sock:
            sock.sendall(b"\x16\x03\x01\x00\x05hello")
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
            return data

    answer = live.edge.run(tls_hello)
    assert answer.startswith(b"HTTP/1.1 501 ")
    assert b"not HTTP: captured connection to 10.96.0.11:443 starts with 0x16" in answer
    live.wait_for("the refusal in edge-1's log",
                  lambda: ("not HTTP: captured connection to 10.96.0.11:443"
                           in live.log_of("edge-1")),
                  [live.procs["edge-1"]])


def test_the_transparent_port_refuses_direct_connections(live: World) -> None:
    """Reached directly (not redirected), the kernel's original destination is the listener
    itself: refused, so the port is no open proxy even when bound beyond loopback."""
    status, body = live.edge.run(_get, TRANSPARENT, "/", "pod-e1")
    assert status == 403 and b"redirected by the capture rules only" in body


def test_no_route_out(live: World) -> None:
    for space in (live.edge, live.cloud):
        routes = space.exec("ip", "route", "show").stdout
        assert "default" not in routes, routes


# -- DNS -------------------------------------------------------------------------------------------


def test_dns_names_and_search_domains(live: World) -> None:
    for name in ("pod-e1.default.svc.cluster.local", "pod-e1.default.svc", "pod-e1.default",
                 "pod-e1"):
        assert dns_query(live.edge, name) == (0, [CLUSTER_IPS["pod-e1"]]), name
    # glibc with the pod-style resolv.conf: short names through the search list.
    assert live.resolve("pod-e2") == CLUSTER_IPS["pod-e2"]
    assert live.resolve("cart.shop") == CLUSTER_IPS["shop/cart"]
    assert live.resolve("pod-cloud.default.svc.cluster.local") == CLUSTER_IPS["pod-cloud"]
    vip = live.resolve("db.shop")
    assert vip.startswith("240.240."), vip


def test_dns_unknown_names_and_upstream(live: World) -> None:
    assert dns_query(live.edge, "nope.default.svc.cluster.local") == (3, [])
    assert dns_query(live.edge, "nope.example.org") == (3, [])  # upstream's NXDOMAIN
    assert dns_query(live.edge, "www.example.org") == (0, ["192.0.2.80"])
    assert live.resolve("www.example.org") == "192.0.2.80"
    assert live.resolve("nope").startswith("error")


# -- rules: twice, remove, crash, offline restart --------------------------------------------------


@pytest.mark.parametrize("backend", ["iptables-nft", "iptables-legacy"])
def test_cli_install_twice_same_remove_none(tmp_path: Path, backend: str) -> None:
    with netns("emr") as space:
        if space.exec(f"{backend}-save", "-t", "nat", check=False).returncode != 0:
            pytest.skip(f"{backend} does not work here")
        cli = [sys.executable, "-m", "edgemesh", "iptables", "--iptables", backend]
        env_prefix = ["env", f"PYTHONPATH={REPO_ROOT}"]
        install = [*env_prefix, *cli, "install", "--exclude", "10.96.0.10:53", "--exclude", ":22"]

        def saved() -> str:
            text = space.exec(f"{backend}-save", "-t", "nat").stdout
            return "\n".join(line for line in text.splitlines() if not line.startswith("#"))

        pristine = saved()
        space.exec(*install)
        once = saved()
        space.exec(*install)
        assert saved() == once
        rules = CaptureRules(exclude=(Exclusion.parse("10.96.0.10:53"), Exclusion.parse(":22")),
                             mesh_ports=(7700, 7701))
        assert Iptables(backend, run=space.runner()).show() == expected(rules), \
            "the generated text is in iptables-save's own form"
        shown = space.exec(*env_prefix, *cli, "show").stdout.splitlines()
        assert shown == expected(rules)
        space.exec(*env_prefix, *cli, "remove")
        assert saved() == pristine
        assert "EDGEMESH" not in saved()


def test_crash_leaves_rules_and_restart_repairs_them(live: World) -> None:
    assert live.rules() == expected(CAPTURE_RULES)
    live.kill9("edge-1")
    assert live.rules() == expected(CAPTURE_RULES), "a crash leaves the rules in place"

    def refused() -> bool:
        with socket.create_connection((CLUSTER_IPS["pod-e1"], 80), timeout=5):
            return False

    with pytest.raises(ConnectionRefusedError):
        live.edge.run(refused)  # fails closed and fast while the edge is down
    # Damage them as a careless hand would.
    live.edge.exec("iptables", "-t", "nat", "-D", "EDGEMESH-OUTPUT", "-d", "10.96.0.0/12",
                   "-p", "tcp", "-j", "REDIRECT", "--to-ports", str(TRANSPARENT))
    live.edge.exec("iptables", "-t", "nat", "-A", "OUTPUT", "-j", "EDGEMESH-OUTPUT")
    assert live.rules() != expected(CAPTURE_RULES)
    log_size = len(live.log_of("edge-1"))
    live.start_edge_1()
    live.wait_healthy("edge-1")
    assert live.rules() == expected(CAPTURE_RULES)
    assert "capture rules repaired" in live.log_of("edge-1")[log_size:]
    live.wait_acked(["edge-1"])
    status, headers, _ = live.curl("http://pod-e1/after-repair")
    assert (status, headers.get("x-pod")) == (200, "pod-e1-0")


def test_clean_stop_removes_and_offline_restart_answers(live: World) -> None:
    vip_before = live.resolve("db.shop")
    live.stop("edge-1")
    assert live.rules() == [], "a clean stop removes every rule"
    assert "capture rules removed" in live.log_of("edge-1")
    # The cloud goes away; edge-1 restarts from its persisted catalog.
    live.stop("router")
    live.start_edge_1()
    live.wait_healthy("edge-1")
    assert live.rules() == expected(CAPTURE_RULES)
    assert dns_query(live.edge, "pod-e1.default.svc.cluster.local") == (0, [CLUSTER_IPS["pod-e1"]])
    assert live.resolve("cart.shop") == CLUSTER_IPS["shop/cart"]
    assert live.resolve("db.shop") == vip_before, "virtual IPs are stable across restarts"
    assert live.resolve("www.example.org") == "192.0.2.80"
    status, headers, _ = live.curl("http://pod-e1/offline")
    assert (status, headers.get("x-pod")) == (200, "pod-e1-0")
    status, headers, _ = live.curl("http://db.shop/offline")
    assert (status, headers.get("x-pod")) == (200, "db-0")
    status, headers, _ = live.curl("http://pod-e2/offline")  # hub to edge-2: no router needed
    assert (status, headers.get("x-pod")) == (200, "pod-e2-0")
    status, headers, _ = live.curl("http://pod-cloud/offline")
    assert status == 502 and headers.get("x-edgemesh-error") == "peer-unavailable"
