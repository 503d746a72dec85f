"""
The catalog as a plain structure (str, int, bool, None, list, dict with str keys) for
msgpack: what the router pushes to edges and what an edge keeps on disk.

Layout (version 1); records are positional lists to keep pushes small::

    {"format": "edgemesh.catalog", "version": 1, "revision": int,
     "nodes": [[name, edge, hub_host|None, hub_port, zone|None], ...],
     "services": [[namespace, name, cluster_ip|None,
                   [[port_name, port, target_port, protocol], ...],
                   {port_name: [[host, port, node|None, ready, serving, terminating,
                                 zone|None, pod|None], ...]},
                   {annotation: value}, session_affinity], ...]}

Topology (issue 14) rides in an optional top-level ``"topology"`` map, so that a node
of an older release (which ignores unknown top-level keys) still reads the rest, and a
snapshot written before it (on an edge's disk) reads with the defaults::

    "topology": {"nodes": {name: pool, ...},                      # nodes with a pool only
                 "services": {"namespace/name": [                 # non-default ones only
                     traffic_distribution|None, internal_traffic_policy, affinity_timeout,
                     {port_name: [[for_zones, for_nodes] | None, ...]}]}}  # one per endpoint

Ports' ``appProtocol`` values travel beside the records, in an optional top-level map
``"app_protocols": {"namespace/name": {port_name: appProtocol}}`` (only services that set
one): a node that predates it ignores the key (and carries such ports as HTTP), one that
knows it reads snapshots without it as before.  Deltas carry it the same way.

Endpoints' ``hostname`` (StatefulSet pods of headless services) rides the same way in
``"hostnames": {"namespace/name": {port_name: [hostname|None, ...]}}`` (one entry per
endpoint of the port, only services with one): an older node ignores it (and cannot reach
``pod-0.svc`` names), a newer one reads snapshots without it as having none.

Trimmed views (``_trim.py``) carry their aggregates in an optional top-level map
``"aggregates"`` (see ``AGGREGATES_KEY``); the endpoint records hold exact endpoints only.

``catalog_from_wire`` reads input from the network: it checks every field's type, range
and presence and raises SnapshotError, and nothing else, for anything off.  Keys it does
not know in the top-level map are ignored, so that a newer router may add some.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from types import MappingProxyType
from typing import NoReturn

from ._catalog import Catalog
from ._model import (
    DEFAULT_AFFINITY_TIMEOUT,
    MAX_AFFINITY_TIMEOUT,
    MAX_ANNOTATION_VALUE,
    MAX_HINTS,
    MAX_ZONE,
    PROTOCOLS,
    SESSION_AFFINITIES,
    TRAFFIC_POLICIES,
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

FORMAT = "edgemesh.catalog"
VERSION = 1

_MAX_REVISION = 2**63 - 1


class SnapshotError(ValueError):
    """A catalog snapshot that is not one: the message names the field."""


def catalog_to_wire(catalog: Catalog) -> dict[str, object]:
    """The plain structure for ``catalog``; ``catalog_from_wire`` reverses it."""
    wire: dict[str, object] = {
        "format": FORMAT,
        "version": VERSION,
        "revision": catalog.revision,
        "nodes": [
            [n.name, n.edge, n.hub_host, n.hub_port, n.zone]
            for n in catalog.nodes.values()
        ],
        "services": [_service_to_wire(s) for s in catalog.services.values()],
        **_app_protocols_to_wire(catalog.services.values()),
        **hostnames_to_wire(catalog.services.values()),
        **aggregates_to_wire(catalog.services.values()),
    }
    topology = topology_to_wire(catalog.nodes.values(), catalog.services.values())
    if topology is not None:
        wire["topology"] = topology
    return wire


# -- topology: the optional top-level map ------------------------------------------------


def _default_topology(s: Service) -> bool:
    return (
        s.traffic_distribution is None
        and s.internal_traffic_policy == "Cluster"
        and s.affinity_timeout == DEFAULT_AFFINITY_TIMEOUT
        and not any(e.for_zones or e.for_nodes for es in s.endpoints.values() for e in es
                    if not e.pods)
    )


def topology_to_wire(
    nodes: Iterable[Node], services: Iterable[Service]
) -> dict[str, object] | None:
    """The ``"topology"`` map for these nodes and services (only what is not default;
    None when all is: the key is left out and the push is as before)."""
    by_service: dict[str, object] = {}
    for s in services:
        if _default_topology(s):
            continue
        hints = {
            port_name: [
                [list(e.for_zones), list(e.for_nodes)] if e.for_zones or e.for_nodes else None
                for e in endpoints
            ]
            for port_name, endpoints in _exact(s)
            if any(e.for_zones or e.for_nodes for e in endpoints)
        }
        by_service[s.key] = [s.traffic_distribution, s.internal_traffic_policy,
                             s.affinity_timeout, hints]
    pools = {n.name: n.pool for n in nodes if n.pool is not None}
    return {"nodes": pools, "services": by_service} if pools or by_service else None


def _names(value: object, path: str, check: Callable[[str], bool], rule: str) -> tuple[str, ...]:
    items = _list(value, path)
    if len(items) > MAX_HINTS:
        _fail(path, f"more than {MAX_HINTS} entries")
    names = tuple(_checked(v, f"{path}[{i}]", check, rule) for i, v in enumerate(items))
    if len(set(names)) != len(names):
        _fail(path, "duplicate names")
    return names


def _hinted(endpoint: Endpoint, value: object, path: str) -> Endpoint:
    if value is None:
        return endpoint
    zones, nodes = _record(value, path, 2)
    return dataclasses.replace(
        endpoint,
        for_zones=_names(zones, f"{path}[0]", is_zone, "zone"),
        for_nodes=_names(nodes, f"{path}[1]", is_dns1123_subdomain, "DNS-1123 subdomain"),
    )


def _service_topology(service: Service, value: object, path: str) -> Service:
    distribution, policy, timeout, hints = _record(value, path, 4)
    if distribution is not None:
        distribution = _str(distribution, f"{path}[0]")
        if not is_traffic_distribution(distribution):
            _fail(f"{path}[0]", "must be null or a short identifier")
    policy = _str(policy, f"{path}[1]")
    if policy not in TRAFFIC_POLICIES:
        _fail(f"{path}[1]", "must be Cluster or Local")
    endpoints = dict(service.endpoints)
    for port_name, items in _map(hints, f"{path}[3]").items():
        where = f"{path}[3][{port_name!r}]"
        own = endpoints.get(port_name)
        listed = _list(items, where)
        if own is None or len(listed) != len(own):
            _fail(where, "must have one entry per endpoint of the port")
        endpoints[port_name] = tuple(
            _hinted(e, h, f"{where}[{i}]") for i, (e, h) in enumerate(zip(own, listed))
        )
    return dataclasses.replace(
        service,
        traffic_distribution=distribution,
        internal_traffic_policy=policy,
        affinity_timeout=_int(timeout, f"{path}[2]", 1, MAX_AFFINITY_TIMEOUT),
        endpoints=MappingProxyType(endpoints),
    )


def with_topology(
    top: Mapping[str, object], nodes: Sequence[Node], services: Sequence[Service]
) -> tuple[list[Node], list[Service]]:
    """``nodes`` and ``services`` with the ``"topology"`` map of ``top`` applied (absent:
    the defaults, as a snapshot written before it)."""
    raw = top.get("topology")
    if raw is None:
        return list(nodes), list(services)
    topology = _map(raw, "topology")
    pools = _map(topology.get("nodes", {}), "topology.nodes")
    by_key = _map(topology.get("services", {}), "topology.services")
    known_nodes = {n.name for n in nodes}
    node_pools: dict[str, str] = {}
    for name, pool in pools.items():
        if name not in known_nodes:
            _fail(f"topology.nodes[{name!r}]", "no node of this name")
        if not isinstance(pool, str) or not pool or not is_label_value(pool):
            _fail(f"topology.nodes[{name!r}]", "must be a label value")
        node_pools[name] = pool
    known_services = {s.key for s in services}
    for key in by_key:
        if key not in known_services:
            _fail(f"topology.services[{key!r}]", "no service of this name")
    return (
        [dataclasses.replace(n, pool=node_pools[n.name]) if n.name in node_pools else n
         for n in nodes],
        [
            _service_topology(s, by_key[s.key], f"topology.services[{s.key!r}]")
            if s.key in by_key else s
            for s in services
        ],
    )


def _exact(s: Service) -> list[tuple[str, list[Endpoint]]]:
    """The endpoint lists without aggregates (those ride in their own map)."""
    return [(name, [e for e in endpoints if not e.pods]) for name, endpoints in s.endpoints.items()]


# -- trimmed endpoints: the optional top-level "aggregates" map ------------------------------

AGGREGATES_KEY = "aggregates"
"""``{"namespace/name": {port_name: [[node, port, pods, ready, serving, terminating,
zone|None, for_zones, for_nodes], ...]}}``: the aggregates of a trimmed view
(``_trim.py``), appended to the port's exact endpoints.  Only edges that announced
``trimmed`` in their hello receive it; one that predates it would ignore the key."""
MAX_AGGREGATE_PODS = 1 << 20


def aggregates_to_wire(services: Iterable[Service]) -> dict[str, object]:
    table = {
        s.key: {
            name: [[e.node, e.port, e.pods, e.ready, e.serving, e.terminating, e.zone,
                    list(e.for_zones), list(e.for_nodes)] for e in endpoints if e.pods]
            for name, endpoints in s.endpoints.items() if any(e.pods for e in endpoints)
        }
        for s in services if any(e.pods for es in s.endpoints.values() for e in es)
    }
    return {AGGREGATES_KEY: table} if table else {}


def _aggregate(value: object, path: str) -> Endpoint:
    from ._trim import aggregate_of

    node, port, pods, ready, serving, terminating, zone, zones, nodes = _record(value, path, 9)
    endpoint = Endpoint(
        "", _int(port, f"{path}[1]", 1, 65535),
        _checked(node, f"{path}[0]", is_dns1123_subdomain, "DNS-1123 subdomain"),
        _bool(ready, f"{path}[3]"), _bool(serving, f"{path}[4]"),
        _bool(terminating, f"{path}[5]"), _zone(zone, f"{path}[6]"), None,
        _names(zones, f"{path}[7]", is_zone, "zone"),
        _names(nodes, f"{path}[8]", is_dns1123_subdomain, "DNS-1123 subdomain"),
        pods=_int(pods, f"{path}[2]", 1, MAX_AGGREGATE_PODS))
    # The tag is derived, not sent: both ends compute it from the same fields.
    return replace(endpoint, host=aggregate_of(endpoint))


def with_aggregates(top: Mapping[str, object], services: Sequence[Service]) -> list[Service]:
    """``services`` with the aggregates of ``top``'s ``"aggregates"`` map appended."""
    raw = top.get(AGGREGATES_KEY)
    if raw is None:
        return list(services)
    table = _map(raw, AGGREGATES_KEY)
    by_key = {s.key: s for s in services}
    for key in table:
        if key not in by_key:
            _fail(f"{AGGREGATES_KEY}[{key!r}]", "no service of this name")
    result = []
    for service in services:
        ports = table.get(service.key)
        if ports is not None:
            path = f"{AGGREGATES_KEY}[{service.key!r}]"
            names = {p.name for p in service.ports}
            endpoints = dict(service.endpoints)
            for name, items in _map(ports, path).items():
                where = f"{path}[{name!r}]"
                if name not in names:
                    _fail(where, "no service port has this name")
                added = [_aggregate(v, f"{where}[{i}]")
                         for i, v in enumerate(_list(items, where))]
                if len({e.host for e in added}) != len(added):
                    _fail(where, "duplicate aggregates")
                endpoints[name] = (*endpoints.get(name, ()), *added)
            service = replace(service, endpoints=MappingProxyType(endpoints))
        result.append(service)
    return result


