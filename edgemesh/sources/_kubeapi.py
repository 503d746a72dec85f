"""
The few Kubernetes API calls edgemesh makes (list, watch, get, create, update, delete),
over treq, configured by the official ``kubernetes`` client.

Why treq and not the official client in threads: a watch is a response that stays open
for minutes.  In a thread it pins that thread for as long, and stopping it (at shutdown, or
when the watch must be dropped) means closing a socket under a blocked ``read``.  Driven
by treq, a watch is a Deferred on the reactor: cancelled in one call, its body parsed line
by line as it arrives with a bounded buffer, and no thread pool to size.  The official
client still does what it is good at: loading the configuration (kubeconfig or in-cluster
service account; bearer tokens, exec plugins, client certificates, the CA), and refreshing
tokens through its hook, which may run a plugin and so is called in a thread when the
reactor has threads.

``KubeAPI`` is the interface the watch and the controller use; ``TreqKubeAPI`` implements
it; tests use fakes of it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, _HTTP11ClientFactory
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse

MAX_LIST_BYTES = 256 * 1024 * 1024
"""A list response (one page) larger than this is refused."""
MAX_EVENT_BYTES = 8 * 1024 * 1024
"""One watch event (one object; etcd stores at most 1.5 MiB per object) larger than this
ends the watch with an error."""
MAX_ERROR_BYTES = 64 * 1024
"""Of an error response, only this much is read (a Status is small)."""
REQUEST_TIMEOUT = 60.0
"""Seconds for a list page or a write, response body included."""


@dataclass(frozen=True)
class Resource:
    """A Kubernetes resource type, enough to build its URLs."""

    kind: str
    api_version: str
    """``v1`` (core) or ``group/version``."""
    plural: str
    namespaced: bool

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        prefix = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        if self.namespaced and namespace:
            prefix += f"/namespaces/{quote(namespace, safe='')}"
        path = f"{prefix}/{self.plural}"
        return path if name is None else f"{path}/{quote(name, safe='')}"


SERVICES = Resource("Service", "v1", "services", namespaced=True)
ENDPOINT_SLICES = Resource("EndpointSlice", "discovery.k8s.io/v1", "endpointslices",
                           namespaced=True)
NODES = Resource("Node", "v1", "nodes", namespaced=False)
LEASES = Resource("Lease", "coordination.k8s.io/v1", "leases", namespaced=True)
"""The router replicas' leader election (``_election.py``), in the router's own namespace."""


class APIError(Exception):
    """The API server answered with an error (an HTTP status, or an ERROR watch event):
    ``status`` is the HTTP code (410 Gone, 429, 500...), ``reason`` the Status reason."""

    def __init__(self, status: int, reason: str = "", message: str = "",
                 retry_after: float | None = None) -> None:
        super().__init__(f"{status} {reason}: {message}" if reason or message else str(status))
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after = retry_after

    @property
    def gone(self) -> bool:
        """The resource version is too old (compacted): relist."""
        return self.status == 410

    @property
    def transient(self) -> bool:
        """Worth retrying as is, after a backoff: throttled, or the server's trouble."""
        return self.status == 429 or self.status >= 500

    @classmethod
    def from_status(cls, status: object, http_status: int | None = None,
                    retry_after: float | None = None) -> APIError:
        """From a ``Status`` object (an error body, or an ERROR event's object)."""
        body = status if isinstance(status, Mapping) else {}
        code = body.get("code")
        if not isinstance(code, int) or isinstance(code, bool) or not 100 <= code <= 999:
            code = http_status if http_status is not None else 500
        reason, message = body.get("reason"), body.get("message")
        return cls(code, reason if isinstance(reason, str) else "",
                   message[:500] if isinstance(message, str) else "", retry_after)


@dataclass
class ListResult:
    items: list[dict[str, Any]]
    resource_version: str
    continue_token: str | None = None


class Watch(Protocol):
    """A running watch.  ``done`` fires (None) when the server ends the stream, or fails
    with APIError or a connection error; after ``cancel`` it fires neither way."""

    done: Deferred[None]

    def cancel(self) -> None: ...


EventHandler = Callable[[str, dict[str, Any]], None]
"""(type, object) for each watch event: ADDED, MODIFIED, DELETED, BOOKMARK, ERROR."""


class KubeAPI(Protocol):
    def list(self, resource: Resource, namespace: str | None = None, *,
             label_selector: str | None = None, limit: int | None = None,
             continue_token: str | None = None) -> Deferred[ListResult]: ...

    def watch(self, resource: Resource, namespace: str | None, *, resource_version: str,
              timeout_seconds: int, on_event: EventHandler,
              label_selector: str | None = None) -> Watch: ...

    def get(self, resource: Resource, namespace: str | None, name: str
            ) -> Deferred[dict[str, Any]]: ...

    def create(self, resource: Resource, namespace: str | None, body: Mapping[str, Any]
               ) -> Deferred[dict[str, Any]]: ...

    def replace(self, resource: Resource, namespace: str | None, name: str,
                body: Mapping[str, Any]) -> Deferred[dict[str, Any]]: ...

    def delete(self, resource: Resource, namespace: str | None, name: str,
               resource_version: str | None = None) -> Deferred[None]: ...


