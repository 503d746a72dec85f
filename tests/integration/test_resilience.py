"""Resilience with real processes on loopback (hardening scenarios 26-30 and 32-34, plus the
relay): a router and three edges of its own, and pods served by threads of this process so
that the tests see what reached them (and what was cancelled).

    edge-a  --outlier-failures 3 --ejection-time 2   most services' pods
    edge-b  --max-requests-per-service 4             the overload and the stopped-peer tests
    edge-c  its hub published at an address where nothing listens at first: other edges
            reach it through the router (relay) until a forwarder starts there

Faults are injected by killing, stopping (SIGSTOP) and restarting the processes.
"""

from __future__ import annotations

import contextlib
import re
import select
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from meshkit import LOOPBACK, Mesh, Response, Topology, admin_get, request, timed, write_catalog

EDGES = ("edge-a", "edge-b", "edge-c")
EDGE_ARGS = {
    "edge-a": ("--outlier-failures", "3", "--ejection-time", "2"),
    "edge-b": ("--max-requests-per-service", "4"),
    "edge-c": (),
}
PODS = ("hang", "p1", "d1", "d2", "o1", "o2", "o3", "slow-b", "stop-b", "drain-c", "remote-c")
DEAD = ("dead-1", "dead-2", "dead-3", "dead-4", "alias-c")


# -- pods ----------------------------------------------------------------------------------


class Pods:
    """One threaded HTTP/1.1 server per pod name.  Routes: ``/hang`` (answers nothing, notes
    when the mesh closes the connection), ``/slow?s=S`` (answers after S seconds unless the
    connection closes first), ``/drop`` (reads the request, closes without answering);
    anything else answers 200 with ``X-Pod`` (500 while the pod is in ``broken``)."""

    def __init__(self, ports: dict[str, int]) -> None:
        self.lock = threading.Lock()
        self.seen: list[tuple[str, str, str, int]] = []
        """(pod, method, path, body length) of every request, in arrival order."""
        self.active: Counter[str] = Counter()
        self.cancelled: list[str] = []
        self.broken: set[str] = set()
        self.servers: list[_PodServer] = []
        for name, port in ports.items():
            handler = type(f"Pod_{name}", (_PodHandler,), {"pod": name, "pods": self})
            server = _PodServer((LOOPBACK, port), handler)
            self.servers.append(server)
            threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()

    def count(self, pod: str | None = None, path: str | None = None,
              method: str | None = None) -> int:
        with self.lock:
            return sum(1 for p, m, pa, _ in self.seen
                       if (pod is None or p == pod) and (path is None or pa == path)
                       and (method is None or m == method))

    def mark(self) -> int:
        with self.lock:
            return len(self.seen)

    def since(self, mark: int) -> list[tuple[str, str, str, int]]:
        with self.lock:
            return self.seen[mark:]


class _PodServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # 50 connections at once: no SYN dropped by a short backlog