APP_PROTOCOLS_KEY = "app_protocols"
_MAX_APP_PROTOCOL = 316
"""A qualified name: a 253-character prefix, '/', a 63-character name."""


def _app_protocols_to_wire(services: Iterable[Service]) -> dict[str, object]:
    """The optional side table of ports' appProtocol values (empty: no key at all)."""
    table = {
        s.key: {p.name: p.app_protocol for p in s.ports if p.app_protocol is not None}
        for s in services
        if any(p.app_protocol is not None for p in s.ports)
    }
    return {APP_PROTOCOLS_KEY: table} if table else {}


def _with_app_protocols(services: Iterable[Service], top: Mapping[str, object]) -> list[Service]:
    """``services`` with the appProtocol values of the side table in ``top``, if any."""
    services = list(services)
    raw = top.get(APP_PROTOCOLS_KEY)
    if raw is None:
        return services
    table = _map(raw, APP_PROTOCOLS_KEY)
    keys = {s.key for s in services}
    for key, ports in table.items():
        path = f"{APP_PROTOCOLS_KEY}[{key!r}]"
        if key not in keys:
            _fail(path, "no such service")
        for name, value in _map(ports, path).items():
            text = _str(value, f"{path}[{name!r}]")
            if not text or len(text) > _MAX_APP_PROTOCOL or not text.isprintable():
                _fail(f"{path}[{name!r}]", "not a valid appProtocol")
    result = []
    for service in services:
        ports = table.get(service.key)
        if isinstance(ports, dict):
            names = {p.name for p in service.ports}
            for name in ports:
                if name not in names:
                    _fail(f"{APP_PROTOCOLS_KEY}[{service.key!r}][{name!r}]",
                          "no service port has this name")
            service = replace(service, ports=tuple(
                replace(p, app_protocol=ports[p.name]) if p.name in ports else p
                for p in service.ports
            ))
        result.append(service)
    return result


