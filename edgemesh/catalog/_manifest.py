"""
Kubernetes objects (as plain dicts, camelCase keys as in the API's JSON) to a Catalog.

Two steps, both usable on their own:

- ``parse_node`` / ``parse_service`` / ``parse_endpoint_slice`` / ``parse_pod`` validate
  one object each and keep only what the mesh needs.  Every problem raises a
  ManifestError naming the object and the field.
- ``assemble_catalog`` joins the parsed objects: EndpointSlices to their Service by the
  ``kubernetes.io/service-name`` label, or, for a Service with a selector and no slice at
  all, the Running and Ready pods its selector matches.

``catalog_from_objects`` does both for a list of dicts (a manifest file, or a watch's
cache); ``load_manifest`` reads the dicts from a YAML or JSON file.  A watch using the
official client should feed ``ApiClient().sanitize_for_serialization(obj)`` (camelCase),
not ``obj.to_dict()`` (snake_case).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NoReturn

from ._catalog import Catalog
from ._model import (
    DEFAULT_AFFINITY_TIMEOUT,
    DEFAULT_HUB_PORT,
    DEFAULT_NAMESPACE,
    EDGE_LABEL,
    HUB_ADDRESS_ANNOTATION,
    MAX_AFFINITY_TIMEOUT,
    MAX_ANNOTATION_VALUE,
    MAX_HINTS,
    OPENYURT_POOL_LABEL,
    POOL_LABEL,
    PROTOCOLS,
    SCOPE_ANNOTATION,
    SESSION_AFFINITIES,
    TRAFFIC_POLICIES,
    ZONE_LABEL,
    Endpoint,
    Node,
    Service,
    ServicePort,
    is_dns1035_label,
    is_dns1123_label,
    is_dns1123_subdomain,
    is_label_value,
    is_port_name,
    is_qualified_name,
    is_traffic_distribution,
    is_zone,
)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
"""Joins an EndpointSlice to its Service."""

MAX_MANIFEST_BYTES = 32 * 1024 * 1024

_SLICE_API = "discovery.k8s.io/v1"
_EMPTY: Mapping[str, str] = MappingProxyType({})


class ManifestError(ValueError):
    """A catalog object that cannot be used; the message names the object and the field,
    e.g. ``Service default/web: spec.ports[1].port: must be an integer 1-65535, got 'x'``."""

    def __init__(self, what: str, field: str, problem: str) -> None:
        super().__init__(f"{what}: {field}: {problem}" if field else f"{what}: {problem}")
        self.what = what
        self.field = field
        self.problem = problem


# -- parsed objects: what the mesh keeps of each Kubernetes object ----------------------


@dataclass(frozen=True, slots=True)
class ServiceObject:
    """A Service without endpoints yet, and its pod selector (empty: selects nothing)."""

    service: Service
    selector: Mapping[str, str] = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True, slots=True)
class SliceEndpoint:
    """One endpoint of an EndpointSlice as parsed: its addresses, conditions, node, zone and hints.
    """

    address: str
    node: str | None
    ready: bool
    serving: bool
    terminating: bool
    zone: str | None
    pod: str | None
    for_zones: tuple[str, ...] = ()
    for_nodes: tuple[str, ...] = ()
    hostname: str | None = None


@dataclass(frozen=True, slots=True)
class EndpointSliceObject:
    """An EndpointSlice as parsed, before it is joined to its Service by the service-name label."""

    namespace: str
    name: str
    service_name: str
    address_type: str
    """IPv4, IPv6 or FQDN (whose endpoints are ignored)."""
    ports: tuple[tuple[str, int, str], ...]
    """(name, port, protocol); ports the slice lists without a number are dropped."""
    endpoints: tuple[SliceEndpoint, ...]

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class PodObject:
    """A Pod as parsed: the shorthand for one endpoint of the Services that select it."""

    namespace: str
    name: str
    labels: Mapping[str, str]
    node: str | None
    ip: str | None
    serving: bool
    """Running, Ready and not being deleted: an endpoint for the services selecting it."""
    named_ports: Mapping[str, tuple[int, str]]
    """Container port number and protocol by port name."""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


# -- typed reads that name the object and the field -----------------------------------


def _got(value: object) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


class _Reader:
    """Reads fields of one object; every failure raises a ManifestError naming it."""

    def __init__(self, what: str) -> None:
        self.what = what

    def fail(self, path: str, problem: str) -> NoReturn:
        raise ManifestError(self.what, path, problem)

    def mapping(self, value: object, path: str, required: bool = False) -> Mapping[str, object]:
        if value is None:
            if required:
                self.fail(path, "required")
            return _EMPTY
        if not isinstance(value, Mapping):
            self.fail(path, f"must be a mapping, got {_type_name(value)}")
        for key in value:
            if not isinstance(key, str):
                self.fail(path, f"keys must be strings, got {_got(key)}")
        return value

    def sequence(self, value: object, path: str) -> Sequence[object]:
        if value is None:
            return ()
        if not isinstance(value, list | tuple):
            self.fail(path, f"must be a list, got {_type_name(value)}")
        return value

    def string(self, value: object, path: str, required: bool = False) -> str | None:
        if value is None:
            if required:
                self.fail(path, "required")
            return None
        if not isinstance(value, str):
            self.fail(path, f"must be a string, got {_got(value)}")
        return value

    def required_string(self, value: object, path: str) -> str:
        text = self.string(value, path, required=True)
        assert text is not None
        return text

    def boolean(self, value: object, path: str, default: bool) -> bool:
        if value is None:
            return default
        if not isinstance(value, bool):
            self.fail(path, f"must be true or false, got {_got(value)}")
        return value

    def port(self, value: object, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
            self.fail(path, f"must be an integer 1-65535, got {_got(value)}")
        return value

    def string_map(self, value: object, path: str, labels: bool) -> dict[str, str]:
        """Labels (``labels``: values are label values) or annotations."""
        result: dict[str, str] = {}
        for key, item in self.mapping(value, path).items():
            if not is_qualified_name(key):
                self.fail(path, f"{_got(key)} is not a valid key ([prefix/]name)")
            if not isinstance(item, str):
                self.fail(f"{path}[{key}]", f"must be a string, got {_got(item)}")
            if labels and not is_label_value(item):
                self.fail(f"{path}[{key}]", f"not a valid label value: {_got(item)}")
            if len(item) > MAX_ANNOTATION_VALUE:
                self.fail(f"{path}[{key}]", f"longer than {MAX_ANNOTATION_VALUE} characters")
            result[key] = item
        return result

    def ip(self, value: object, path: str) -> str:
        text = self.required_string(value, path)
        try:
            return ipaddress.ip_address(text).compressed
        except ValueError:
            self.fail(path, f"not an IP address: {_got(text)}")

    def name(self, value: object, path: str, check: Callable[[str], bool], rule: str) -> str:
        text = self.required_string(value, path)
        if not check(text):
            self.fail(path, f"{_got(text)} is not a valid name ({rule})")
        return text


_SUBDOMAIN = "lower-case DNS-1123 subdomain"
_LABEL = "lower-case DNS-1123 label"


def _identify(kind: str, obj: Mapping[str, object], namespaced: bool) -> tuple[_Reader, str, str]:
    """(reader, namespace, name) of an object, validating its metadata."""
    anonymous = _Reader(f"{kind} (unnamed)")
    meta = anonymous.mapping(obj.get("metadata"), "metadata", required=True)
    check = is_dns1035_label if kind == "Service" else is_dns1123_subdomain
    rule = "DNS-1035 label: lower-case letter first" if kind == "Service" else _SUBDOMAIN
    name = anonymous.name(meta.get("name"), "metadata.name", check, rule)
    if not namespaced:
        return _Reader(f"{kind} {name}"), "", name
    named = _Reader(f"{kind} {name}")
    namespace = named.string(meta.get("namespace"), "metadata.namespace") or DEFAULT_NAMESPACE
    if not is_dns1123_label(namespace):
        named.fail("metadata.namespace", f"{_got(namespace)} is not a valid name ({_LABEL})")
    return _Reader(f"{kind} {namespace}/{name}"), namespace, name


# -- the four kinds -------------------------------------------------------------------


def _hub_address(r: _Reader, text: str) -> tuple[str, int]:
    path = f"metadata.annotations[{HUB_ADDRESS_ANNOTATION}]"
    problem = f"must be host:port (IPv6 in brackets), got {_got(text)}"
    if text.startswith("["):
        literal, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            r.fail(path, problem)
        try:
            host = ipaddress.IPv6Address(literal).compressed
        except ValueError:
            r.fail(path, problem)
        digits = rest[1:]
    else:
        host, colon, digits = text.rpartition(":")
        if not colon or ":" in host:
            r.fail(path, problem)
        host = host.lower()
        if not is_dns1123_subdomain(host):
            r.fail(path, problem)
        if all(c.isdigit() or c == "." for c in host):
            try:
                host = ipaddress.IPv4Address(host).compressed
            except ValueError:
                r.fail(path, problem)
    if not (digits.isascii() and digits.isdigit() and len(digits) <= 5):
        r.fail(path, problem)
    port = int(digits)
    if not 1 <= port <= 65535:
        r.fail(path, problem)
    return host, port


def parse_node(obj: Mapping[str, object]) -> Node:
    """A Node: edge when labelled ``node-role.kubernetes.io/edge``; its hub address from
    the ``edgemesh.io/hub-address`` annotation, else its InternalIP and DEFAULT_HUB_PORT."""
    r, _, name = _identify("Node", obj, namespaced=False)
    meta = r.mapping(obj.get("metadata"), "metadata")
    labels = r.string_map(meta.get("labels"), "metadata.labels", labels=True)
    annotations = r.string_map(meta.get("annotations"), "metadata.annotations", labels=False)
    status = r.mapping(obj.get("status"), "status")
    internal_ip: str | None = None
    for i, entry in enumerate(r.sequence(status.get("addresses"), "status.addresses")):
        path = f"status.addresses[{i}]"
        entry = r.mapping(entry, path, required=True)
        kind = r.required_string(entry.get("type"), f"{path}.type")
        if kind == "InternalIP":
            ip = r.ip(entry.get("address"), f"{path}.address")
            internal_ip = internal_ip or ip
        else:
            r.required_string(entry.get("address"), f"{path}.address")
    hub_host, hub_port = internal_ip, DEFAULT_HUB_PORT
    announced = annotations.get(HUB_ADDRESS_ANNOTATION)
    if announced is not None:
        hub_host, hub_port = _hub_address(r, announced)
    zone = labels.get(ZONE_LABEL) or None
    # A label value is valid zone text (at most 63 characters, printable).
    pool = labels.get(POOL_LABEL) or labels.get(OPENYURT_POOL_LABEL) or None
    return Node(name=name, edge=EDGE_LABEL in labels, hub_host=hub_host, hub_port=hub_port,
                zone=zone, pool=pool, scope=annotations.get(SCOPE_ANNOTATION))


def _service_port(r: _Reader, raw: object, path: str) -> ServicePort:
    entry = r.mapping(raw, path, required=True)
    name = r.string(entry.get("name"), f"{path}.name") or ""
    if name and not is_dns1123_label(name):
        r.fail(f"{path}.name", f"{_got(name)} is not a valid port name ({_LABEL})")
    port = r.port(entry.get("port"), f"{path}.port")
    raw_target = entry.get("targetPort")
    target: int | str
    if raw_target is None:
        target = port
    elif isinstance(raw_target, str):
        if not is_port_name(raw_target):
            r.fail(f"{path}.targetPort",
                   f"must be a port number or an IANA service name, got {_got(raw_target)}")
        target = raw_target
    else:
        target = r.port(raw_target, f"{path}.targetPort")
    protocol = r.string(entry.get("protocol"), f"{path}.protocol") or "TCP"
    if protocol not in PROTOCOLS:
        r.fail(f"{path}.protocol", f"must be one of TCP, UDP, SCTP, got {_got(protocol)}")
    app_protocol = r.string(entry.get("appProtocol"), f"{path}.appProtocol") or None
    if app_protocol is not None and not is_qualified_name(app_protocol):
        r.fail(f"{path}.appProtocol",
               f"must be a protocol name or a domain-prefixed one, got {_got(app_protocol)}")
    return ServicePort(name=name, port=port, target_port=target, protocol=protocol,
                       app_protocol=app_protocol)


def parse_service(obj: Mapping[str, object]) -> ServiceObject:
    """A Service: clusterIP (absent, empty or "None" means headless), ports, annotations,
    sessionAffinity and selector."""
    r, namespace, name = _identify("Service", obj, namespaced=True)
    meta = r.mapping(obj.get("metadata"), "metadata")
    annotations = r.string_map(meta.get("annotations"), "metadata.annotations", labels=False)
    spec = r.mapping(obj.get("spec"), "spec", required=True)
    raw_ip = r.string(spec.get("clusterIP"), "spec.clusterIP")
    cluster_ip = None if raw_ip in (None, "", "None") else r.ip(raw_ip, "spec.clusterIP")
    ports = [
        _service_port(r, raw, f"spec.ports[{i}]")
        for i, raw in enumerate(r.sequence(spec.get("ports"), "spec.ports"))
    ]
    for i, port in enumerate(ports):
        if len(ports) > 1 and not port.name:
            r.fail(f"spec.ports[{i}].name", "required when a service has several ports")
        for seen in ports[:i]:
            if port.name and seen.name == port.name:
                r.fail(f"spec.ports[{i}].name", f"duplicate port name {port.name!r}")
            if (seen.port, seen.protocol) == (port.port, port.protocol):
                r.fail(f"spec.ports[{i}].port", f"duplicate port {port.port}/{port.protocol}")
    affinity = r.string(spec.get("sessionAffinity"), "spec.sessionAffinity") or "None"
    if affinity not in SESSION_AFFINITIES:
        r.fail("spec.sessionAffinity", f"must be None or ClientIP, got {_got(affinity)}")
    selector = r.string_map(spec.get("selector"), "spec.selector", labels=True)
    timeout = DEFAULT_AFFINITY_TIMEOUT
    config = r.mapping(spec.get("sessionAffinityConfig"), "spec.sessionAffinityConfig")
    client_ip = r.mapping(config.get("clientIP"), "spec.sessionAffinityConfig.clientIP")
    raw_timeout = client_ip.get("timeoutSeconds")
    if raw_timeout is not None:
        if (isinstance(raw_timeout, bool) or not isinstance(raw_timeout, int)
                or not 1 <= raw_timeout <= MAX_AFFINITY_TIMEOUT):
            r.fail("spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                   f"must be an integer 1-{MAX_AFFINITY_TIMEOUT}, got {_got(raw_timeout)}")
        timeout = raw_timeout
    distribution = r.string(spec.get("trafficDistribution"), "spec.trafficDistribution") or None
    if distribution is not None and not is_traffic_distribution(distribution):
        r.fail("spec.trafficDistribution",
               f"must be PreferSameNode, PreferSameZone or PreferClose, got {_got(distribution)}")
    internal = (r.string(spec.get("internalTrafficPolicy"), "spec.internalTrafficPolicy")
                or "Cluster")
    if internal not in TRAFFIC_POLICIES:
        r.fail("spec.internalTrafficPolicy", f"must be Cluster or Local, got {_got(internal)}")
    service = Service(
        namespace=namespace,
        name=name,
        cluster_ip=cluster_ip,
        ports=tuple(ports),
        annotations=MappingProxyType(annotations),
        session_affinity=affinity,
        affinity_timeout=timeout,
        traffic_distribution=distribution,
        internal_traffic_policy=internal,
    )
    return ServiceObject(service=service, selector=MappingProxyType(selector))


def _pod_ref(r: _Reader, raw: object, path: str, namespace: str) -> str | None:
    ref = r.mapping(raw, path)
    if not ref or ref.get("kind", "Pod") != "Pod":
        return None
    name = r.name(ref.get("name"), f"{path}.name", is_dns1123_subdomain, _SUBDOMAIN)
    ns = r.string(ref.get("namespace"), f"{path}.namespace") or namespace
    if not is_dns1123_label(ns):
        r.fail(f"{path}.namespace", f"{_got(ns)} is not a valid name ({_LABEL})")
    return f"{ns}/{name}"


def _slice_endpoint(
    r: _Reader, raw: object, path: str, namespace: str, address_type: str
) -> SliceEndpoint:
    entry = r.mapping(raw, path, required=True)
    addresses = r.sequence(entry.get("addresses"), f"{path}.addresses")
    if not addresses:
        r.fail(f"{path}.addresses", "must list at least one address")
    # The addresses of one endpoint are fungible; Kubernetes consumers use the first.
    address = r.required_string(addresses[0], f"{path}.addresses[0]")
    if address_type != "FQDN":
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            r.fail(f"{path}.addresses[0]", f"not an {address_type} address: {_got(address)}")
        if f"IPv{ip.version}" != address_type:
            r.fail(f"{path}.addresses[0]", f"not an {address_type} address: {_got(address)}")
        address = ip.compressed
    conditions = r.mapping(entry.get("conditions"), f"{path}.conditions")
    node = r.string(entry.get("nodeName"), f"{path}.nodeName")
    if node is not None and not is_dns1123_subdomain(node):
        r.fail(f"{path}.nodeName", f"{_got(node)} is not a valid name ({_SUBDOMAIN})")
    zone = r.string(entry.get("zone"), f"{path}.zone") or None
    if zone is not None and not is_zone(zone):
        r.fail(f"{path}.zone", f"must be short printable text, got {_got(zone)}")
    hints = r.mapping(entry.get("hints"), f"{path}.hints")
    for_zones = _hint_names(r, hints.get("forZones"), f"{path}.hints.forZones", is_zone,
                            "short printable text")
    for_nodes = _hint_names(r, hints.get("forNodes"), f"{path}.hints.forNodes",
                            is_dns1123_subdomain, _SUBDOMAIN)
    hostname = r.string(entry.get("hostname"), f"{path}.hostname") or None
    if hostname is not None and not is_dns1123_label(hostname):
        r.fail(f"{path}.hostname", f"{_got(hostname)} is not a valid name ({_LABEL})")
    return SliceEndpoint(
        address=address,
        node=node,
        ready=r.boolean(conditions.get("ready"), f"{path}.conditions.ready", True),
        serving=r.boolean(conditions.get("serving"), f"{path}.conditions.serving", True),
        terminating=r.boolean(
            conditions.get("terminating"), f"{path}.conditions.terminating", False
        ),
        zone=zone,
        pod=_pod_ref(r, entry.get("targetRef"), f"{path}.targetRef", namespace),
        for_zones=for_zones,
        for_nodes=for_nodes,
        hostname=hostname,
    )


def _hint_names(
    r: _Reader, raw: object, path: str, check: Callable[[str], bool], rule: str
) -> tuple[str, ...]:
    """``[{name: ...}, ...]`` of an endpoint's hints, in order, without duplicates."""
    entries = r.sequence(raw, path)
    if len(entries) > MAX_HINTS:
        r.fail(path, f"more than {MAX_HINTS} entries")
    names: dict[str, None] = {}
    for i, item in enumerate(entries):
        hint = r.mapping(item, f"{path}[{i}]", required=True)
        name = r.required_string(hint.get("name"), f"{path}[{i}].name")
        if not check(name):
            r.fail(f"{path}[{i}].name", f"{_got(name)} is not valid ({rule})")
        names[name] = None
    return tuple(names)


