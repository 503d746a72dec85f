"""Routing loops with real processes on loopback (issue 11, item 3): a router and two edges of
their own, and Services whose endpoint or clusterIP is a mesh listener.

    self-a       endpoint on edge-a = edge-a's own proxy            refused by edge-a: 503
    ping-pong    endpoint on edge-b = edge-a's proxy (A → B → A)    refused by edge-a: 503
    router-self  headless, endpoint = the router's --http listener  refused by the router: 503
    edge-loop    clusterIP:port = edge-a's proxy (edge-a → router → edge-a → ...)   508 loop

(A clusterIP that is the router's own --http port loops the same way as edge-loop; the
catalog allows one service with clusterIP 127.0.0.1, and the router cannot tell a clusterIP
from a listener of its own: the hop bound is what stops both.)

Before the fix one request became ~1000 nested exchanges (until 503 overloaded) and left
dozens of pooled connections to the node itself; here each is answered at once, and the
nodes' counters show how many exchanges the request made.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from meshkit import (
    LOOPBACK,
    Mesh,
    Response,
    ServiceSpec,
    Topology,
    admin_get,
    catalog_objects,
    request,
    timed,
    write_catalog,
)

EDGES = ("edge-a", "edge-b")
PODS = ("pod-a",)
DEAD = ("dead-2",)
MAX_HOPS = 8
"""The default --max-hops."""


def services(t: Topology) -> list[ServiceSpec]:
    proxy_a = t.edges["edge-a"]["proxy"]
    return [
        ServiceSpec("pod-a", "edge-a", "pod-a", "10.96.2.1", 80, t.pods["pod-a"]),
        ServiceSpec("self-a", "edge-a", "self-a-0", "10.96.2.2", 80, proxy_a),
        ServiceSpec("ping-pong", "edge-b", "ping-pong-0", "10.96.2.3", 80, proxy_a),
        # The router reaches a headless cloud service at its endpoint: itself here.
        ServiceSpec("router-self", "cloud-1", "router-self-0", "None", 80, t.router_http),
        # The router reaches cloud services at clusterIP:port (127.0.0.1 here, as in the
        # session mesh): this one leads back into edge-a.
        ServiceSpec("edge-loop", "cloud-1", "gone-2", LOOPBACK, proxy_a, t.dead["dead-2"]),
    ]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    directory: Path = tmp_path_factory.mktemp("loops")
    topology = Topology.allocate(EDGES, PODS, DEAD)
    path = directory / "catalog.yaml"
    write_catalog(path, catalog_objects(topology, EDGES, services(topology)))
    mesh = Mesh(directory, topology, path, tls=False)
    try:
        mesh.start_all(EDGES)
        yield mesh
    finally:
        mesh.stop_all()


@pytest.fixture
def live(world: Mesh) -> Iterator[Mesh]:
    world.check_alive()
    sizes = world.log_sizes()
    yield world
    world.check_alive()
    problems = world.new_problems(sizes)
    assert not problems, "the mesh logged failures:\n" + "\n".join(problems[:40])


def counters(mesh: Mesh, node: str, service: str) -> dict[str, Any]:
    """The node's /resilience counters of ``default/service`` (zeros if never routed)."""
    proc = mesh.procs[node]
    assert proc.admin is not None
    status, view = admin_get(proc.admin, "/resilience")
    assert status == 200
    found: dict[str, Any] = view["services"].get(f"default/{service}", {"requests": 0})
    return found