HOSTNAMES_KEY = "hostnames"


def hostnames_to_wire(services: Iterable[Service]) -> dict[str, object]:
    """The optional side table of endpoints' hostnames (empty: no key at all)."""
    table = {
        s.key: {
            # Exact endpoints only, as the endpoint records (aggregates have no hostname).
            port_name: [e.hostname for e in endpoints if not e.pods]
            for port_name, endpoints in s.endpoints.items()
            if any(e.hostname is not None for e in endpoints)
        }
        for s in services
        if any(e.hostname is not None for es in s.endpoints.values() for e in es)
    }
    return {HOSTNAMES_KEY: table} if table else {}


def with_hostnames(services: Iterable[Service], top: Mapping[str, object]) -> list[Service]:
    """``services`` with the endpoints' hostnames of the side table in ``top``, if any."""
    services = list(services)
    raw = top.get(HOSTNAMES_KEY)
    if raw is None:
        return services
    table = _map(raw, HOSTNAMES_KEY)
    keys = {s.key for s in services}
    for key in table:
        if key not in keys:
            _fail(f"{HOSTNAMES_KEY}[{key!r}]", "no such service")
    result = []
    for service in services:
        if service.key not in table:
            result.append(service)
            continue
        path = f"{HOSTNAMES_KEY}[{service.key!r}]"
        endpoints = dict(service.endpoints)
        for port_name, items in _map(table[service.key], path).items():
            where = f"{path}[{port_name!r}]"
            own = endpoints.get(port_name)
            listed = _list(items, where)
            if own is None or len(listed) != len(own):
                _fail(where, "must have one entry per endpoint of the port")
            endpoints[port_name] = tuple(
                e if h is None else dataclasses.replace(
                    e, hostname=_checked(h, f"{where}[{i}]", is_dns1123_label, "DNS-1123 label"))
                for i, (e, h) in enumerate(zip(own, listed))
            )
        result.append(dataclasses.replace(service, endpoints=MappingProxyType(endpoints)))
    return result