def parse_endpoint_slice(obj: Mapping[str, object]) -> EndpointSliceObject:
    """A discovery.k8s.io/v1 EndpointSlice; ready and serving default to true,
    terminating to false."""
    r, namespace, name = _identify("EndpointSlice", obj, namespaced=True)
    api = r.string(obj.get("apiVersion"), "apiVersion")
    if api is not None and api != _SLICE_API:
        r.fail("apiVersion", f"must be {_SLICE_API}, got {_got(api)}")
    meta = r.mapping(obj.get("metadata"), "metadata")
    labels = r.string_map(meta.get("labels"), "metadata.labels", labels=True)
    service_name = labels.get(SERVICE_NAME_LABEL)
    if service_name is None:
        r.fail("metadata.labels", f"{SERVICE_NAME_LABEL} is required")
    if not is_dns1035_label(service_name):
        r.fail(f"metadata.labels[{SERVICE_NAME_LABEL}]",
               f"{_got(service_name)} is not a valid service name")
    address_type = r.required_string(obj.get("addressType"), "addressType")
    if address_type not in ("IPv4", "IPv6", "FQDN"):
        r.fail("addressType", f"must be IPv4, IPv6 or FQDN, got {_got(address_type)}")
    ports: list[tuple[str, int, str]] = []
    for i, raw in enumerate(r.sequence(obj.get("ports"), "ports")):
        path = f"ports[{i}]"
        entry = r.mapping(raw, path, required=True)
        port_name = r.string(entry.get("name"), f"{path}.name") or ""
        if port_name and not is_dns1123_label(port_name):
            r.fail(f"{path}.name", f"{_got(port_name)} is not a valid port name ({_LABEL})")
        protocol = r.string(entry.get("protocol"), f"{path}.protocol") or "TCP"
        if protocol not in PROTOCOLS:
            r.fail(f"{path}.protocol", f"must be one of TCP, UDP, SCTP, got {_got(protocol)}")
        # A port without a number means "all ports": nothing the mesh can dial.
        if entry.get("port") is not None:
            ports.append((port_name, r.port(entry.get("port"), f"{path}.port"), protocol))
    endpoints = tuple(
        _slice_endpoint(r, raw, f"endpoints[{i}]", namespace, address_type)
        for i, raw in enumerate(r.sequence(obj.get("endpoints"), "endpoints"))
    )
    return EndpointSliceObject(
        namespace=namespace,
        name=name,
        service_name=service_name,
        address_type=address_type,
        ports=tuple(ports),
        endpoints=endpoints,
    )


