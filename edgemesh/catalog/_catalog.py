"""
The catalog as one immutable value, and the name resolution every request goes through.

``Catalog.resolve`` turns what an HTTP client asked for (Host header or URI authority)
into a service and one of its ports.  It runs once per request, so its results are
cached by the raw authority bytes in a small bounded dict.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import re
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from ..exchange import MeshError, Reason
from ._model import CLUSTER_DOMAIN, DEFAULT_NAMESPACE, Endpoint, Node, Service, ServicePort

RESOLVE_CACHE_SIZE = 4096
"""Resolved authorities kept per catalog; the cache is cleared when it is full, so a
client sending endless distinct Host values costs CPU, never memory."""

_MAX_AUTHORITY = 300
"""A DNS name is at most 253 characters; with brackets and a port, 300 is generous."""

_HOST_NAME = re.compile(
    rb"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?)*"
)
_NUMERIC_HOST = re.compile(rb"[0-9.]+")
_IPV6_LITERAL = re.compile(rb"[0-9a-fA-F:.]+")
_CLUSTER_SUFFIX = tuple(CLUSTER_DOMAIN.split("."))
_HTTP_PORT = 80


def _shown(authority: bytes) -> str:
    """What the client asked for, on one line whatever it contains."""
    return repr(authority[:120])[1:] + ("..." if len(authority) > 120 else "")


def _bad(authority: bytes, why: str) -> MeshError:
    return MeshError(Reason.bad_request, f"malformed authority {_shown(authority)}: {why}")


def _unknown(authority: bytes, why: str) -> MeshError:
    return MeshError(Reason.unknown_service, f"{why} (asked for {_shown(authority)})")


def _parse_port(authority: bytes, digits: bytes) -> int:
    if not digits:
        raise _bad(authority, "empty port")
    # bytes.isdigit is ASCII-only: no '+', '-', spaces or other scripts' digits.
    if len(digits) > 5 or not digits.isdigit():
        raise _bad(authority, "port must be a number 1-65535")
    port = int(digits)
    if not 1 <= port <= 65535:
        raise _bad(authority, "port must be a number 1-65535")
    return port


_Host = bytes | ipaddress.IPv4Address | ipaddress.IPv6Address


@functools.lru_cache(maxsize=16384)
def _cluster_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Parsing is most of the cost of a Catalog (one per push on every edge): the same
    clusterIPs come back in every revision, so keep them parsed (bounded)."""
    return ipaddress.ip_address(text)


def _split_authority(authority: bytes) -> tuple[_Host, int | None]:
    """(lower-case host name without trailing dot, or an IP address; port or None)."""
    if not authority:
        raise _bad(authority, "empty")
    if len(authority) > _MAX_AUTHORITY:
        raise _bad(authority, f"longer than {_MAX_AUTHORITY} bytes")
    if authority[:1] == b"[":
        end = authority.find(b"]")
        if end < 0:
            raise _bad(authority, "unclosed '['")
        literal, rest = authority[1:end], authority[end + 1 :]
        if rest and rest[:1] != b":":
            raise _bad(authority, "unexpected characters after ']'")
        port = _parse_port(authority, rest[1:]) if rest else None
        if not _IPV6_LITERAL.fullmatch(literal):
            raise _bad(authority, "not an IPv6 address")
        try:
            return ipaddress.IPv6Address(literal.decode("ascii")), port
        except ValueError:
            raise _bad(authority, "not an IPv6 address") from None
    host, colon, digits = authority.partition(b":")
    if b":" in digits:
        raise _bad(authority, "an IPv6 address must be in brackets")
    port = _parse_port(authority, digits) if colon else None
    host = host.lower()
    if host.endswith(b"."):
        host = host[:-1]
    if not _HOST_NAME.fullmatch(host):
        raise _bad(authority, "not a valid host name")
    if _NUMERIC_HOST.fullmatch(host):
        try:
            return ipaddress.IPv4Address(host.decode("ascii")), port
        except ValueError:
            raise _bad(authority, "not a valid IPv4 address") from None
    return host, port


