"""The four request paths through real processes, every name form, both request forms;
headers and bodies end to end; keep-alive and pipelining on one client connection."""

from __future__ import annotations

import hashlib
import http.client
import os
from dataclasses import dataclass
from typing import Any

import pytest
from meshkit import LOOPBACK, Mesh, RawConnection, Response, admin_get, request, send
from podserver import pattern


@dataclass(frozen=True)
class Path:
    name: str
    via: str
    """"edge-1" (its service bus proxy) or "router" (its --http listener)."""
    service: str
    pod: str


PATHS = [
    Path("edge-same-node", "edge-1", "pod-e1", "pod-e1-0"),
    Path("edge-to-edge", "edge-1", "pod-e2", "pod-e2-0"),
    Path("edge-to-cloud", "edge-1", "pod-cloud", "pod-cloud-0"),
    Path("cloud-to-edge", "router", "pod-e2", "pod-e2-0"),
    Path("cloud-to-edge-1", "router", "pod-e1", "pod-e1-0"),
]
CLUSTER_IPS = {"pod-e1": "10.96.0.11", "pod-e2": "10.96.0.12", "pod-cloud": "127.0.0.1"}
NAME_FORMS = ["{svc}", "{svc}.default", "{svc}.default.svc.cluster.local", "{svc}:{port}",
              "{ip}:{port}"]


def authority(mesh: Mesh, form: str, service: str) -> str:
    port = mesh.topology.cloud_port if service == "pod-cloud" else 80
    return form.format(svc=service, port=port, ip=CLUSTER_IPS[service])


def described(response: Response, context: str) -> dict[str, Any]:
    """The pod's JSON description of the request it received."""
    assert response.status == 200, f"{context}: {response.status} {response.body[:300]!r}"
    seen: dict[str, Any] = response.json()
    return seen


@pytest.mark.parametrize("absolute", [False, True], ids=["origin-form", "absolute-form"])
@pytest.mark.parametrize("form", NAME_FORMS)
@pytest.mark.parametrize("path", PATHS, ids=[p.name for p in PATHS])
def test_path_name_form(live: Mesh, path: Path, form: str, absolute: bool) -> None:
    host = authority(live, form, path.service)
    body = os.urandom(3000) + b"\r\n\x00end"
    headers = [("X-Test", f"{path.name} {form}")]
    if absolute:
        target = f"http://{host}/echo/{path.name}?q=1&r=%20"
    else:
        target = f"/echo/{path.name}?q=1&r=%20"
        headers.append(("Host", host))
    response = request(live.proxy(path.via), "POST", target, headers, body)
    seen = described(response, f"POST {target} Host {host} via {path.via}")
    assert response.header("X-Pod") == path.pod
    assert seen["pod"] == path.pod
    assert seen["method"] == "POST"
    # Whatever form the client used, the pod gets origin-form and the authority as Host.
    assert seen["path"] == f"/echo/{path.name}?q=1&r=%20"
    received = dict(seen["headers"])
    assert received["Host"] == host
    assert received["X-Test"] == f"{path.name} {form}"
    assert seen["body_length"] == len(body)
    assert seen["body_sha256"] == hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize("path", PATHS, ids=[p.name for p in PATHS])
def test_headers_end_to_end(live: Mesh, path: Path) -> None:
    """Hop-by-hop fields (and those Connection lists) stop at the first hop, both ways;
    end-to-end fields arrive in order, with their case and repetitions."""
    request_headers = [
        ("Host", path.service),
        ("X-MiXeD-Case", "Value With  Spaces"),
        ("X-Repeated", "one"),
        ("X-Repeated", "two"),
        ("Connection", "keep-alive, X-Secret"),
        ("X-Secret", "must not reach the pod"),
        ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"),
        ("Proxy-Connection", "keep-alive"),
        ("Proxy-Authorization", "Basic c2VjcmV0"),
        ("Accept", "*/*"),
        ("Cookie", "a=1; b=2"),
    ]
    response = request(live.proxy(path.via), "GET", "/hop", request_headers)
    seen = described(response, f"{path.name} /hop")
    received = seen["headers"]
    names = [name.lower() for name, _ in received]
    for hop in ("x-secret", "keep-alive", "te", "proxy-connection", "proxy-authorization"):
        assert hop not in names, f"{hop} reached the pod: {received}"
    kept = [(k, v) for k, v in received if k.lower().startswith("x-")]
    # The router's egress to a cluster IP adds the hop count (a loop guard: the cluster's
    # proxy may lead back into the mesh); pods on edges never get it.
    hops = [("X-Edgemesh-Hops", "2")] if path.service == "pod-cloud" else []
    assert kept == [("X-MiXeD-Case", "Value With  Spaces"), ("X-Repeated", "one"),
                    ("X-Repeated", "two"), *hops]
    assert ["Accept", "*/*"] in received
    assert ["Cookie", "a=1; b=2"] in received

    # The pod's response carried hop-by-hop fields too.
    assert response.header("X-End-To-End") == "kept"
    assert response.header("Content-Type") == "application/json"
    assert response.header("X-Pod") == path.pod
    for hop in ("X-Hop-Listed", "Keep-Alive", "Proxy-Connection", "Trailer", "Upgrade"):
        assert response.header(hop) is None, f"{hop} reached the client: {response.headers}"
    assert response.header("Connection") in (None, "keep-alive")