def parse_pod(obj: Mapping[str, object]) -> PodObject:
    """A Pod, for services with a selector and no EndpointSlice."""
    r, namespace, name = _identify("Pod", obj, namespaced=True)
    meta = r.mapping(obj.get("metadata"), "metadata")
    labels = r.string_map(meta.get("labels"), "metadata.labels", labels=True)
    deleting = r.string(meta.get("deletionTimestamp"), "metadata.deletionTimestamp") is not None
    spec = r.mapping(obj.get("spec"), "spec")
    node = r.string(spec.get("nodeName"), "spec.nodeName")
    if node is not None and not is_dns1123_subdomain(node):
        r.fail("spec.nodeName", f"{_got(node)} is not a valid name ({_SUBDOMAIN})")
    named_ports: dict[str, tuple[int, str]] = {}
    for i, raw in enumerate(r.sequence(spec.get("containers"), "spec.containers")):
        container = r.mapping(raw, f"spec.containers[{i}]", required=True)
        for j, raw_port in enumerate(
            r.sequence(container.get("ports"), f"spec.containers[{i}].ports")
        ):
            path = f"spec.containers[{i}].ports[{j}]"
            entry = r.mapping(raw_port, path, required=True)
            number = r.port(entry.get("containerPort"), f"{path}.containerPort")
            protocol = r.string(entry.get("protocol"), f"{path}.protocol") or "TCP"
            if protocol not in PROTOCOLS:
                r.fail(f"{path}.protocol",
                       f"must be one of TCP, UDP, SCTP, got {_got(protocol)}")
            port_name = r.string(entry.get("name"), f"{path}.name")
            if port_name is None:
                continue
            if not is_port_name(port_name):
                r.fail(f"{path}.name", f"{_got(port_name)} is not a valid port name "
                       "(IANA service name: at most 15 characters, a letter)")
            if port_name in named_ports:
                r.fail(f"{path}.name", f"duplicate port name {port_name!r}")
            named_ports[port_name] = (number, protocol)
    status = r.mapping(obj.get("status"), "status")
    phase = r.string(status.get("phase"), "status.phase")
    raw_ip = r.string(status.get("podIP"), "status.podIP")
    ip = r.ip(raw_ip, "status.podIP") if raw_ip else None
    ready = False
    for i, raw in enumerate(r.sequence(status.get("conditions"), "status.conditions")):
        path = f"status.conditions[{i}]"
        condition = r.mapping(raw, path, required=True)
        kind = r.required_string(condition.get("type"), f"{path}.type")
        value = r.required_string(condition.get("status"), f"{path}.status")
        if value not in ("True", "False", "Unknown"):
            r.fail(f"{path}.status", f"must be True, False or Unknown, got {_got(value)}")
        if kind == "Ready":
            ready = value == "True"
    return PodObject(
        namespace=namespace,
        name=name,
        labels=MappingProxyType(labels),
        node=node,
        ip=ip,
        serving=phase == "Running" and ready and not deleting and ip is not None,
        named_ports=MappingProxyType(named_ports),
    )


