"""Catalog deltas: diff / apply laws (hypothesis), the wire form and hostile input."""

from __future__ import annotations

import copy
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgemesh.catalog import (
    Catalog,
    CatalogDelta,
    DeltaError,
    Endpoint,
    Node,
    Service,
    ServicePort,
    SnapshotError,
    apply_delta,
    delta_from_wire,
    delta_to_wire,
    diff_catalogs,
)

# -- strategies: small alphabets so that two drawn catalogs share keys often --------------

_names = st.sampled_from(["a", "b", "c", "web", "api"])
_namespaces = st.sampled_from(["default", "prod"])
_nodes = st.builds(
    Node,
    name=st.sampled_from(["edge-1", "edge-2", "cloud-1", "n.example"]),
    edge=st.booleans(),
    hub_host=st.none() | st.sampled_from(["10.0.0.1", "fd00::1", "hub.example"]),
    hub_port=st.integers(1, 65535),
    zone=st.none() | st.sampled_from(["z1", "zone two"]),
    pool=st.none() | st.sampled_from(["site-a", "site-b"]),
)
_endpoints = st.builds(
    Endpoint,
    host=st.sampled_from(["10.1.0.1", "10.1.0.2", "fd00::2"]),
    port=st.integers(1, 65535),
    node=st.none() | st.sampled_from(["edge-1", "edge-2"]),
    ready=st.booleans(),
    serving=st.booleans(),
    terminating=st.booleans(),
    zone=st.none() | st.just("z1"),
    pod=st.none() | st.just("default/p-0"),
    for_zones=st.sampled_from([(), ("z1",), ("z1", "zone two")]),
    for_nodes=st.sampled_from([(), ("edge-1",)]),
    hostname=st.sampled_from([None, "p-0", "p-1"]),
)


@st.composite
def _services(draw: st.DrawFn) -> Service:
    port_names = draw(st.sampled_from([[""], ["http"], ["http", "grpc"]]))
    ports = tuple(ServicePort(n, 80 + i, draw(st.integers(1, 65535) | st.just("web")))
                  for i, n in enumerate(port_names))
    return Service(
        namespace=draw(_namespaces),
        name=draw(_names),
        cluster_ip=draw(st.none() | st.sampled_from(["10.96.0.1", "10.96.0.2", "fd00::a"])),
        ports=ports,
        endpoints={n: tuple(draw(st.lists(_endpoints, max_size=3))) for n in port_names},
        annotations=draw(st.dictionaries(st.just("edgemesh.io/lb"), st.sampled_from(["x", "y"]))),
        session_affinity=draw(st.sampled_from(["None", "ClientIP"])),
        affinity_timeout=draw(st.sampled_from([10800, 60])),
        traffic_distribution=draw(st.sampled_from([None, "PreferSameZone", "PreferSameNode"])),
        internal_traffic_policy=draw(st.sampled_from(["Cluster", "Local"])),
    )


def _catalogs(revision: st.SearchStrategy[int]) -> st.SearchStrategy[Catalog]:
    return st.builds(
        Catalog,
        services=st.lists(_services(), max_size=5, unique_by=lambda s: s.key),
        nodes=st.lists(_nodes, max_size=4, unique_by=lambda n: n.name),
        revision=revision,
    )


_settings = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _through_msgpack(value: object) -> object:
    return msgpack.unpackb(msgpack.packb(value, use_bin_type=True), raw=False, strict_map_key=True)


# -- laws -------------------------------------------------------------------------------


@_settings
@given(_catalogs(st.integers(0, 1000)), _catalogs(st.integers(1001, 2000)))
def test_apply_of_diff_gives_the_new_catalog(old: Catalog, new: Catalog) -> None:
    delta = diff_catalogs(old, new)
    assert (delta.base, delta.revision) == (old.revision, new.revision)
    assert apply_delta(old, delta) == new
    # Only what changed travels.
    assert all(old.service(s.key) != s for s in delta.services)
    assert all(old.node(n.name) != n for n in delta.nodes)
    assert set(delta.removed_services) == set(old.services) - set(new.services)
    assert set(delta.removed_nodes) == set(old.nodes) - set(new.nodes)


@_settings
@given(_catalogs(st.integers(0, 1000)), _catalogs(st.integers(1001, 2000)))
def test_wire_round_trip(old: Catalog, new: Catalog) -> None:
    delta = diff_catalogs(old, new)
    back = delta_from_wire(_through_msgpack(delta_to_wire(delta)))
    assert back == delta
    assert apply_delta(old, back) == new


@_settings
@given(_catalogs(st.integers(0, 100)), _catalogs(st.integers(101, 200)),
       _catalogs(st.integers(201, 300)))