@pytest.mark.parametrize("path", PATHS, ids=[p.name for p in PATHS])
def test_status_and_body_unchanged(live: Mesh, path: Path) -> None:
    port = live.proxy(path.via)
    for code in (201, 302, 404, 418, 500, 503):
        response = request(port, "GET", f"/status?code={code}", [("Host", path.service)])
        assert response.status == code, response.body[:300]
        assert response.header("X-Pod") == path.pod
        assert response.header("X-Edgemesh-Error") is None
        assert response.json()["path"] == f"/status?code={code}"
    # A binary response body of several frames, byte for byte.
    response = request(port, "GET", "/bytes?n=300001&seed=5", [("Host", path.service)])
    assert response.status == 200
    assert response.body == b"".join(pattern(5, 300001))
    head = request(port, "HEAD", "/bytes?n=1000&seed=5", [("Host", path.service)])
    assert head.status == 200 and head.body == b""
    assert head.header("X-Pod") == path.pod


@pytest.mark.parametrize("path", PATHS[:2], ids=[p.name for p in PATHS[:2]])
def test_head_keeps_content_length(live: Mesh, path: Path) -> None:
    """RFC 9110 §9.3.2: a HEAD response carries the Content-Length a GET would have."""
    head = request(live.proxy(path.via), "HEAD", "/bytes?n=1000&seed=5",
                   [("Host", path.service)])
    assert head.status == 200 and head.body == b""
    assert head.header("Content-Length") == "1000"


def test_paths_take_the_expected_links(live: Mesh) -> None:
    """edge → edge goes over a hub link, edge → cloud over the tunnel; the router holds a
    tunnel to every edge."""
    for service in ("pod-e2", "pod-cloud"):
        assert request(live.proxy("edge-1"), "GET", "/", [("Host", service)]).status == 200
    edge1 = admin_get(live.topology.edges["edge-1"]["admin"], "/status")[1]
    assert {"edge-2", "router"} <= set(edge1["links"]), edge1
    assert edge1["role"] == "edge" and edge1["serving"] is True
    router = admin_get(live.topology.router_admin, "/status")[1]
    assert {"edge-1", "edge-2"} <= set(router["links"]), router


def test_keep_alive_across_paths(live: Mesh) -> None:
    """Several requests on one client connection, each to a different path."""
    conn = http.client.HTTPConnection(LOOPBACK, live.topology.edges["edge-1"]["proxy"],
                                      timeout=10)
    try:
        sockets = set()
        for round_ in range(3):
            for service, pod in (("pod-e1", "pod-e1-0"), ("pod-e2", "pod-e2-0"),
                                 ("pod-cloud", "pod-cloud-0")):
                body = b"r%d" % round_ * 1000
                response = send(conn, "POST", f"/ka/{round_}", [("Host", service)], body)
                seen = described(response, f"keep-alive {service} round {round_}")
                assert seen["pod"] == pod and seen["body_length"] == len(body)
                assert response.header("Connection") != "close"
                assert conn.sock is not None, "the mesh closed a keep-alive connection"
                sockets.add(conn.sock.getsockname())
        assert len(sockets) == 1
    finally:
        conn.close()

    # The router's listener too.
    conn = http.client.HTTPConnection(LOOPBACK, live.topology.router_http, timeout=10)
    try:
        for service, pod in (("pod-e1", "pod-e1-0"), ("pod-e2", "pod-e2-0")) * 2:
            seen = described(send(conn, "GET", "/ka", [("Host", service)]), service)
            assert seen["pod"] == pod
            assert conn.sock is not None
    finally:
        conn.close()


@pytest.mark.parametrize("via", ["edge-1", "router"])
def test_pipelining_keeps_order(live: Mesh, via: str) -> None:
    """Three requests in one send, the first slow: the responses come in request order."""
    slow, fast1, fast2 = ("pod-e2", "pod-e1", "pod-e2") if via == "router" else \
        ("pod-e2", "pod-e1", "pod-cloud")
    requests = (
        f"GET /slow?s=0.7&n=1 HTTP/1.1\r\nHost: {slow}\r\n\r\n"
        f"POST /fast?n=2 HTTP/1.1\r\nHost: {fast1}\r\nContent-Length: 5\r\n\r\nhello"
        f"GET /fast?n=3 HTTP/1.1\r\nHost: {fast2}\r\n\r\n"
    ).encode()
    with RawConnection(live.proxy(via)) as conn:
        conn.send(requests)
        paths = []
        for _ in range(3):
            response = conn.read_response()
            assert response.status == 200, response.body[:300]
            paths.append(response.json()["path"])
        assert paths == ["/slow?s=0.7&n=1", "/fast?n=2", "/fast?n=3"]
        # The connection is still usable afterwards.
        conn.send(f"GET /after HTTP/1.1\r\nHost: {fast1}\r\n\r\n".encode())
        assert conn.read_response().json()["path"] == "/after"


def test_http10_client(live: Mesh) -> None:
    """An HTTP/1.0 request without Host still needs a service: its absolute form works."""
    with RawConnection(live.topology.edges["edge-1"]["proxy"]) as conn:
        conn.send(b"GET http://pod-e2/old HTTP/1.0\r\n\r\n")
        head = conn._line()
        assert head.startswith(b"HTTP/1.1 200"), head
        assert conn.closed_by_peer(5)
        assert b'"path": "/old"' in conn.buffer