# -- joining them ---------------------------------------------------------------------


def _zone_of(nodes: Mapping[str, Node], node: str | None) -> str | None:
    known = nodes.get(node) if node is not None else None
    return known.zone if known is not None else None


def _from_slices(
    service: Service, slices: Sequence[EndpointSliceObject], nodes: Mapping[str, Node]
) -> dict[str, tuple[Endpoint, ...]]:
    wanted = {p.name for p in service.ports}
    merged: dict[str, dict[tuple[str, int], Endpoint]] = {}
    for piece in sorted(slices, key=lambda s: s.name):
        if piece.address_type == "FQDN":
            continue
        for port_name, number, _protocol in piece.ports:
            if port_name not in wanted:
                continue
            into = merged.setdefault(port_name, {})
            for e in piece.endpoints:
                # The same endpoint may sit in two slices while they are rebalanced.
                into.setdefault((e.address, number), Endpoint(
                    host=e.address,
                    port=number,
                    node=e.node,
                    ready=e.ready,
                    serving=e.serving,
                    terminating=e.terminating,
                    zone=e.zone or _zone_of(nodes, e.node),
                    pod=e.pod,
                    for_zones=e.for_zones,
                    for_nodes=e.for_nodes,
                    hostname=e.hostname,
                ))
    return {name: tuple(found.values()) for name, found in merged.items()}