def test_deltas_compose(first: Catalog, second: Catalog, third: Catalog) -> None:
    """Two deltas in a row give what one delta from the first to the last gives: an edge
    that skipped a revision (coalesced pushes) ends where one that saw both ends."""
    stepwise = apply_delta(apply_delta(first, diff_catalogs(first, second)),
                           diff_catalogs(second, third))
    assert stepwise == apply_delta(first, diff_catalogs(first, third)) == third


@_settings
@given(_catalogs(st.integers(0, 1000)))
def test_diff_of_equal_catalogs_is_empty(catalog: Catalog) -> None:
    delta = diff_catalogs(catalog, catalog.with_revision(catalog.revision + 1))
    assert delta.empty and len(delta) == 0
    assert apply_delta(catalog, delta) == catalog.with_revision(catalog.revision + 1)


def test_unchanged_objects_are_not_compared_field_by_field() -> None:
    service = Service("default", "web", "10.96.0.1", (ServicePort("", 80, 80),))
    old = Catalog([service], revision=1)
    new = Catalog([service], revision=2)
    assert diff_catalogs(old, new).services == ()


def test_apply_refuses_a_delta_from_another_revision() -> None:
    delta = CatalogDelta(base=4, revision=5)
    with pytest.raises(DeltaError, match="from revision 4, but the catalog is at 3"):
        apply_delta(Catalog(revision=3), delta)


def test_removing_what_is_not_there_is_harmless() -> None:
    delta = CatalogDelta(base=0, revision=1, removed_services=("default/gone",),
                         removed_nodes=("edge-9",))
    assert apply_delta(Catalog(), delta) == Catalog(revision=1)


# -- hostile input ------------------------------------------------------------------------


def _valid_wire() -> dict[str, Any]:
    old = Catalog(revision=1)
    new = Catalog(
        [Service("default", "web", "10.96.0.1", (ServicePort("", 80, 8080),),
                 {"": (Endpoint("10.1.0.1", 8080, "edge-1"),)})],
        [Node("edge-1", True, "10.0.0.1", 7701)],
        revision=2,
    )
    wire = delta_to_wire(diff_catalogs(old, new))
    wire["removed_services"] = ["default/old"]
    wire["removed_nodes"] = ["edge-0"]
    return wire


def test_valid_wire_is_accepted() -> None:
    delta = delta_from_wire(_valid_wire())
    assert [s.key for s in delta.services] == ["default/web"]
    assert delta.removed_services == ("default/old",)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda w: w.pop("format"), "format: required"),
        (lambda w: w.update(format="edgemesh.catalog"), "format: must be"),
        (lambda w: w.update(version=2), "version: unsupported"),
        (lambda w: w.update(version=True), "version: unsupported"),
        (lambda w: w.pop("removed_services"), "removed_services: required"),
        (lambda w: w.update(base=-1), "base: must be an integer"),
        (lambda w: w.update(revision=2**63), "revision: must be an integer"),
        (lambda w: w.update(revision=1), "revision 1 does not follow base 1"),
        (lambda w: w.update(nodes="x"), "nodes: must be an array"),
        (lambda w: w["nodes"][0].__setitem__(1, "yes"), r"nodes\[0\]\[1\]: must be a boolean"),
        (lambda w: w["services"][0].__setitem__(1, "Bad_Name"), r"services\[0\]\[1\]"),
        (lambda w: w.update(removed_services=["nonamespace"]), "must be namespace/name"),
        (lambda w: w.update(removed_services=[7]), "must be a string"),
        (lambda w: w.update(removed_nodes=["Not A Node"]), "not a valid node name"),
        (lambda w: w.update(removed_services=["default/web"]), "default/web listed twice"),
        (lambda w: w.update(removed_nodes=["edge-1"]), "edge-1 listed twice"),
        (lambda w: w["services"].append(copy.deepcopy(w["services"][0])), "listed twice"),
    ],
)
def test_bad_wire_is_refused(change: Any, message: str) -> None:
    wire = _valid_wire()
    change(wire)
    with pytest.raises(DeltaError, match=message) as caught:
        delta_from_wire(wire)
    assert str(caught.value).startswith("catalog delta: ")
    assert isinstance(caught.value, SnapshotError)


@settings(max_examples=100, deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=20,
))
def test_garbage_raises_only_delta_error(garbage: object) -> None:
    candidates = [garbage, {**_valid_wire(), "services": garbage},
                  {**_valid_wire(), "nodes": garbage}, {**_valid_wire(), "base": garbage}]
    for candidate in candidates:
        try:
            delta_from_wire(candidate)
        except DeltaError:
            pass
