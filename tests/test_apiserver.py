"""edgemesh.testing: the test Kubernetes API server.

Three layers of proof:
- the sans-IO store, selectors and patches, deterministically;
- the HTTP/watch layer on MemoryReactorClock + StringTransport (bookmarks, timeouts, flow
  control, chunked framing) with no real time;
- faithfulness: the OFFICIAL ``kubernetes`` client (CoreV1Api, DiscoveryV1Api, Watch) driving a
  ThreadedKubeApiServer over loopback.  Every blocking call there carries a timeout.
"""

from __future__ import annotations

import json
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import treq
from hypothesis import given
from hypothesis import strategies as st
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException
from treq.client import HTTPClient
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.web.client import Agent, HTTPConnectionPool
from zope.interface.verify import verifyObject

import edgemesh.testing
from edgemesh.testing import (
    NODES,
    SERVICES,
    KubeApiServer,
    ObjectStore,
    StatusError,
    ThreadedKubeApiServer,
    make_endpoint_slice,
    make_namespace,
    make_node,
    make_pod,
    make_service,
    parse_field_selector,
    parse_label_selector,
)
from edgemesh.testing._apiserver import MAX_PENDING_WATCH_EVENTS, _WatchStream
from edgemesh.testing._patch import (
    PatchError,
    apply_json_patch,
    apply_merge_patch,
    apply_strategic_merge_patch,
)

TIMEOUT = 5  # seconds, for every blocking client call

# -- exports -------------------------------------------------------------------------------

EXPECTED_EXPORTS = {
    "ENDPOINT_SLICES", "JSON_PATCH", "MERGE_PATCH", "NAMESPACES", "NODES", "PODS",
    "RESOURCE_TYPES", "SERVICES", "STRATEGIC_MERGE_PATCH", "KubeApiServer", "ObjectStore",
    "ResourceType", "SelectorError", "StatusError", "ThreadedKubeApiServer",
    "make_endpoint_slice", "make_namespace", "make_node", "make_pod", "make_service",
    "parse_field_selector", "parse_label_selector", "DEFAULT_NAMESPACES", "LEASES",
    "MESH_RESOURCE_TYPES", "CertificateAuthority", "Policy", "Rule", "UserInfo", "load_policy",
    # the exchange-contract doubles (issue 17)
    "CompletingResponder", "ContractViolation", "Opened", "RecordingBody", "RecordingResponder",
    "ScriptedTarget", "TrailerBody", "TrailerResponder",
}


def test_public_surface() -> None:
    assert set(edgemesh.testing.__all__) == EXPECTED_EXPORTS
    for name in EXPECTED_EXPORTS:
        assert getattr(edgemesh.testing, name) is not None


# -- selectors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("a=b", {"a": "b"}, True),
        ("a==b", {"a": "c"}, False),
        ("a!=b", {}, True),
        ("a!=b", {"a": "b"}, False),
        ("a", {"a": ""}, True),
        ("a", {}, False),
        ("!a", {}, True),
        ("!a", {"a": "x"}, False),
        ("a in (x, y)", {"a": "y"}, True),
        ("a in (x,y)", {"a": "z"}, False),
        ("a notin (x,y)", {}, True),
        ("a notin (x,y)", {"a": "x"}, False),
        ("a=b,c in (d),!e", {"a": "b", "c": "d"}, True),
        ("a=b,c in (d),!e", {"a": "b", "c": "d", "e": "1"}, False),
        ("example.com/role=edge", {"example.com/role": "edge"}, True),
        ("n>3", {"n": "4"}, True),
        ("n<3", {"n": "4"}, False),
        ("", {"anything": "x"}, True),
    ],
)
def test_label_selector(selector: str, labels: dict[str, str], expected: bool) -> None:
    assert parse_label_selector(selector).matches(labels) is expected


@pytest.mark.parametrize("bad", ["a=(b", "a in ()", "a in (x", "=b", "a b", "a>b", "a=b,"])
def test_label_selector_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_label_selector(bad)


def test_field_selector() -> None:
    supported = SERVICES.field_paths
    selector = parse_field_selector("metadata.name=web,metadata.namespace!=kube-system", supported)
    assert selector.matches({"metadata": {"name": "web", "namespace": "default"}})
    assert not selector.matches({"metadata": {"name": "web", "namespace": "kube-system"}})
    with pytest.raises(ValueError, match="field label not supported"):
        parse_field_selector("spec.type=ClusterIP", supported)


@given(st.text(max_size=40))
def test_selector_parsers_never_crash(text: str) -> None:
    for parse in (parse_label_selector, lambda t: parse_field_selector(t, SERVICES.field_paths)):
        try:
            parse(text)
        except ValueError:
            pass


# -- patches -------------------------------------------------------------------------------


def test_merge_patch_rfc7386() -> None:
    target = {"a": "b", "c": {"d": "e", "f": "g"}}
    assert apply_merge_patch(target, {"a": "z", "c": {"f": None}}) == {"a": "z", "c": {"d": "e"}}
    assert target == {"a": "b", "c": {"d": "e", "f": "g"}}, "never mutates its input"


def test_json_patch_rfc6902() -> None:
    doc = {"a": [1, 2], "b": {"c": 1}}
    patched = apply_json_patch(doc, [
        {"op": "add", "path": "/a/-", "value": 3},
        {"op": "replace", "path": "/b/c", "value": 2},
        {"op": "move", "from": "/b", "path": "/d"},
        {"op": "test", "path": "/d/c", "value": 2},
        {"op": "remove", "path": "/a/0"},
    ])
    assert patched == {"a": [2, 3], "d": {"c": 2}}
    with pytest.raises(PatchError):
        apply_json_patch(doc, [{"op": "test", "path": "/a/0", "value": 9}])
    with pytest.raises(PatchError):
        apply_json_patch(doc, [{"op": "remove", "path": "/nope"}])