def _from_pods(
    service: ServiceObject, pods: Sequence[PodObject], nodes: Mapping[str, Node]
) -> dict[str, tuple[Endpoint, ...]]:
    selector = service.selector.items()
    chosen = sorted(
        (
            p
            for p in pods
            if p.serving
            and p.namespace == service.service.namespace
            and all(p.labels.get(k) == v for k, v in selector)
        ),
        key=lambda p: p.name,
    )
    endpoints: dict[str, tuple[Endpoint, ...]] = {}
    for port in service.service.ports:
        found: list[Endpoint] = []
        for pod in chosen:
            assert pod.ip is not None
            if isinstance(port.target_port, int):
                number = port.target_port
            else:
                named = pod.named_ports.get(port.target_port)
                # As Kubernetes does: a pod without that named port is no endpoint of it.
                if named is None or named[1] != port.protocol:
                    continue
                number = named[0]
            found.append(Endpoint(
                host=pod.ip,
                port=number,
                node=pod.node,
                zone=_zone_of(nodes, pod.node),
                pod=pod.key,
            ))
        if found:
            endpoints[port.name] = tuple(found)
    return endpoints


def assemble_catalog(
    nodes: Iterable[Node],
    services: Iterable[ServiceObject],
    slices: Iterable[EndpointSliceObject] = (),
    pods: Iterable[PodObject] = (),
    revision: int = 0,
) -> Catalog:
    """Join parsed objects into a Catalog.  Slices naming no known service are ignored
    (a watch may see them before their service)."""
    node_map = {n.name: n for n in nodes}
    by_service: dict[str, list[EndpointSliceObject]] = {}
    for piece in slices:
        by_service.setdefault(f"{piece.namespace}/{piece.service_name}", []).append(piece)
    pod_list = list(pods)
    built: list[Service] = []
    for parsed in services:
        service = parsed.service
        own = by_service.get(service.key)
        if own:
            endpoints = _from_slices(service, own, node_map)
        elif parsed.selector:
            endpoints = _from_pods(parsed, pod_list, node_map)
        else:
            endpoints = {}
        built.append(Service(
            namespace=service.namespace,
            name=service.name,
            cluster_ip=service.cluster_ip,
            ports=service.ports,
            endpoints=MappingProxyType(endpoints),
            annotations=service.annotations,
            session_affinity=service.session_affinity,
            affinity_timeout=service.affinity_timeout,
            traffic_distribution=service.traffic_distribution,
            internal_traffic_policy=service.internal_traffic_policy,
        ))
    return Catalog(services=built, nodes=node_map.values(), revision=revision)