def _service_to_wire(s: Service) -> list[object]:
    return [
        s.namespace,
        s.name,
        s.cluster_ip,
        [[p.name, p.port, p.target_port, p.protocol] for p in s.ports],
        {
            port_name: [
                [e.host, e.port, e.node, e.ready, e.serving, e.terminating, e.zone, e.pod]
                for e in endpoints
            ]
            for port_name, endpoints in _exact(s)
        },
        dict(s.annotations),
        s.session_affinity,
    ]


def _fail(path: str, problem: str) -> NoReturn:
    raise SnapshotError(f"catalog snapshot: {path}: {problem}")


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _map(value: object, path: str) -> dict[str, object]:
    if not isinstance(value, dict):
        _fail(path, f"must be a map, got {_type_name(value)}")
    for key in value:
        if not isinstance(key, str):
            _fail(path, f"keys must be strings, got {_type_name(key)}")
    return value


def _list(value: object, path: str) -> list[object]:
    if not isinstance(value, list):
        _fail(path, f"must be an array, got {_type_name(value)}")
    return value


def _record(value: object, path: str, length: int) -> list[object]:
    items = _list(value, path)
    if len(items) != length:
        _fail(path, f"must have {length} elements, got {len(items)}")
    return items


def _str(value: object, path: str) -> str:
    if not isinstance(value, str):
        _fail(path, f"must be a string, got {_type_name(value)}")
    return value