def test_strategic_merge_patch_merges_lists_by_key() -> None:
    service = make_service("web", ports=[80, 443])
    patched = apply_strategic_merge_patch(service, {"spec": {"ports": [
        {"port": 443, "name": "tls"}, {"port": 8080, "name": "alt"},
        {"port": 80, "$patch": "delete"},
    ]}})
    assert [(p["port"], p["name"]) for p in patched["spec"]["ports"]] == [
        (443, "tls"), (8080, "alt")]
    slice_ = make_endpoint_slice("web", ["10.0.0.1", "10.0.0.2"])
    replaced = apply_strategic_merge_patch(slice_, {"endpoints": [{"addresses": ["10.0.0.9"]}]})
    assert replaced["endpoints"] == [{"addresses": ["10.0.0.9"]}], "lists without a key are atomic"


# -- the store -----------------------------------------------------------------------------


class _Sink:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    def deliver(self, event_type: str, obj: dict[str, Any]) -> None:
        self.events.append(
            (event_type, obj["metadata"]["name"], obj["metadata"]["resourceVersion"]))


def _store(history_size: int = 100) -> ObjectStore:
    return ObjectStore(now=lambda: 1_700_000_000.0, history_size=history_size)


def test_store_resource_versions_are_global_and_monotonic() -> None:
    store = _store()
    first = store.create(SERVICES, make_service("a"))
    node = store.create(NODES, make_node("n1"))
    assert int(node["metadata"]["resourceVersion"]) == int(first["metadata"]["resourceVersion"]) + 1
    listed = store.list(SERVICES)
    assert listed["metadata"]["resourceVersion"] == node["metadata"]["resourceVersion"]
    assert listed["kind"] == "ServiceList"
    assert "kind" not in listed["items"][0], "list items carry no TypeMeta, as in kube-apiserver"
    again = store.update(SERVICES, store.get(SERVICES, "default", "a"))
    assert again["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"], (
        "a no-op update writes nothing"
    )
    gone = store.delete(SERVICES, "default", "a")
    assert int(gone["metadata"]["resourceVersion"]) == store.resource_version


def test_store_errors_are_api_statuses() -> None:
    store = _store()
    created = store.create(SERVICES, make_service("a"))
    with pytest.raises(StatusError) as exists:
        store.create(SERVICES, make_service("a"))
    assert (exists.value.code, exists.value.reason) == (409, "AlreadyExists")
    stale = dict(created, metadata={**created["metadata"], "labels": {"x": "y"}})
    store.update(SERVICES, stale)
    with pytest.raises(StatusError) as conflict:
        store.update(SERVICES, stale)
    assert (conflict.value.code, conflict.value.reason) == (409, "Conflict")
    assert "the object has been modified" in conflict.value.message
    with pytest.raises(StatusError) as missing:
        store.get(SERVICES, "default", "nope")
    assert missing.value.status()["details"] == {"name": "nope", "kind": "services"}
    with pytest.raises(StatusError) as invalid:
        store.create(SERVICES, make_service("Not_A_Name"))
    assert invalid.value.code == 422


def test_store_watch_replays_history_then_410_once_compacted() -> None:
    store = _store(history_size=3)
    start = store.resource_version
    for name in ("a", "b", "c"):
        store.create(SERVICES, make_service(name))
    sink = _Sink()
    store.watch(SERVICES, None, sink, resource_version=str(start))
    assert [e[:2] for e in sink.events] == [("ADDED", "a"), ("ADDED", "b"), ("ADDED", "c")]
    store.create(SERVICES, make_service("d"))  # pushes "a" out of a 3-event history
    assert sink.events[-1][:2] == ("ADDED", "d"), "an open watch keeps streaming"
    with pytest.raises(StatusError) as expired:
        store.watch(SERVICES, None, _Sink(), resource_version=str(start))
    assert (expired.value.code, expired.value.reason) == (410, "Expired")
    assert f"too old resource version: {start}" in expired.value.message
    store.watch(SERVICES, None, _Sink(), resource_version=str(start + 1))  # still covered
    store.compact()
    with pytest.raises(StatusError):
        store.watch(SERVICES, None, _Sink(), resource_version=str(start + 1))


def test_store_history_is_bounded_in_time_too() -> None:
    now = [1000.0]
    store = ObjectStore(now=lambda: now[0], history_seconds=300)
    start = store.resource_version
    store.create(SERVICES, make_service("a"))
    now[0] += 200
    store.create(SERVICES, make_service("b"))
    store.watch(SERVICES, None, _Sink(), resource_version=str(start))
    now[0] += 200  # "a" was written 400 s ago, "b" 200 s ago
    with pytest.raises(StatusError) as expired:
        store.watch(SERVICES, None, _Sink(), resource_version=str(start))
    assert expired.value.code == 410
    sink = _Sink()
    store.watch(SERVICES, None, sink, resource_version=str(start + 1))
    assert [e[1] for e in sink.events] == ["b"]


def test_store_selector_watch_sees_objects_enter_and_leave() -> None:
    store = _store()
    sink = _Sink()
    store.watch(SERVICES, "default", sink, labels=parse_label_selector("tier=edge"))
    store.create(SERVICES, make_service("a"))
    store.patch(SERVICES, "default", "a", {"metadata": {"labels": {"tier": "edge"}}})
    store.patch(SERVICES, "default", "a", {"metadata": {"labels": {"tier": "edge", "v": "2"}}})
    store.patch(SERVICES, "default", "a", {"metadata": {"labels": {"tier": "cloud"}}})
    store.create(SERVICES, make_service("b", "other", labels={"tier": "edge"}))
    assert [e[0] for e in sink.events] == ["ADDED", "MODIFIED", "DELETED"]