def catalog_from_objects(
    objects: Iterable[object],
    revision: int = 0,
    on_invalid: Callable[[ManifestError], None] | None = None,
) -> Catalog:
    """A Catalog from Kubernetes objects as dicts (kinds Node, Service, EndpointSlice,
    Pod; others ignored; ``kind: List`` flattened).

    Raises ManifestError for the first unusable object, or, with ``on_invalid``, reports
    each one there and leaves it out (what a watch wants: one bad object must not blank
    the whole catalog)."""
    nodes: dict[str, Node] = {}
    services: dict[str, ServiceObject] = {}
    slices: dict[str, EndpointSliceObject] = {}
    pods: dict[str, PodObject] = {}
    owners_of_ip: dict[str, str] = {}
    for position, raw in enumerate(_flatten(objects), start=1):
        try:
            obj, kind = _kind(raw, position)
            if kind == "Node":
                node = parse_node(obj)
                _unique(nodes, node.name, f"Node {node.name}")
                nodes[node.name] = node
            elif kind == "Service":
                parsed = parse_service(obj)
                service = parsed.service
                _unique(services, service.key, f"Service {service.key}")
                if service.cluster_ip is not None:
                    owner = owners_of_ip.get(service.cluster_ip)
                    if owner is not None:
                        raise ManifestError(f"Service {service.key}", "spec.clusterIP",
                                            f"{service.cluster_ip} is already used by {owner}")
                    owners_of_ip[service.cluster_ip] = f"Service {service.key}"
                services[service.key] = parsed
            elif kind == "EndpointSlice":
                piece = parse_endpoint_slice(obj)
                _unique(slices, piece.key, f"EndpointSlice {piece.key}")
                slices[piece.key] = piece
            elif kind == "Pod":
                pod = parse_pod(obj)
                _unique(pods, pod.key, f"Pod {pod.key}")
                pods[pod.key] = pod
        except ManifestError as error:
            if on_invalid is None:
                raise
            on_invalid(error)
    return assemble_catalog(
        nodes.values(), services.values(), slices.values(), pods.values(), revision
    )