class _PodHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    pod = "?"
    pods: Pods

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _closed_within(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for the client (the mesh) to close; True if it did."""
        end = time.monotonic() + seconds
        sock = self.connection
        while time.monotonic() < end:
            readable, _, _ = select.select([sock], [], [], 0.05)
            if readable:
                try:
                    if not sock.recv(1, socket.MSG_PEEK):
                        return True
                except OSError:
                    return True
        return False

    def _answer(self, status: int) -> None:
        body = self.pod.encode()
        self.send_response(status)
        self.send_header("X-Pod", self.pod)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        url = urlsplit(self.path)
        pods = self.pods
        with pods.lock:
            pods.seen.append((self.pod, self.command, url.path, length))
            pods.active[self.pod] += 1
        try:
            if url.path == "/hang":
                if self._closed_within(20):
                    with pods.lock:
                        pods.cancelled.append(self.pod)
                self.close_connection = True
                return
            if url.path == "/drop":
                self.close_connection = True
                return
            if url.path == "/slow":
                seconds = float(parse_qs(url.query).get("s", ["1"])[0])
                if self._closed_within(seconds):
                    self.close_connection = True
                    return
            self._answer(500 if self.pod in pods.broken else 200)
        finally:
            with pods.lock:
                pods.active[self.pod] -= 1

    do_GET = do_POST = do_PUT = do_DELETE = _handle


class Forwarder:
    """A TCP forwarder on loopback (threads), started on demand: edge-c's published hub."""

    def __init__(self, listen: int, target: int) -> None:
        self.target = target
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind((LOOPBACK, listen))
        self.server.listen(16)
        self.sockets: list[socket.socket] = [self.server]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection((LOOPBACK, self.target))
            except OSError:
                client.close()
                continue
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def stop(self) -> None:
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()


# -- the mesh ------------------------------------------------------------------------------


def _node(name: str, edge: bool, hub: int | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "labels": {"kubernetes.io/hostname": name}}
    if edge:
        metadata["labels"]["node-role.kubernetes.io/edge"] = ""
        metadata["annotations"] = {"edgemesh.io/hub-address": f"{LOOPBACK}:{hub}"}
    return {"apiVersion": "v1", "kind": "Node", "metadata": metadata}


def _service(name: str, index: int, node: str, ports: list[tuple[str, int]],
             annotations: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """A service and one EndpointSlice per endpoint (each pod has a port of its own)."""
    meta: dict[str, Any] = {"name": name, "namespace": "default"}
    if annotations:
        meta["annotations"] = annotations
    objects: list[dict[str, Any]] = [{
        "apiVersion": "v1", "kind": "Service", "metadata": meta,
        "spec": {"clusterIP": f"10.96.1.{index}",
                 "ports": [{"name": "http", "port": 80, "targetPort": 80, "protocol": "TCP"}]},
    }]
    for pod, port in ports:
        objects.append({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{name}-{pod}", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": [LOOPBACK],
                           "conditions": {"ready": True, "serving": True, "terminating": False},
                           "nodeName": node,
                           "targetRef": {"kind": "Pod", "name": pod, "namespace": "default"}}],
        })
    return objects


def catalog(t: Topology) -> list[dict[str, Any]]:
    p, d = t.pods, t.dead
    objects = [
        _node("edge-a", True, t.edges["edge-a"]["hub"]),
        _node("edge-b", True, t.edges["edge-b"]["hub"]),
        _node("edge-c", True, d["alias-c"]),
    ]
    services: list[tuple[str, str, list[tuple[str, int]], dict[str, str] | None]] = [
        ("hang", "edge-a", [("hang", p["hang"])], {"edgemesh.io/timeout": "1s"}),
        ("retry", "edge-a", [("dead-1", d["dead-1"]), ("p1", p["p1"])], None),
        ("drop", "edge-a", [("d1", p["d1"]), ("d2", p["d2"])], None),
        ("big", "edge-a", [("dead-2", d["dead-2"]), ("p1", p["p1"])], None),
        ("all-dead", "edge-a", [("dead-3", d["dead-3"]), ("dead-4", d["dead-4"])], None),
        ("outlier", "edge-a", [("o1", p["o1"]), ("o2", p["o2"]), ("o3", p["o3"])], None),
        ("slow-b", "edge-b", [("slow-b", p["slow-b"])], None),
        ("stop-b", "edge-b", [("stop-b", p["stop-b"])], None),
        ("drain-c", "edge-c", [("drain-c", p["drain-c"])], None),
        ("remote-c", "edge-c", [("remote-c", p["remote-c"])], None),
    ]
    for index, (name, node, ports, notes) in enumerate(services, start=10):
        objects += _service(name, index, node, ports, notes)
    return objects


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mesh, Pods]]:
    directory: Path = tmp_path_factory.mktemp("resilience")
    topology = Topology.allocate(EDGES, PODS, DEAD)
    path = directory / "catalog.yaml"
    write_catalog(path, catalog(topology))
    pods = Pods(topology.pods)
    mesh = Mesh(directory, topology, path, tls=False)
    try:
        mesh.start_router(wait=False)
        for name in EDGES:
            mesh.start_edge(name, *EDGE_ARGS[name], wait=False)
        mesh.wait_healthy(mesh.procs["router"])
        mesh.wait_edges_acked(EDGES)
        yield mesh, pods
    finally:
        mesh.stop_all()
        pods.stop()


@pytest.fixture
def live(world: tuple[Mesh, Pods]) -> Iterator[tuple[Mesh, Pods]]:
    mesh, pods = world
    for name in ("router", *EDGES):
        if name not in mesh.procs or not mesh.procs[name].alive():
            restart(mesh, name)
    sizes = mesh.log_sizes()
    yield mesh, pods
    problems = mesh.new_problems(sizes)
    assert not problems, "the mesh logged failures:\n" + "\n".join(problems[:40])