def test_store_paginates_consistently_at_the_list_version() -> None:
    store = _store()
    for name in "abcde":
        store.create(SERVICES, make_service(name))
    page = store.list(SERVICES, limit=2)
    assert [i["metadata"]["name"] for i in page["items"]] == ["a", "b"]
    assert page["metadata"]["remainingItemCount"] == 3
    store.delete(SERVICES, "default", "c")
    store.create(SERVICES, make_service("bb"))
    rest = store.list(SERVICES, continue_token=page["metadata"]["continue"])
    assert [i["metadata"]["name"] for i in rest["items"]] == ["c", "d", "e"], "the old snapshot"
    assert rest["metadata"]["resourceVersion"] == page["metadata"]["resourceVersion"]
    store.compact()
    with pytest.raises(StatusError) as expired:
        store.list(SERVICES, continue_token=page["metadata"]["continue"])
    assert expired.value.code == 410


def test_store_list_exact_version_and_too_large_version() -> None:
    store = _store()
    store.create(SERVICES, make_service("a"))
    version = store.resource_version
    store.create(SERVICES, make_service("b"))
    exact = store.list(SERVICES, resource_version=str(version), resource_version_match="Exact")
    assert [i["metadata"]["name"] for i in exact["items"]] == ["a"]
    with pytest.raises(StatusError) as too_large:
        store.list(SERVICES, resource_version=str(store.resource_version + 5))
    assert too_large.value.code == 504


def test_store_service_defaults_and_status_handling() -> None:
    store = _store()
    service = make_service("web")
    service["status"] = {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}
    created = store.create(SERVICES, service)
    assert created["spec"]["clusterIP"] == "10.96.0.10"
    assert created["spec"]["ports"][0]["targetPort"] == 80
    assert created["status"] == {"loadBalancer": {}}, "create resets a Service's status"
    changed = dict(created, status={"loadBalancer": {"ingress": [{"ip": "5.6.7.8"}]}})
    assert store.update(SERVICES, changed)["status"] == {"loadBalancer": {}}, "status is ignored"
    via_status = store.update(SERVICES, changed, subresource="status")
    assert via_status["status"]["loadBalancer"]["ingress"] == [{"ip": "5.6.7.8"}]
    moved = dict(via_status, spec={**via_status["spec"], "clusterIP": "10.96.99.99"})
    with pytest.raises(StatusError) as immutable:
        store.update(SERVICES, moved)
    assert immutable.value.code == 422


# -- HTTP layer on a memory reactor --------------------------------------------------------


class _Conn:
    """A client connection to the server's site over a StringTransport."""

    def __init__(self, server: KubeApiServer) -> None:
        self.protocol = server.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def request(self, method: str, path: str, body: Any = None, headers: str = "") -> None:
        payload = b"" if body is None else json.dumps(body).encode()
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(payload)}\r\n"
            f"{headers}\r\n"
        )
        self.protocol.dataReceived(head.encode() + payload)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        data = self.transport.value()
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        return int(lines[0].split()[1]), headers, body

    def events(self) -> tuple[list[dict[str, Any]], bool]:
        """The watch events so far (decoded from chunks), and whether the last chunk came."""
        _, headers, body = self.response()
        assert headers["transfer-encoding"] == "chunked"
        payload, finished = b"", False
        while body:
            size_text, _, rest = body.partition(b"\r\n")
            size = int(size_text, 16)
            if size == 0:
                finished = True
                break
            payload += rest[:size]
            body = rest[size + 2:]
        return [json.loads(line) for line in payload.splitlines()], finished


@pytest.fixture
def memory_server() -> Iterator[tuple[KubeApiServer, MemoryReactorClock]]:
    reactor = MemoryReactorClock()
    server = KubeApiServer(reactor, bookmark_interval=10.0)
    server.start()
    yield server, reactor
    server.stop()


def test_watch_stream_chunks_bookmarks_and_timeout(
    memory_server: tuple[KubeApiServer, MemoryReactorClock],
) -> None:
    server, reactor = memory_server
    server.create(make_service("a"))
    version = server.resource_version
    conn = _Conn(server)
    conn.request("GET", f"/api/v1/services?watch=1&resourceVersion={version}"
                        "&allowWatchBookmarks=true&timeoutSeconds=30")
    status, headers, _ = conn.response()
    assert status == 200 and headers["content-type"] == "application/json"
    server.create(make_service("b"))
    events, finished = conn.events()
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "b")]
    assert conn.transport.value().endswith(b"\r\n"), "each event is flushed as its own chunk"
    reactor.advance(10)
    events, finished = conn.events()
    assert events[-1] == {"type": "BOOKMARK", "object": {
        "kind": "Service", "apiVersion": "v1",
        "metadata": {"resourceVersion": str(server.resource_version)}}}
    assert not finished
    reactor.advance(20)
    events, finished = conn.events()
    assert finished, "timeoutSeconds ends the response with the last chunk"
    assert server.watch_count() == 0


def test_watch_without_bookmarks_gets_none(
    memory_server: tuple[KubeApiServer, MemoryReactorClock],
) -> None:
    server, reactor = memory_server
    conn = _Conn(server)
    conn.request("GET", "/api/v1/nodes?watch=true")
    reactor.advance(25)
    assert server.send_bookmarks() == 0
    assert conn.events() == ([], False)


def test_watch_from_compacted_version_both_forms(
    memory_server: tuple[KubeApiServer, MemoryReactorClock],
) -> None:
    server, _ = memory_server
    old = server.resource_version
    server.create(make_service("a"))
    server.compact()
    conn = _Conn(server)
    conn.request("GET", f"/api/v1/services?watch=true&resourceVersion={old}")
    events, finished = conn.events()
    assert finished and len(events) == 1
    assert events[0]["type"] == "ERROR"
    assert events[0]["object"]["code"] == 410 and events[0]["object"]["reason"] == "Expired"
    server.set_expired_form("status")
    server.set_expired_reason("Gone")
    conn = _Conn(server)
    conn.request("GET", f"/api/v1/services?watch=true&resourceVersion={old}")
    status, _, body = conn.response()
    assert status == 410
    assert json.loads(body)["reason"] == "Gone"