def _service_key(authority: bytes, host: bytes) -> str:
    """``namespace/name`` for every name form a pod may use for a service."""
    labels = host.decode("ascii").split(".")
    if len(labels) == 1:
        return f"{DEFAULT_NAMESPACE}/{labels[0]}"
    if len(labels) == 2:
        return f"{labels[1]}/{labels[0]}"
    if labels[2] == "svc" and (len(labels) == 3 or tuple(labels[3:]) == _CLUSTER_SUFFIX):
        return f"{labels[1]}/{labels[0]}"
    raise _unknown(authority, f"{host.decode('ascii')} is not a service name of this cluster")


def pod_name(labels: list[str]) -> tuple[str, str] | None:
    """(service ``namespace/name``, hostname) for the name forms of one pod of a headless
    service (``pod-0.svc``, ``pod-0.svc.ns``, ``pod-0.svc.ns.svc``,
    ``pod-0.svc.ns.svc.cluster.local``), else None.  Whether that service has such a pod
    is the catalog's business; a service name of the same shape wins (``a.b`` is service
    ``a`` of namespace ``b`` when there is one)."""
    count = len(labels)
    if count == 2:
        return f"{DEFAULT_NAMESPACE}/{labels[1]}", labels[0]
    if count == 3 and labels[2] != "svc":
        return f"{labels[2]}/{labels[1]}", labels[0]
    if count == 4 and labels[3] == "svc":
        return f"{labels[2]}/{labels[1]}", labels[0]
    if count == 4 + len(_CLUSTER_SUFFIX) and labels[3] == "svc" \
            and tuple(labels[4:]) == _CLUSTER_SUFFIX:
        return f"{labels[2]}/{labels[1]}", labels[0]
    return None


def one_pod(service: Service, hostname: str) -> Service | None:
    """``service`` narrowed to the endpoints whose hostname is ``hostname`` (a headless
    service's pod), or None when it has none.  Routing then chooses among them only (none
    ready: no-endpoint); topology preferences do not apply to a pod asked for by name."""
    if service.cluster_ip is not None:
        return None  # as Kubernetes DNS: pod names are a headless service's
    endpoints = {
        port_name: tuple(
            dataclasses.replace(e, for_zones=(), for_nodes=())
            for e in found if e.hostname == hostname
        )
        for port_name, found in service.endpoints.items()
    }
    if not any(endpoints.values()):
        return None
    return dataclasses.replace(
        service, endpoints=MappingProxyType(endpoints), internal_traffic_policy="Cluster",
        traffic_distribution=None, session_affinity="None")


def _choose_port(authority: bytes, service: Service, port: int | None) -> ServicePort:
    # The mesh carries HTTP, so only TCP ports can be meant (a UDP port may share the number).
    tcp = [p for p in service.ports if p.protocol == "TCP"]
    if port is not None:
        for candidate in tcp:
            if candidate.port == port:
                return candidate
    else:
        for candidate in tcp:
            if candidate.port == _HTTP_PORT:
                return candidate
        if len(tcp) == 1:
            return tcp[0]
    if not tcp:
        raise _unknown(authority, f"service {service.key} has no TCP port (the mesh carries "
                       "TCP only)")
    listed = ", ".join(str(p.port) for p in tcp)
    if port is None:
        why = f"service {service.key} has several ports, name one of: {listed}"
    else:
        why = f"service {service.key} has no TCP port {port}, only: {listed}"
    raise _unknown(authority, why)