# -- configuration ---------------------------------------------------------------------------


def load_configuration(kubeconfig: str | None = None, in_cluster: bool = False,
                       context: str | None = None) -> Any:
    """A ``kubernetes.client.Configuration`` from a kubeconfig file or the in-cluster
    service account, loaded by the official client.  Raises its ConfigException (or
    OSError) when that fails."""
    from kubernetes import client, config

    configuration = client.Configuration()
    if in_cluster:
        config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration)
    else:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, context=context, client_configuration=configuration,
            persist_config=False)
    return configuration


def _pem_blocks(data: bytes) -> list[bytes]:
    blocks, marker = [], b"-----END CERTIFICATE-----"
    for piece in data.split(marker)[:-1]:
        start = piece.find(b"-----BEGIN CERTIFICATE-----")
        if start >= 0:
            blocks.append(piece[start:] + marker + b"\n")
    return blocks


def _tls_policy(configuration: Any) -> Any:
    """Twisted TLS client options from the configuration: the CA bundle (else the
    platform's), the client certificate, the server name to verify."""
    from twisted.internet import ssl
    from twisted.web.client import BrowserLikePolicyForHTTPS
    from twisted.web.iweb import IPolicyForHTTPS
    from zope.interface import implementer

    client_certificate = None
    if configuration.cert_file and configuration.key_file:
        with open(configuration.cert_file, "rb") as cert, open(configuration.key_file, "rb") as key:
            client_certificate = ssl.PrivateCertificate.loadPEM(cert.read() + b"\n" + key.read())
    trust: Any = None
    if configuration.ssl_ca_cert:
        with open(configuration.ssl_ca_cert, "rb") as ca:
            trust = ssl.trustRootFromCertificates(
                [ssl.Certificate.loadPEM(block) for block in _pem_blocks(ca.read())])
    server_name = getattr(configuration, "tls_server_name", None)
    verify = bool(configuration.verify_ssl)

    @implementer(IPolicyForHTTPS)
    class Policy:
        def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
            if not verify:
                options = ssl.CertificateOptions(
                    verify=False,
                    privateKey=client_certificate.privateKey.original if client_certificate else None,
                    certificate=client_certificate.original if client_certificate else None,
                )
                return options
            name = server_name or hostname.decode("ascii")
            return ssl.optionsForClientTLS(name, trustRoot=trust or ssl.platformTrust(),
                                           clientCertificate=client_certificate)

    return Policy() if configuration.host.startswith("https") else BrowserLikePolicyForHTTPS()


# -- the treq implementation -------------------------------------------------------------------