def test_slow_watcher_is_buffered_boundedly_then_closed(
    memory_server: tuple[KubeApiServer, MemoryReactorClock],
) -> None:
    server, _ = memory_server
    conn = _Conn(server)
    conn.request("GET", "/api/v1/services?watch=true")
    (stream,) = server._streams
    verifyObject(edgemesh.testing._apiserver.IPushProducer, stream)
    conn.protocol.pauseProducing()  # the socket buffer is full
    before = len(conn.transport.value())
    server.create(make_service("a"))
    assert len(conn.transport.value()) == before, "nothing written while paused"
    conn.protocol.resumeProducing()
    assert b'"ADDED"' in conn.transport.value(), "queued events flow on resume"
    conn.protocol.pauseProducing()
    for i in range(MAX_PENDING_WATCH_EVENTS + 1):
        server.patch("services", "a", {"metadata": {"labels": {"i": str(i)}}})
    assert isinstance(stream, _WatchStream) and stream.closed
    assert len(stream.pending) == 0 and server.watch_count() == 0


def test_faults_auth_and_bad_input(memory_server: tuple[KubeApiServer, MemoryReactorClock]) -> None:
    server, _ = memory_server
    server.token = "sekrit"
    conn = _Conn(server)
    conn.request("GET", "/api/v1/services")
    assert conn.response()[0] == 401
    auth = "Authorization: Bearer sekrit\r\n"
    server.fail_next(1, 429)
    conn = _Conn(server)
    conn.request("GET", "/api/v1/services", headers=auth)
    status, headers, body = conn.response()
    assert (status, headers["retry-after"], json.loads(body)["reason"]) == (
        429, "1", "TooManyRequests")
    conn = _Conn(server)
    conn.request("POST", "/api/v1/namespaces/default/services", headers=auth,
                 body=["not", "an", "object"])
    assert conn.response()[0] == 400
    conn = _Conn(server)
    conn.request("GET", "/api/v1/services?labelSelector=a%20in%20(", headers=auth)
    assert conn.response()[0] == 400
    conn = _Conn(server)
    conn.protocol.dataReceived(
        b"POST /api/v1/namespaces/default/services HTTP/1.1\r\nHost: x\r\n" + auth.encode()
        + b"Content-Length: 20000\r\n\r\n" + b"[" * 10000 + b"]" * 10000
    )
    assert conn.response()[0] == 400, "deep nesting is bad input, not a server error"
    conn = _Conn(server)
    conn.request("GET", "/api/v1/widgets", headers=auth)
    assert conn.response()[0] == 404
    conn = _Conn(server)
    conn.protocol.dataReceived(
        b"POST /api/v1/namespaces/default/services HTTP/1.1\r\nHost: x\r\n" + auth.encode()
        + b"Content-Length: 4000000\r\n\r\n" + b"x" * 4_000_000
    )
    assert conn.response()[0] == 413


def test_restart_on_memory_reactor_keeps_the_port(
    memory_server: tuple[KubeApiServer, MemoryReactorClock],
) -> None:
    server, reactor = memory_server
    conn = _Conn(server)
    conn.request("GET", "/api/v1/services?watch=true")
    port = server.port
    restarted = server.restart(down_for=1.0)
    assert conn.transport.disconnecting or conn.transport.disconnected or server.watch_count() == 0
    reactor.advance(1.0)
    assert restarted.called
    assert reactor.tcpServers[-1][0] == port


