"""TreqKubeAPI over real HTTP against the test API server (``edgemesh.testing``), in the
reactor: lists and pages, watches (events, bookmarks, timeouts, 410 in both forms,
cancellation), errors with their Status, writes with preconditions, the bearer token."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import reactor as global_reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from edgemesh.sources import (
    ENDPOINT_SLICES,
    NODES,
    SERVICES,
    APIError,
    APIUnreachable,
    TreqKubeAPI,
    load_configuration,
)
from edgemesh.sources._kubeapi import ProxyRefused
from edgemesh.testing import KubeApiServer, make_endpoint_slice, make_node, make_service

reactor: Any = global_reactor


class TreqKubeAPITests(TestCase):
    timeout = 20

    async def _setUp(self) -> None:
        self.server = KubeApiServer(reactor, token="s3cret", bookmark_interval=None)
        await self.server.start()
        self.addCleanup(self.server.stop)
        path = Path(self.mktemp())
        path.parent.mkdir(parents=True, exist_ok=True)
        configuration = load_configuration(self.server.write_kubeconfig(str(path)))
        self.api = TreqKubeAPI(reactor, configuration)
        self.addCleanup(self.api.close)

    def setUp(self) -> Deferred[None]:
        return ensureDeferred(self._setUp())

    def watch(self, resource: Any, version: str, timeout: int = 30,
              **kwargs: Any) -> tuple[Any, list[tuple[str, dict[str, Any]]]]:
        events: list[tuple[str, dict[str, Any]]] = []
        watch = self.api.watch(resource, None, resource_version=version,
                               timeout_seconds=timeout,
                               on_event=lambda kind, obj: events.append((kind, obj)), **kwargs)
        self.addCleanup(watch.cancel)
        return watch, events

    async def until(self, check: Any, seconds: float = 5.0) -> None:
        for _ in range(int(seconds / 0.01)):
            if check():
                return
            await deferLater(reactor, 0.01)
        raise AssertionError("condition not reached")

    # -- lists ------------------------------------------------------------------------------

    async def test_list_pages_and_version(self) -> None:
        for i in range(5):
            self.server.create(make_service(f"s{i}"))
        first = await self.api.list(SERVICES, limit=2)
        assert [i["metadata"]["name"] for i in first.items] == ["s0", "s1"]
        assert first.continue_token
        rest = await self.api.list(SERVICES, limit=10, continue_token=first.continue_token)
        assert [i["metadata"]["name"] for i in rest.items] == ["s2", "s3", "s4"]
        assert rest.continue_token is None
        assert int(first.resource_version) == self.server.resource_version
        # camelCase as the parsers want it.
        assert "clusterIP" in first.items[0]["spec"]

    async def test_list_namespace_and_label_selector(self) -> None:
        self.server.create(make_service("a", namespace="prod"))
        self.server.create(make_service("b"))
        self.server.create(make_endpoint_slice("b", ["10.0.0.1"], labels={"x": "y"}))
        self.server.create(make_endpoint_slice("b", ["10.0.0.2"], name="other"))
        assert [i["metadata"]["name"] for i in (await self.api.list(SERVICES, "prod")).items] \
            == ["a"]
        found = await self.api.list(ENDPOINT_SLICES, label_selector="x!=y")
        assert [i["metadata"]["name"] for i in found.items] == ["other"]

    async def test_errors_carry_the_status(self) -> None:
        self.server.fail_next(1, 429)
        try:
            await self.api.list(NODES)
        except APIError as error:
            assert error.status == 429 and error.reason == "TooManyRequests"
            assert error.retry_after == 1 and error.transient
        else:
            raise AssertionError("no error")

    async def test_token_is_required_and_sent(self) -> None:
        configuration = load_configuration(self.server.write_kubeconfig(self.mktemp()))
        configuration.api_key = {}
        configuration.refresh_api_key_hook = None
        anonymous = TreqKubeAPI(reactor, configuration)
        self.addCleanup(anonymous.close)
        texts = set()
        for resource in (NODES, SERVICES):
            try:
                await anonymous.list(resource)
            except APIError as error:
                assert error.status == 401 and error.persistent
                assert f"{self.server.url} refused the credentials of" in str(error)
                texts.add(str(error))
            else:
                raise AssertionError("no error")
        # The same words whatever was asked: /readyz says a refused token once, not once
        # per resource.
        assert len(texts) == 1, texts

    async def test_connection_refused_names_the_url_and_the_kubeconfig(self) -> None:
        configuration = load_configuration(self.server.write_kubeconfig(self.mktemp()))
        port = self.server.port
        await self.server.stop()
        configuration.host = f"http://127.0.0.1:{port}"
        api = TreqKubeAPI(reactor, configuration, origin="kubeconfig K, context 'c'")
        self.addCleanup(api.close)
        try:
            await api.list(NODES)
        except APIUnreachable as error:
            assert str(error) == (f"connection refused by http://127.0.0.1:{port} (kubeconfig "
                                  "K, context 'c'): is the API server up, and is this its "
                                  "address?")
            assert error.kind == "refused" and not error.persistent
        else:
            raise AssertionError("no error")

    # -- watches ----------------------------------------------------------------------------

    async def test_watch_events_and_clean_end(self) -> None:
        version = (await self.api.list(NODES)).resource_version
        watch, events = self.watch(NODES, version, timeout=1)
        self.server.create(make_node("n1"))
        self.server.delete("nodes", "n1")
        await self.until(lambda: len(events) == 2)
        assert [kind for kind, _ in events] == ["ADDED", "DELETED"]
        assert await watch.done is None, "timeoutSeconds ends the stream cleanly"

    async def test_watch_bookmarks(self) -> None:
        version = (await self.api.list(SERVICES)).resource_version
        _, events = self.watch(SERVICES, version)
        await self.until(lambda: self.server.watch_count() == 1)
        self.server.send_bookmarks()
        await self.until(lambda: len(events) == 1)
        kind, obj = events[0]
        assert kind == "BOOKMARK" and obj["metadata"]["resourceVersion"]

    async def test_410_as_an_error_event(self) -> None:
        self.server.create(make_service("a"))
        self.server.create(make_service("b"))
        self.server.compact()
        watch, events = self.watch(SERVICES, "1")
        await watch.done
        assert events[-1][0] == "ERROR" and events[-1][1]["code"] == 410

    async def test_410_as_an_http_status(self) -> None:
        self.server.set_expired_form("status")
        self.server.create(make_service("a"))
        self.server.create(make_service("b"))
        self.server.compact()
        watch, events = self.watch(SERVICES, "1")
        try:
            await watch.done
        except APIError as error:
            assert error.gone
        else:
            raise AssertionError("no 410")
        assert events == []

    async def test_cancel_closes_the_stream_quietly(self) -> None:
        version = (await self.api.list(SERVICES)).resource_version
        watch, events = self.watch(SERVICES, version)
        outcome: list[object] = []
        watch.done.addBoth(outcome.append)
        await self.until(lambda: self.server.watch_count() == 1)
        watch.cancel()
        await self.until(lambda: self.server.watch_count() == 0)
        self.server.create(make_service("late"))
        await deferLater(reactor, 0.1)
        assert events == [] and outcome == []

    async def test_a_dropped_connection_fails_the_watch(self) -> None:
        version = (await self.api.list(SERVICES)).resource_version
        watch, _ = self.watch(SERVICES, version)
        await self.until(lambda: self.server.watch_count() == 1)
        self.server.drop_connections()
        failed: list[Any] = []
        watch.done.addErrback(failed.append)
        await self.until(lambda: failed)

    # -- writes -----------------------------------------------------------------------------

    async def test_create_get_replace_delete_with_precondition(self) -> None:
        created = await self.api.create(SERVICES, "default", make_service("w"))
        uid = created["metadata"]["uid"]
        assert (await self.api.get(SERVICES, "default", "w"))["metadata"]["uid"] == uid
        changed = {**created, "metadata": {**created["metadata"], "labels": {"a": "b"}}}
        replaced = await self.api.replace(SERVICES, "default", "w", changed)
        assert replaced["metadata"]["labels"] == {"a": "b"}
        try:  # the version we saw first is stale now
            await self.api.delete(SERVICES, "default", "w", created["metadata"]["resourceVersion"])
        except APIError as error:
            assert error.status == 409
        else:
            raise AssertionError("a stale precondition deleted")
        await self.api.delete(SERVICES, "default", "w", replaced["metadata"]["resourceVersion"])
        try:
            await self.api.get(SERVICES, "default", "w")
        except APIError as error:
            assert error.status == 404
        else:
            raise AssertionError("still there")


class StallingServerTests(TestCase):
    """A server that sends half a response and stalls: the request's deadline ends it."""

    timeout = 10

    async def test_a_stalled_list_is_cancelled_and_its_connection_dropped(self) -> None:
        from twisted.internet.defer import CancelledError
        from twisted.internet.protocol import Factory, Protocol

        lost: list[object] = []

        class Stall(Protocol):
            def dataReceived(self, data: bytes) -> None:
                if self.transport is not None and b"\r\n\r\n" in data:
                    self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{")

            def connectionLost(self, reason: Any = None) -> None:
                lost.append(reason)

        port = reactor.listenTCP(0, Factory.forProtocol(Stall), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        from kubernetes import client

        configuration = client.Configuration()
        configuration.host = f"http://127.0.0.1:{port.getHost().port}"
        api = TreqKubeAPI(reactor, configuration, request_timeout=0.3)
        self.addCleanup(api.close)
        started = reactor.seconds()
        try:
            await api.list(SERVICES)
        except CancelledError:
            pass
        else:
            raise AssertionError("a stalled list succeeded")
        assert reactor.seconds() - started < 2
        for _ in range(100):
            if lost:
                break
            await deferLater(reactor, 0.01)
        assert lost, "the stalled connection was dropped"


# -- the watch body parser, fed by hand ------------------------------------------------------


def _stream() -> tuple[Any, list[tuple[str, dict[str, Any]]], list[Any]]:
    from edgemesh.sources._kubeapi import _EventStream, _TreqWatch

    events: list[tuple[str, dict[str, Any]]] = []
    failures: list[Any] = []
    watch = _TreqWatch(lambda kind, obj: events.append((kind, obj)))
    watch.done.addErrback(failures.append)
    return _EventStream(watch), events, failures


def test_events_split_across_reads_are_delivered_once() -> None:
    stream, events, failures = _stream()
    line = b'{"type": "ADDED", "object": {"metadata": {"name": "a"}}}\n'
    for i in range(0, len(line), 7):
        stream.dataReceived(line[i:i + 7])
    stream.dataReceived(line + b"\n" + line)
    assert [obj["metadata"]["name"] for _, obj in events] == ["a", "a", "a"]
    assert failures == []


def test_an_event_over_the_cap_fails_the_watch_without_buffering_more() -> None:
    from edgemesh.sources._kubeapi import MAX_EVENT_BYTES

    stream, events, failures = _stream()
    chunk = b"x" * (1 << 20)
    for _ in range(MAX_EVENT_BYTES // len(chunk) + 2):
        stream.dataReceived(chunk)
    assert len(failures) == 1 and failures[0].value.reason == "TooLarge"
    assert len(stream.buffer) <= MAX_EVENT_BYTES + len(chunk)
    stream.dataReceived(b"more\n")
    assert events == []


def test_garbage_lines_fail_the_watch() -> None:
    for garbage in (b"not json\n", b"[1, 2]\n", b'{"type": "ADDED"}\n', b'{"object": {}}\n'):
        stream, events, failures = _stream()
        stream.dataReceived(garbage)
        assert events == [] and len(failures) == 1, garbage
        assert failures[0].value.reason == "BadEvent"


# -- the CONNECT tunnel (kubeconfig proxy-url), on a StringTransport -------------------------------


class _Recorder(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.lost: list[Failure] = []

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.append(reason)


class _ProxyEndpoint:
    """Connects every factory at once to a StringTransport."""

    def __init__(self) -> None:
        self.transports: list[StringTransport] = []
        self.protocols: list[Any] = []

    def connect(self, factory: Any) -> Deferred[Any]:
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 3128))
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.transports.append(transport)
        self.protocols.append(protocol)
        return succeed(protocol)


def _tunnel() -> tuple[_ProxyEndpoint, Deferred[Any], list[_Recorder]]:
    from edgemesh.sources._kubeapi import _TunnelEndpoint

    proxy = _ProxyEndpoint()
    inner: list[_Recorder] = []

    def build() -> _Recorder:
        inner.append(_Recorder())
        return inner[-1]

    endpoint = _TunnelEndpoint(proxy, "10.0.0.1", 6443, b"Basic bWVzaDpwdw==")
    return proxy, endpoint.connect(Factory.forProtocol(build)), inner


def test_tunnel_asks_connect_then_hands_the_stream_over() -> None:
    proxy, ready, inner = _tunnel()
    (transport,) = proxy.transports
    assert transport.value() == (b"CONNECT 10.0.0.1:6443 HTTP/1.1\r\nHost: 10.0.0.1:6443\r\n"
                                 b"Proxy-Authorization: Basic bWVzaDpwdw==\r\n\r\n")
    assert not ready.called
    proxy.protocols[0].dataReceived(b"HTTP/1.1 200 Connection established\r\n")
    assert not ready.called
    proxy.protocols[0].dataReceived(b"\r\nhello")
    (protocol,) = inner
    assert ready.result is protocol and protocol.transport is transport
    assert protocol.data == b"hello", "bytes after the proxy's head are the server's"
    proxy.protocols[0].dataReceived(b" more")
    assert protocol.data == b"hello more"
    proxy.protocols[0].connectionLost(Failure(ConnectionDone()))
    assert len(protocol.lost) == 1


def test_tunnel_refused_by_the_proxy_fails_with_its_status() -> None:
    proxy, ready, inner = _tunnel()
    failures: list[Failure] = []
    ready.addErrback(failures.append)
    proxy.protocols[0].dataReceived(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
    assert failures and failures[0].check(ProxyRefused)
    assert "407 Proxy Authentication Required" in str(failures[0].value)
    assert proxy.transports[0].disconnecting and not inner


def test_tunnel_cancelled_while_the_proxy_thinks_closes_it() -> None:
    proxy, ready, inner = _tunnel()
    failures: list[Failure] = []
    ready.addErrback(failures.append)
    ready.cancel()
    assert failures and failures[0].check(CancelledError)
    assert proxy.transports[0].disconnecting
    proxy.protocols[0].dataReceived(b"HTTP/1.1 200 OK\r\n\r\n")  # too late: no error
    assert not inner


# -- exec credential plugins ----------------------------------------------------------------


def exec_kubeconfig(tmp_path: Path, script: str) -> str:
    """A kubeconfig whose user's credentials come from a plugin running ``script``."""
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "x",
        "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:9"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "users": [{"name": "u", "user": {"exec": {
            "apiVersion": "client.authentication.k8s.io/v1", "interactiveMode": "Never",
            "command": sys.executable, "args": ["-c", script]}}}],
    }
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(config))  # JSON is YAML
    return str(path)


def test_a_failing_exec_plugin_stops_the_load_with_its_reason(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The client would log the failure and go on without credentials, never running the
    # plugin again: every request a 401 until a restart.
    kubeconfig = exec_kubeconfig(
        tmp_path, "import sys; sys.stderr.write('token service unavailable'); sys.exit(1)")
    with pytest.raises(Exception, match="exec plugin gave no credentials: .*returned 1.*"
                                        "token service unavailable"):
        load_configuration(kubeconfig)
    assert "ERROR:root" not in capsys.readouterr().err  # not printed before twistd's log


def test_an_exec_plugin_s_token_is_used(tmp_path: Path) -> None:
    status = {"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
              "status": {"token": "from-the-plugin"}}
    kubeconfig = exec_kubeconfig(tmp_path, f"print({json.dumps(json.dumps(status))})")
    configuration = load_configuration(kubeconfig)
    assert configuration.api_key["BearerToken"] == "Bearer from-the-plugin"