def restart(mesh: Mesh, name: str) -> None:
    mesh.stop(name)
    if name == "router":
        mesh.start_router()
        mesh.wait_edges_acked([e for e in EDGES if e in mesh.procs])
    else:
        mesh.start_edge(name, *EDGE_ARGS[name])


def get(mesh: Mesh, via: str, host: str, path: str = "/", method: str = "GET",
        body: bytes | None = None, timeout: float = 30) -> Response:
    return request(mesh.proxy(via), method, path, [("Host", host)], body, timeout=timeout)


def resilience(mesh: Mesh, node: str) -> Any:
    proc = mesh.procs[node]
    assert proc.admin is not None
    status, view = admin_get(proc.admin, "/resilience")
    assert status == 200
    return view


def error_of(response: Response) -> str | None:
    return response.header("X-Edgemesh-Error")


def wait_until(what: str, check: Any, deadline: float = 20.0) -> None:
    end = time.monotonic() + deadline
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline}s waiting for {what}")
        time.sleep(0.05)


# -- 26: timeouts --------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["edge-a", "edge-b", "router"])
def test_hung_app_504_at_the_timeout_and_the_pod_request_is_cancelled(
    live: tuple[Mesh, Pods], via: str
) -> None:
    """edgemesh.io/timeout: 1s.  From edge-a (the pod's node), edge-b (over a hub link to
    edge-a) and the router (over edge-a's tunnel): 504 after about a second, and the
    connection to the pod is closed on every hop."""
    mesh, pods = live
    before = len(pods.cancelled)
    with timed() as elapsed:
        response = get(mesh, via, "hang", "/hang")
    assert (response.status, error_of(response)) == (504, "upstream-timeout"), response.body
    assert 0.9 < elapsed() < 3.0, elapsed()
    wait_until("the pod connection to be cancelled", lambda: len(pods.cancelled) > before, 5)


# -- 27: retries ---------------------------------------------------------------------------


def test_connection_refused_is_retried_on_another_endpoint(live: tuple[Mesh, Pods]) -> None:
    """``retry`` has a dead endpoint and a live one: every GET, and every small POST (the
    refused connection carried none of it), succeeds on the live one."""
    mesh, pods = live
    mark = pods.mark()
    responses = [get(mesh, "edge-a", "retry", f"/get/{i}") for i in range(6)]
    responses += [get(mesh, "edge-a", "retry", f"/post/{i}", "POST", b"x" * 1000) for i in range(4)]
    assert [r.status for r in responses] == [200] * 10, [(r.status, r.body[:80]) for r in responses]
    assert all(r.header("X-Pod") == "p1" for r in responses)
    seen = pods.since(mark)
    assert len(seen) == 10 and all(length == 1000 for _, m, _, length in seen if m == "POST")
    assert resilience(mesh, "edge-a")["services"]["default/retry"]["retries"] >= 1


def test_a_request_that_reached_the_app_is_retried_only_if_idempotent(
    live: tuple[Mesh, Pods]
) -> None:
    """``drop``: the pods read the request and close without answering.  A POST: 502 after
    one attempt.  A GET: retried once on the other pod, then 502."""
    mesh, pods = live
    mark = pods.mark()
    post = get(mesh, "edge-a", "drop", "/drop", "POST", b"pay")
    assert (post.status, error_of(post)) == (502, "upstream-lost")
    assert len(pods.since(mark)) == 1, "a POST that reached the app is never replayed"
    mark = pods.mark()
    again = get(mesh, "edge-a", "drop", "/drop")
    assert (again.status, error_of(again)) == (502, "upstream-lost")
    assert sorted(p for p, *_ in pods.since(mark)) == ["d1", "d2"]


def test_a_body_over_64_kib_is_not_retried(live: tuple[Mesh, Pods]) -> None:
    """``big``: a dead endpoint and a live one; a 100 KiB POST that meets the dead one
    fails (502 upstream-refused) rather than being buffered for a retry."""
    mesh, pods = live
    mark = pods.mark()
    statuses = []
    for i in range(6):
        response = get(mesh, "edge-a", "big", f"/big/{i}", "POST", b"b" * 100_000)
        statuses.append((response.status, error_of(response)))
    assert (502, "upstream-refused") in statuses and (200, None) in statuses, statuses
    assert len(pods.since(mark)) == statuses.count((200, None)), "the pod got each once"
    assert resilience(mesh, "edge-a")["services"]["default/big"]["retries"] == 0


