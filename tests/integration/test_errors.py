"""The mesh's own answers: each error status, with its X-Edgemesh-Error code and a one-line
text body, from the edge's service bus and the router's listener."""

from __future__ import annotations

import signal

import pytest
from meshkit import Mesh, RawConnection, Response, request, timed


def assert_mesh_error(response: Response, status: int, code: str, context: str = "") -> None:
    shown = f"{context}: {response.status} {response.headers} {response.body[:300]!r}"
    assert response.status == status, shown
    assert response.header("X-Edgemesh-Error") == code, shown
    assert response.header("X-Pod") is None, shown
    assert (response.header("Content-Type") or "").startswith("text/plain"), shown
    # One line of text: "<status> <code>: <detail>\n".
    assert response.body.endswith(b"\n") and response.body.count(b"\n") == 1, shown
    assert response.body.startswith(f"{status} {code}: ".encode()), shown
    assert response.header("Content-Length") == str(len(response.body)), shown


VIAS = ["edge-1", "router"]


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize(
    "host",
    ["no-such-service", "no-such-service.default", "no-such-service.other.svc.cluster.local",
     "pod-e2:81", "pod-e2.default.svc.elsewhere.example", "10.96.0.99:80"],
)
def test_unknown_service_404(live: Mesh, via: str, host: str) -> None:
    response = request(live.proxy(via), "GET", "/x", [("Host", host)])
    assert_mesh_error(response, 404, "unknown-service", f"Host {host} via {via}")
    absolute = request(live.proxy(via), "GET", f"http://{host}/x")
    assert_mesh_error(absolute, 404, "unknown-service", f"http://{host}/x via {via}")


@pytest.mark.parametrize("via", VIAS)
def test_no_ready_endpoint_503(live: Mesh, via: str) -> None:
    response = request(live.proxy(via), "GET", "/", [("Host", "no-ready")])
    assert_mesh_error(response, 503, "no-endpoint", via)


@pytest.mark.parametrize(
    ("via", "service"),
    [("edge-1", "refused-e1"), ("edge-1", "refused-e2"), ("router", "refused-e2"),
     ("router", "refused-e1")],
    ids=["edge-local", "edge-to-edge", "cloud-to-edge-2", "cloud-to-edge-1"],
)
def test_pod_connection_refused_502(live: Mesh, via: str, service: str) -> None:
    with timed() as elapsed:
        response = request(live.proxy(via), "POST", "/", [("Host", service)], b"x" * 1000)
    assert_mesh_error(response, 502, "upstream-refused", f"{service} via {via}")
    assert elapsed() < 5
    # The connection to the mesh stays usable after an error answer.
    assert request(live.proxy(via), "GET", "/", [("Host", "pod-e2")]).status == 200


@pytest.mark.parametrize("via", ["edge-3", "edge-1", "router"],
                         ids=["local", "edge-to-edge", "cloud-to-edge"])
def test_no_response_in_time_504(live: Mesh, via: str) -> None:
    """edge-3 (--request-timeout 1) waits one second for the pod's response head; from
    another node the 504 comes back over the hub or the tunnel."""
    with timed() as elapsed:
        response = request(live.proxy(via), "GET", "/slow?s=4", [("Host", "slow-e3")])
    assert_mesh_error(response, 504, "upstream-timeout", via)
    assert 0.9 <= elapsed() < 3.5, elapsed()
    # A quick request right after goes through (the timed-out connection was not reused).
    fast = request(live.proxy(via), "GET", "/slow?s=0", [("Host", "slow-e3")])
    assert fast.status == 200 and fast.header("X-Pod") == "slow-e3-0", fast.body[:300]


MALFORMED = {
    "cl-and-te": b"POST / HTTP/1.1\r\nHost: pod-e1\r\nContent-Length: 5\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "two-content-lengths": b"POST / HTTP/1.1\r\nHost: pod-e1\r\nContent-Length: 5\r\n"
                           b"Content-Length: 6\r\n\r\nhello!",
    "plus-content-length": b"POST / HTTP/1.1\r\nHost: pod-e1\r\nContent-Length: +5\r\n\r\nhello",
    "te-not-chunked-last": b"POST / HTTP/1.1\r\nHost: pod-e1\r\n"
                           b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    "bad-chunk-size": b"POST / HTTP/1.1\r\nHost: pod-e1\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"0x5\r\nhello\r\n0\r\n\r\n",
    "no-host": b"GET / HTTP/1.1\r\nUser-Agent: t\r\n\r\n",
    "two-hosts": b"GET / HTTP/1.1\r\nHost: pod-e1\r\nHost: pod-e2\r\n\r\n",
    "space-in-host": b"GET / HTTP/1.1\r\nHost: pod e1\r\n\r\n",
    "userinfo": b"GET http://user@pod-e1/ HTTP/1.1\r\nHost: pod-e1\r\n\r\n",
    "bad-scheme": b"GET ftp://pod-e1/ HTTP/1.1\r\nHost: pod-e1\r\n\r\n",
    "fragment": b"GET /a#b HTTP/1.1\r\nHost: pod-e1\r\n\r\n",
    "garbage-request-line": b"HELLO THERE\r\n\r\n",
    "space-before-colon": b"GET / HTTP/1.1\r\nHost : pod-e1\r\n\r\n",
    "bare-lf-in-value": b"GET / HTTP/1.1\r\nHost: pod-e1\r\nX-A: a\nContent-Length: 4\r\n\r\nabcd",
    "nul-in-value": b"GET / HTTP/1.1\r\nHost: pod-e1\r\nX-A: a\x00b\r\n\r\n",
    "vertical-tab-padding": b"GET / HTTP/1.1\r\nHost: pod-e1\r\nX-A: \x0bvalue\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: pod-e1\r\nX-A: a\r\n folded\r\n\r\n",
    "http-2.0": b"GET / HTTP/2.0\r\nHost: pod-e1\r\n\r\n",
}


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_request_400(live: Mesh, via: str, case: str) -> None:
    """The mesh answers 400 itself and closes; nothing reaches a pod."""
    with RawConnection(live.proxy(via), timeout=5) as conn:
        conn.send(MALFORMED[case])
        response = conn.read_response()
        assert response.status in (400, 501, 505), (case, response)
        code = response.header("X-Edgemesh-Error")
        assert code in ("bad-request", "not-implemented"), (case, response)
        assert_mesh_error(response, response.status, code or "", case)
        assert response.header("Connection") == "close"
        assert conn.closed_by_peer(5), f"{case}: connection left open after a 400"


