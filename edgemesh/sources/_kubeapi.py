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
it; tests use fakes of it.  Its errors say which server, which CA and kubeconfig context,
and what to check (``APIUnreachable``; 401/403 as ``APIError`` with a context), and it
honours the configuration's proxy (a kubeconfig's ``proxy-url``) through HTTP CONNECT.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote, unquote, urlsplit

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IReactorThreads, IStreamClientEndpoint
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, _HTTP11ClientFactory
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse
from zope.interface import implementer

MAX_LIST_BYTES = 256 * 1024 * 1024
"""A list response (one page) larger than this is refused."""
MAX_EVENT_BYTES = 8 * 1024 * 1024
"""One watch event (one object; etcd stores at most 1.5 MiB per object) larger than this
ends the watch with an error."""
MAX_ERROR_BYTES = 64 * 1024
"""Of an error response, only this much is read (a Status is small)."""
REQUEST_TIMEOUT = 60.0
"""Seconds for a list page or a write, response body included."""

# connectionLost's default reason, one shared Failure (as twisted's own ``connectionDone``).
_RESPONSE_DONE = Failure(ResponseDone())


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
                 retry_after: float | None = None, context: str = "") -> None:
        text = f"{status} {reason}: {message}" if reason or message else str(status)
        super().__init__(f"{text} ({context})" if context else text)
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after = retry_after
        self.context = context
        """What was asked of which server, and what to check (TreqKubeAPI sets it)."""

    @property
    def persistent(self) -> bool:
        """Retrying will not help until someone changes the credentials or RBAC (401, 403),
        or the server's API (404: a resource it does not serve)."""
        return self.status in (401, 403, 404)

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


class APIUnreachable(Exception):
    """No answer from the API server: refused, unresolvable, timed out, TLS refused (by
    either side), or a proxy that would not tunnel.  The text says which server, which CA
    or kubeconfig, and what to check; ``persistent`` when retrying cannot help (TLS, proxy
    refusal) until the configuration changes."""

    def __init__(self, text: str, *, kind: str, persistent: bool = False) -> None:
        super().__init__(text)
        self.kind = kind
        self.persistent = persistent


@dataclass
class ListResult:
    """One list response: the items and the resourceVersion a watch continues from."""

    items: list[dict[str, Any]]
    resource_version: str
    continue_token: str | None = None


class Watch(Protocol):
    """A running watch.  ``done`` fires (None) when the server ends the stream, or fails
    with APIError or a connection error; after ``cancel`` it fires neither way.  A watch may
    also have ``started``, a Deferred that fires (None) once the server accepted it."""

    done: Deferred[None]

    def cancel(self) -> None: ...


EventHandler = Callable[[str, dict[str, Any]], None]
"""(type, object) for each watch event: ADDED, MODIFIED, DELETED, BOOKMARK, ERROR."""


class KubeAPI(Protocol):
    """The few API calls the watch, the controller and the election make (list, watch, get, writes).
    """

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
                       context: str | None = None,
                       service_account_dir: str | None = None) -> Any:
    """A ``kubernetes.client.Configuration`` from a kubeconfig file or the in-cluster
    service account (its ``token`` and ``ca.crt`` from `service_account_dir`, default
    /var/run/secrets/kubernetes.io/serviceaccount), loaded by the official client.  Raises
    its ConfigException (or OSError) when that fails."""
    from kubernetes import client, config

    configuration = client.Configuration()
    if in_cluster and service_account_dir:
        import os

        from kubernetes.config.incluster_config import InClusterConfigLoader

        InClusterConfigLoader(  # type: ignore[no-untyped-call]
            token_filename=os.path.join(service_account_dir, "token"),
            cert_filename=os.path.join(service_account_dir, "ca.crt"),
        ).load_and_set(configuration)
    elif in_cluster:
        config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration)
    else:
        with _exec_plugin_errors() as failures:
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, context=context, client_configuration=configuration,
                persist_config=False)
        if failures:
            # The client logs an exec plugin's failure and goes on without credentials, and
            # would never run the plugin again: every request would be a 401.
            raise config.ConfigException(
                f"the exec plugin gave no credentials: {'; '.join(failures)}")
    return configuration


class _Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.pathname.endswith(("kube_config.py", "exec_provider.py")):
            self.texts.append(record.getMessage().strip())