# -- 28: the retry budget ------------------------------------------------------------------


def test_retries_stay_inside_the_budget_when_everything_fails(live: tuple[Mesh, Pods]) -> None:
    mesh, _ = live
    with timed() as elapsed:
        responses = [get(mesh, "edge-a", "all-dead", f"/{i}") for i in range(40)]
    assert {(r.status, error_of(r)) for r in responses} == {(502, "upstream-refused")}
    assert elapsed() < 20
    state = resilience(mesh, "edge-a")["services"]["default/all-dead"]
    assert state["requests"] == 40
    assert 0 < state["retries"] <= 0.2 * 40 + 10, state
    assert state["retries"] + state["retries_denied"] == 40, state


# -- 29: overload --------------------------------------------------------------------------


def test_over_the_limit_an_immediate_503(live: tuple[Mesh, Pods]) -> None:
    """edge-b allows 4 requests in progress per service: of 10 at once, 4 are served and
    6 refused at once with 503 overloaded."""
    mesh, pods = live
    results: list[tuple[Response, float]] = []

    def one(i: int) -> None:
        start = time.monotonic()
        response = get(mesh, "edge-b", "slow-b", f"/slow?s=1.5&i={i}")
        results.append((response, time.monotonic() - start))

    with ThreadPoolExecutor(10) as pool:
        for i in range(4):
            pool.submit(one, i)
        wait_until("4 requests at the pod", lambda: pods.active["slow-b"] == 4, 10)
        assert resilience(mesh, "edge-b")["services"]["default/slow-b"]["active"] == 4
        for i in range(4, 10):
            pool.submit(one, i)
    served = [(r, t) for r, t in results if r.status == 200]
    refused = [(r, t) for r, t in results if r.status == 503]
    assert len(served) == 4 and len(refused) == 6, [(r.status, r.body[:60]) for r, _ in results]
    assert all(error_of(r) == "overloaded" and t < 1.0 for r, t in refused)
    state = resilience(mesh, "edge-b")["services"]["default/slow-b"]
    assert state["overloaded"] >= 6 and state["active"] == 0


# -- 30: outlier ejection ------------------------------------------------------------------


def test_outlier_ejection_and_a_probe_restores(live: tuple[Mesh, Pods]) -> None:
    """edge-a ejects after 3 failures in a row for 2 s × times ejected; at most 10 % of a
    service's endpoints (but one) at once."""
    mesh, pods = live
    pods.broken.add("o1")
    try:
        statuses = [get(mesh, "edge-a", "outlier", f"/warm/{i}").status for i in range(12)]
        assert statuses.count(500) == 3, statuses  # o1's three failures, passed on as they are
        view = resilience(mesh, "edge-a")["outliers"]
        o1 = f"{LOOPBACK}:{mesh.topology.pods['o1']}"
        assert any(e["endpoint"] == o1 and e["ejected_for"] > 0 for e in view), view
        mark = pods.mark()
        assert all(get(mesh, "edge-a", "outlier", f"/ejected/{i}").status == 200 for i in range(10))
        assert "o1" not in {p for p, *_ in pods.since(mark)}
    finally:
        pods.broken.discard("o1")
    time.sleep(2.2)  # the penalty is over: o1 is probed, and answers
    mark = pods.mark()
    assert all(get(mesh, "edge-a", "outlier", f"/back/{i}").status == 200 for i in range(9))
    assert "o1" in {p for p, *_ in pods.since(mark)}

    # Two broken endpoints of three: only one is ejected at a time.
    pods.broken.update({"o2", "o3"})
    mark = pods.mark()
    try:
        for i in range(20):
            get(mesh, "edge-a", "outlier", f"/two/{i}")
        view = resilience(mesh, "edge-a")["outliers"]
        ejected = [e for e in view if e["ejected_for"] > 0]
        assert len(ejected) == 1, (view, pods.since(mark)[-25:])
    finally:
        pods.broken.difference_update({"o2", "o3"})


# -- 33, 34: links -------------------------------------------------------------------------


