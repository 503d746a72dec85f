"""Snapshots: catalog_to_wire / catalog_from_wire round trips and hostile input."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgemesh.catalog import (
    Catalog,
    Endpoint,
    Node,
    Service,
    ServicePort,
    SnapshotError,
    catalog_from_wire,
    catalog_to_wire,
    load_manifest,
)

DEMO = Path(__file__).resolve().parent.parent / "examples" / "demo-catalog.yaml"

# -- strategies for valid catalogs ----------------------------------------------------

# Built from small alphabets rather than regexes: generation stays fast.
_label = st.builds(
    lambda first, middle, last: first + middle + last,
    st.sampled_from("abcz"),
    st.text("ab0-", max_size=6),
    st.sampled_from(["", "a", "9"]),
).filter(lambda s: not s.endswith("-"))
_subdomain = st.lists(_label, min_size=1, max_size=3).map(".".join)
_port = st.integers(1, 65535)
_ipv4 = st.ip_addresses(v=4).map(str)
_ip = st.ip_addresses().map(str)
_host = _ip | _subdomain
_zone = st.none() | st.text(st.characters(codec="utf-8", categories=["L", "N"]), min_size=1,
                            max_size=20)
_port_name = st.sampled_from(["http", "https", "grpc", "metrics", "web-1", "a"])

nodes = st.builds(
    Node,
    name=_subdomain,
    edge=st.booleans(),
    hub_host=st.none() | _host,
    hub_port=_port,
    zone=_zone,
    pool=st.none() | st.sampled_from(["site-a", "pool.b_1", "x"]),
)

_hint_zones = st.lists(st.sampled_from(["z1", "zone two", "ü"]), max_size=2, unique=True).map(tuple)
_hint_nodes = st.lists(_subdomain, max_size=2, unique=True).map(tuple)

endpoints = st.builds(
    Endpoint,
    host=_host,
    port=_port,
    node=st.none() | _subdomain,
    ready=st.booleans(),
    serving=st.booleans(),
    terminating=st.booleans(),
    zone=_zone,
    pod=st.none() | st.tuples(_label, _subdomain).map("/".join),
    for_zones=_hint_zones,
    for_nodes=_hint_nodes,
    hostname=st.none() | _label,  # the optional "hostnames" side table
)


@st.composite
def services(draw: st.DrawFn) -> Service:
    names = draw(st.lists(_port_name, max_size=3, unique=True))
    if len(names) <= 1:
        names = draw(st.sampled_from([[], [""], names]))
    ports = tuple(
        ServicePort(
            name=n,
            port=draw(_port),
            target_port=draw(_port | _port_name),
            protocol=draw(st.sampled_from(["TCP", "UDP", "SCTP"])),
        )
        for n in names
    )
    with_endpoints = draw(st.lists(st.sampled_from(names), unique=True)) if names else []
    return Service(
        namespace=draw(_label),
        name=draw(_label),
        cluster_ip=draw(st.none() | _ip),
        ports=ports,
        endpoints={n: tuple(draw(st.lists(endpoints, max_size=3))) for n in with_endpoints},
        annotations=draw(st.dictionaries(
            st.sampled_from(["a", "edgemesh.io/lb", "example.com/x.y_z"]), st.text(max_size=20),
            max_size=3,
        )),
        session_affinity=draw(st.sampled_from(["None", "ClientIP"])),
        affinity_timeout=draw(st.sampled_from([10800, 1, 86400, 30])),
        traffic_distribution=draw(st.sampled_from(
            [None, "PreferSameNode", "PreferSameZone", "PreferClose", "PreferSomethingNew"])),
        internal_traffic_policy=draw(st.sampled_from(["Cluster", "Local"])),
    )


catalogs = st.builds(
    Catalog,
    services=st.lists(services(), max_size=3, unique_by=lambda s: s.key),
    nodes=st.lists(nodes, max_size=3, unique_by=lambda n: n.name),
    revision=st.integers(0, 2**63 - 1),
)


def _plain(value: object) -> bool:
    """Only the types msgpack carries as such."""
    if value is None or isinstance(value, bool | int | str):
        return True
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


# -- round trips ----------------------------------------------------------------------


def test_demo_round_trip_through_msgpack() -> None:
    catalog = load_manifest(str(DEMO)).with_revision(12)
    wire = catalog_to_wire(catalog)
    assert _plain(wire)
    assert wire["version"] == 1
    decoded = msgpack.unpackb(msgpack.packb(wire), raw=False, strict_map_key=True)
    assert catalog_from_wire(decoded) == catalog
    assert catalog_from_wire(decoded).resolve(b"hello-multi")[0].name == "hello-multi"


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(catalogs)
def test_round_trip(catalog: Catalog) -> None:
    wire = catalog_to_wire(catalog)
    assert _plain(wire)
    back = catalog_from_wire(msgpack.unpackb(msgpack.packb(wire), raw=False))
    assert back == catalog
    assert catalog_to_wire(back) == wire


# -- hostile input --------------------------------------------------------------------

_garbage = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=5),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(_garbage)
def test_garbage_raises_only_snapshot_error(value: object) -> None:
    with pytest.raises(SnapshotError):
        catalog_from_wire(value)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, list):
        for i, item in enumerate(value):
            found += _paths(item, (*prefix, i))
    elif isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    return found


def _set(wire: dict[str, Any], path: tuple[Any, ...], value: object) -> dict[str, Any]:
    target: Any = wire
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return wire


def _rich_wire() -> dict[str, Any]:
    """The demo plus every optional field set, as the base for mutations."""
    rich = Service(
        namespace="prod",
        name="rich",
        cluster_ip="fd00::10",
        ports=(ServicePort("http", 80, "web"), ServicePort("dns", 53, 53, "UDP")),
        endpoints={"http": (
            Endpoint("fd00::1", 8080, "edge-1", ready=False, serving=True, terminating=True,
                     zone="z1", pod="prod/rich-0", for_zones=("z1", "z2"), for_nodes=("edge-1",)),
            Endpoint("pod.example.org", 8080, None),
        )},
        annotations={"edgemesh.io/lb": "random"},
        session_affinity="ClientIP",
        affinity_timeout=60,
        traffic_distribution="PreferSameZone",
        internal_traffic_policy="Local",
    )
    demo = load_manifest(str(DEMO))
    zoned = Node("edge-9", True, "edge-9.example.org", 7701, zone="z1", pool="site-9")
    return catalog_to_wire(Catalog(
        [*demo.services.values(), rich], [*demo.nodes.values(), zoned], revision=5
    ))


_RICH = _rich_wire()
_RICH_PATHS = _paths(_RICH)[1:]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(_RICH_PATHS), _garbage)
def test_mutated_snapshots_raise_only_snapshot_error(
    path: tuple[Any, ...], replacement: object
) -> None:
    mutated = _set(copy.deepcopy(_RICH), path, replacement)
    try:
        result = catalog_from_wire(mutated)
    except SnapshotError as error:
        assert str(error).startswith("catalog snapshot: ")
    else:
        assert isinstance(result, Catalog)


def _demo_wire() -> dict[str, Any]:
    return catalog_to_wire(load_manifest(str(DEMO)))


@pytest.mark.parametrize(
    ("path", "value", "problem"),
    [
        (("version",), 2, "version: unsupported version"),
        (("version",), True, "version: unsupported version"),
        (("version",), 1.0, "version: unsupported version"),
        (("format",), "other", "format: must be"),
        (("revision",), -1, "revision: must be an integer 0-"),
        (("revision",), 2**64, "revision: must be an integer 0-"),
        (("revision",), "1", "revision: must be an integer"),
        (("nodes",), {}, "nodes: must be an array"),
        (("nodes", 0), ["edge-1"], "nodes[0]: must have 5 elements"),
        (("nodes", 0, 0), "Edge 1", "nodes[0][0]: not a valid name"),
        (("nodes", 0, 1), 1, "nodes[0][1]: must be a boolean"),
        (("nodes", 0, 2), "not a host!", "nodes[0][2]: not an IP address or host name"),
        (("nodes", 0, 3), 0, "nodes[0][3]: must be an integer 1-65535"),
        (("nodes", 0, 4), "", "nodes[0][4]: must be null or"),
        (("nodes", 0, 4), "a\nb", "nodes[0][4]: must be null or"),
        (("services", 0, 0), "", "services[0][0]: not a valid name"),
        (("services", 0, 1), "1web", "services[0][1]: not a valid name"),
        (("services", 0, 2), "10.0.0.256", "services[0][2]: not an IP address"),
        (("services", 0, 3, 0, 1), 65536, "services[0][3][0][1]: must be an integer 1-65535"),
        (("services", 0, 3, 0, 1), True, "services[0][3][0][1]: must be an integer 1-65535"),
        (("services", 0, 3, 0, 2), "8080", "services[0][3][0][2]: not a valid port name"),
        (("services", 0, 3, 0, 3), "HTTP", "services[0][3][0][3]: must be TCP, UDP or SCTP"),
        (("services", 0, 3, 0, 3), ["TCP"], "services[0][3][0][3]: must be a string"),
        (("services", 0, 4), {"nope": []}, "no service port has this name"),
        (("services", 0, 4), {1: []}, "services[0][4]: keys must be strings"),
        (("services", 0, 4, "http", 0, 1), 0, "must be an integer 1-65535"),
        (("services", 0, 4, "http", 0, 3), None, "must be a boolean"),
        (("services", 0, 4, "http", 0, 7), "no-slash", "must be null or namespace/name"),
        (("services", 0, 5), {"a b": "x"}, "qualified names"),
        (("services", 0, 5), {"a": 1}, "must be a string"),
        (("services", 0, 5), {"a": "x" * (256 * 1024 + 1)}, "longer than"),
        (("services", 0, 6), "Sticky", "services[0][6]: must be None or ClientIP"),
    ],
)
def test_invalid_fields_are_named(path: tuple[Any, ...], value: object, problem: str) -> None:
    wire = _set(_demo_wire(), path, value)
    with pytest.raises(SnapshotError) as caught:
        catalog_from_wire(wire)
    assert problem in str(caught.value)


def test_missing_keys_and_duplicates() -> None:
    for key in ("format", "version", "revision", "nodes", "services"):
        wire = _demo_wire()
        del wire[key]
        with pytest.raises(SnapshotError, match=f"{key}: required"):
            catalog_from_wire(wire)
    wire = _demo_wire()
    wire["services"].append(wire["services"][0])
    with pytest.raises(SnapshotError, match="duplicate services"):
        catalog_from_wire(wire)
    wire = _demo_wire()
    wire["nodes"].append(wire["nodes"][0])
    with pytest.raises(SnapshotError, match="duplicate node names"):
        catalog_from_wire(wire)
    wire = _demo_wire()
    wire["services"][0][3].append(wire["services"][0][3][0])
    with pytest.raises(SnapshotError, match="duplicate port names"):
        catalog_from_wire(wire)


def test_unknown_top_level_keys_are_ignored() -> None:
    wire = _demo_wire()
    wire["added-by-a-newer-router"] = [1, 2, 3]
    assert catalog_from_wire(wire) == load_manifest(str(DEMO))


# -- topology: an optional top-level map, records as before --------------------------------


def _topology_catalog() -> Catalog:
    return catalog_from_wire(copy.deepcopy(_RICH))


def test_topology_rides_beside_the_records_an_older_node_reads() -> None:
    """Records keep their version-1 lengths (an older node reads them and ignores the
    unknown ``topology`` key); the new fields are in that key only."""
    catalog = _topology_catalog()
    rich = catalog.service("prod/rich")
    assert rich is not None and rich.internal_traffic_policy == "Local"
    assert rich.traffic_distribution == "PreferSameZone" and rich.affinity_timeout == 60
    assert rich.endpoints["http"][0].for_zones == ("z1", "z2")
    assert rich.endpoints["http"][0].for_nodes == ("edge-1",)
    assert catalog.nodes["edge-9"].pool == "site-9"
    wire = catalog_to_wire(catalog)
    assert wire["version"] == 1
    assert {len(n) for n in wire["nodes"]} == {5}
    assert {len(s) for s in wire["services"]} == {7}
    assert {len(e) for s in wire["services"] for es in s[4].values() for e in es} == {8}
    assert wire["topology"] == {
        "nodes": {"edge-9": "site-9"},
        "services": {"prod/rich": ["PreferSameZone", "Local", 60,
                                   {"http": [[["z1", "z2"], ["edge-1"]], None]}]},
    }
    # What an older node sees: the catalog without the topology, all else equal.
    older = {k: v for k, v in wire.items() if k != "topology"}
    plain = catalog_from_wire(older)
    assert plain.service("prod/rich") == dataclasses.replace(
        rich, affinity_timeout=10800, traffic_distribution=None,
        internal_traffic_policy="Cluster",
        endpoints={"http": tuple(dataclasses.replace(e, for_zones=(), for_nodes=())
                                 for e in rich.endpoints["http"])})
    assert plain.nodes["edge-9"].pool is None


def test_a_catalog_with_default_topology_is_pushed_as_before() -> None:
    assert "topology" not in catalog_to_wire(load_manifest(str(DEMO)))


@pytest.mark.parametrize(
    ("path", "value", "problem"),
    [
        (("topology",), [], "topology: must be a map"),
        (("topology", "nodes"), {"nope": "p"}, "no node of this name"),
        (("topology", "nodes", "edge-9"), "", "must be a label value"),
        (("topology", "nodes", "edge-9"), "a b", "must be a label value"),
        (("topology", "services"), {"prod/nope": [None, "Cluster", 1, {}]},
         "no service of this name"),
        (("topology", "services", "prod/rich"), [None], "must have 4 elements"),
        (("topology", "services", "prod/rich", 0), "Prefer Space", "short identifier"),
        (("topology", "services", "prod/rich", 1), "Nearby", "must be Cluster or Local"),
        (("topology", "services", "prod/rich", 2), 0, "must be an integer 1-86400"),
        (("topology", "services", "prod/rich", 2), 86401, "must be an integer 1-86400"),
        (("topology", "services", "prod/rich", 3, "http"), [None],
         "one entry per endpoint"),
        (("topology", "services", "prod/rich", 3), {"dns": []}, "one entry per endpoint"),
        (("topology", "services", "prod/rich", 3, "http", 0, 0), ["z1", "z1"],
         "duplicate names"),
        (("topology", "services", "prod/rich", 3, "http", 0, 1), ["Not A Node"],
         "not a valid name"),
        (("topology", "services", "prod/rich", 3, "http", 0, 0), "z1", "must be an array"),
    ],
)
def test_invalid_topology_is_named(path: tuple[Any, ...], value: object, problem: str) -> None:
    wire = _set(copy.deepcopy(_RICH), path, value)
    with pytest.raises(SnapshotError) as caught:
        catalog_from_wire(wire)
    assert problem in str(caught.value)