BAD_AUTHORITY = {
    "port-out-of-range": "pod-e1:99999",
    "port-not-a-number": "pod-e1:8o",
    "ipv6-unbracketed": "::1:80",
    "underscore": "pod_e1",
    "empty-label": "pod-e1..default",
    "too-long": "a" * 301,
}


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("case", sorted(BAD_AUTHORITY))
def test_malformed_service_name_400(live: Mesh, via: str, case: str) -> None:
    """A well-framed request naming no possible service: 400, and the connection stays
    usable (nothing is wrong with its framing)."""
    host = BAD_AUTHORITY[case].encode()
    with RawConnection(live.proxy(via), timeout=5) as conn:
        conn.send(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
        assert_mesh_error(conn.read_response(), 400, "bad-request", case)
        conn.send(b"GET /next HTTP/1.1\r\nHost: pod-e1\r\n\r\n")
        following = conn.read_response()
        assert following.status == 200 and following.json()["path"] == "/next"


def test_peer_edge_down_502(mesh: Mesh) -> None:
    """Requests for a pod on an edge that has crashed: 502 peer-unavailable, promptly, from
    another edge (its hub link is gone) and from the router (its tunnel is gone)."""
    if "edge-4" not in mesh.procs:  # a rerun in the same session
        mesh.start_edge("edge-4")
    vias = {"edge-to-edge": mesh.proxy("edge-1"), "cloud-to-edge": mesh.proxy("router")}
    for via, port in vias.items():
        ok = request(port, "GET", "/before", [("Host", "pod-e4")])
        assert ok.status == 200 and ok.header("X-Pod") == "pod-e4-0", (via, ok.body[:300])
    edge4 = mesh.procs["edge-4"]
    edge4.popen.send_signal(signal.SIGKILL)  # a crash: no goodbye on any link
    edge4.popen.wait(5)
    mesh.stop("edge-4")
    for via, port in vias.items():
        for attempt in range(3):
            with timed() as elapsed:
                response = request(port, "GET", f"/after/{attempt}", [("Host", "pod-e4")])
            assert_mesh_error(response, 502, "peer-unavailable", f"{via} attempt {attempt}")
            assert elapsed() < 5, f"{via} attempt {attempt} took {elapsed():.1f}s"
        # Everything else still works.
        assert request(port, "GET", "/", [("Host", "pod-e2")]).status == 200
    mesh.check_alive()


@pytest.mark.parametrize("via", VIAS)
def test_peer_edge_never_started_502(live: Mesh, via: str) -> None:
    """edge-5 is in the catalog, but nothing listens at its hub address (and it never
    connected to the router)."""
    for attempt in range(3):
        with timed() as elapsed:
            response = request(live.proxy(via), "GET", "/", [("Host", "pod-e5")])
        assert_mesh_error(response, 502, "peer-unavailable", f"attempt {attempt}")
        assert elapsed() < 5, f"attempt {attempt} took {elapsed():.1f}s"


def test_repeated_requests_to_a_down_peer_fail_fast(live: Mesh) -> None:
    """Hardening #33: requests for an unreachable peer get a fast 502, however many came
    before.  (Runs after test_peer_edge_never_started_502, which shares edge-1's dialer.)"""
    for attempt in range(8):
        with timed() as elapsed:
            try:
                response = request(live.proxy("edge-1"), "GET", f"/{attempt}",
                                   [("Host", "pod-e5")], timeout=2)
            except TimeoutError:
                pytest.fail(f"attempt {attempt}: no answer within 2s")
        assert_mesh_error(response, 502, "peer-unavailable", f"attempt {attempt}")
        assert elapsed() < 2, f"attempt {attempt} took {elapsed():.1f}s"