def test_a_stopped_peer_is_detected_by_heartbeats(live: tuple[Mesh, Pods]) -> None:
    """SIGSTOP edge-b (no FIN, no RST) with a request to its pod in flight: within a few
    seconds the heartbeats close the link, and the request fails at once with 502."""
    mesh, pods = live
    edge_b = mesh.procs["edge-b"]
    results: list[tuple[Response, float]] = []

    def one() -> None:
        results.append((get(mesh, "edge-a", "stop-b", "/slow?s=25"), time.monotonic()))

    thread = threading.Thread(target=one)
    thread.start()
    wait_until("the request at edge-b's pod", lambda: pods.active["stop-b"] == 1, 10)
    edge_b.popen.send_signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        thread.join(20)
        assert results, "no answer within 20 s of the stop"
        response, answered_at = results[0]
        assert (response.status, error_of(response)) == (502, "peer-unavailable"), response.body
        detected = answered_at - stopped_at
        assert 3.0 < detected < 10.0, f"detected after {detected:.1f}s"
        # The router's tunnel to edge-b went the same way.
        wait_until("the router to drop edge-b", lambda: "edge-b" not in {
            e["node"] for e in admin_get(mesh.topology.router_admin, "/edges")[1]}, 10)
    finally:
        edge_b.popen.send_signal(signal.SIGCONT)
    mesh.wait_edges_acked(["edge-b"])  # it reconnects by itself
    assert get(mesh, "edge-a", "stop-b", "/after").status == 200


def test_a_killed_tunnel_fails_pending_requests_fast_and_the_edge_reconnects(
    live: tuple[Mesh, Pods]
) -> None:
    mesh, pods = live
    results: list[Response] = []
    thread = threading.Thread(
        target=lambda: results.append(request(mesh.proxy("router"), "GET", "/slow?s=20",
                                              [("Host", "slow-b")], timeout=30)))
    thread.start()
    wait_until("the request at edge-b's pod", lambda: pods.active["slow-b"] == 1, 10)
    edge_b = mesh.procs["edge-b"]
    with timed() as elapsed:
        edge_b.popen.send_signal(signal.SIGKILL)
        thread.join(10)
    assert results and results[0].status == 502, results
    assert error_of(results[0]) == "peer-unavailable" and elapsed() < 3
    edge_b.popen.wait(5)
    restart(mesh, "edge-b")

    # The router goes away and comes back: the edges reconnect, backing off with jitter.
    router = mesh.procs["router"]
    router.popen.send_signal(signal.SIGKILL)
    router.popen.wait(5)
    time.sleep(3)
    restart(mesh, "router")
    for name in EDGES:
        delays = [float(d) for d in re.findall(
            r"Scheduling retry \d+ to connect .* in ([\d.]+) seconds",
            mesh.procs[name].log.read_text())]
        assert len(delays) >= 2, (name, delays)
        assert len(set(delays)) == len(delays), "jitter: no two delays alike"
        assert max(delays) > delays[0], delays
    assert get(mesh, "edge-a", "stop-b", "/again").status == 200


# -- relay ---------------------------------------------------------------------------------


def test_relay_through_the_router_then_direct_again(live: tuple[Mesh, Pods]) -> None:
    """edge-c's published hub address has nothing listening: edge-a reaches edge-c's pod
    through the router (its /resilience says so); once a forwarder listens there, edge-a
    dials it in the background and goes direct."""
    mesh, _ = live
    for i in range(3):
        response = get(mesh, "edge-a", "remote-c", f"/relayed/{i}")
        assert (response.status, response.header("X-Pod")) == (200, "remote-c"), response.body
    view = resilience(mesh, "edge-a")
    assert view["peers"].get("edge-c") == "relayed" and view["relayed"]["edge-c"] >= 3
    forwarder = Forwarder(mesh.topology.dead["alias-c"], mesh.topology.edges["edge-c"]["hub"])
    try:
        wait_until("edge-a to reach edge-c's hub directly",
                   lambda: resilience(mesh, "edge-a")["peers"].get("edge-c") == "direct", 20)
        relayed = resilience(mesh, "edge-a")["relayed"]["edge-c"]
        for i in range(3):
            assert get(mesh, "edge-a", "remote-c", f"/direct/{i}").status == 200
        assert resilience(mesh, "edge-a")["relayed"]["edge-c"] == relayed, "direct now"
    finally:
        forwarder.stop()


