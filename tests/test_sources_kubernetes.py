"""KubernetesSource: the watch's cache → Catalog, on a Clock with a scripted KubeAPI.

The central property: whatever sequence of events arrives, the catalog it emits is the one
``catalog_from_objects`` builds from the same objects (the ``--catalog FILE`` path)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_sources_fakes import FakeAPI, status
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs

from edgemesh.catalog import Catalog, catalog_from_objects
from edgemesh.sources import (
    EDGEMESH_MANAGER,
    ENDPOINT_SLICES,
    MANAGED_BY_LABEL,
    NODES,
    SERVICES,
    KubernetesSource,
    Resource,
    WatchTiming,
)
from edgemesh.testing import make_endpoint_slice, make_node, make_service

KINDS = {NODES: "Node", SERVICES: "Service", ENDPOINT_SLICES: "EndpointSlice"}


def with_kind(resource: Resource, obj: dict[str, Any]) -> dict[str, Any]:
    return {**obj, "kind": KINDS[resource]}


def service(name: str, ip: str, ports: tuple[int, ...] = (80,), **kw: Any) -> dict[str, Any]:
    return make_service(name, cluster_ip=ip, ports=ports, **kw)


def piece(service_name: str, addresses: list[str], name: str | None = None,
          **kw: Any) -> dict[str, Any]:
    return make_endpoint_slice(service_name, addresses, name=name, **kw)


class World:
    """A source fed by a FakeAPI, and the objects the 'API server' holds."""

    def __init__(self, settle: float = 0.02, namespace: str | None = None) -> None:
        self.clock = Clock()
        self.api = FakeAPI()
        self.source = KubernetesSource(self.clock, self.api, namespace=namespace,
                                       settle=settle, timing=WatchTiming(), random=lambda: 0.5)
        self.catalogs: list[Catalog] = []
        self.source.subscribe(self.catalogs.append)
        self.objects: dict[Resource, dict[str, dict[str, Any]]] = {r: {} for r in KINDS}
        self.version = 100

    def key(self, resource: Resource, obj: dict[str, Any]) -> str:
        meta = obj["metadata"]
        return f"{meta.get('namespace', 'default')}/{meta['name']}"

    def start(self, lists: bool = True) -> None:
        self.source.startService()
        if lists:
            for resource in KINDS:
                self.answer_list(resource)

    def answer_list(self, resource: Resource) -> None:
        self.api.last_list(resource).answer(
            [copy.deepcopy(o) for o in self.objects[resource].values()], str(self.version))

    def put(self, resource: Resource, obj: dict[str, Any], send: bool = True) -> None:
        self.version += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self.version)
        known = self.key(resource, obj) in self.objects[resource]
        self.objects[resource][self.key(resource, obj)] = obj
        if send:
            self.api.last_watch(resource).send("MODIFIED" if known else "ADDED", obj)

    def remove(self, resource: Resource, obj: dict[str, Any], send: bool = True) -> None:
        self.version += 1
        gone = self.objects[resource].pop(self.key(resource, obj))
        if send:
            self.api.last_watch(resource).send("DELETED", gone)

    def settle(self) -> None:
        self.clock.advance(1)

    def expected(self) -> Catalog:
        everything = [with_kind(r, o) for r in KINDS for o in self.objects[r].values()
                      if not (r is ENDPOINT_SLICES and o["metadata"].get("labels", {}).get(
                          MANAGED_BY_LABEL) == EDGEMESH_MANAGER)]
        return catalog_from_objects(everything, on_invalid=lambda error: None)

    def check(self) -> None:
        latest = self.catalogs[-1]
        assert latest == self.expected().with_revision(latest.revision)


@pytest.fixture
def world() -> World:
    w = World()
    w.put(NODES, make_node("edge-1", edge=True, internal_ip="10.0.0.1"), send=False)
    w.put(NODES, make_node("cloud-1", internal_ip="10.0.0.9"), send=False)
    w.put(SERVICES, service("web", "10.96.0.10"), send=False)
    w.put(ENDPOINT_SLICES, piece("web", ["10.1.0.1"], node_name="edge-1"), send=False)
    return w


# -- the first catalog ---------------------------------------------------------------------


def test_nothing_before_every_resource_is_listed(world: World) -> None:
    world.start(lists=False)
    world.answer_list(NODES)
    world.answer_list(SERVICES)
    world.settle()
    assert world.catalogs == [] and world.source.catalog is None
    world.answer_list(ENDPOINT_SLICES)
    assert len(world.catalogs) == 1
    world.check()
    assert world.catalogs[0].service("default/web") is not None


def test_the_watch_builds_what_the_file_source_builds(world: World) -> None:
    world.start()
    web = world.catalogs[-1].service("default/web")
    assert web is not None
    assert [e.address for e in web.endpoints["p80"]] == ["10.1.0.1:80"]
    world.check()


def test_scopes_and_selector(world: World) -> None:
    local = World(namespace="prod")
    local.start(lists=False)
    by_resource = {p.resource: p for p in local.api.open_lists()}
    assert by_resource[NODES].namespace is None
    assert by_resource[SERVICES].namespace == "prod"
    assert by_resource[ENDPOINT_SLICES].namespace == "prod"
    # The controller's own slices point at the router: filtered by the server...
    assert by_resource[ENDPOINT_SLICES].label_selector == f"{MANAGED_BY_LABEL}!={EDGEMESH_MANAGER}"


def test_own_slices_are_left_out_even_if_the_server_sends_them(world: World) -> None:
    world.start()
    labels = {MANAGED_BY_LABEL: EDGEMESH_MANAGER}
    world.put(ENDPOINT_SLICES, piece("web", ["10.244.0.5"], name="web-edgemesh",
                                     labels=labels))
    world.settle()
    web = world.catalogs[-1].service("default/web")
    assert web is not None and [e.host for e in web.endpoints["p80"]] == ["10.1.0.1"]


# -- changes -----------------------------------------------------------------------------------


def test_create_change_delete(world: World) -> None:
    world.start()
    world.put(SERVICES, service("api", "10.96.0.11", (8080,)))
    world.settle()
    world.check()
    assert "default/api" in world.catalogs[-1].services
    world.put(ENDPOINT_SLICES, piece("api", ["10.1.0.7"], port=8080, node_name="edge-1"))
    world.settle()
    world.check()
    world.remove(SERVICES, service("api", "10.96.0.11"))
    world.settle()
    world.check()
    assert "default/api" not in world.catalogs[-1].services
    revisions = [c.revision for c in world.catalogs]
    assert revisions == sorted(set(revisions)), "revisions only grow"


def test_a_burst_is_one_catalog(world: World) -> None:
    world.start()
    before = len(world.catalogs)
    for i in range(50):
        world.put(ENDPOINT_SLICES, piece("web", [f"10.1.0.{i + 1}"], node_name="edge-1"))
    world.settle()
    assert len(world.catalogs) == before + 1
    world.check()


def test_unchanged_services_keep_their_identity(world: World) -> None:
    world.put(SERVICES, service("api", "10.96.0.11"), send=False)
    world.start()
    first = world.catalogs[-1]
    world.put(ENDPOINT_SLICES, piece("web", ["10.1.0.2"], node_name="edge-1"))
    world.settle()
    second = world.catalogs[-1]
    assert second.service("default/api") is first.service("default/api")
    assert second.service("default/web") != first.service("default/web")


def test_nothing_emitted_for_changes_that_change_nothing(world: World) -> None:
    world.start()
    before = len(world.catalogs)
    # A new resourceVersion, the same content (a status update the mesh does not read).
    node = make_node("edge-1", edge=True, internal_ip="10.0.0.1")
    node["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
    world.put(NODES, node)
    world.settle()
    assert len(world.catalogs) == before


def test_node_zone_reaches_endpoints(world: World) -> None:
    world.start()
    world.put(NODES, make_node("edge-1", edge=True, internal_ip="10.0.0.1",
                               labels={"topology.kubernetes.io/zone": "site-a"}))
    world.settle()
    web = world.catalogs[-1].service("default/web")
    assert web is not None and web.endpoints["p80"][0].zone == "site-a"
    world.check()


def test_several_slices_merge_and_one_delete_removes_only_its_endpoints(world: World) -> None:
    """Hardening 40: IPv4 + IPv6 slices, > 100 endpoints, non-ready excluded from routing."""
    world.start()
    many = [f"10.2.{i // 250}.{i % 250 + 1}" for i in range(150)]
    world.put(ENDPOINT_SLICES, piece("web", many[:100], name="web-a", node_name="edge-1"))
    world.put(ENDPOINT_SLICES, piece("web", many[100:], name="web-b", node_name="edge-1",
                                     ready=False))
    v6 = piece("web", ["fd00::1"], name="web-v6", node_name="edge-1")
    v6["addressType"] = "IPv6"
    world.put(ENDPOINT_SLICES, v6)
    world.settle()
    world.check()
    web = world.catalogs[-1].service("default/web")
    assert web is not None
    port = web.ports[0]
    assert len(web.endpoints["p80"]) == 1 + 150 + 1
    assert len(web.ready_endpoints(port)) == 1 + 100 + 1
    world.remove(ENDPOINT_SLICES, piece("web", [], name="web-a"))
    world.settle()
    world.check()
    web = world.catalogs[-1].service("default/web")
    assert web is not None
    assert {e.host for e in web.ready_endpoints(port)} == {"10.1.0.1", "fd00::1"}


# -- relists ---------------------------------------------------------------------------------


def test_relist_after_410_replaces_atomically_with_deletes(world: World) -> None:
    world.put(SERVICES, service("api", "10.96.0.11"), send=False)
    world.start()
    assert "default/api" in world.catalogs[-1].services
    # While the watch was broken: api deleted, db created.
    world.remove(SERVICES, service("api", "10.96.0.11"), send=False)
    world.put(SERVICES, service("db", "10.96.0.12"), send=False)
    world.api.last_watch(SERVICES).send("ERROR", status(410))
    count = len(world.catalogs)
    world.settle()
    assert len(world.catalogs) == count, "nothing changes until the relist is complete"
    world.answer_list(SERVICES)
    world.settle()
    assert len(world.catalogs) == count + 1
    assert set(world.catalogs[-1].services) == {"default/web", "default/db"}
    world.check()


def test_edges_keep_the_catalog_while_the_api_fails(world: World) -> None:
    from edgemesh.sources import APIError

    world.start()
    count = len(world.catalogs)
    for resource in KINDS:
        world.api.last_watch(resource).fail(APIError(500))
    world.clock.advance(120)
    for resource in KINDS:
        world.api.last_watch(resource).fail(APIError(429, retry_after=5))
    world.clock.advance(120)
    assert len(world.catalogs) == count and world.source.catalog is world.catalogs[-1]


# -- invalid objects --------------------------------------------------------------------------


def test_invalid_object_is_reported_once_and_skipped(world: World) -> None:
    world.start()
    bad = service("bad", "10.96.0.30")
    bad["spec"]["ports"][0]["port"] = 70000
    with capturedLogs() as events:
        world.put(SERVICES, bad)
        world.put(SERVICES, bad)  # again (a relist, a status update): no second report
        world.put(SERVICES, service("good", "10.96.0.31"))
        world.settle()
    warnings = [e for e in events if e["log_level"] is LogLevel.warn]
    assert len(warnings) == 1
    assert "Service default/bad: spec.ports[0].port" in warnings[0]["problem"]
    assert "default/bad" not in world.catalogs[-1].services
    assert "default/good" in world.catalogs[-1].services
    assert world.source.status()["invalid_objects"] == 1
    # Fixed: it comes in.
    world.put(SERVICES, service("bad", "10.96.0.30"))
    world.settle()
    assert "default/bad" in world.catalogs[-1].services
    assert world.source.status()["invalid_objects"] == 0


def test_a_valid_object_turning_invalid_is_dropped(world: World) -> None:
    world.start()
    broken = service("web", "10.96.0.10")
    broken["spec"]["sessionAffinity"] = "Sometimes"
    world.put(SERVICES, broken)
    world.settle()
    assert "default/web" not in world.catalogs[-1].services
    world.check()


def test_garbage_objects_never_stop_the_watch(world: World) -> None:
    world.start()
    watch = world.api.last_watch(SERVICES)
    for junk in ({}, {"metadata": "x"}, {"metadata": {"name": 5}}, {"metadata": {"name": "A"}},
                 {"metadata": {"name": "ok"}, "spec": []}):
        watch.send("ADDED", junk)  # type: ignore[arg-type]
        watch.send("DELETED", junk)  # type: ignore[arg-type]
    world.put(SERVICES, service("after", "10.96.0.40"))
    world.settle()
    assert "default/after" in world.catalogs[-1].services


def test_stop_cancels_everything(world: World) -> None:
    world.start()
    world.put(SERVICES, service("api", "10.96.0.11"))
    world.source.stopService()
    assert world.clock.getDelayedCalls() == []
    assert world.api.open_watches() == [] and world.api.open_lists() == []


# -- the property ---------------------------------------------------------------------------------

_service_names = st.sampled_from(["web", "api", "db"])
_ops = st.one_of(
    # The API server keeps clusterIPs unique: one per name here.
    st.tuples(st.just("service"), _service_names, st.sampled_from([80, 8080]), st.just("")),
    st.tuples(st.just("slice"), _service_names, st.sampled_from(["a", "b"]),
              st.lists(st.sampled_from(["10.1.0.1", "10.1.0.2", "10.1.0.3"]), max_size=3,
                       unique=True), st.booleans(), st.sampled_from(["edge-1", "edge-2"])),
    st.tuples(st.just("node"), st.sampled_from(["edge-1", "edge-2"]),
              st.sampled_from([None, "z1", "z2"])),
    st.tuples(st.just("delete-service"), _service_names),
    st.tuples(st.just("delete-slice"), _service_names, st.sampled_from(["a", "b"])),
    st.tuples(st.just("delete-node"), st.sampled_from(["edge-1", "edge-2"])),
    st.tuples(st.just("relist"), st.sampled_from(["nodes", "services", "slices"])),
    st.tuples(st.just("settle")),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_ops, max_size=30))
def test_any_event_sequence_gives_the_file_sources_catalog(ops: list[tuple[Any, ...]]) -> None:
    world = World()
    world.start()
    by_name = {"nodes": NODES, "services": SERVICES, "slices": ENDPOINT_SLICES}
    for op in ops:
        kind = op[0]
        if kind == "service":
            ip = {"web": "10.96.0.1", "api": "10.96.0.2", "db": "10.96.0.3"}[op[1]]
            world.put(SERVICES, service(op[1], ip, (op[2],)))
        elif kind == "slice":
            _, name, suffix, addresses, ready, node = op
            if addresses:
                world.put(ENDPOINT_SLICES, piece(name, addresses, name=f"{name}-{suffix}",
                                                 ready=ready, node_name=node))
        elif kind == "node":
            labels = {"topology.kubernetes.io/zone": op[2]} if op[2] else None
            world.put(NODES, make_node(op[1], edge=True, labels=labels))
        elif kind.startswith("delete-"):
            resource = {"service": SERVICES, "slice": ENDPOINT_SLICES,
                        "node": NODES}[kind[7:]]
            obj = {"metadata": {"name": op[1] if kind != "delete-slice" else f"{op[1]}-{op[2]}",
                                "namespace": "default"}}
            if world.key(resource, obj) in world.objects[resource]:
                world.remove(resource, obj)
        elif kind == "relist":
            world.api.last_watch(by_name[op[1]]).send("ERROR", status(410))
            if not world.api.open_lists(by_name[op[1]]):
                world.clock.advance(61)  # a second 410 in a row waits for a backoff
            world.answer_list(by_name[op[1]])
        else:
            world.settle()
    world.settle()
    world.check()


def test_readiness_says_why(world: World) -> None:
    from edgemesh.sources import APIError, APIUnreachable

    seen: list[tuple[bool, str]] = []
    world.source.on_readiness = lambda ready, why: seen.append((ready, why))
    world.start(lists=False)
    refused = APIUnreachable("TLS: the certificate of https://k:6443 is not signed by CA file "
                             "/ca.pem", kind="tls-verify", persistent=True)
    for resource in KINDS:
        world.api.last_list(resource).fail(refused)
    ready, why = world.source.readiness()
    assert not ready
    assert why == ("not listed yet: nodes, services, endpointslices; list nodes, list services, "
                   "list endpointslices: TLS: the certificate of https://k:6443 is not signed "
                   "by CA file /ca.pem")
    assert seen[-1] == (ready, why)
    world.clock.advance(100)
    for resource in KINDS:
        world.answer_list(resource)
    # Listed, but the watch of services is forbidden: not ready, and says on what.
    world.api.last_watch(SERVICES).fail(APIError(403, "Forbidden", "cannot watch services"))
    for resource in (NODES, ENDPOINT_SLICES):
        world.api.last_watch(resource).accept()
    assert world.source.readiness() == (
        False, "watch services: 403 Forbidden: cannot watch services")
    assert seen[-1] == world.source.readiness()
    world.clock.advance(100)
    world.answer_list(SERVICES)
    world.api.last_watch(SERVICES).accept()
    assert world.source.readiness() == (True, "")
    # A passing failure after the first list: still ready, and says it.
    world.api.last_watch(SERVICES).fail(APIError(503))
    ready, why = world.source.readiness()
    assert ready and why == "serving the last catalog: watch services: 503"


def test_topology_fields_from_api_objects(world: World) -> None:
    """The watch reads the same fields as the file source: a Service turning Local with a
    distribution, hints on its slice, a node's pool (and a change of pool alone)."""
    world.start()
    web_object = service("web", "10.96.0.10")
    web_object["spec"].update(internalTrafficPolicy="Local", trafficDistribution="PreferSameNode",
                              sessionAffinity="ClientIP",
                              sessionAffinityConfig={"clientIP": {"timeoutSeconds": 5}})
    world.put(SERVICES, web_object)
    hinted = piece("web", ["10.1.0.1"], node_name="edge-1")
    hinted["endpoints"][0]["hints"] = {"forZones": [{"name": "z1"}],
                                       "forNodes": [{"name": "edge-1"}]}
    world.put(ENDPOINT_SLICES, hinted)
    world.settle()
    web = world.catalogs[-1].service("default/web")
    assert web is not None and web.internal_traffic_policy == "Local"
    assert web.traffic_distribution == "PreferSameNode" and web.affinity_timeout == 5
    assert web.endpoints["p80"][0].for_zones == ("z1",)
    assert web.endpoints["p80"][0].for_nodes == ("edge-1",)
    world.check()
    before = len(world.catalogs)
    world.put(NODES, make_node("edge-1", edge=True, internal_ip="10.0.0.1",
                               labels={"edgemesh.io/pool": "site-a"}))
    world.settle()
    assert len(world.catalogs) == before + 1
    assert world.catalogs[-1].nodes["edge-1"].pool == "site-a"
    world.check()