def _unique(seen: Mapping[str, object], key: str, what: str) -> None:
    if key in seen:
        raise ManifestError(what, "", "defined twice")


_KINDS = ("Node", "Service", "EndpointSlice", "Pod")
"""The kinds the catalog reads; other kinds (a Deployment beside them) are left out."""
_NEAR_BUT_REAL = frozenset({"Endpoints"})
"""Kubernetes kinds spelt close to one of _KINDS, left out as other kinds are."""


def _kind(obj: object, position: int) -> tuple[Mapping[str, object], str]:
    r = _Reader(f"object #{position}")
    if not isinstance(obj, Mapping):
        r.fail("", f"must be a mapping, got {_type_name(obj)}")
    kind = r.required_string(obj.get("kind"), "kind")
    if kind not in _KINDS and kind not in _NEAR_BUT_REAL and not kind.endswith("List"):
        # Left out, unless it is a misspelt kind the catalog reads ("Servce", "endpointslice"):
        # that object would be missing with no word, and its service answer 404.
        import difflib

        close = difflib.get_close_matches(kind.lower(), [k.lower() for k in _KINDS], 1, 0.8)
        if close:
            meant = next(k for k in _KINDS if k.lower() == close[0])
            r.fail("kind", f"{kind!r} is not a kind (did you mean {meant}?)")
    return obj, kind