def _zone(value: object, path: str) -> str | None:
    if value is None:
        return None
    text = _str(value, path)
    if not is_zone(text):
        _fail(path, f"must be null or 1-{MAX_ZONE} printable characters")
    return text


def _bool(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        _fail(path, f"must be a boolean, got {_type_name(value)}")
    return value


def _int(value: object, path: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        _fail(path, f"must be an integer {low}-{high}")
    return value


def _checked(value: object, path: str, check: Callable[[str], bool], rule: str) -> str:
    text = _str(value, path)
    if not check(text):
        _fail(path, f"not a valid name ({rule})")
    return text


def _host(value: object, path: str) -> str:
    """An IP address or a DNS name."""
    text = _str(value, path)
    if is_dns1123_subdomain(text) and not all(c.isdigit() or c == "." for c in text):
        return text
    try:
        ipaddress.ip_address(text)
    except ValueError:
        _fail(path, "not an IP address or host name")
    return text


def _node(value: object, path: str) -> Node:
    name, edge, hub_host, hub_port, zone = _record(value, path, 5)
    return Node(
        name=_checked(name, f"{path}[0]", is_dns1123_subdomain, "DNS-1123 subdomain"),
        edge=_bool(edge, f"{path}[1]"),
        hub_host=None if hub_host is None else _host(hub_host, f"{path}[2]"),
        hub_port=_int(hub_port, f"{path}[3]", 1, 65535),
        zone=_zone(zone, f"{path}[4]"),
    )


def _port(value: object, path: str) -> ServicePort:
    name, port, target, protocol = _record(value, path, 4)
    name = _str(name, f"{path}[0]")
    if name and not is_dns1123_label(name):
        _fail(f"{path}[0]", "not a valid port name (DNS-1123 label)")
    target_port: int | str
    if isinstance(target, str):
        if not is_port_name(target):
            _fail(f"{path}[2]", "not a valid port name (IANA service name)")
        target_port = target
    else:
        target_port = _int(target, f"{path}[2]", 1, 65535)
    protocol = _str(protocol, f"{path}[3]")
    if protocol not in PROTOCOLS:
        _fail(f"{path}[3]", "must be TCP, UDP or SCTP")
    return ServicePort(
        name=name, port=_int(port, f"{path}[1]", 1, 65535), target_port=target_port,
        protocol=protocol,
    )


def _pod_ref(value: object, path: str) -> str | None:
    if value is None:
        return None
    text = _str(value, path)
    namespace, slash, name = text.partition("/")
    if not slash or not is_dns1123_label(namespace) or not is_dns1123_subdomain(name):
        _fail(path, "must be null or namespace/name")
    return text


def _endpoint(value: object, path: str) -> Endpoint:
    host, port, node, ready, serving, terminating, zone, pod = _record(value, path, 8)
    if node is not None:
        node = _checked(node, f"{path}[2]", is_dns1123_subdomain, "DNS-1123 subdomain")
    return Endpoint(
        host=_host(host, f"{path}[0]"),
        port=_int(port, f"{path}[1]", 1, 65535),
        node=node,
        ready=_bool(ready, f"{path}[3]"),
        serving=_bool(serving, f"{path}[4]"),
        terminating=_bool(terminating, f"{path}[5]"),
        zone=_zone(zone, f"{path}[6]"),
        pod=_pod_ref(pod, f"{path}[7]"),
    )


def _annotations(value: object, path: str) -> Mapping[str, str]:
    result: dict[str, str] = {}
    for key, item in _map(value, path).items():
        if not is_qualified_name(key):
            _fail(path, "annotation names must be Kubernetes qualified names")
        text = _str(item, f"{path}[{key!r}]")
        if len(text) > MAX_ANNOTATION_VALUE:
            _fail(f"{path}[{key!r}]", f"longer than {MAX_ANNOTATION_VALUE} characters")
        result[key] = text
    return MappingProxyType(result)


def _service(value: object, path: str) -> Service:
    namespace, name, cluster_ip, ports, endpoints, annotations, affinity = _record(
        value, path, 7
    )
    namespace = _checked(namespace, f"{path}[0]", is_dns1123_label, "DNS-1123 label")
    name = _checked(name, f"{path}[1]", is_dns1035_label, "DNS-1035 label")
    if cluster_ip is not None:
        cluster_ip = _str(cluster_ip, f"{path}[2]")
        try:
            ipaddress.ip_address(cluster_ip)
        except ValueError:
            _fail(f"{path}[2]", "not an IP address")
    parsed_ports = tuple(
        _port(p, f"{path}[3][{i}]") for i, p in enumerate(_list(ports, f"{path}[3]"))
    )
    names = [p.name for p in parsed_ports]
    if len(set(names)) != len(names):
        _fail(f"{path}[3]", "duplicate port names")
    by_port: dict[str, tuple[Endpoint, ...]] = {}
    for port_name, items in _map(endpoints, f"{path}[4]").items():
        where = f"{path}[4][{port_name!r}]"
        if port_name not in names:
            _fail(where, "no service port has this name")
        by_port[port_name] = tuple(
            _endpoint(e, f"{where}[{i}]") for i, e in enumerate(_list(items, where))
        )
    affinity = _str(affinity, f"{path}[6]")
    if affinity not in SESSION_AFFINITIES:
        _fail(f"{path}[6]", "must be None or ClientIP")
    return Service(
        namespace=namespace,
        name=name,
        cluster_ip=cluster_ip,
        ports=parsed_ports,
        endpoints=MappingProxyType(by_port),
        annotations=_annotations(annotations, f"{path}[5]"),
        session_affinity=affinity,
    )


def catalog_from_wire(obj: object) -> Catalog:
    """The Catalog in a plain structure made by ``catalog_to_wire`` (and decoded from
    msgpack by someone else).  Raises SnapshotError for anything that does not fit."""
    top = _map(obj, "top level")
    # Format and version first: another version may lay out everything else differently.
    for key in ("format", "version"):
        if key not in top:
            _fail(key, "required")
    if top["format"] != FORMAT:
        _fail("format", f"must be {FORMAT!r}")
    version = top["version"]
    if isinstance(version, bool) or not isinstance(version, int) or version != VERSION:
        _fail("version", f"unsupported version (this node reads version {VERSION})")
    for key in ("revision", "nodes", "services"):
        if key not in top:
            _fail(key, "required")
    revision = _int(top["revision"], "revision", 0, _MAX_REVISION)
    nodes = [_node(n, f"nodes[{i}]") for i, n in enumerate(_list(top["nodes"], "nodes"))]
    services = with_hostnames(_with_app_protocols(
        (_service(s, f"services[{i}]") for i, s in enumerate(_list(top["services"], "services"))),
        top,
    ), top)
    seen_nodes = {n.name for n in nodes}
    if len(seen_nodes) != len(nodes):
        _fail("nodes", "duplicate node names")
    seen_services = {s.key for s in services}
    if len(seen_services) != len(services):
        _fail("services", "duplicate services")
    nodes, services = with_topology(top, nodes, services)
    services = with_aggregates(top, services)
    try:
        return Catalog(services=services, nodes=nodes, revision=revision)
    except ValueError as error:  # belt and braces: everything it checks was checked above
        raise SnapshotError(f"catalog snapshot: {error}") from None