def metric(mesh: Mesh, node: str, sample: str) -> float:
    """One sample of ``node``'s /metrics (0 when absent)."""
    proc = mesh.procs[node]
    assert proc.admin is not None
    text = request(proc.admin, "GET", "/metrics", [("Host", "admin")]).body.decode()
    match = re.search("^" + re.escape(sample) + r" ([0-9.e+]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def loop_errors(mesh: Mesh, node: str) -> float:
    return metric(mesh, node, 'edgemesh_errors_total{reason="loop"}')


def established_to(port: int) -> int:
    """Established TCP connections accepted on 127.0.0.1:port (from /proc/net/tcp)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state = fields[1], fields[3]
        if state == "01" and int(local.split(":")[1], 16) == port:
            count += 1
    return count


def assert_answer(response: Response, status: int, code: str, context: str) -> None:
    shown = f"{context}: {response.status} {response.headers} {response.body[:300]!r}"
    assert response.status == status, shown
    assert response.header("X-Edgemesh-Error") == code, shown
    assert response.header("X-Edgemesh-Hops") is None, shown


@pytest.mark.parametrize("via", ["edge-a", "edge-b", "router"])
def test_an_endpoint_that_is_the_edges_own_proxy_is_refused(live: Mesh, via: str) -> None:
    """self-a's only endpoint is edge-a's proxy: edge-a refused it when the catalog was
    applied (one warning), so from anywhere the answer is 503 no-endpoint, at once, and
    edge-a routed the request once at most."""
    before = counters(live, "edge-a", "self-a")["requests"]
    with timed() as elapsed:
        response = request(live.proxy(via), "GET", "/", [("Host", "self-a")])
    assert_answer(response, 503, "no-endpoint", via)
    assert b"proxy listener of edge-a itself" in response.body, response.body
    assert elapsed() < 2
    assert counters(live, "edge-a", "self-a")["requests"] == before  # refused before routing
    assert established_to(live.proxy("edge-a")) <= 1
    log = live.procs["edge-a"].log.read_text()
    proxy = live.proxy("edge-a")
    assert log.count(f"refusing endpoint 127.0.0.1:{proxy} of default/self-a") == 1
    _, view = admin_get(live.topology.edges["edge-a"]["admin"], "/resilience")
    refused = {(r["endpoint"], r["listener"]) for r in view["refused_endpoints"]}
    assert (f"{LOOPBACK}:{live.proxy('edge-a')}", "proxy") in refused
    # self-a's and ping-pong's endpoint: one address.
    assert metric(live, "edge-a", "edgemesh_catalog_refused_endpoints") == 1


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
@pytest.mark.parametrize("via", ["edge-a", "edge-b", "router"])
def test_streams_to_the_edges_own_proxy_are_refused(live: Mesh, via: str) -> None:
    """The same refusal for byte streams, with curl: an Upgrade to self-a used to be carried
    as a stream into edge-a's own proxy, where it arrived as the same Upgrade again, ~1000
    times (2000 descriptors) until the service's cap; a CONNECT to it opened a tunnel into
    the proxy.  Both are 503 no-endpoint at once now, and edge-a routed nothing."""
    before = counters(live, "edge-a", "self-a")["requests"]
    port = live.proxy(via)
    base = ["curl", "--silent", "--show-error", "--max-time", "10", "--output", "/dev/null"]
    with timed() as elapsed:
        upgrade = subprocess.run(
            [*base, "--noproxy", "*", "--write-out", "%{http_code}", "--header", "Host: self-a",
             "--header", "Connection: Upgrade", "--header", "Upgrade: websocket",
             f"http://{LOOPBACK}:{port}/"],
            capture_output=True, text=True, timeout=20, check=False)
        connect = subprocess.run(
            [*base, "--write-out", "%{http_connect}", "--proxytunnel",
             "--proxy", f"http://{LOOPBACK}:{port}", "http://self-a:80/"],
            capture_output=True, text=True, timeout=20, check=False)
    assert upgrade.stdout == "503", (upgrade.stdout, upgrade.stderr)
    assert connect.stdout == "503", (connect.stdout, connect.stderr)
    assert elapsed() < 4
    assert counters(live, "edge-a", "self-a")["requests"] == before
    assert established_to(live.proxy("edge-a")) <= 1


@pytest.mark.parametrize("via", ["edge-a", "edge-b"])
def test_a_to_b_and_back_is_refused_by_a(live: Mesh, via: str) -> None:
    """ping-pong's endpoint is on edge-b, at edge-a's proxy: edge-a refuses it (the address is
    its own); edge-b delivers once to edge-a, which answers 503 no-endpoint."""
    before = counters(live, "edge-b", "ping-pong")["requests"]
    with timed() as elapsed:
        response = request(live.proxy(via), "GET", "/", [("Host", "ping-pong")])
    assert_answer(response, 503, "no-endpoint", via)
    assert elapsed() < 2
    assert counters(live, "edge-b", "ping-pong")["requests"] - before <= 1
    assert counters(live, "edge-a", "ping-pong")["requests"] == 0


@pytest.mark.parametrize("via", ["router", "edge-a"])
def test_an_endpoint_that_is_the_routers_http_port_is_refused(live: Mesh, via: str) -> None:
    """router-self (headless) has one endpoint, on a cloud node: the router's own --http
    listener.  The router refused it: 503 no-endpoint at once, from the router or an edge."""
    port = live.proxy("router")
    before = counters(live, "router", "router-self")["requests"]
    with timed() as elapsed:
        response = request(live.proxy(via), "GET", "/", [("Host", "router-self")])
    assert_answer(response, 503, "no-endpoint", via)
    assert b"http listener of router itself" in response.body, response.body
    assert elapsed() < 2
    assert counters(live, "router", "router-self")["requests"] == before
    assert established_to(port) <= 1
    assert f"refusing endpoint 127.0.0.1:{port} of default/router-self" in \
        live.procs["router"].log.read_text()


def test_a_loop_edge_router_edge_is_cut_at_the_hop_bound(live: Mesh) -> None:
    """edge-loop's clusterIP:port is edge-a's proxy: edge-a → tunnel (hop count in the
    envelope) → router → clusterIP (in the header) → edge-a → ... until the ninth pass, on
    edge-a, answers 508 loop; edge-a and the router made 4 exchanges each."""
    before_a = counters(live, "edge-a", "edge-loop")["requests"]
    before_r = counters(live, "router", "edge-loop")["requests"]
    errors = loop_errors(live, "edge-a")
    with timed() as elapsed:
        response = request(live.proxy("edge-a"), "GET", "/", [("Host", "edge-loop")])
    assert_answer(response, 508, "loop", "edge-a")
    assert b"before edge-a" in response.body, response.body
    assert elapsed() < 3
    assert counters(live, "edge-a", "edge-loop")["requests"] - before_a == MAX_HOPS // 2
    assert counters(live, "router", "edge-loop")["requests"] - before_r == MAX_HOPS // 2
    assert loop_errors(live, "edge-a") == errors + 1
    assert established_to(live.proxy("edge-a")) <= MAX_HOPS


def test_the_hop_header_never_reaches_a_pod(live: Mesh) -> None:
    """A client's X-Edgemesh-Hops seeds the count (the front takes it out of the head): the
    pod does not see it; one at the bound is answered 508 at once."""
    response = request(live.proxy("router"), "GET", "/", [("Host", "pod-a"),
                                                         ("X-Edgemesh-Hops", "2")])
    assert response.status == 200, response.body[:300]
    seen = [name.lower() for name, _ in response.json()["headers"]]
    assert "x-edgemesh-hops" not in seen, seen
    refused = request(live.proxy("edge-b"), "GET", "/", [("Host", "pod-a"),
                                                        ("X-Edgemesh-Hops", str(MAX_HOPS))])
    assert_answer(refused, 508, "loop", "edge-b")
    bad = request(live.proxy("edge-b"), "GET", "/", [("Host", "pod-a"), ("X-Edgemesh-Hops", "x")])
    assert_answer(bad, 400, "bad-request", "edge-b")