@contextmanager
def _exec_plugin_errors() -> Iterator[list[str]]:
    """What the official client logs through the root logger while it loads a kubeconfig:
    only an exec plugin's failure (its stderr, its bad output).  Caught here, so that it is
    not printed by logging's last-resort handler before twistd's log starts either."""
    handler = _Captured()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler.texts
    finally:
        root.removeHandler(handler)


def describe_origin(kubeconfig: str | None = None, in_cluster: bool = False,
                    context: str | None = None) -> tuple[str, str | None]:
    """(where the configuration came from, which CA it trusts) in words, for error messages:
    ``("kubeconfig /etc/k.yaml, context 'prod'", "CA file /etc/ca.crt")``.  Best effort: a
    kubeconfig it cannot read gives the path alone and no CA."""
    if in_cluster:
        from kubernetes.config.incluster_config import SERVICE_CERT_FILENAME

        return "the in-cluster service account", f"CA file {SERVICE_CERT_FILENAME}"
    try:
        import yaml

        with open(kubeconfig or os.path.expanduser("~/.kube/config"), encoding="utf-8") as file:
            data = yaml.safe_load(file)
        name = context or data.get("current-context")
        entry = next(c["context"] for c in data.get("contexts") or [] if c.get("name") == name)
        cluster_name = entry.get("cluster")
        cluster = next(c["cluster"] for c in data.get("clusters") or []
                       if c.get("name") == cluster_name)
    except Exception:  # noqa: BLE001 - only words for a message; the loader reports errors
        return f"kubeconfig {kubeconfig}", None
    origin = f"kubeconfig {kubeconfig}, context {name!r}"
    if cluster.get("certificate-authority"):
        path = str(cluster["certificate-authority"])
        base = os.path.dirname(os.path.abspath(kubeconfig or "."))
        return origin, f"CA file {os.path.join(base, path)}"
    if cluster.get("certificate-authority-data"):
        return origin, f"the certificate-authority-data of cluster {cluster_name!r}"
    return origin, "the system's trusted CAs"


def proxy_of(configuration: Any) -> str | None:
    """The proxy the official client would use for this configuration (``proxy-url`` of the
    kubeconfig's cluster, else $HTTPS_PROXY/$HTTP_PROXY, unless $NO_PROXY covers the server),
    or None.  Raises ValueError for a proxy this client cannot use (only ``http://`` proxies,
    through CONNECT)."""
    from kubernetes.client.rest import should_bypass_proxies

    proxy = getattr(configuration, "proxy", None)
    if not proxy or should_bypass_proxies(configuration.host,
                                          getattr(configuration, "no_proxy", None) or ""):
        return None
    from_env = bool(getattr(configuration, "_proxy_from_env", False))
    if from_env and _loopback(urlsplit(configuration.host).hostname or ""):
        return None  # as Go's ProxyFromEnvironment (kubectl): never for localhost
    where = "$HTTPS_PROXY/$HTTP_PROXY" if from_env else "proxy-url"
    parsed = urlsplit(proxy)
    if parsed.scheme.lower() != "http" or not parsed.hostname:
        raise ValueError(f"{where} {_redact(proxy)}: only http:// proxies (HTTP CONNECT) "
                         "are supported, not socks or https")
    try:
        parsed.port  # noqa: B018 - raises for a bad port
    except ValueError:
        raise ValueError(f"{where} {_redact(proxy)}: bad port") from None
    return str(proxy)


def _loopback(host: str) -> bool:
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _redact(url: str) -> str:
    """A URL without its password, for messages."""
    parsed = urlsplit(url)
    if parsed.password is None:
        return url
    netloc = f"{parsed.username}:***@{parsed.hostname}"
    netloc += f":{parsed.port}" if parsed.port else ""
    return parsed._replace(netloc=netloc).geturl()


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
                    privateKey=(
                        client_certificate.privateKey.original if client_certificate else None),
                    certificate=client_certificate.original if client_certificate else None,
                )
                return options
            name = server_name or hostname.decode("ascii")
            return ssl.optionsForClientTLS(name, trustRoot=trust or ssl.platformTrust(),
                                           clientCertificate=client_certificate)

    return Policy() if configuration.host.startswith("https") else BrowserLikePolicyForHTTPS()


# -- an HTTP CONNECT proxy (kubeconfig proxy-url) ------------------------------------------------

MAX_PROXY_HEAD = 16 * 1024
"""Bytes of a proxy's answer to CONNECT read before it is refused as too long."""


