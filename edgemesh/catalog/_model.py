"""
The catalog: what the mesh knows about nodes, services and their endpoints.

Immutable values.  Whoever builds one (a manifest file, the Kubernetes watch, a
push from the router, the edge's store) builds the same structure; routing only
reads it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from ._protocols import PortKind, port_kind

DEFAULT_NAMESPACE = "default"
CLUSTER_DOMAIN = "cluster.local"
DEFAULT_HUB_PORT = 7701
EDGE_LABEL = "node-role.kubernetes.io/edge"
HUB_ADDRESS_ANNOTATION = "edgemesh.io/hub-address"
ZONE_LABEL = "topology.kubernetes.io/zone"
POOL_LABEL = "edgemesh.io/pool"
"""The node pool (an edge site): "same pool first" is a locality step between node and zone."""
OPENYURT_POOL_LABEL = "apps.openyurt.io/nodepool"
"""OpenYurt's node pool label, read when ``edgemesh.io/pool`` is absent."""
DEFAULT_AFFINITY_TIMEOUT = 10800
"""``sessionAffinityConfig.clientIP.timeoutSeconds`` when not given (Kubernetes': 3 hours)."""
SCOPE_ANNOTATION = "edgemesh.io/scope"
"""On a Node: the Services that edge receives (``catalog/_scope.py``), overriding the
router's ``--edge-scope``."""