class Catalog:
    """Every node and service the mesh knows at one revision.  Immutable: a change is a
    new Catalog (sources build them, routing swaps them in whole)."""

    __slots__ = ("_by_ip", "_nodes", "_ready", "_resolved", "_revision", "_services", "resolved")

    def __init__(
        self,
        services: Mapping[str, Service] | Iterable[Service] = (),
        nodes: Mapping[str, Node] | Iterable[Node] = (),
        revision: int = 0,
    ) -> None:
        if isinstance(revision, bool) or not isinstance(revision, int) or revision < 0:
            raise ValueError(f"revision must be a non-negative integer, got {revision!r}")
        by_key: dict[str, Service] = {}
        items = services.items() if isinstance(services, Mapping) else (
            (s.key, s) for s in services
        )
        for key, service in items:
            if key != service.key:
                raise ValueError(f"service {service.key} filed under {key!r}")
            if key in by_key:
                raise ValueError(f"service {key} given twice")
            by_key[key] = service
        by_name: dict[str, Node] = {}
        node_items = nodes.items() if isinstance(nodes, Mapping) else (
            (n.name, n) for n in nodes
        )
        for name, node in node_items:
            if name != node.name:
                raise ValueError(f"node {node.name} filed under {name!r}")
            if name in by_name:
                raise ValueError(f"node {name} given twice")
            by_name[name] = node
        # Kubernetes keeps clusterIPs unique; should two services share one anyway (a
        # watch between a delete and a re-create), the first key in sorted order wins.
        by_ip: dict[ipaddress.IPv4Address | ipaddress.IPv6Address, Service] = {}
        for key in sorted(by_key):
            service = by_key[key]
            if service.cluster_ip is not None:
                try:
                    ip = _cluster_ip(service.cluster_ip)
                except ValueError:
                    raise ValueError(
                        f"service {key}: cluster_ip {service.cluster_ip!r} is not an IP address"
                    ) from None
                by_ip.setdefault(ip, service)
        self._revision = revision
        self._ready: dict[tuple[str, str, str | None], tuple[Endpoint, ...]] = {}
        self._services: Mapping[str, Service] = MappingProxyType(by_key)
        self._nodes: Mapping[str, Node] = MappingProxyType(by_name)
        self._by_ip: dict[ipaddress.IPv4Address | ipaddress.IPv6Address, Service] | None = by_ip
        self._resolved: dict[bytes, tuple[Service, ServicePort]] = {}
        self.resolved: Mapping[bytes, tuple[Service, ServicePort]] = self._resolved
        """``resolve``'s answers so far, by authority (bounded): a hot path looks here first
        and calls ``resolve`` on a miss (one Python call less per exchange)."""

    @classmethod
    def empty(cls) -> Catalog:
        return cls()

    @classmethod
    def assembled(cls, services: Mapping[str, Service], nodes: Mapping[str, Node],
                  revision: int) -> Catalog:
        """A catalog made of parts of checked catalogs (the router's per-edge views, one
        per edge and change): not checked again, its clusterIP index built if ever used."""
        catalog = cls.__new__(cls)
        catalog._revision = revision
        catalog._ready = {}
        catalog._services = MappingProxyType(dict(services))
        catalog._nodes = MappingProxyType(dict(nodes))
        catalog._by_ip = None
        catalog._resolved = {}
        catalog.resolved = catalog._resolved
        return catalog

    @property
    def revision(self) -> int:
        return self._revision

    @property
    def services(self) -> Mapping[str, Service]:
        """By ``namespace/name``."""
        return self._services

    @property
    def nodes(self) -> Mapping[str, Node]:
        """By node name."""
        return self._nodes

    def with_revision(self, revision: int) -> Catalog:
        return Catalog(self._services, self._nodes, revision)

    def node(self, name: str) -> Node | None:
        return self._nodes.get(name)

    def is_edge(self, node_name: str | None) -> bool:
        if node_name is None:
            return False
        node = self._nodes.get(node_name)
        return node is not None and node.edge

    def service(self, key: str) -> Service | None:
        """The service ``namespace/name``, if known."""
        return self._services.get(key)

    def ready_endpoints(
        self, service: Service, port: ServicePort, node: str | None = None
    ) -> tuple[Endpoint, ...]:
        """The ready endpoints of a service port (only those on ``node`` when given).
        Hot path: computed once per catalog (a catalog never changes), bounded."""
        key = (service.key, port.name, node)
        found = self._ready.get(key)
        # Only a service of this catalog is cached (a stale one is computed, not kept).
        own = self._services.get(service.key) is service
        if found is not None and own:
            return found
        ready = service.ready_endpoints(port)
        found = ready if node is None else tuple(e for e in ready if e.node == node)
        if own:
            if len(self._ready) >= RESOLVE_CACHE_SIZE:
                self._ready.clear()
            self._ready[key] = found
        return found

    def resolve(self, authority: bytes) -> tuple[Service, ServicePort]:
        """The service and port an HTTP authority names.

        Accepts ``name``, ``name.ns``, ``name.ns.svc``, ``name.ns.svc.cluster.local``
        (any case, optional trailing dot), a clusterIP (``[v6]`` in brackets), each with an
        optional ``:port``; and ``pod.name[.ns[.svc[.cluster.local]]]`` for one pod of a
        headless service (its endpoints' ``hostname``): the service returned then has that
        pod's endpoints only.  Without a port: port 80 if the service has it, else its only
        port.  Raises MeshError: ``bad_request`` for a malformed authority,
        ``unknown_service`` for a name, IP or port the catalog does not have.
        """
        hit = self._resolved.get(authority)
        if hit is not None:
            return hit
        result = self._resolve(authority)
        if len(self._resolved) >= RESOLVE_CACHE_SIZE:
            self._resolved.clear()
        self._resolved[authority] = result
        return result

    def _resolve(self, authority: bytes) -> tuple[Service, ServicePort]:
        host, port = _split_authority(authority)
        if isinstance(host, bytes):
            try:
                key = _service_key(authority, host)
            except MeshError:
                key = None
            found = self._services.get(key) if key is not None else None
            if found is None:
                found = self._pod(host)
            if found is None:
                raise _unknown(authority, self._why_unknown(host, key))
        else:
            if self._by_ip is None:
                self._by_ip = Catalog(self._services, self._nodes, self._revision)._by_ip
            found = self._by_ip.get(host) if self._by_ip is not None else None
            if found is None:
                raise _unknown(authority, f"no service has clusterIP {host}")
        return found, _choose_port(authority, found, port)

    def _why_unknown(self, host: bytes, key: str | None) -> str:
        """What a name that is neither a service nor a pod lacks, in the terms it was read
        in: a service's name, or, when it names a service the catalog has, that service's
        pod."""
        named = pod_name(host.decode("ascii").split("."))
        service = self._services.get(named[0]) if named is not None else None
        if key is not None:
            # A pod is mentioned only where a headless service of that name could have had it.
            if named is None or service is None or service.cluster_ip is not None:
                return f"no service {key}"
            return f"no service {key}, and service {service.key} has no pod {named[1]}"
        if named is None or service is None:
            return f"{host.decode('ascii')} is not a service name of this cluster"
        if service.cluster_ip is not None:
            return f"service {service.key} is not headless, so it has no pod names"
        return f"service {service.key} has no pod {named[1]}"

    def _pod(self, host: bytes) -> Service | None:
        """The one-pod service a pod name (``pod-0.svc...``) means, if it is one."""
        named = pod_name(host.decode("ascii").split("."))
        if named is None:
            return None
        service = self._services.get(named[0])
        return None if service is None else one_pod(service, named[1])

    def pod_service(self, key: str, hostname: str) -> Service | None:
        """Service ``key`` narrowed to its pod ``hostname`` (see ``one_pod``), if any."""
        service = self._services.get(key)
        return None if service is None else one_pod(service, hostname)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Catalog):
            return NotImplemented
        return (
            self._revision == other._revision
            and self._nodes == other._nodes
            and self._services == other._services
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"<Catalog revision={self._revision} services={len(self._services)} "
            f"nodes={len(self._nodes)}>"
        )