class ProxyRefused(Exception):
    """The proxy did not open the tunnel (its status line, or how it failed)."""


class _Tunnel(TwistedProtocol):
    """Asks the proxy for a tunnel, then is only a pipe to ``inner`` (the HTTP or TLS
    protocol the agent gave), which gets the proxy's transport as its own."""

    def __init__(self, endpoint: _TunnelEndpoint, factory: Any, ready: Deferred[Any]) -> None:
        self.endpoint = endpoint
        self.inner_factory = factory  # not "factory": Factory.buildProtocol sets that one
        self.ready = ready
        self.head = b""
        self.inner: Any = None

    def connectionMade(self) -> None:
        target = f"{self.endpoint.host}:{self.endpoint.port}".encode("ascii")
        lines = [b"CONNECT " + target + b" HTTP/1.1", b"Host: " + target]
        if self.endpoint.authorization:
            lines.append(b"Proxy-Authorization: " + self.endpoint.authorization)
        assert self.transport is not None
        self.transport.write(b"\r\n".join(lines) + b"\r\n\r\n")

    def dataReceived(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.dataReceived(data)
            return
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        assert self.transport is not None
        if end < 0:
            if len(self.head) > MAX_PROXY_HEAD:
                self._refuse("an answer to CONNECT over 16 KiB")
            return
        status = self.head.split(b"\r\n", 1)[0].decode("latin-1", "replace")
        rest = self.head[end + 4:]
        self.head = b""
        parts = status.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].startswith("2"):
            self._refuse(status[:200] or "an empty answer")
            return
        if self.ready.called:  # cancelled while the proxy thought it over
            self.transport.loseConnection()
            return
        self.inner = self.inner_factory.buildProtocol(self.transport.getPeer())
        if self.inner is None:
            self.transport.loseConnection()
            self.ready.errback(ProxyRefused("the connection was refused locally"))
            return
        self.inner.makeConnection(self.transport)
        self.ready.callback(self.inner)
        if rest:
            self.inner.dataReceived(rest)

    def _refuse(self, why: str) -> None:
        assert self.transport is not None
        self.transport.loseConnection()
        if not self.ready.called:
            self.ready.errback(ProxyRefused(why))

    def connectionLost(self, reason: Failure = _RESPONSE_DONE) -> None:
        if self.inner is not None:
            self.inner.connectionLost(reason)
        elif not self.ready.called:
            self.ready.errback(ProxyRefused(
                f"the proxy closed the connection before it answered CONNECT "
                f"({reason.getErrorMessage()})"))


@implementer(IStreamClientEndpoint)
class _TunnelEndpoint:
    """An IStreamClientEndpoint to ``host:port`` through an HTTP CONNECT proxy."""

    def __init__(self, proxy: Any, host: str, port: int, authorization: bytes | None) -> None:
        self.proxy = proxy
        self.host = host
        self.port = port
        self.authorization = authorization

    def connect(self, factory: Any) -> Deferred[Any]:
        from twisted.internet.protocol import Factory

        built: list[_Tunnel] = []

        def cancel(_: object) -> None:
            connecting.cancel()
            for tunnel in built:  # connected to the proxy, waiting for its answer
                if tunnel.transport is not None and tunnel.inner is None:
                    tunnel.transport.loseConnection()

        def build() -> _Tunnel:
            built.append(_Tunnel(self, factory, ready))
            return built[-1]

        ready: Deferred[Any] = Deferred(cancel)
        tunnels = Factory.forProtocol(build)
        tunnels.noisy = False  # no "Starting factory" line per connection
        connecting = self.proxy.connect(tunnels)
        connecting.addErrback(lambda failure: None if ready.called else ready.errback(failure))
        return ready


class _ProxyEndpoints:
    """The agent's endpoints (IAgentEndpointFactory): every server through the proxy, TLS
    to the server inside the tunnel for https."""

    def __init__(self, reactor: Any, proxy: str, policy: Any, connect_timeout: float) -> None:
        from twisted.internet.endpoints import HostnameEndpoint

        parsed = urlsplit(proxy)
        self.proxy = HostnameEndpoint(reactor, parsed.hostname or "", parsed.port or 80,
                                      timeout=connect_timeout)
        self.authorization: bytes | None = None
        if parsed.username is not None:
            pair = f"{unquote(parsed.username)}:{unquote(parsed.password or '')}"
            self.authorization = b"Basic " + base64.b64encode(pair.encode("utf-8"))
        self.policy = policy

    def endpointForURI(self, uri: Any) -> Any:
        from twisted.internet.endpoints import wrapClientTLS

        tunnel = _TunnelEndpoint(self.proxy, uri.host.decode("ascii"), uri.port,
                                 self.authorization)
        if uri.scheme == b"https":
            return wrapClientTLS(self.policy.creatorForNetloc(uri.host, uri.port), tunnel)
        return tunnel