def _flatten(objects: Iterable[object]) -> Iterable[object]:
    """Objects, with the items of ``kind: List`` objects in their place."""
    for obj in objects:
        if isinstance(obj, Mapping) and obj.get("kind") == "List":
            items = obj.get("items")
            if not isinstance(items, list):
                raise ManifestError("List", "items", f"must be a list, got {_type_name(items)}")
            for item in items:
                if isinstance(item, Mapping) and item.get("kind") == "List":
                    raise ManifestError("List", "items", "a List inside a List")
                yield item
        else:
            yield obj


# -- files ----------------------------------------------------------------------------


def _documents(path: str, text: str) -> list[object]:
    stripped = text.lstrip()
    if path.endswith(".json") or stripped[:1] in ("{", "["):
        try:
            return [json.loads(text)]
        except json.JSONDecodeError as error:
            raise ManifestError(path, "", f"not valid JSON: {error}") from None
    import yaml  # here, not at the top: ~0.7 MiB of RssAnon that a catalog without YAML never needs

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return list(yaml.load_all(text, Loader=loader))
    except yaml.YAMLError as error:
        raise ManifestError(path, "", f"not valid YAML: {' '.join(str(error).split())}") from None


def load_manifest(path: str, revision: int = 0) -> Catalog:
    """The Catalog described by a YAML (one or more documents, or a ``kind: List``) or
    JSON (an object, an array of objects, or a List) file of Kubernetes objects.

    Raises ManifestError, with a message naming the file, the object and the field, for
    anything it cannot use — so that a process can refuse to start with it."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_MANIFEST_BYTES + 1)
    except OSError as error:
        raise ManifestError(path, "", f"cannot read: {error.strerror or error}") from None
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(path, "", f"larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ManifestError(path, "", f"not UTF-8 text: {error.reason} at byte {error.start}"
                            ) from None
    objects: list[object] = []
    for document in _documents(path, text):
        if document is None:
            continue  # an empty YAML document, e.g. after a trailing '---'
        if isinstance(document, list):
            objects.extend(document)
        else:
            objects.append(document)
    try:
        return catalog_from_objects(objects, revision)
    except ManifestError as error:
        raise ManifestError(f"{path}: {error.what}", error.field, error.problem) from None
