"""A Kubernetes API server for tests, served by Twisted on loopback.

It speaks the REST and watch protocol of the real kube-apiserver closely enough for the
official ``kubernetes`` Python client (``CoreV1Api``, ``DiscoveryV1Api``,
``kubernetes.watch.Watch``) to work against it unchanged, and it has a Python API that tests
use to change objects and to misbehave on purpose (restart, compaction, injected errors).
"""

from __future__ import annotations

import base64
import builtins
import json
import os
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import yaml
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IListeningPort, IPushProducer, IReactorTCP, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from ..security import quiet_pyopenssl
from ..security.certs import write_file
from ._auth import ADMIN_GROUP, Policy, UserInfo, forbidden
from ._objects import make_endpoint_slice
from ._openapi import (
    PROTOBUF_V2,
    openapi_v2,
    openapi_v2_protobuf,
    openapi_v3,
    openapi_v3_index,
)
from ._patch import MERGE_PATCH
from ._resources import (
    ENDPOINT_SLICES,
    NAMESPACES,
    RESOURCE_TYPES,
    SELF_SUBJECT_REVIEWS,
    SERVICES,
    JSONObject,
    ResourceType,
    StatusError,
    resolve_resource,
    resource_for_object,
)
from ._selectors import SelectorError, parse_field_selector, parse_label_selector
from ._store import APPLY_PATCH, DEFAULT_HISTORY_SIZE, ObjectStore, WatchSubscription
from ._tables import table_for, wants_table
from ._tls import CertificateAuthority

__all__ = [
    "DEFAULT_NAMESPACES",
    "INITIAL_EVENTS_END_ANNOTATION",
    "MAX_BODY_BYTES",
    "MAX_PENDING_WATCH_EVENTS",
    "ExpiredForm",
    "KubeApiServer",
]

# What a new cluster has (kube-apiserver's system namespaces).
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
# The default/kubernetes Service's cluster IP (the first of the service CIDR).
KUBERNETES_SERVICE_IP = "10.96.0.1"

# Request bodies larger than this get 413, like the real server's 3 MiB limit.
MAX_BODY_BYTES = 3 * 1024 * 1024
# Events queued for a watcher whose connection is not draining; beyond that the server
# closes the watch, as kube-apiserver does with an unresponsive watcher.
MAX_PENDING_WATCH_EVENTS = 1000
# Requests remembered in `request_log` (most recent last).
REQUEST_LOG_SIZE = 1000

# The annotation on the BOOKMARK that ends the initial events of a sendInitialEvents watch.
INITIAL_EVENTS_END_ANNOTATION = "k8s.io/initial-events-end"

ExpiredForm = str  # "event": 200 + ERROR event (real server); "status": HTTP 410 response

SERVER_VERSION: JSONObject = {
    "major": "1",
    "minor": "31",
    "gitVersion": "v1.31.0-edgemesh-testing",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2024-08-13T00:00:00Z",
    "goVersion": "go1.22.5",
    "compiler": "gc",
    "platform": "linux/amd64",
}


def _reason_phrase(code: int) -> bytes:
    # Go's net/http phrases (Twisted lacks some, e.g. 429 "Too Many Requests").
    try:
        return HTTPStatus(code).phrase.encode("ascii")
    except ValueError:
        return b"Unknown"


def _parse_bool(text: str) -> bool:
    # strconv.ParseBool, which the API server uses for watch= and allowWatchBookmarks=.
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False", ""):
        return False
    raise StatusError(400, f"invalid boolean value {text!r}")


@dataclass
class _Fault:
    remaining: int
    status: int
    retry_after: int | None
    message: str
    reason: str | None
    match: Callable[[str, str], bool] | None