def test_send_initial_events_ends_with_the_annotated_bookmark(
    memory_server: tuple[KubeApiServer, MemoryReactorClock],
) -> None:
    server, _ = memory_server
    server.create(make_service("a"))
    conn = _Conn(server)
    conn.request("GET", "/api/v1/services?watch=1&sendInitialEvents=true"
                        "&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true")
    server.create(make_service("b"))
    events, _ = conn.events()
    assert [e["type"] for e in events] == ["ADDED", "BOOKMARK", "ADDED"]
    assert events[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    conn = _Conn(server)
    conn.request("GET", "/api/v1/services?watch=1&sendInitialEvents=true")
    assert conn.response()[0] == 422


def test_wait_for_watches_fires_when_enough_watches_open(
    memory_server: tuple[KubeApiServer, MemoryReactorClock],
) -> None:
    server, _ = memory_server
    waiting = server.wait_for_watches(2, "services")
    _Conn(server).request("GET", "/api/v1/services?watch=1")
    _Conn(server).request("GET", "/api/v1/nodes?watch=1")
    assert not waiting.called
    _Conn(server).request("GET", "/api/v1/namespaces/default/services?watch=1")
    assert waiting.called
    assert server.watch_count() == 3 and server.watch_count(NODES) == 1


def test_expire_and_close_watches(memory_server: tuple[KubeApiServer, MemoryReactorClock]) -> None:
    server, _ = memory_server
    services, nodes = _Conn(server), _Conn(server)
    services.request("GET", "/api/v1/services?watch=1")
    nodes.request("GET", "/api/v1/nodes?watch=1")
    assert server.expire_watches("services") == 1
    events, finished = services.events()
    assert finished and events[0]["type"] == "ERROR" and events[0]["object"]["code"] == 410
    assert server.close_watches() == 1
    assert nodes.events() == ([], True)


def test_validation_refuses_what_the_real_server_refuses() -> None:
    store = _store()
    with pytest.raises(StatusError) as no_ports:
        store.create(SERVICES, make_service("web", ports=[]))
    assert "spec.ports: Required value" in no_ports.value.message
    with pytest.raises(StatusError) as unnamed:
        store.create(
            SERVICES, {**make_service("web"), "spec": {"ports": [{"port": 1}, {"port": 2}]}})
    assert "spec.ports[0].name: Required value" in unnamed.value.message
    bad_address = make_endpoint_slice("web", ["not-an-ip"])
    with pytest.raises(StatusError) as invalid:
        store.create("endpointslices", bad_address)
    assert invalid.value.code == 422 and "must be a valid IPv4 address" in invalid.value.message
    created = store.create("endpointslices", make_endpoint_slice("web", ["10.0.0.1"]))
    with pytest.raises(StatusError) as immutable:
        store.update("endpointslices", {**created, "addressType": "IPv6",
                                        "endpoints": [{"addresses": ["fd00::1"]}]})
    assert "field is immutable" in immutable.value.message
    headless = store.create(SERVICES, make_service("headless", ports=[], cluster_ip="None"))
    assert headless["spec"]["clusterIP"] == "None"


# -- the official client against the threaded server ---------------------------------------


@pytest.fixture
def api() -> Iterator[ThreadedKubeApiServer]:
    with ThreadedKubeApiServer(token="test-token", bookmark_interval=None) as server:
        yield server


@pytest.fixture
def kube(api: ThreadedKubeApiServer, tmp_path: Path) -> client.ApiClient:
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    return config.new_client_from_config(config_file=kubeconfig)


def test_kubeconfig_is_private_and_replaced_whole(api: ThreadedKubeApiServer,
                                                 tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text("old")
    path.chmod(0o644)
    assert api.write_kubeconfig(path, token="secret") == str(path)
    # It carries a credential: 0600 like a key file, and a new file renamed over the old one.
    assert path.stat().st_mode & 0o777 == 0o600
    assert json.loads(path.read_text())["users"][0]["user"] == {"token": "secret"}
    assert [p.name for p in tmp_path.iterdir()] == ["kubeconfig"]  # no temporary left


def _names(items: list[Any]) -> list[str]:
    return [item.metadata.name for item in items]


def _collect(list_function: Any, count: int, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """The first `count` events of a Watch().stream (bounded by TIMEOUT)."""
    w = watch.Watch()
    events: list[dict[str, Any]] = []
    for event in w.stream(list_function, *args, timeout_seconds=TIMEOUT,
                          _request_timeout=TIMEOUT, **kwargs):
        events.append(event)
        if len(events) == count:
            w.stop()
    return events


def test_client_discovery_and_version(kube: client.ApiClient) -> None:
    assert client.VersionApi(kube).get_code(_request_timeout=TIMEOUT).major == "1"
    assert client.CoreApi(kube).get_api_versions(_request_timeout=TIMEOUT).versions == ["v1"]
    groups = client.ApisApi(kube).get_api_versions(_request_timeout=TIMEOUT).groups
    assert "discovery.k8s.io" in [g.name for g in groups]
    resources = client.DiscoveryV1Api(kube).get_api_resources(_request_timeout=TIMEOUT).resources
    assert "endpointslices" in [r.name for r in resources]
    core = client.CoreV1Api(kube).get_api_resources(_request_timeout=TIMEOUT).resources
    assert {"services", "nodes", "pods", "services/status"} <= {r.name for r in core}


def test_client_lists_with_resource_versions_and_selectors(
    api: ThreadedKubeApiServer, kube: client.ApiClient
) -> None:
    api.create(make_service("web", labels={"tier": "edge"}))
    api.create(make_service("db", labels={"tier": "cloud"}))
    api.create(make_service("web", "other"))
    api.create(make_endpoint_slice("web", ["10.0.0.1", "10.0.0.2"], node_name="n1"))
    api.create(make_node("n1", internal_ip="10.1.0.1", edge=True, hub_address="10.1.0.1:7701"))
    v1 = client.CoreV1Api(kube)
    everything = v1.list_service_for_all_namespaces(_request_timeout=TIMEOUT)
    assert everything.metadata.resource_version == str(api.resource_version)
    assert _names(everything.items) == ["db", "web", "web"]
    versions = [int(s.metadata.resource_version) for s in everything.items]
    assert len(set(versions)) == 3 and max(versions) <= int(everything.metadata.resource_version)
    assert _names(v1.list_namespaced_service("default", label_selector="tier=edge",
                                             _request_timeout=TIMEOUT).items) == ["web"]
    assert _names(v1.list_namespaced_service("default", label_selector="tier notin (edge)",
                                             _request_timeout=TIMEOUT).items) == ["db"]
    assert [s.metadata.namespace for s in v1.list_service_for_all_namespaces(
        field_selector="metadata.name=web", _request_timeout=TIMEOUT).items] == ["default", "other"]
    with pytest.raises(ApiException) as bad:
        v1.list_service_for_all_namespaces(field_selector="spec.nope=1", _request_timeout=TIMEOUT)
    assert bad.value.status == 400
    slices = client.DiscoveryV1Api(kube).list_namespaced_endpoint_slice(
        "default", label_selector="kubernetes.io/service-name=web", _request_timeout=TIMEOUT)
    assert [e.addresses for e in slices.items[0].endpoints] == [["10.0.0.1"], ["10.0.0.2"]]
    assert slices.items[0].endpoints[0].node_name == "n1"
    node = v1.list_node(_request_timeout=TIMEOUT).items[0]
    assert node.status.addresses[0].address == "10.1.0.1"
    assert "node-role.kubernetes.io/edge" in node.metadata.labels
    page = v1.list_service_for_all_namespaces(limit=2, _request_timeout=TIMEOUT)
    assert len(page.items) == 2 and page.metadata._continue
    rest = v1.list_service_for_all_namespaces(limit=2, _continue=page.metadata._continue,
                                              _request_timeout=TIMEOUT)
    assert len(rest.items) == 1 and not rest.metadata._continue


def test_client_watch_streams_events_in_order(
    api: ThreadedKubeApiServer, kube: client.ApiClient
) -> None:
    v1 = client.CoreV1Api(kube)
    api.create(make_service("before"))
    listed = v1.list_namespaced_service("default", _request_timeout=TIMEOUT)

    def change() -> None:
        api.wait_for_watches(1)
        api.create(make_service("web"))
        api.patch("services", "web", {"metadata": {"labels": {"v": "2"}}})
        api.delete("services", "web")

    changer = threading.Thread(target=change)
    changer.start()
    w = watch.Watch()
    seen: list[tuple[str, str, int]] = []
    for event in w.stream(v1.list_namespaced_service, "default",
                          resource_version=listed.metadata.resource_version,
                          timeout_seconds=TIMEOUT, _request_timeout=TIMEOUT):
        seen.append((event["type"], event["object"].metadata.name,
                     int(event["object"].metadata.resource_version)))
        if event["type"] == "DELETED":
            w.stop()
    changer.join(TIMEOUT)
    assert [s[:2] for s in seen] == [("ADDED", "web"), ("MODIFIED", "web"), ("DELETED", "web")]
    versions = [s[2] for s in seen]
    assert versions == sorted(versions) and len(set(versions)) == 3
    assert versions[-1] == api.resource_version
    assert w.resource_version == str(versions[-1])


def test_client_watch_without_version_starts_with_synthetic_adds(
    api: ThreadedKubeApiServer, kube: client.ApiClient
) -> None:
    api.create(make_endpoint_slice("web", ["10.0.0.1"], name="web-1"))
    api.create(make_endpoint_slice("web", ["10.0.0.2"], name="web-2"))
    events = _collect(client.DiscoveryV1Api(kube).list_endpoint_slice_for_all_namespaces, 2)
    assert [(e["type"], e["object"].metadata.name) for e in events] == [
        ("ADDED", "web-1"), ("ADDED", "web-2")]


def test_client_watch_bookmarks(api: ThreadedKubeApiServer, kube: client.ApiClient) -> None:
    v1 = client.CoreV1Api(kube)
    version = v1.list_node(_request_timeout=TIMEOUT).metadata.resource_version
    api.create(make_node("n1"))  # bumps the version past the one we watch from
    api.set_bookmark_interval(0.05)
    w = watch.Watch()
    types: list[str] = []
    for event in w.stream(v1.list_node, resource_version=version, allow_watch_bookmarks=True,
                          timeout_seconds=TIMEOUT, _request_timeout=TIMEOUT):
        types.append(event["type"])
        if event["type"] == "BOOKMARK":
            assert event["raw_object"]["metadata"] == {"resourceVersion": str(api.resource_version)}
            w.stop()
    assert types == ["ADDED", "BOOKMARK"]
    assert w.resource_version == str(api.resource_version)


@pytest.mark.slow  # waits on real time
def test_client_watch_timeout_ends_cleanly(api: ThreadedKubeApiServer,
                                           kube: client.ApiClient) -> None:
    started = time.monotonic()
    events = list(watch.Watch().stream(client.CoreV1Api(kube).list_node, timeout_seconds=1,
                                       _request_timeout=TIMEOUT))
    elapsed = time.monotonic() - started
    assert events == []
    assert 0.9 <= elapsed < 3


def test_client_watch_label_selector(api: ThreadedKubeApiServer, kube: client.ApiClient) -> None:
    v1 = client.CoreV1Api(kube)
    version = str(api.resource_version)
    api.create(make_service("a", labels={"app": "x"}))
    api.create(make_service("b", labels={"app": "y"}))
    api.patch("services", "b", {"metadata": {"labels": {"app": "x"}}})
    api.patch("services", "a", {"metadata": {"labels": {"app": "z"}}})
    events = _collect(v1.list_namespaced_service, 3, "default", label_selector="app in (x)",
                      resource_version=version)
    assert [(e["type"], e["object"].metadata.name) for e in events] == [
        ("ADDED", "a"), ("ADDED", "b"), ("DELETED", "a")]


def test_client_sees_410_as_watch_error_event(api: ThreadedKubeApiServer,
                                              kube: client.ApiClient) -> None:
    v1 = client.CoreV1Api(kube)
    old = str(api.resource_version)
    api.create(make_service("a"))
    api.compact()
    with pytest.raises(ApiException) as expired:
        list(watch.Watch().stream(v1.list_namespaced_service, "default", resource_version=old,
                                  timeout_seconds=TIMEOUT, _request_timeout=TIMEOUT))
    assert expired.value.status == 410
    assert "Expired" in expired.value.reason
    raw = v1.list_namespaced_service("default", watch=True, resource_version=old,
                                     _preload_content=False, _request_timeout=TIMEOUT)
    assert raw.status == 200
    lines = raw.read().decode().splitlines()
    assert len(lines) == 1
    error = json.loads(lines[0])
    assert error["type"] == "ERROR"
    assert error["object"]["kind"] == "Status" and error["object"]["code"] == 410


def test_client_sees_410_as_http_status(api: ThreadedKubeApiServer, kube: client.ApiClient) -> None:
    v1 = client.CoreV1Api(kube)
    old = str(api.resource_version)
    api.create(make_service("a"))
    api.compact()
    api.set_expired_form("status")
    with pytest.raises(ApiException) as expired:
        list(watch.Watch().stream(v1.list_namespaced_service, "default", resource_version=old,
                                  _request_timeout=TIMEOUT))
    assert expired.value.status == 410
    assert json.loads(expired.value.body)["reason"] == "Expired"


def test_client_watch_expired_mid_stream(api: ThreadedKubeApiServer,
                                         kube: client.ApiClient) -> None:
    v1 = client.CoreV1Api(kube)

    def expire() -> None:
        api.wait_for_watches(1)
        api.compact()
        api.expire_watches()

    expirer = threading.Thread(target=expire)
    expirer.start()
    with pytest.raises(ApiException) as expired:
        list(watch.Watch().stream(v1.list_node, resource_version=str(api.resource_version),
                                  timeout_seconds=TIMEOUT, _request_timeout=TIMEOUT))
    expirer.join(TIMEOUT)
    assert expired.value.status == 410


def test_client_create_update_patch_delete_and_conflicts(
    api: ThreadedKubeApiServer, kube: client.ApiClient
) -> None:
    v1 = client.CoreV1Api(kube)
    created = v1.create_namespaced_service("default", make_service("web"), _request_timeout=TIMEOUT)
    assert created.metadata.uid and created.spec.cluster_ip
    with pytest.raises(ApiException) as exists:
        v1.create_namespaced_service("default", make_service("web"), _request_timeout=TIMEOUT)
    assert exists.value.status == 409
    assert json.loads(exists.value.body)["reason"] == "AlreadyExists"
    created.metadata.labels = {"v": "1"}
    updated = v1.replace_namespaced_service("web", "default", created, _request_timeout=TIMEOUT)
    assert int(updated.metadata.resource_version) > int(created.metadata.resource_version)
    with pytest.raises(ApiException) as conflict:
        v1.replace_namespaced_service("web", "default", created, _request_timeout=TIMEOUT)
    assert conflict.value.status == 409
    assert json.loads(conflict.value.body)["reason"] == "Conflict"
    patched = v1.patch_namespaced_service(  # strategic merge: the client's default for a dict
        "web", "default", {"spec": {"ports": [{"port": 8080, "name": "alt"}]}},
        _request_timeout=TIMEOUT)
    assert sorted(p.port for p in patched.spec.ports) == [80, 8080]
    merged = v1.patch_namespaced_service(
        "web", "default", {"metadata": {"labels": {"v": None, "w": "2"}}},
        _content_type="application/merge-patch+json", _request_timeout=TIMEOUT)
    assert merged.metadata.labels == {"w": "2"}
    json_patched = v1.patch_namespaced_service(
        "web", "default", [{"op": "replace", "path": "/metadata/labels/w", "value": "3"}],
        _request_timeout=TIMEOUT)
    assert json_patched.metadata.labels == {"w": "3"}
    status = v1.patch_namespaced_service_status(
        "web", "default", {"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}},
        _request_timeout=TIMEOUT)
    assert status.status.load_balancer.ingress[0].ip == "192.0.2.1"
    with pytest.raises(ApiException) as precondition:
        v1.delete_namespaced_service(
            "web", "default", body=client.V1DeleteOptions(
                preconditions=client.V1Preconditions(uid="not-the-uid")),
            _request_timeout=TIMEOUT)
    assert precondition.value.status == 409
    v1.delete_namespaced_service("web", "default", _request_timeout=TIMEOUT)
    with pytest.raises(ApiException) as missing:
        v1.read_namespaced_service("web", "default", _request_timeout=TIMEOUT)
    assert missing.value.status == 404
    assert json.loads(missing.value.body)["details"]["name"] == "web"
    generated = v1.create_namespaced_pod(
        "default", {"metadata": {"generateName": "pod-"}, "spec": make_pod("x")["spec"]},
        _request_timeout=TIMEOUT)
    assert generated.metadata.name.startswith("pod-") and len(generated.metadata.name) == 9
    assert generated.status.phase == "Pending"
    v1.create_namespace(make_namespace("edge"), _request_timeout=TIMEOUT)
    slice_ = client.DiscoveryV1Api(kube).create_namespaced_endpoint_slice(
        "edge", make_endpoint_slice("web", ["10.0.0.1"], "edge"), _request_timeout=TIMEOUT)
    assert slice_.metadata.namespace == "edge"
    deleted = client.DiscoveryV1Api(kube).delete_namespaced_endpoint_slice(
        slice_.metadata.name, "edge", _request_timeout=TIMEOUT)
    assert deleted["status"] == "Success"  # this client types it as a plain object


def test_client_sees_injected_429_and_500(api: ThreadedKubeApiServer, tmp_path: Path) -> None:
    configuration = client.Configuration()
    config.load_kube_config(api.write_kubeconfig(tmp_path / "kc"),
                            client_configuration=configuration)
    configuration.retries = False  # urllib3 would retry a 429 that carries Retry-After itself
    v1 = client.CoreV1Api(client.ApiClient(configuration))
    api.fail_next(1, 429, retry_after=2)
    with pytest.raises(ApiException) as throttled:
        v1.list_node(_request_timeout=TIMEOUT)
    assert throttled.value.status == 429
    assert throttled.value.headers["Retry-After"] == "2"
    assert json.loads(throttled.value.body)["details"]["retryAfterSeconds"] == 2
    api.fail_next(1, 500, match=lambda method, uri: "watch=" in uri)
    v1.list_node(_request_timeout=TIMEOUT)  # not a watch: untouched
    with pytest.raises(ApiException) as broken:
        list(watch.Watch().stream(v1.list_node, timeout_seconds=1, _request_timeout=TIMEOUT))
    assert broken.value.status == 500
    assert json.loads(broken.value.body)["reason"] == "InternalError"


@pytest.mark.slow  # waits on real time
def test_default_client_retries_429_after_retry_after(
    api: ThreadedKubeApiServer, kube: client.ApiClient
) -> None:
    v1 = client.CoreV1Api(kube)
    api.fail_next(1, 429, retry_after=1)
    started = time.monotonic()
    assert v1.list_node(_request_timeout=TIMEOUT).items == []
    assert time.monotonic() - started >= 0.9, "urllib3 slept for Retry-After"
    assert [m for m, _ in api.request_log()].count("GET") == 2
    api.fail_next(4, 429, retry_after=0)  # one more than urllib3's default 3 retries
    with pytest.raises(ApiException) as throttled:
        v1.list_node(_request_timeout=TIMEOUT)
    assert throttled.value.status == 429
    assert throttled.value.reason == "Too Many Requests"
    assert [m for m, _ in api.request_log()].count("GET") == 2 + 4


def test_client_go_retries_honour_retry_after(api: ThreadedKubeApiServer, tmp_path: Path) -> None:
    configuration = client.Configuration()
    config.load_kube_config(api.write_kubeconfig(tmp_path / "kc"),
                            client_configuration=configuration)
    configuration.client_go_retries = True
    v1 = client.CoreV1Api(client.ApiClient(configuration))
    api.fail_next(1, 429, retry_after=0)
    assert v1.list_node(_request_timeout=TIMEOUT).items == []
    assert [m for m, _ in api.request_log()].count("GET") == 2


def test_client_rejected_without_the_token(api: ThreadedKubeApiServer) -> None:
    configuration = client.Configuration(host=api.url)
    with pytest.raises(ApiException) as denied:
        client.CoreV1Api(client.ApiClient(configuration)).list_node(_request_timeout=TIMEOUT)
    assert denied.value.status == 401


@pytest.mark.slow  # waits on real time
def test_restart_drops_watches_refuses_then_serves_on_the_same_port(
    api: ThreadedKubeApiServer, kube: client.ApiClient
) -> None:
    v1 = client.CoreV1Api(kube)
    version = v1.list_node(_request_timeout=TIMEOUT).metadata.resource_version
    api.create(make_node("n1"))
    port = api.port
    outcome: dict[str, Any] = {}

    def watch_nodes() -> None:
        events: list[str] = []
        try:
            for event in watch.Watch().stream(v1.list_node, resource_version=version,
                                              timeout_seconds=TIMEOUT, _request_timeout=TIMEOUT):
                events.append(event["type"])
        except Exception as error:  # noqa: BLE001 -- whatever the client raises is the result
            outcome["error"] = error
        outcome["events"] = events

    watcher = threading.Thread(target=watch_nodes)
    watcher.start()
    api.wait_for_watches(1)
    restart = threading.Thread(target=api.restart, kwargs={"down_for": 0.5, "compact": True})
    restart.start()
    watcher.join(TIMEOUT)
    assert not watcher.is_alive()
    assert outcome["events"] == ["ADDED"]
    assert api.watch_count() == 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()
    restart.join(TIMEOUT)
    assert api.port == port
    assert _names(v1.list_node(_request_timeout=TIMEOUT).items) == ["n1"]
    with pytest.raises(ApiException) as expired:  # compact=True: history is gone
        list(watch.Watch().stream(v1.list_node, resource_version=version,
                                  timeout_seconds=TIMEOUT, _request_timeout=TIMEOUT))
    assert expired.value.status == 410


@pytest.mark.slow  # spawns a process
def test_command_line_server(tmp_path: Path) -> None:
    objects = tmp_path / "objects.yaml"
    objects.write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80}]}\n"
        "---\napiVersion: v1\nkind: Node\nmetadata: {name: n1}\n"
    )
    kubeconfig = tmp_path / "kubeconfig"
    process = subprocess.Popen(
        [sys.executable, "-m", "edgemesh.testing", "--token", "t", "--kubeconfig",
         str(kubeconfig), "--load", str(objects)],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], TIMEOUT * 2)
        assert ready, "the server printed nothing"
        assert process.stdout.readline().startswith("serving http://127.0.0.1:")
        v1 = client.CoreV1Api(config.new_client_from_config(config_file=str(kubeconfig)))
        services = v1.list_service_for_all_namespaces(_request_timeout=TIMEOUT).items
        assert _names(services) == ["kubernetes", "web"], "the CLI bootstraps a new cluster"
        assert _names(v1.list_node(_request_timeout=TIMEOUT).items) == ["n1"]
    finally:
        process.terminate()
        process.wait(TIMEOUT)