# -- errors in words -----------------------------------------------------------------------------


def _causes(error: BaseException) -> list[BaseException]:
    """The error and what twisted.web.client wrapped in it (lists of Failures)."""
    found = [error]
    for reason in getattr(error, "reasons", None) or []:
        if isinstance(reason, Failure) and isinstance(reason.value, BaseException):
            found.extend(_causes(reason.value))
    return found


def _openssl_reasons(error: BaseException) -> list[str]:
    """OpenSSL's (library, function, reason) tuples, the reasons alone."""
    reasons = []
    for entry in error.args[0] if error.args and isinstance(error.args[0], list) else []:
        if isinstance(entry, tuple) and entry:
            reasons.append(str(entry[-1]))
    return reasons or [str(error) or type(error).__name__]


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

    def connectionLost(self, reason: Failure = _RESPONSE_DONE) -> None:
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

    def connectionLost(self, reason: Failure = _RESPONSE_DONE) -> None:
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
        self.started: Deferred[None] = Deferred()
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


_VERBS = {"GET": "list", "POST": "create", "PUT": "update", "DELETE": "delete"}
"""RBAC's verb for each method (a GET of one object is ``get``: _op says so)."""


class TreqKubeAPI:
    """KubeAPI over treq, configured from a ``kubernetes.client.Configuration``."""

    def __init__(self, reactor: Any, configuration: Any, *,
                 request_timeout: float = REQUEST_TIMEOUT, connect_timeout: float = 10.0,
                 origin: str | None = None, ca: str | None = None) -> None:
        from treq.client import HTTPClient
        from twisted.web.client import Agent, HTTPConnectionPool

        self.reactor = reactor
        self.configuration = configuration
        self.base = configuration.host.rstrip("/")
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self.origin = origin or "the client configuration"
        """Where the configuration came from (kubeconfig and context), for messages."""
        if ca is None:
            ca = (f"CA file {configuration.ssl_ca_cert}" if configuration.ssl_ca_cert
                  else "the system's trusted CAs")
        self.ca = ca
        self.proxy = proxy_of(configuration)
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = 4
        pool._factory = _QuietFactory  # no "Starting factory" line per connection
        self.pool = pool
        policy = _tls_policy(configuration)
        if self.proxy is not None:
            agent = Agent.usingEndpointFactory(
                reactor, _ProxyEndpoints(reactor, self.proxy, policy, connect_timeout), pool)
        else:
            agent = Agent(reactor, contextFactory=policy, connectTimeout=connect_timeout,
                          pool=pool)
        self.http = HTTPClient(agent)

    def explain(self, error: BaseException) -> APIUnreachable:
        """A transport error in words: which server (and proxy), which CA and kubeconfig,
        and what to check."""
        from OpenSSL import SSL
        from service_identity import VerificationError
        from twisted.internet import error as net

        url = self.base
        via = f" through proxy {_redact(self.proxy)}" if self.proxy else ""
        origin = self.origin
        causes = _causes(error)
        for cause in causes:
            if isinstance(cause, ProxyRefused):
                return APIUnreachable(
                    f"proxy {_redact(self.proxy or '')} would not tunnel to {url}: {cause} "
                    f"({origin}): check proxy-url and what the proxy allows", kind="proxy",
                    persistent=True)
            if isinstance(cause, VerificationError):
                name = getattr(self.configuration, "tls_server_name", None) or urlsplit(
                    url).hostname
                return APIUnreachable(
                    f"TLS: the certificate of {url}{via} is not valid for the name {name!r} "
                    f"({origin}): check the server address, or set tls-server-name to a name "
                    "the certificate carries", kind="tls-name", persistent=True)
            if isinstance(cause, SSL.Error):
                reasons = _openssl_reasons(cause)
                if any("certificate verify failed" in r for r in reasons):
                    return APIUnreachable(
                        f"TLS: the certificate of {url}{via} is not signed by {self.ca} "
                        f"({origin}): check that this CA is the API server's",
                        kind="tls-verify", persistent=True)
                return APIUnreachable(
                    f"TLS handshake with {url}{via} failed: {'; '.join(reasons)[:200]} "
                    f"({origin}): check the server address (is it TLS?) and the client "
                    "certificate and key", kind="tls", persistent=True)
        for cause in causes:
            if isinstance(cause, net.ConnectionRefusedError):
                where = f"proxy {_redact(self.proxy)}" if self.proxy else url
                return APIUnreachable(
                    f"connection refused by {where} ({origin}): is the API server up, and is "
                    "this its address?", kind="refused")
            if isinstance(cause, net.DNSLookupError):
                return APIUnreachable(
                    f"cannot resolve the host of {url}{via} ({origin}): check the server "
                    "address", kind="dns")
            if isinstance(cause, (net.TimeoutError, net.TCPTimedOutError)):
                return APIUnreachable(
                    f"no connection to {url}{via} within {self.connect_timeout:g} s "
                    f"({origin}): check the address and the network", kind="timeout")
            if isinstance(cause, (CancelledError, net.ConnectingCancelledError)):
                return APIUnreachable(
                    f"no answer from {url}{via} in time ({origin}): is the API server "
                    "overloaded, or the network dropping packets?", kind="timeout")
        last = causes[-1]
        text = str(last) or type(last).__name__
        return APIUnreachable(f"{url}{via} did not answer: {text[:200]} ({origin})",
                              kind="lost")

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
            try:
                response: IResponse = await self.http.request(
                    method, self.base + path, params=params, headers=headers,
                    allow_redirects=False, unbuffered=unbuffered, reactor=self.reactor,
                    timeout=timeout, **kwargs)
            except CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - every transport error, in words
                raise self.explain(error) from None
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

    async def _error(self, response: IResponse, verb: str, path: str) -> APIError:
        try:
            status = await self._json(response, MAX_ERROR_BYTES)
        except Exception:  # noqa: BLE001 - any body: the status code is what matters
            status = None
        error = APIError.from_status(status, response.code, _retry_after(response))
        if error.status == 401:
            # Not the path: the credentials are refused whatever is asked, so that /readyz
            # can say the failure of every resource once.
            error.context = (f"{self.base} refused the credentials of {self.origin}; "
                             "check its token or client certificate")
        elif error.status == 403:
            error.context = (f"{verb} {path} forbidden to the user of {self.origin}; "
                             f"grant '{verb}' on it in RBAC")
        elif error.status == 404:
            error.context = f"{verb} {path}: {self.base} does not serve it"
        if error.context:
            error.args = (f"{error.args[0]} ({error.context})",)
        return error

    def _timed(self, work: Deferred[Any], timeout: float) -> None:
        call = self.reactor.callLater(timeout, work.cancel)

        def done(result: object) -> object:
            if call.active():
                call.cancel()
            return result

        work.addBoth(done)

    async def _call(self, method: str, path: str, params: list[tuple[str, str]] | None = None,
                    body: Mapping[str, Any] | None = None, limit: int = MAX_LIST_BYTES,
                    verb: str | None = None) -> Any:
        response = await self._request(method, path, params or [], body, None)
        if not 200 <= response.code < 300:
            raise await self._error(response, verb or _VERBS.get(method, method.lower()), path)
        return await self._json(response, limit)

    def _op(self, method: str, path: str, params: list[tuple[str, str]] | None = None,
            body: Mapping[str, Any] | None = None, verb: str | None = None) -> Deferred[Any]:
        work = Deferred.fromCoroutine(self._call(method, path, params, body, verb=verb))
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
                failed = Deferred.fromCoroutine(
                    self._error(response, "watch", resource.path(namespace)))
                failed.addCallback(watch.fail)
                return None
            stream = _EventStream(watch)
            watch.stream = stream
            watch.started.callback(None)
            response.deliverBody(stream)
            return None

        def lost(reason: Failure) -> None:
            if not reason.check(CancelledError) or not watch.finished:
                watch.fail(reason)

        request.addCallbacks(started, lost)
        return watch

    def get(self, resource: Resource, namespace: str | None, name: str
            ) -> Deferred[dict[str, Any]]:
        return self._op("GET", resource.path(namespace, name), verb="get")

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