@implementer(IPushProducer)
class _WatchStream:
    """One watch response: newline-delimited JSON events written as HTTP chunks."""

    def __init__(
        self,
        server: KubeApiServer,
        request: Request,
        resource: ResourceType,
        allow_bookmarks: bool,
    ) -> None:
        self.server = server
        self.request = request
        self.resource = resource
        self.allow_bookmarks = allow_bookmarks
        self.subscription: WatchSubscription | None = None
        self.closed = False
        self.paused = False
        self.pending: deque[bytes] = deque()
        self.last_version = 0
        self.timeout_call: Any = None
        # (Table apiVersion, includeObject) when the client asked for Tables (kubectl get -w).
        self.table: tuple[str, str] | None = None

    # WatchSink
    def deliver(self, event_type: str, obj: JSONObject) -> None:
        try:
            self.last_version = max(self.last_version, int(obj["metadata"]["resourceVersion"]))
        except (KeyError, TypeError, ValueError):
            pass
        if self.table is not None:
            obj = table_for(self.resource, [obj], api_version=self.table[0],
                            now=self.server._clock.seconds(), include_object=self.table[1],
                            list_metadata={"resourceVersion": str(self.last_version)})
        self._send({"type": event_type, "object": obj})

    def bookmark(self, *, initial_events_end: bool = False) -> None:
        if not self.allow_bookmarks or self.closed:
            return
        version = max(self.last_version, self.server.store.resource_version)
        if self.subscription is not None:
            version = max(version, self.subscription.after)
        self.last_version = version
        metadata: JSONObject = {"resourceVersion": str(version)}
        if initial_events_end:
            metadata["annotations"] = {INITIAL_EVENTS_END_ANNOTATION: "true"}
        self._send(
            {
                "type": "BOOKMARK",
                "object": {
                    "kind": self.resource.kind,
                    "apiVersion": self.resource.api_version,
                    "metadata": metadata,
                },
            }
        )

    def error(self, status: JSONObject) -> None:
        """Send an ERROR event carrying a Status, then end the watch."""
        self._send({"type": "ERROR", "object": status})
        self.finish()

    def _send(self, event: JSONObject) -> None:
        if self.closed:
            return
        line = json.dumps(event, separators=(",", ":")).encode() + b"\n"
        if self.paused:
            if len(self.pending) >= MAX_PENDING_WATCH_EVENTS:
                self.server.log.warn(
                    "closing unresponsive watch of {resource} ({pending} events queued)",
                    resource=self.resource.plural, pending=len(self.pending),
                )
                self.finish()
                return
            self.pending.append(line)
            return
        self.request.write(line)

    # IPushProducer
    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        while self.pending and not self.paused and not self.closed:
            self.request.write(self.pending.popleft())

    def stopProducing(self) -> None:
        self._cleanup()

    def _cleanup(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.pending.clear()
        if self.subscription is not None:
            self.subscription.cancel()
        if self.timeout_call is not None and self.timeout_call.active():
            self.timeout_call.cancel()
        self.server._streams.discard(self)

    def finish(self) -> None:
        """End the watch cleanly (the terminating chunk), as a timeout does."""
        if self.closed:
            return
        self._cleanup()
        if not self.request._disconnected and not self.request.finished:
            channel = self.request.channel
            self.request.unregisterProducer()
            self.request.finish()
            if channel is not None:
                # Back to a keep-alive connection: the idle timeout applies again.
                channel.setTimeout(self.server.site.timeOut)

    def connection_lost(self, reason: Failure) -> None:
        self._cleanup()


class _Channel(HTTPChannel):
    """An HTTP channel that the server can find again, to drop it on restart()."""

    def connectionMade(self) -> None:
        super().connectionMade()  # type: ignore[no-untyped-call]
        site = getattr(self, "site", None)
        if isinstance(site, _ApiSite):
            site.channels.add(self)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        site = getattr(self, "site", None)
        super().connectionLost(reason)  # type: ignore[no-untyped-call]
        if isinstance(site, _ApiSite):
            site.channels.discard(self)
            site.channel_gone()


class _BoundedRequest(Request):
    """A request whose body is refused (413) once it passes MAX_BODY_BYTES."""

    body_too_large = False
    _body_seen = 0

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > MAX_BODY_BYTES:
            self.body_too_large = True
            length = 0
        super().gotLength(length)  # type: ignore[no-untyped-call]

    def handleContentChunk(self, data: bytes) -> None:
        self._body_seen += len(data)
        if self._body_seen > MAX_BODY_BYTES:
            self.body_too_large = True
        if self.body_too_large:
            return
        super().handleContentChunk(data)  # type: ignore[no-untyped-call]


class _ApiSite(Site):
    def __init__(self, root: Resource, reactor: IReactorTime) -> None:
        super().__init__(root, reactor=reactor)  # type: ignore[no-untyped-call]
        self.requestFactory = _BoundedRequest
        self.channels: set[_Channel] = set()
        self._closed_waiters: list[Deferred[None]] = []

    protocol = _Channel  # type: ignore[assignment]

    def all_closed(self) -> Deferred[None]:
        """Fires once no connection is open."""
        waiting: Deferred[None] = Deferred()
        self._closed_waiters.append(waiting)
        self.channel_gone()
        return waiting

    def channel_gone(self) -> None:
        if not self.channels:
            waiters, self._closed_waiters = self._closed_waiters, []
            for waiting in waiters:
                waiting.callback(None)

    def log(self, request: Any) -> None:
        # Test runs do not want an access log line per request.
        pass


class _Root(Resource):
    isLeaf = True

    def __init__(self, server: KubeApiServer) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._server = server

    def render(self, request: Request) -> bytes | int:
        return self._server._render(request)


class KubeApiServer:
    """A faithful, in-process Kubernetes API server for tests.

    Serves v1 Services, Nodes, Pods, Namespaces and discovery.k8s.io/v1 EndpointSlices with
    real resourceVersion, watch, selector, patch and error semantics, and stores the other
    kinds kubectl and the manifests use (ConfigMaps, RBAC, Deployments, Leases ...)
    generically.  Construct it with the reactor, ``await``/wait on :meth:`start`, point a
    client at :attr:`url` (or at the file :meth:`write_kubeconfig` writes), then drive the
    cluster through the Python API.

    ``bootstrap=True`` starts as a new cluster does (system namespaces, default/kubernetes,
    404 for a missing namespace, namespaces deleted through Terminating after
    `namespace_finalize_delay` seconds); the default (False) lets tests create anywhere and
    count only their own objects.  ``tls=True`` (or a :class:`CertificateAuthority`) serves
    HTTPS and requires a client certificate or one of `tokens` (token -> UserInfo); `policy`
    limits what each user may do.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        history_size: int = DEFAULT_HISTORY_SIZE,
        history_seconds: float | None = None,
        bookmark_interval: float | None = 60.0,
        expired_form: ExpiredForm = "event",
        default_watch_timeout: float | None = None,
        store: ObjectStore | None = None,
        bootstrap: bool = False,
        kubernetes_service: bool | None = None,
        namespace_finalize_delay: float = 0.0,
        tls: CertificateAuthority | bool = False,
        tokens: Mapping[str, UserInfo] | None = None,
        policy: Policy | None = None,
    ) -> None:
        self._reactor = reactor
        self._clock: IReactorTime = reactor
        self._tcp: IReactorTCP = reactor
        self.host = host
        self._requested_port = port
        self.tokens: dict[str, UserInfo] = dict(tokens or {})
        self._token: str | None = None
        self.token = token
        self.store = store if store is not None else ObjectStore(
            now=reactor.seconds, history_size=history_size, history_seconds=history_seconds,
            require_namespaces=bootstrap,
        )
        self._bootstrap = bootstrap
        self._kubernetes_service = bootstrap if kubernetes_service is None else kubernetes_service
        self.namespace_finalize_delay = namespace_finalize_delay
        self.ca: CertificateAuthority | None = (
            tls if isinstance(tls, CertificateAuthority) else CertificateAuthority() if tls
            else None
        )
        # Who may do what (None: every authenticated user may do everything).
        self.policy = policy
        self._bootstrapped = False
        self.expired_form = expired_form
        self.default_watch_timeout = default_watch_timeout
        self.site = _ApiSite(_Root(self), reactor)
        self._port: IListeningPort | None = None
        self._bound_port: int | None = None
        self._streams: set[_WatchStream] = set()
        self._faults: list[_Fault] = []
        self._bookmarks: LoopingCall | None = None
        self._bookmark_interval = bookmark_interval
        self._up = False
        self.request_log: deque[tuple[str, str]] = deque(maxlen=REQUEST_LOG_SIZE)
        self._watch_waiters: builtins.list[tuple[int, ResourceType | None, Deferred[None]]] = []

    @property
    def token(self) -> str | None:
        """The bearer token of an admin (``edgemesh-test`` in system:masters), if any."""
        return self._token

    @token.setter
    def token(self, value: str | None) -> None:
        if self._token is not None:
            self.tokens.pop(self._token, None)
        self._token = value
        if value is not None:
            self.tokens[value] = UserInfo("edgemesh-test", (ADMIN_GROUP,))

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Deferred[None]:
        """Listen (on `port`, 0 picks a free one); fires once the socket is bound."""
        self._listen()
        self._up = True
        if not self._bootstrapped:
            self._bootstrapped = True
            self._create_defaults()
        self._schedule_bookmarks()
        return succeed(None)

    def _create_defaults(self) -> None:
        """What kube-apiserver creates in a new cluster: the system namespaces and the
        default/kubernetes Service with its EndpointSlice (pointing at this server)."""
        if self._bootstrap:
            for name in DEFAULT_NAMESPACES:
                if not self._exists(NAMESPACES, None, name):
                    self.store.create(NAMESPACES, {"metadata": {"name": name}})
        if not self._kubernetes_service or self._exists(SERVICES, "default", "kubernetes"):
            return
        # A memory reactor's port is 0: the Service still needs a valid target port.
        port = self.port or 6443
        self.store.create(SERVICES, {
            "metadata": {"name": "kubernetes", "namespace": "default",
                         "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"clusterIP": KUBERNETES_SERVICE_IP, "ports": [
                {"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]},
        }, ensure_namespace=True)
        endpoints = make_endpoint_slice("kubernetes", [self.host], name="kubernetes",
                                        port=port, port_name="https")
        endpoints["metadata"]["labels"] = {"kubernetes.io/service-name": "kubernetes",
                                           "endpointslice.kubernetes.io/skip-mirror": "true"}
        self.store.create(ENDPOINT_SLICES, endpoints, ensure_namespace=True)

    def _exists(self, rtype: ResourceType, namespace: str | None, name: str) -> bool:
        try:
            self.store.get(rtype, namespace, name)
        except StatusError:
            return False
        return True

    def _listen(self) -> None:
        port = self._bound_port if self._bound_port is not None else self._requested_port
        if self.ca is not None:
            from twisted.protocols.tls import TLSMemoryBIOFactory

            # Not listenSSL: TLS schedules its write flushes on `clock`, which must be this
            # server's reactor (a ThreadedKubeApiServer's is not the global one).
            wrapped = TLSMemoryBIOFactory(self._tls_options(), False, self.site,
                                          clock=self._clock)
            self._port = self._tcp.listenTCP(
                port, wrapped, interface=self.host  # type: ignore[arg-type]
            )
        else:
            self._port = self._tcp.listenTCP(
                port, self.site, interface=self.host  # type: ignore[arg-type]
            )
        self._bound_port = self._port.getHost().port  # type: ignore[attr-defined]

    def stop(self) -> Deferred[None]:
        """Stop listening and drop every connection."""
        self._up = False
        if self._bookmarks is not None and self._bookmarks.running:
            self._bookmarks.stop()
        self._bookmarks = None
        port, self._port = self._port, None
        self.drop_connections()
        stopped: Deferred[None] = Deferred.fromCoroutine(self._stop_port(port))
        return stopped

    async def _stop_port(self, port: IListeningPort | None) -> None:
        if port is not None:
            stopping = port.stopListening()
            if stopping is not None:
                await stopping
        # Aborted connections close on a later reactor turn: wait, so that a trial test
        # ends with a clean reactor.
        await self.site.all_closed()

    def restart(self, down_for: float = 0.2, *, compact: bool = False) -> Deferred[None]:
        """Drop every connection, refuse new ones for `down_for` seconds, listen again.

        The port stays the same.  With ``compact=True`` the history is lost too, as a real
        API server's watch cache is rebuilt empty on restart (old versions then get 410).
        Fires when the server accepts connections again.
        """
        return Deferred.fromCoroutine(self._restart(down_for, compact))

    async def _restart(self, down_for: float, compact: bool) -> None:
        if self._port is not None:
            port, self._port = self._port, None
            stopping = port.stopListening()
            if stopping is not None:
                await stopping
        self.drop_connections()
        if compact:
            self.store.compact()
        waited: Deferred[None] = Deferred()
        self._clock.callLater(down_for, waited.callback, None)
        await waited
        self._listen()

    def drop_connections(self) -> None:
        """Abort every open connection (watches end without their terminating chunk)."""
        for stream in list(self._streams):
            stream._cleanup()
        for channel in list(self.site.channels):
            if channel.transport is not None:
                channel.transport.abortConnection()  # type: ignore[attr-defined]

    @property
    def port(self) -> int:
        if self._bound_port is None:
            raise RuntimeError("the server is not started")
        return self._bound_port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (``https://`` with TLS; no trailing slash)."""
        scheme = "https" if self.ca is not None else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    def _tls_options(self) -> Any:
        from twisted.internet import ssl

        assert self.ca is not None
        served = self.ca.issue_server(hosts=sorted({"127.0.0.1", "::1", "localhost", self.host}))
        private = ssl.PrivateCertificate.loadPEM(served.cert_pem + served.key_pem)
        authority = ssl.Certificate.loadPEM(self.ca.cert_pem)
        with quiet_pyopenssl():
            # Client certificates are verified when presented, not required (tokens work too).
            options = ssl.CertificateOptions(
                privateKey=private.privateKey.original, certificate=private.original,
                verify=True, caCerts=[authority.original], requireCertificate=False,
            )
            options.getContext()
        return options

    @property
    def requires_authentication(self) -> bool:
        return bool(self.tokens) or self.ca is not None

    def write_kubeconfig(
        self,
        path: str | os.PathLike[str],
        *,
        namespace: str | None = None,
        context: str = "edgemesh-test",
        user: str | None = None,
        groups: tuple[str, ...] | list[str] = (),
        token: str | None = None,
        ca_pem: bytes | None = None,
    ) -> str:
        """Write a kubeconfig for this server; returns its path.

        With TLS it carries the CA (or `ca_pem`, e.g. a wrong one on purpose) and, unless a
        `token` is given, a client certificate for `user` in `groups` (default: an admin in
        system:masters).  Without TLS it carries `token`, or the server's own ``token``.
        """
        credentials: JSONObject = {}
        cluster: JSONObject = {"server": self.url}
        chosen_token = token if token is not None else (None if self.ca else self.token)
        if chosen_token:
            credentials["token"] = chosen_token
        if self.ca is not None:
            cluster["certificate-authority-data"] = base64.b64encode(
                ca_pem if ca_pem is not None else self.ca.cert_pem).decode()
            if token is None:
                issued = self.ca.issue_client(
                    user or "edgemesh-admin", tuple(groups) if user else (ADMIN_GROUP,))
                credentials["client-certificate-data"] = base64.b64encode(
                    issued.cert_pem).decode()
                credentials["client-key-data"] = base64.b64encode(issued.key_pem).decode()
        context_body: JSONObject = {"cluster": context, "user": context}
        if namespace:
            context_body["namespace"] = namespace
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": context, "cluster": cluster}],
            "users": [{"name": context, "user": credentials}],
            "contexts": [{"name": context, "context": context_body}],
            "current-context": context,
            "preferences": {},
        }
        target = os.fspath(path)
        # It holds a client key (or a token): private (0600 from the moment it exists) and
        # written atomically, as the node's own key files.  JSON is YAML: the client's YAML
        # loader reads it as is.
        write_file(target, json.dumps(config, indent=2).encode(), private=True, force=True)
        return target

    # -- misbehaving on purpose ------------------------------------------------------------

    def fail_next(
        self,
        count: int = 1,
        status: int = 500,
        *,
        retry_after: int | None = None,
        message: str | None = None,
        reason: str | None = None,
        match: Callable[[str, str], bool] | None = None,
    ) -> None:
        """Answer the next `count` requests (that `match(method, uri)`, if given) with an error.

        429 gets ``Retry-After`` (default 1 s) and reason TooManyRequests; other codes get
        the usual reason for the code.  Faults queue up in the order they were added.
        """
        if status == 429 and retry_after is None:
            retry_after = 1
        default_message = {
            429: "Too many requests, please try again later.",
            500: "Internal error occurred: injected by the test",
            503: "The server is currently unable to handle the request",
        }.get(status, f"injected failure {status}")
        self._faults.append(
            _Fault(count, status, retry_after, message or default_message, reason, match)
        )

    def clear_faults(self) -> None:
        self._faults.clear()

    def compact(self, resource_version: int | None = None) -> None:
        """Forget the watch history (up to `resource_version`): older watches get 410."""
        self.store.compact(resource_version)

    def set_history_size(self, size: int) -> None:
        self.store.set_history_size(size)

    def set_history_seconds(self, seconds: float | None) -> None:
        """Forget history events older than `seconds` (kube-apiserver keeps ~5 minutes)."""
        self.store.history_seconds = seconds

    def set_expired_form(self, form: ExpiredForm) -> None:
        """How a watch from a too-old resourceVersion fails: "event" (200 + ERROR event,
        as kube-apiserver does) or "status" (an HTTP 410 response with a Status body)."""
        if form not in ("event", "status"):
            raise ValueError(f"expired form must be 'event' or 'status', not {form!r}")
        self.expired_form = form

    def set_expired_reason(self, reason: str) -> None:
        """The Status reason of 410 answers: "Expired" (default) or "Gone"."""
        self.store.expired_reason = reason

    def set_bookmark_interval(self, seconds: float | None) -> None:
        """Send BOOKMARK events every `seconds` to watches that allow them (None: never)."""
        self._bookmark_interval = seconds
        if self._bookmarks is not None and self._bookmarks.running:
            self._bookmarks.stop()
        self._bookmarks = None
        self._schedule_bookmarks()

    def _schedule_bookmarks(self) -> None:
        if not self._up or self._bookmark_interval is None or self._bookmark_interval <= 0:
            return
        self._bookmarks = LoopingCall(self.send_bookmarks)
        self._bookmarks.clock = self._clock
        self._bookmarks.start(self._bookmark_interval, now=False)

    def send_bookmarks(self) -> int:
        """Send a BOOKMARK now to every watch that allows them; returns how many got one."""
        sent = 0
        for stream in list(self._streams):
            if stream.allow_bookmarks and not stream.closed:
                stream.bookmark()
                sent += 1
        return sent

    def close_watches(self, resource: str | ResourceType | None = None) -> int:
        """End open watches cleanly, as when their timeout passes; returns how many."""
        return self._end_watches(resource, None)

    def expire_watches(self, resource: str | ResourceType | None = None) -> int:
        """Send a 410 ERROR event into open watches and end them; returns how many."""
        status = StatusError.expired(
            "The resourceVersion for the provided watch is too old.", self.store.expired_reason
        ).status()
        return self._end_watches(resource, status)

    def _end_watches(self, resource: str | ResourceType | None, status: JSONObject | None) -> int:
        wanted = resolve_resource(resource) if resource is not None else None
        ended = 0
        for stream in list(self._streams):
            if wanted is None or stream.resource == wanted:
                if status is None:
                    stream.finish()
                else:
                    stream.error(status)
                ended += 1
        return ended

    def wait_for_watches(
        self, count: int = 1, resource: str | ResourceType | None = None
    ) -> Deferred[None]:
        """Fires once at least `count` watches (of `resource`) are open (add your own timeout,
        e.g. ``.addTimeout(5, reactor)``)."""
        wanted = resolve_resource(resource) if resource is not None else None
        waiting: Deferred[None] = Deferred()
        self._watch_waiters.append((count, wanted, waiting))
        self._notify_watch_waiters()
        return waiting

    def _notify_watch_waiters(self) -> None:
        for waiter in list(self._watch_waiters):
            count, wanted, waiting = waiter
            if waiting.called:
                self._watch_waiters.remove(waiter)
            elif self.watch_count(wanted) >= count:
                self._watch_waiters.remove(waiter)
                waiting.callback(None)

    def watch_count(self, resource: str | ResourceType | None = None) -> int:
        """How many watches are open (for `resource`, if given)."""
        wanted = resolve_resource(resource) if resource is not None else None
        return sum(
            1 for stream in self._streams
            if not stream.closed and (wanted is None or stream.resource == wanted)
        )

    # -- direct object access for tests ----------------------------------------------------

    @property
    def resource_version(self) -> int:
        return self.store.resource_version

    def create(self, obj: JSONObject, *, keep_status: bool = True) -> JSONObject:
        """Create an object of the kind its apiVersion/kind name (status kept by default)."""
        rtype = resource_for_object(obj)
        return self.store.create(rtype, obj, None, keep_status=keep_status,
                                 ensure_namespace=True)

    def apply(self, obj: JSONObject) -> JSONObject:
        """Create `obj`, or replace the existing one unconditionally (status included)."""
        resource_for_object(obj)
        return self.store.apply(obj)

    def replace(self, obj: JSONObject, *, keep_status: bool = True) -> JSONObject:
        """Replace an existing object (honours metadata.resourceVersion if set)."""
        rtype = resource_for_object(obj)
        return self.store.update(rtype, obj, None, keep_status=keep_status)

    def patch(
        self,
        resource: str | ResourceType,
        name: str,
        patch: Any,
        *,
        namespace: str = "default",
        content_type: str = MERGE_PATCH,
        subresource: str | None = None,
    ) -> JSONObject:
        rtype = resolve_resource(resource)
        return self.store.patch(
            rtype, namespace if rtype.namespaced else None, name, patch, content_type,
            subresource=subresource,
        )

    def get(self, resource: str | ResourceType, name: str, *,
            namespace: str = "default") -> JSONObject:
        rtype = resolve_resource(resource)
        return self.store.get(rtype, namespace if rtype.namespaced else None, name)

    def list(self, resource: str | ResourceType, *,
             namespace: str | None = None) -> list[JSONObject]:
        return list(self.store.list(resource, namespace)["items"])

    def delete(self, resource: str | ResourceType, name: str, *,
               namespace: str = "default") -> JSONObject:
        rtype = resolve_resource(resource)
        gone = self.store.delete(rtype, namespace if rtype.namespaced else None, name)
        self._schedule_namespace_finalizer(rtype)
        return gone

    def _schedule_namespace_finalizer(self, rtype: ResourceType) -> None:
        if rtype == NAMESPACES and self.store.require_namespaces:
            # The namespace controller's part, on a later reactor turn as in a real cluster.
            self._clock.callLater(self.namespace_finalize_delay, self._finalize_namespaces)

    def _finalize_namespaces(self) -> None:
        for name in self.store.terminating_namespaces():
            self.store.finalize_namespace(name)

    # -- HTTP ------------------------------------------------------------------------------

    def _render(self, request: Request) -> bytes | int:
        method = request.method.decode("ascii", "replace")
        uri = request.uri.decode("utf-8", "replace")
        self.request_log.append((method, uri))
        try:
            return self._dispatch(request, method)
        except StatusError as error:
            return self._write_status(request, error)
        except Exception:  # noqa: BLE001 -- a handler bug must become a 500, not a dead reactor
            self.log.failure("request {method} {uri} failed", method=method, uri=uri)
            return self._write_status(
                request, StatusError(500, "Internal error occurred: test server bug")
            )

    def _authenticate(self, request: Request) -> UserInfo:
        """The request's user: a bearer token, else a verified client certificate; 401 when
        the server requires authentication and neither is there (or the token is wrong)."""
        header = request.getHeader("authorization") or ""
        if header:
            scheme, _, credential = header.partition(" ")
            user = self.tokens.get(credential.strip()) if scheme.lower() == "bearer" else None
            if user is None:
                raise StatusError(401, "Unauthorized", "Unauthorized")
            return user
        certificate = self._peer_certificate(request)
        if certificate is not None:
            return certificate
        if self.requires_authentication:
            raise StatusError(401, "Unauthorized", "Unauthorized")
        return UserInfo("system:anonymous", ("system:unauthenticated", ADMIN_GROUP))

    def _peer_certificate(self, request: Request) -> UserInfo | None:
        if self.ca is None or request.channel is None:
            return None
        transport: Any = request.channel.transport
        getter = getattr(transport, "getPeerCertificate", None)
        certificate = getter() if getter is not None else None
        if certificate is None:
            return None
        from cryptography.x509.oid import NameOID

        subject = certificate.to_cryptography().subject
        names = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        user = str(names[0].value) if names else ""
        groups = [str(o.value) for o in subject.get_attributes_for_oid(
            NameOID.ORGANIZATION_NAME)]
        if not user:
            raise StatusError(401, "Unauthorized", "Unauthorized")
        return UserInfo(user, tuple(groups))

    def _authorize(
        self, user: UserInfo, verb: str, rtype: ResourceType, namespace: str | None,
        name: str | None, subresource: str | None = None,
    ) -> None:
        if self.policy is None:
            return
        resource = f"{rtype.plural}/{subresource}" if subresource else rtype.plural
        if not self.policy.allows(user, verb, resource, rtype.group, namespace):
            raise forbidden(user, verb, rtype, namespace, name, subresource)

    def _check_faults(self, method: str, uri: str) -> None:
        for fault in self._faults:
            if fault.match is not None and not fault.match(method, uri):
                continue
            fault.remaining -= 1
            if fault.remaining <= 0:
                self._faults.remove(fault)
            headers = {}
            details: JSONObject = {}
            if fault.retry_after is not None:
                headers["Retry-After"] = str(fault.retry_after)
                details["retryAfterSeconds"] = fault.retry_after
            raise StatusError(fault.status, fault.message, fault.reason, details, headers)

    def _write_json(self, request: Request, code: int, body: JSONObject) -> bytes:
        request.setResponseCode(code, _reason_phrase(code))
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-cache, private")
        return json.dumps(body, separators=(",", ":")).encode() + b"\n"

    def _write_object(
        self, request: Request, code: int, rtype: ResourceType, body: JSONObject,
        args: Mapping[str, str], *, listed: bool = False,
    ) -> bytes:
        """An object or a list, or its Table when the Accept header asks for one."""
        table = wants_table(request.getHeader("accept") or "")
        if table is None:
            return self._write_json(request, code, body)
        include = args.get("includeObject") or "PartialObjectMetadata"
        if include not in ("None", "Object", "PartialObjectMetadata"):
            raise StatusError(400, f'includeObject: Unsupported value: "{include}"')
        objects = body["items"] if listed else [body]
        metadata = dict(body.get("metadata") or {}) if listed else {
            "resourceVersion": body.get("metadata", {}).get("resourceVersion", "")}
        return self._write_json(request, code, table_for(
            rtype, objects, api_version=table, now=self._clock.seconds(),
            list_metadata=metadata, include_object=include))

    def _write_status(self, request: Request, error: StatusError) -> bytes:
        for name, value in error.headers.items():
            request.setHeader(name.encode(), value.encode())
        return self._write_json(request, error.code, error.status())

    def _read_body(self, request: Request, *, allow_yaml: bool = False) -> Any:
        if getattr(request, "body_too_large", False):
            raise StatusError(413, "Request entity too large: limit is 3145728")
        content = request.content.read() if request.content is not None else b""
        if not content:
            raise StatusError(400, "the request body is empty")
        try:
            return json.loads(content)
        except (ValueError, RecursionError) as error:
            if not allow_yaml:
                raise StatusError(400, f"the request body is not valid JSON: {error}") from None
        try:
            return yaml.safe_load(content)
        except yaml.YAMLError as error:
            raise StatusError(400, f"error decoding YAML: {error}") from None

    def _openapi(self, request: Request, segments: builtins.list[str]) -> bytes | None:
        resources = self.store.resources()
        if segments == ["openapi", "v2"]:
            accept = request.getHeader("accept") or ""
            if PROTOBUF_V2 in accept:
                # As kube-openapi: Go's mime parser refuses the "@" of the Accept type.
                request.setHeader(b"content-type", b"application/octet-stream")
                return openapi_v2_protobuf(resources)
            return self._write_json(request, 200, openapi_v2(resources))
        if segments == ["openapi", "v3"]:
            return self._write_json(request, 200, openapi_v3_index(resources))
        if len(segments) >= 3 and segments[:2] == ["openapi", "v3"]:
            document = openapi_v3(resources, "/".join(segments[2:]))
            if document is None:
                raise StatusError(404, "the server could not find the requested resource",
                                  "NotFound")
            return self._write_json(request, 200, document)
        return None

    def _review(self, request: Request, rtype: ResourceType, user: UserInfo) -> bytes:
        """SelfSubjectAccessReview (kubectl auth can-i) and SelfSubjectReview (whoami)."""
        body = self._read_body(request)
        if not isinstance(body, dict):
            raise StatusError(400, "the request body must be a JSON object")
        answer: JSONObject = {
            "kind": rtype.kind, "apiVersion": rtype.api_version,
            "metadata": {"creationTimestamp": None},
        }
        if rtype == SELF_SUBJECT_REVIEWS:
            answer["status"] = {"userInfo": {"username": user.name,
                                             "groups": list(user.all_groups())}}
            return self._write_json(request, 201, answer)
        spec = body.get("spec") or {}
        answer["spec"] = spec
        attributes = spec.get("resourceAttributes")
        if isinstance(attributes, dict):
            verb = str(attributes.get("verb", ""))
            resource = str(attributes.get("resource", ""))
            if attributes.get("subresource"):
                resource += "/" + str(attributes["subresource"])
            allowed = self.policy is None or self.policy.allows(
                user, verb, resource, str(attributes.get("group", "")),
                attributes.get("namespace") or None)
        elif isinstance(spec.get("nonResourceAttributes"), dict):
            allowed = True  # discovery, /version, /healthz: every authenticated user
        else:
            raise StatusError(422, f'{rtype.kind}.authorization.k8s.io "" is invalid: '
                              "spec: Invalid value: ...: exactly one of nonResourceAttributes "
                              "or resourceAttributes must be specified", "Invalid")
        status: JSONObject = {"allowed": bool(allowed)}
        if allowed and self.policy is not None:
            status["reason"] = "allowed by the edgemesh testing policy"
        answer["status"] = status
        return self._write_json(request, 201, answer)

    def _dispatch(self, request: Request, method: str) -> bytes | int:
        raw_path = request.path.decode("utf-8", "replace")
        segments = [unquote(part) for part in raw_path.split("/") if part]
        args = {
            key.decode("utf-8", "replace"): values[-1].decode("utf-8", "replace")
            for key, values in request.args.items()
        }
        if segments in (["healthz"], ["livez"], ["readyz"]):
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"ok"
        user = self._authenticate(request)
        self._check_faults(method, request.uri.decode("utf-8", "replace"))
        if segments == ["version"]:
            return self._write_json(request, 200, SERVER_VERSION)
        if segments[:1] == ["openapi"]:
            document = self._openapi(request, segments)
            if document is not None:
                return document
        discovery = self._discovery(segments)
        if discovery is not None:
            if method != "GET":
                raise StatusError(405, f"the server does not allow this method ({method})")
            return self._write_json(request, 200, discovery)
        route = self._route(segments)
        if route is None:
            raise StatusError(404, "the server could not find the requested resource", "NotFound",
                              {})
        rtype, namespace, name, subresource = route
        dry_run = self._dry_run(args)
        manager = args.get("fieldManager") or (
            (request.getHeader("user-agent") or "").split("/")[0] or None)
        if rtype.virtual:
            if method != "POST" or name is not None:
                raise StatusError(405, f"the server does not allow this method on the "
                                  f"requested resource ({method})", "MethodNotAllowed")
            return self._review(request, rtype, user)
        if name is None:
            if method == "GET":
                if _parse_bool(args.get("watch", "")):
                    self._authorize(user, "watch", rtype, namespace, None)
                    return self._start_watch(request, rtype, namespace, args)
                self._authorize(user, "list", rtype, namespace, None)
                return self._write_object(request, 200, rtype,
                                          self._list(rtype, namespace, args), args, listed=True)
            if method == "POST":
                if rtype.namespaced and namespace is None:
                    raise StatusError(405, "POST requires a namespace for namespaced resources",
                                      "MethodNotAllowed")
                self._authorize(user, "create", rtype, namespace, None)
                created = self.store.create(rtype, self._read_body(request), namespace,
                                            dry_run=dry_run, manager=manager)
                return self._write_object(request, 201, rtype, created, args)
            raise StatusError(405, f"the server does not allow this method on the requested "
                              f"resource ({method})", "MethodNotAllowed")
        if method == "GET":
            if subresource not in (None, "status"):
                raise StatusError(404, "the server could not find the requested resource")
            self._authorize(user, "get", rtype, namespace, name, subresource)
            return self._write_object(request, 200, rtype,
                                      self.store.get(rtype, namespace, name), args)
        if method == "PUT":
            self._authorize(user, "update", rtype, namespace, name, subresource)
            updated = self.store.update(
                rtype, self._read_body(request), namespace, name, subresource=subresource,
                dry_run=dry_run, manager=manager,
            )
            return self._write_object(request, 200, rtype, updated, args)
        if method == "PATCH":
            self._authorize(user, "patch", rtype, namespace, name, subresource)
            content_type = request.getHeader("content-type") or ""
            is_apply = content_type.split(";")[0].strip().lower() == APPLY_PATCH
            existed = self._exists(rtype, namespace, name)
            patched = self.store.patch(
                rtype, namespace, name, self._read_body(request, allow_yaml=is_apply),
                content_type, subresource=subresource, dry_run=dry_run,
                manager=args.get("fieldManager") if is_apply else manager,
                force=_parse_bool(args.get("force", "")),
            )
            return self._write_object(request, 200 if existed else 201, rtype, patched, args)
        if method == "DELETE":
            self._authorize(user, "delete", rtype, namespace, name, subresource)
            return self._delete(request, rtype, namespace, name, dry_run)
        raise StatusError(405, f"the server does not allow this method on the requested "
                          f"resource ({method})", "MethodNotAllowed")

    @staticmethod
    def _dry_run(args: Mapping[str, str]) -> bool:
        value = args.get("dryRun")
        if not value:
            return False
        if value != "All":
            raise StatusError(400, f'dryRun: Unsupported value: "{value}": supported values: '
                              '"All"', "BadRequest")
        return True

    def _delete(
        self, request: Request, rtype: ResourceType, namespace: str | None, name: str,
        dry_run: bool = False,
    ) -> bytes:
        uid: str | None = None
        version: str | None = None
        content = request.content.read() if request.content is not None else b""
        if content:
            try:
                options = json.loads(content)
            except (ValueError, RecursionError):
                raise StatusError(400, "the request body is not valid JSON") from None
            preconditions = options.get("preconditions") if isinstance(options, dict) else None
            if isinstance(preconditions, dict):
                uid = preconditions.get("uid")
                version = preconditions.get("resourceVersion")
            if isinstance(options, dict) and options.get("dryRun") == ["All"]:
                dry_run = True
        gone = self.store.delete(
            rtype, namespace, name, precondition_uid=uid, precondition_resource_version=version,
            dry_run=dry_run,
        )
        if not dry_run:
            self._schedule_namespace_finalizer(rtype)
        if rtype.delete_returns_object or gone["metadata"].get("deletionTimestamp"):
            # Objects that live on (a Terminating namespace) come back as they are now.
            return self._write_json(request, 200, gone)
        details: JSONObject = {"name": name, "kind": rtype.plural,
                               "uid": gone["metadata"].get("uid")}
        if rtype.group:
            details["group"] = rtype.group
        return self._write_json(request, 200, {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "details": details,
        })

    def _selectors(self, rtype: ResourceType, args: Mapping[str, str]) -> tuple[Any, Any]:
        try:
            labels = parse_label_selector(args.get("labelSelector"))
            fields = parse_field_selector(args.get("fieldSelector"), rtype.field_paths)
        except SelectorError as error:
            raise StatusError(400, str(error)) from None
        return labels, fields

    def _list(self, rtype: ResourceType, namespace: str | None,
              args: Mapping[str, str]) -> JSONObject:
        labels, fields = self._selectors(rtype, args)
        limit_text = args.get("limit")
        limit: int | None = None
        if limit_text:
            try:
                limit = int(limit_text)
            except ValueError:
                raise StatusError(400, f"limit: Invalid value: {limit_text!r}") from None
        return self.store.list(
            rtype, namespace, labels=labels, fields=fields,
            resource_version=args.get("resourceVersion"),
            resource_version_match=args.get("resourceVersionMatch") or None,
            limit=limit, continue_token=args.get("continue") or None,
        )

    def _start_watch(
        self, request: Request, rtype: ResourceType, namespace: str | None,
        args: Mapping[str, str],
    ) -> int | bytes:
        labels, fields = self._selectors(rtype, args)
        timeout: float | None = self.default_watch_timeout
        if args.get("timeoutSeconds"):
            try:
                timeout = float(int(args["timeoutSeconds"]))
            except ValueError:
                raise StatusError(400, "timeoutSeconds: must be an integer") from None
        allow_bookmarks = _parse_bool(args.get("allowWatchBookmarks", ""))
        stream = _WatchStream(self, request, rtype, allow_bookmarks)
        table = wants_table(request.getHeader("accept") or "")
        if table is not None:
            stream.table = (table, args.get("includeObject") or "PartialObjectMetadata")
        version = args.get("resourceVersion")
        send_initial_events = _parse_bool(args.get("sendInitialEvents", ""))
        if send_initial_events:
            # Streaming lists (KEP-3157): the current state as ADDED events, then a bookmark.
            if args.get("resourceVersionMatch") != "NotOlderThan" or not allow_bookmarks:
                raise StatusError(
                    422, "sendInitialEvents requires resourceVersionMatch=NotOlderThan and "
                    "allowWatchBookmarks=true", "Invalid",
                )
            if version not in (None, "", "0"):
                self.store._check_not_future(int(version)) if version.isdigit() else None
            version = None
        elif args.get("resourceVersionMatch"):
            raise StatusError(422, "resourceVersionMatch is forbidden for watch unless "
                              "sendInitialEvents is provided", "Invalid")
        try:
            if version not in (None, "", "0"):
                self.store._check_not_compacted(int(version))
        except ValueError:
            raise StatusError(400, f"resourceVersion: Invalid value: {version!r}") from None
        except StatusError as error:
            if self.expired_form == "status":
                raise
            # The real server answers 200 and sends the 410 as the first (and last) event.
            self._begin_stream(request)
            stream.error(error.status())
            return NOT_DONE_YET
        self._begin_stream(request)
        request.registerProducer(stream, True)
        request.notifyFinish().addBoth(lambda result: stream.connection_lost(result))
        self._streams.add(stream)
        stream.subscription = self.store.watch(
            rtype, namespace, stream, labels=labels, fields=fields, resource_version=version
        )
        if send_initial_events:
            stream.bookmark(initial_events_end=True)
        self._notify_watch_waiters()
        if timeout is not None and not stream.closed:
            stream.timeout_call = self._clock.callLater(timeout, stream.finish)
        return NOT_DONE_YET

    def _begin_stream(self, request: Request) -> None:
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-cache, private")
        if request.channel is not None:
            # A watch may be silent for long; the idle timeout is for idle connections.
            request.channel.setTimeout(None)
        request.write(b"")

    def _route(
        self, segments: builtins.list[str]
    ) -> tuple[ResourceType, str | None, str | None, str | None] | None:
        if len(segments) >= 2 and segments[0] == "api":
            group, version, rest = "", segments[1], segments[2:]
        elif len(segments) >= 3 and segments[0] == "apis":
            group, version, rest = segments[1], segments[2], segments[3:]
        else:
            return None
        served = {
            r.plural: r for r in self.store.resources() if r.group == group and r.version == version
        }
        if not rest:
            return None
        namespace: str | None = None
        if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] in served:
            namespace, rest = rest[1], rest[2:]
            if not served[rest[0]].namespaced:
                return None
        rtype = served.get(rest[0])
        if rtype is None or len(rest) > 3:
            return None
        name = rest[1] if len(rest) >= 2 else None
        subresource = rest[2] if len(rest) == 3 else None
        if subresource is not None and (subresource != "status" or not rtype.status_subresource):
            return None
        return rtype, namespace, name, subresource

    def _discovery(self, segments: builtins.list[str]) -> JSONObject | None:
        resources = self.store.resources()
        groups = sorted({r.group for r in resources if r.group})
        if segments == ["api"]:
            return {
                "kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{self.host}:{self.port}"}
                ],
            }
        if segments == ["apis"]:
            return {
                "kind": "APIGroupList", "apiVersion": "v1",
                "groups": [self._group(group) for group in groups],
            }
        if len(segments) == 2 and segments[0] == "apis" and segments[1] in groups:
            return {"kind": "APIGroup", "apiVersion": "v1", **self._group(segments[1])}
        if segments == ["api", "v1"]:
            return self._resource_list("", "v1")
        if (
            len(segments) == 3 and segments[0] == "apis" and segments[1] in groups
            and any(r.group == segments[1] and r.version == segments[2] for r in resources)
        ):
            return self._resource_list(segments[1], segments[2])
        return None

    def _group(self, group: str) -> JSONObject:
        versions = sorted({r.version for r in self.store.resources() if r.group == group})
        entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"name": group, "versions": entries, "preferredVersion": entries[0]}

    def _resource_list(self, group: str, version: str) -> JSONObject:
        entries: builtins.list[JSONObject] = []
        for r in self.store.resources():
            if r.group != group or r.version != version:
                continue
            entries.append({
                "name": r.plural, "singularName": r.singular, "namespaced": r.namespaced,
                "kind": r.kind, "verbs": list(r.verbs), "shortNames": list(r.short_names),
                **({"categories": list(r.categories)} if r.categories else {}),
            })
            if r.status_subresource:
                entries.append({
                    "name": f"{r.plural}/status", "singularName": "", "namespaced": r.namespaced,
                    "kind": r.kind, "verbs": ["get", "patch", "update"],
                })
        return {
            "kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version, "resources": entries,
        }


# Names re-exported for type checkers that look here.
_ = RESOURCE_TYPES