class _BoundedBody(TwistedProtocol):
    """Collects a response body up to ``limit`` bytes; over it, the connection is dropped
    and ``finished`` fails."""

    def __init__(self, finished: Deferred[bytes], limit: int) -> None:
        self.finished = finished
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0
        self.over = False

    def dataReceived(self, data: bytes) -> None:
        if self.over:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.over = True
            self.parts = []
            if self.transport is not None:
                self.transport.stopProducing()  # type: ignore[attr-defined]
            return
        self.parts.append(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        if self.finished.called:
            return
        if self.over:
            self.finished.errback(APIError(0, "TooLarge", f"response over {self.limit} bytes"))
        elif reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(b"".join(self.parts))
        else:
            self.finished.errback(reason)


class _EventStream(TwistedProtocol):
    """A watch body: one JSON event per line, each handed over as it completes.  Holds at
    most one event's bytes."""

    def __init__(self, watch: _TreqWatch) -> None:
        self.watch = watch
        self.buffer = bytearray()

    def dataReceived(self, data: bytes) -> None:
        watch = self.watch
        if watch.finished:
            return
        self.buffer += data
        while not watch.finished:
            end = self.buffer.find(b"\n")
            if end < 0:
                if len(self.buffer) > MAX_EVENT_BYTES:
                    watch.fail(APIError(0, "TooLarge",
                                        f"watch event over {MAX_EVENT_BYTES} bytes"))
                return
            line = bytes(self.buffer[:end])
            del self.buffer[: end + 1]
            if line.strip():
                watch.line(line)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        if self.buffer.strip() and not self.watch.finished:
            self.watch.line(bytes(self.buffer))
        self.buffer = bytearray()
        if reason.check(ResponseDone, PotentialDataLoss):
            self.watch.end()
        else:
            self.watch.fail(reason)


class _TreqWatch:
    def __init__(self, on_event: EventHandler) -> None:
        self.on_event = on_event
        self.done: Deferred[None] = Deferred()
        self.finished = False
        self.request: Deferred[Any] | None = None
        self.stream: _EventStream | None = None

    def line(self, line: bytes) -> None:
        try:
            event = json.loads(line)
        except ValueError as error:
            self.fail(APIError(0, "BadEvent", f"watch event is not JSON: {error}"))
            return
        kind = event.get("type") if isinstance(event, dict) else None
        obj = event.get("object") if isinstance(event, dict) else None
        if not isinstance(kind, str) or not isinstance(obj, dict):
            self.fail(APIError(0, "BadEvent", "watch event without a type and an object"))
            return
        self.on_event(kind, obj)

    def end(self) -> None:
        if not self.finished:
            self.finished = True
            self.done.callback(None)

    def fail(self, reason: Failure | Exception) -> None:
        if self.finished:
            return
        self.finished = True
        self._abort()
        self.done.errback(reason)

    def cancel(self) -> None:
        if self.finished:
            return
        self.finished = True
        self._abort()

    def _abort(self) -> None:
        if self.stream is not None and self.stream.transport is not None:
            self.stream.transport.stopProducing()  # type: ignore[attr-defined]
        elif self.request is not None and not self.request.called:
            self.request.cancel()


class _QuietFactory(_HTTP11ClientFactory):
    noisy = False


def _retry_after(response: IResponse) -> float | None:
    values = response.headers.getRawHeaders(b"retry-after") or []
    for value in values:
        try:
            seconds = float(value)
        except ValueError:
            continue
        if 0 <= seconds <= 3600:
            return seconds
    return None


class TreqKubeAPI:
    """KubeAPI over treq, configured from a ``kubernetes.client.Configuration``."""

    def __init__(self, reactor: Any, configuration: Any, *,
                 request_timeout: float = REQUEST_TIMEOUT, connect_timeout: float = 10.0) -> None:
        from treq.client import HTTPClient
        from twisted.web.client import Agent, HTTPConnectionPool

        self.reactor = reactor
        self.configuration = configuration
        self.base = configuration.host.rstrip("/")
        self.request_timeout = request_timeout
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = 4
        pool._factory = _QuietFactory  # no "Starting factory" line per connection
        self.pool = pool
        agent = Agent(reactor, contextFactory=_tls_policy(configuration),
                      connectTimeout=connect_timeout, pool=pool)
        self.http = HTTPClient(agent)

    def close(self) -> Deferred[None]:
        closed: Deferred[None] = self.pool.closeCachedConnections()
        return closed

    # -- plumbing --------------------------------------------------------------------

    def _headers(self) -> Deferred[dict[bytes | str, list[bytes | str]]]:
        def compute() -> dict[bytes | str, list[bytes | str]]:
            headers: dict[bytes | str, list[bytes | str]] = {
                b"Accept": [b"application/json"], b"User-Agent": [b"edgemesh"]}
            token = self.configuration.get_api_key_with_prefix("BearerToken",
                                                               alias="authorization")
            if token:
                headers[b"Authorization"] = [token.encode("latin-1")]
            elif self.configuration.username:
                basic = self.configuration.get_basic_auth_token()
                headers[b"Authorization"] = [basic.encode("latin-1")]
            return headers

        if self.configuration.refresh_api_key_hook is not None and IReactorThreads.providedBy(
                self.reactor):
            # The hook may run an exec plugin: not on the reactor thread.
            from twisted.internet.threads import deferToThreadPool

            result: Deferred[dict[bytes | str, list[bytes | str]]] = deferToThreadPool(
                self.reactor, self.reactor.getThreadPool(), compute)
            return result
        return succeed(compute())

    def _request(self, method: str, path: str, params: list[tuple[str, str]],
                 body: Mapping[str, Any] | None, timeout: float | None,
                 unbuffered: bool = True) -> Deferred[IResponse]:
        async def run() -> IResponse:
            headers = await self._headers()
            kwargs: dict[str, Any] = {}
            if body is not None:
                kwargs["data"] = json.dumps(body).encode()
                headers[b"Content-Type"] = [b"application/json"]
            response: IResponse = await self.http.request(
                method, self.base + path, params=params, headers=headers,
                allow_redirects=False, unbuffered=unbuffered, reactor=self.reactor,
                timeout=timeout, **kwargs)
            return response

        return Deferred.fromCoroutine(run())

    async def _json(self, response: IResponse, limit: int) -> Any:
        def stop(_: object) -> None:  # cancelled (the request's deadline): drop the body
            if body.transport is not None:
                body.transport.stopProducing()  # type: ignore[attr-defined]

        finished: Deferred[bytes] = Deferred(stop)
        body = _BoundedBody(finished, limit)
        response.deliverBody(body)
        data = await finished
        try:
            return json.loads(data)
        except ValueError:
            raise APIError(response.code, "BadResponse", "response is not JSON") from None

    async def _error(self, response: IResponse) -> APIError:
        try:
            status = await self._json(response, MAX_ERROR_BYTES)
        except Exception:  # noqa: BLE001 - any body: the status code is what matters
            status = None
        return APIError.from_status(status, response.code, _retry_after(response))

    def _timed(self, work: Deferred[Any], timeout: float) -> None:
        call = self.reactor.callLater(timeout, work.cancel)

        def done(result: object) -> object:
            if call.active():
                call.cancel()
            return result

        work.addBoth(done)

    async def _call(self, method: str, path: str, params: list[tuple[str, str]] | None = None,
                    body: Mapping[str, Any] | None = None, limit: int = MAX_LIST_BYTES) -> Any:
        response = await self._request(method, path, params or [], body, None)
        if not 200 <= response.code < 300:
            raise await self._error(response)
        return await self._json(response, limit)

    def _op(self, method: str, path: str, params: list[tuple[str, str]] | None = None,
            body: Mapping[str, Any] | None = None) -> Deferred[Any]:
        work = Deferred.fromCoroutine(self._call(method, path, params, body))
        self._timed(work, self.request_timeout)
        return work

    # -- KubeAPI ------------------------------------------------------------------------

    def list(self, resource: Resource, namespace: str | None = None, *,
             label_selector: str | None = None, limit: int | None = None,
             continue_token: str | None = None) -> Deferred[ListResult]:
        params: list[tuple[str, str]] = []
        if label_selector:
            params.append(("labelSelector", label_selector))
        if limit:
            params.append(("limit", str(limit)))
        if continue_token:
            params.append(("continue", continue_token))

        def parse(body: Any) -> ListResult:
            if not isinstance(body, dict):
                raise APIError(0, "BadResponse", "a list response must be an object")
            items = body.get("items") or []
            meta = body.get("metadata") or {}
            if not isinstance(items, list) or not isinstance(meta, dict):
                raise APIError(0, "BadResponse", "a list needs items and metadata")
            version = meta.get("resourceVersion")
            if not isinstance(version, str) or not version:
                raise APIError(0, "BadResponse", "a list without metadata.resourceVersion")
            token = meta.get("continue")
            return ListResult([i for i in items if isinstance(i, dict)], version,
                              token if isinstance(token, str) and token else None)

        return self._op("GET", resource.path(namespace), params).addCallback(parse)

    def watch(self, resource: Resource, namespace: str | None, *, resource_version: str,
              timeout_seconds: int, on_event: EventHandler,
              label_selector: str | None = None) -> Watch:
        watch = _TreqWatch(on_event)
        params = [("watch", "1"), ("resourceVersion", resource_version),
                  ("allowWatchBookmarks", "true"), ("timeoutSeconds", str(timeout_seconds))]
        if label_selector:
            params.append(("labelSelector", label_selector))
        request = self._request("GET", resource.path(namespace), params, None,
                                timeout=self.request_timeout)
        watch.request = request

        def started(response: IResponse) -> Deferred[None] | None:
            if watch.finished:
                return None
            if response.code != 200:
                failed = Deferred.fromCoroutine(self._error(response))
                failed.addCallback(watch.fail)
                return None
            stream = _EventStream(watch)
            watch.stream = stream
            response.deliverBody(stream)
            return None

        def lost(reason: Failure) -> None:
            if not reason.check(CancelledError) or not watch.finished:
                watch.fail(reason)

        request.addCallbacks(started, lost)
        return watch

    def get(self, resource: Resource, namespace: str | None, name: str
            ) -> Deferred[dict[str, Any]]:
        return self._op("GET", resource.path(namespace, name))

    def create(self, resource: Resource, namespace: str | None, body: Mapping[str, Any]
               ) -> Deferred[dict[str, Any]]:
        return self._op("POST", resource.path(namespace), body=body)

    def replace(self, resource: Resource, namespace: str | None, name: str,
                body: Mapping[str, Any]) -> Deferred[dict[str, Any]]:
        return self._op("PUT", resource.path(namespace, name), body=body)

    def delete(self, resource: Resource, namespace: str | None, name: str,
               resource_version: str | None = None) -> Deferred[None]:
        body: dict[str, Any] | None = None
        if resource_version is not None:
            body = {"apiVersion": "v1", "kind": "DeleteOptions",
                    "preconditions": {"resourceVersion": resource_version}}
        return self._op("DELETE", resource.path(namespace, name), body=body).addCallback(
            lambda _: None)