@dataclass(frozen=True, slots=True)
class Node:
    """A Kubernetes Node as the mesh sees it: edge or cloud, where its hub is, its zone and pool."""

    name: str
    edge: bool
    """Carries the label ``node-role.kubernetes.io/edge``."""
    hub_host: str | None
    """Where other edges reach this node's hub (annotation, else InternalIP)."""
    hub_port: int
    zone: str | None = None
    pool: str | None = None
    """Label ``edgemesh.io/pool`` (else ``apps.openyurt.io/nodepool``)."""
    scope: str | None = None
    """The ``edgemesh.io/scope`` annotation, as written: the router's business only, so
    not in snapshots or deltas (an edge's copy has None)."""

    @property
    def hub_address(self) -> str | None:
        if self.hub_host is None:
            return None
        # An IPv6 host needs brackets, or its last group reads as the port.
        if ":" in self.hub_host:
            return f"[{self.hub_host}]:{self.hub_port}"
        return f"{self.hub_host}:{self.hub_port}"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One backend of one service port: an address a pod listens on."""

    host: str
    port: int
    node: str | None
    """The node the pod runs on (EndpointSlice ``nodeName``); None when unknown."""
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    zone: str | None = None
    pod: str | None = None
    """``namespace/name`` of the pod, when known (for logs and the demo)."""
    for_zones: tuple[str, ...] = ()
    """EndpointSlice ``hints.forZones``: the zones this endpoint is meant for (empty: none)."""
    for_nodes: tuple[str, ...] = ()
    """EndpointSlice ``hints.forNodes``: the nodes this endpoint is meant for (empty: none)."""
    hostname: str | None = None
    """EndpointSlice ``hostname`` (a StatefulSet's ``pod-0``): in a headless service, the
    names ``pod-0.svc[.ns[.svc.cluster.local]]`` reach this endpoint only."""
    pods: int = 0
    """An aggregate (``catalog/_trim.py``): the pods of another node this entry stands for,
    all alike in what the choice reads; its host is a tag, not an address, and that node
    picks the pod.  0: one exact endpoint."""

    @property
    def weight(self) -> int:
        """The pods behind this entry: balancers weigh an aggregate by it."""
        return self.pods or 1

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ServicePort:
    """One port of a Service: its name, number, target port, protocol and application protocol."""

    name: str
    """May be empty for a single-port service."""
    port: int
    target_port: int | str
    protocol: str = "TCP"
    app_protocol: str | None = None
    """The port's ``appProtocol`` (None: not set); with the name, it decides ``kind``."""

    @property
    def kind(self) -> PortKind:
        """HTTP exchanges or byte streams (catalog/_protocols.py, docs/protocols.md)."""
        return port_kind(self.protocol, self.app_protocol, self.name)


@dataclass(frozen=True, slots=True)
class Service:
    """A Kubernetes Service with its endpoints by port name, annotations and traffic policy."""

    namespace: str
    name: str
    cluster_ip: str | None
    """None for a headless service."""
    ports: tuple[ServicePort, ...]
    endpoints: Mapping[str, tuple[Endpoint, ...]] = field(default_factory=dict)
    """Endpoints by service port name ('' for an unnamed port), ready or not."""
    annotations: Mapping[str, str] = field(default_factory=dict)
    session_affinity: str = "None"
    affinity_timeout: int = DEFAULT_AFFINITY_TIMEOUT
    """``sessionAffinityConfig.clientIP.timeoutSeconds``, for ClientIP affinity."""
    traffic_distribution: str | None = None
    """``spec.trafficDistribution`` as written (PreferSameNode, PreferSameZone, PreferClose;
    another value is kept and read as no preference)."""
    internal_traffic_policy: str = "Cluster"
    """``spec.internalTrafficPolicy``: Cluster, or Local (only this node's endpoints)."""

    key: str = field(init=False, repr=False, compare=False)
    """``namespace/name``: made once, not per read (a property built and hashed a new
    string each time, on the hot path: 3 per /small exchange on path 2)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"{self.namespace}/{self.name}")

    def ready_endpoints(self, port: ServicePort) -> tuple[Endpoint, ...]:
        return tuple(e for e in self.endpoints.get(port.name, ()) if e.ready)


# Name rules shared by whoever builds a catalog (manifest, watch, snapshot), as Kubernetes
# validates them; plain helpers so that every source refuses the same things.

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_PORT_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")

_QUALIFIED_PART = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")

PROTOCOLS = frozenset({"TCP", "UDP", "SCTP"})
SESSION_AFFINITIES = frozenset({"None", "ClientIP"})
MAX_AFFINITY_TIMEOUT = 86400
"""Kubernetes validates ``timeoutSeconds`` as 1-86400."""
TRAFFIC_POLICIES = frozenset({"Cluster", "Local"})
TRAFFIC_DISTRIBUTIONS = frozenset({"PreferClose", "PreferSameZone", "PreferSameNode"})
MAX_TRAFFIC_DISTRIBUTION = 63
MAX_HINTS = 1024
"""Hints per endpoint kept (Kubernetes allows 8 zones; nodes are bounded by this)."""
MAX_ZONE = 253
MAX_ANNOTATION_VALUE = 256 * 1024
"""Kubernetes caps all of an object's annotations together at 256 KiB."""


def is_dns1123_label(value: str) -> bool:
    """A namespace name: lower-case alphanumerics and '-', at most 63 characters."""
    return len(value) <= 63 and _DNS1123_LABEL.fullmatch(value) is not None


def is_dns1123_subdomain(value: str) -> bool:
    """A node, pod or EndpointSlice name: dot-separated DNS-1123 labels, at most 253."""
    return len(value) <= 253 and all(is_dns1123_label(part) for part in value.split("."))


def is_dns1035_label(value: str) -> bool:
    """A service name: a DNS-1123 label that starts with a letter."""
    return len(value) <= 63 and _DNS1035_LABEL.fullmatch(value) is not None


def is_port_name(value: str) -> bool:
    """A named (target) port, IANA_SVC_NAME: at most 15 characters, at least one letter,
    no '--'."""
    return (
        len(value) <= 15
        and _PORT_NAME.fullmatch(value) is not None
        and "--" not in value
        and any(c.isalpha() for c in value)
    )


def is_qualified_name(value: str) -> bool:
    """A label or annotation key: ``[prefix/]name``, the prefix a DNS-1123 subdomain, the
    name at most 63 alphanumerics, '-', '_' or '.', alphanumeric at both ends."""
    prefix, slash, name = value.rpartition("/")
    if slash and not is_dns1123_subdomain(prefix):
        return False
    return len(name) <= 63 and _QUALIFIED_PART.fullmatch(name) is not None


def is_label_value(value: str) -> bool:
    """Empty, or like the name part of a qualified name."""
    return value == "" or (len(value) <= 63 and _QUALIFIED_PART.fullmatch(value) is not None)


def is_traffic_distribution(value: str) -> bool:
    """A ``trafficDistribution`` value: a known one, or any short identifier (a newer API
    server may add values; an unknown one means no preference, not an unusable Service)."""
    return 0 < len(value) <= MAX_TRAFFIC_DISTRIBUTION and value.isascii() and value.isalnum()


def is_zone(value: str) -> bool:
    """A topology zone as EndpointSlices carry it: short printable text."""
    return 0 < len(value) <= MAX_ZONE and value.isprintable()