# -- 32: graceful drain --------------------------------------------------------------------


def test_sigterm_with_50_requests_in_flight_none_fails(live: tuple[Mesh, Pods]) -> None:
    mesh, pods = live
    edge_c = mesh.procs["edge-c"]
    port = mesh.proxy("edge-c")
    results: list[Response | BaseException] = []

    def one(i: int) -> None:
        try:
            results.append(request(port, "GET", f"/slow?s=1.5&i={i}", [("Host", "drain-c")],
                                   timeout=20))
        except BaseException as error:  # noqa: BLE001 - reported below
            results.append(error)

    with ThreadPoolExecutor(50) as pool:
        for i in range(50):
            pool.submit(one, i)
        wait_until("50 requests at the pod", lambda: pods.active["drain-c"] == 50, 15)
        edge_c.popen.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()

        # The listener closes at once: a new connection is refused.
        def refused() -> bool:
            try:
                socket.create_connection((LOOPBACK, port), timeout=1).close()
            except ConnectionRefusedError:
                return True
            return False
        wait_until("the proxy listener to close", refused, 3)
    failures = [r if not isinstance(r, Response) else (r.status, r.body[:200])
                for r in results if not isinstance(r, Response) or r.status != 200]
    assert len(results) == 50 and not failures, (failures[:5], edge_c.tail(40))
    edge_c.popen.wait(12)
    exited_after = time.monotonic() - stopped_at
    assert exited_after < 10, f"exited {exited_after:.1f}s after SIGTERM"
    # twistd ends by re-raising the signal that stopped it: killed by SIGTERM, after the drain.
    assert edge_c.popen.returncode in (0, -signal.SIGTERM)
    log = edge_c.log.read_text()
    assert "draining: 50 exchanges in progress" in log and "GOAWAY sent on" in log, log[-2000:]
    assert "drain deadline" not in log
    restart(mesh, "edge-c")
    assert get(mesh, "edge-c", "drain-c", "/back").status == 200


def test_a_second_sigterm_ends_the_drain_and_answers_503(live: tuple[Mesh, Pods]) -> None:
    """Ctrl-C twice, or a supervisor that signals again: the drain ends at once, the request
    still waiting gets the mesh's 503 draining (not a closed connection), and nothing logs
    a critical traceback (Twisted's own handler stopped the stopped reactor again)."""
    mesh, _ = live
    edge_c = mesh.procs["edge-c"]
    port = mesh.proxy("edge-c")
    results: list[Response | BaseException] = []

    def slow() -> None:
        try:
            results.append(request(port, "GET", "/slow?s=8", [("Host", "drain-c")], timeout=20))
        except BaseException as error:  # noqa: BLE001 - reported below
            results.append(error)

    with ThreadPoolExecutor(1) as pool:
        pool.submit(slow)
        wait_until("the request at the pod", lambda: mesh.procs["edge-c"].log.exists()
                   and counters_active(mesh, "edge-c", "drain-c") == 1, 15)
        edge_c.popen.send_signal(signal.SIGTERM)
        wait_until("the drain", lambda: "draining: 1 exchanges" in edge_c.log.read_text(), 10)
        edge_c.popen.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        edge_c.popen.wait(10)
        exited_after = time.monotonic() - stopped_at
    assert exited_after < 3, f"exited {exited_after:.1f}s after the second SIGTERM"
    [result] = results
    assert isinstance(result, Response), result
    assert result.status == 503 and result.header("X-Edgemesh-Error") == "draining", \
        (result.status, result.body[:300])
    log = edge_c.log.read_text()
    assert "asked again to stop: stopping with 1 exchanges still in progress" in log, log[-2000:]
    assert "#critical" not in log and "ReactorNotRunning" not in log, log[-3000:]
    restart(mesh, "edge-c")
    assert get(mesh, "edge-c", "drain-c", "/back").status == 200


def counters_active(mesh: Mesh, node: str, service: str) -> int:
    """Exchanges of ``default/service`` in progress on ``node`` (its /resilience view)."""
    proc = mesh.procs[node]
    assert proc.admin is not None
    view = admin_get(proc.admin, "/resilience")[1]
    return int(view["services"].get(f"default/{service}", {}).get("active", 0))