def test_in_reactor_with_treq_and_clean_stop() -> None:
    """KubeApiServer on a reactor it shares with its client (treq, the non-blocking way), as a
    watcher under trial would use it; stop() leaves no timer and no socket behind.  A private
    reactor instance keeps this test independent of the global one."""
    from twisted.internet.epollreactor import EPollReactor

    reactor: Any = EPollReactor()
    outcome: dict[str, Any] = {}

    async def scenario() -> None:
        server = KubeApiServer(reactor, token="t", bookmark_interval=1.0)
        await server.start()
        server.create(make_service("web"))
        pool = HTTPConnectionPool(reactor)
        http = HTTPClient(Agent(reactor, pool=pool))
        headers = {"Authorization": ["Bearer t"]}
        response = await http.get(f"{server.url}/api/v1/services", headers=headers)
        listed = await response.json()
        outcome["list_version"] = listed["metadata"]["resourceVersion"]
        lines: list[bytes] = []
        got_two: defer.Deferred[None] = defer.Deferred()

        def collect(data: bytes) -> None:
            lines.extend(line for line in data.splitlines() if line)
            if len(lines) >= 2 and not got_two.called:
                got_two.callback(None)

        watching = await http.get(
            f"{server.url}/api/v1/services?watch=1&resourceVersion={outcome['list_version']}",
            headers=headers, unbuffered=True,
        )
        outcome["watch_code"] = watching.code
        body = treq.collect(watching, collect)
        await server.wait_for_watches(1).addTimeout(5, reactor)
        server.patch("services", "web", {"metadata": {"labels": {"v": "2"}}})
        server.delete("services", "web")
        await got_two.addTimeout(5, reactor)
        outcome["types"] = [json.loads(line)["type"] for line in lines]
        server.close_watches()
        await body
        await server.stop()
        await pool.closeCachedConnections()
        outcome["watches"] = server.watch_count()

    def run() -> None:
        done = defer.Deferred.fromCoroutine(scenario())
        done.addErrback(lambda failure: outcome.setdefault("failure", failure))
        done.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(run)
    guard = reactor.callLater(10, reactor.stop)
    reactor.run(installSignalHandlers=False)
    assert guard.active(), "the scenario took too long"
    guard.cancel()
    if "failure" in outcome:
        outcome["failure"].raiseException()
    assert outcome["list_version"] == "2" and outcome["watch_code"] == 200
    assert outcome["types"] == ["MODIFIED", "DELETED"]
    assert outcome["watches"] == 0
    assert reactor.getDelayedCalls() == [], "stop() cancelled every timer"
    assert [r for r in reactor.getReaders() if r is not reactor.waker] == []
