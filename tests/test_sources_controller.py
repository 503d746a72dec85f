"""EdgeServiceController: which Services get a router EndpointSlice, and the writes that keep
the API server in step (scripted KubeAPI, Clock)."""

from __future__ import annotations

from typing import Any

import pytest
from test_sources_fakes import FakeAPI
from twisted.internet.task import Clock

from edgemesh.catalog import Catalog, Endpoint, Node, Service, ServicePort
from edgemesh.sources import (
    EDGEMESH_MANAGER,
    ENDPOINT_SLICES,
    MANAGED_BY_LABEL,
    SERVICES,
    APIError,
    EdgeServiceController,
    desired_slice,
    is_edge_service,
)

NODES = [Node("edge-1", True, "10.0.0.1", 7701), Node("edge-2", True, "10.0.0.2", 7701),
         Node("cloud-1", False, None, 7701, zone="cloud-a")]


def svc(name: str, nodes: list[str | None], ip: str | None = "10.96.0.10",
        protocol: str = "TCP") -> Service:
    return Service("default", name, ip, (ServicePort("http", 80, 8080, protocol),),
                   {"http": tuple(Endpoint(f"10.1.0.{i + 1}", 8080, n)
                                  for i, n in enumerate(nodes))})


def catalog(*services: Service, nodes: list[Node] = NODES) -> Catalog:
    return Catalog(services, nodes, 1)


# -- which services ---------------------------------------------------------------------------


@pytest.mark.parametrize(("nodes", "ip", "expected"), [
    (["edge-1"], "10.96.0.10", True),
    (["edge-1", "edge-2"], "10.96.0.10", True),
    (["edge-1", "cloud-1"], "10.96.0.10", False),  # kube-proxy reaches the cloud share
    (["edge-1", None], "10.96.0.10", False),  # unknown node: not provably edge
    ([], "10.96.0.10", False),  # nothing at the edge
    (["edge-1"], None, False),  # headless: no clusterIP for kube-proxy
])
def test_edge_services(nodes: list[str | None], ip: str | None, expected: bool) -> None:
    service = svc("web", nodes, ip)
    assert is_edge_service(catalog(service), service) is expected


def test_desired_slice_points_at_the_router() -> None:
    service = Service("shop", "web", "10.96.0.10",
                      (ServicePort("http", 80, 8080), ServicePort("dns", 53, 53, "UDP"),
                       ServicePort("admin", 9000, 9000)))
    obj = desired_slice(service, ["10.244.1.7"], 7780, ["cloud-a"])
    assert obj["metadata"] == {
        "name": "web-edgemesh", "namespace": "shop",
        "labels": {"kubernetes.io/service-name": "web", MANAGED_BY_LABEL: EDGEMESH_MANAGER},
    }
    assert obj["addressType"] == "IPv4"
    assert obj["ports"] == [{"name": "http", "port": 7780, "protocol": "TCP"},
                            {"name": "admin", "port": 7780, "protocol": "TCP"}]
    assert obj["endpoints"] == [{
        "addresses": ["10.244.1.7"],
        "conditions": {"ready": True, "serving": True, "terminating": False},
        "hints": {"forZones": [{"name": "cloud-a"}]},
    }]
    assert desired_slice(service, ["fd00::7"], 7780, None)["addressType"] == "IPv6"
    assert "hints" not in desired_slice(service, ["fd00::7"], 7780, None)["endpoints"][0]


# -- reconciling ------------------------------------------------------------------------------


class World:
    def __init__(self) -> None:
        self.clock = Clock()
        self.api = FakeAPI()
        self.controller = EdgeServiceController(self.clock, self.api, ["10.244.1.7"], 7780,
                                                random=lambda: 0.0)
        self.controller.startService()
        self.version = 10

    def own_list(self, items: list[dict[str, Any]] = ()) -> None:  # type: ignore[assignment]
        pending = self.api.last_list(ENDPOINT_SLICES)
        assert pending.label_selector == f"{MANAGED_BY_LABEL}={EDGEMESH_MANAGER}"
        pending.answer(list(items), str(self.version))

    def writes(self, verb: str | None = None) -> list[Any]:
        return [w for w in self.api.writes if not w[5].called and (verb is None or w[0] == verb)]

    def settle(self) -> None:
        self.clock.advance(0.1)

    def stored(self, body: dict[str, Any], uid: str = "slice-uid") -> dict[str, Any]:
        self.version += 1
        return {**body, "metadata": {**body["metadata"], "uid": uid,
                                     "resourceVersion": str(self.version)}}


def test_nothing_written_before_the_own_slices_are_listed() -> None:
    world = World()
    world.controller.catalog_changed(catalog(svc("web", ["edge-1"])))
    world.settle()
    assert world.api.writes == []
    world.own_list()
    world.settle()
    assert [w[0] for w in world.writes()] == ["get"]


def test_create_with_the_service_as_owner() -> None:
    world = World()
    world.own_list()
    world.controller.catalog_changed(catalog(svc("web", ["edge-1"]), svc("cloud", ["cloud-1"])))
    world.settle()
    (get,) = world.writes("get")
    assert get[1:4] == (SERVICES, "default", "web")
    get[5].callback({"metadata": {"name": "web", "uid": "svc-uid"}})
    (create,) = world.writes("create")
    body = create[4]
    assert create[1:3] == (ENDPOINT_SLICES, "default")
    assert body["metadata"]["ownerReferences"] == [{
        "apiVersion": "v1", "kind": "Service", "name": "web", "uid": "svc-uid",
        "blockOwnerDeletion": False, "controller": False}]
    create[5].callback(world.stored(body))
    world.settle()
    assert world.writes() == [], "in step: nothing more to do"
    assert world.controller.status()["create"] == 1


def test_changed_spec_is_replaced_with_the_version_seen() -> None:
    world = World()
    current = desired_slice(svc("web", ["edge-1"]), ["10.244.9.9"], 7780, None)
    world.own_list([world.stored(current)])
    world.controller.catalog_changed(catalog(svc("web", ["edge-1"])))
    world.settle()
    (replace,) = world.writes("replace")
    assert replace[3] == "web-edgemesh"
    assert replace[4]["metadata"]["resourceVersion"] == "11"
    assert replace[4]["metadata"]["uid"] == "slice-uid"
    assert replace[4]["endpoints"][0]["addresses"] == ["10.244.1.7"]
    assert replace[4]["endpoints"][0]["hints"] == {"forZones": [{"name": "cloud-a"}]}


def test_slices_no_longer_wanted_are_deleted_with_a_precondition() -> None:
    world = World()
    stale = world.stored(desired_slice(svc("old", ["edge-1"]), ["10.244.1.7"], 7780, None))
    world.own_list([stale])
    world.controller.catalog_changed(catalog(svc("old", ["cloud-1"])))  # moved to the cloud
    world.settle()
    (delete,) = world.writes("delete")
    assert delete[2:5] == ("default", "old-edgemesh", "11")
    delete[5].callback(None)
    world.settle()
    assert world.writes() == []


def test_the_watch_of_own_slices_drives_repairs() -> None:
    world = World()
    world.own_list()
    world.controller.catalog_changed(catalog(svc("web", ["edge-1"])))
    world.settle()
    world.writes("get")[0][5].callback({"metadata": {"uid": "u"}})
    create = world.writes("create")[0]
    stored = world.stored(create[4])
    create[5].callback(stored)
    # Someone deletes it: the DELETED event brings it back.
    world.api.last_watch(ENDPOINT_SLICES).send("DELETED", stored)
    world.settle()
    assert [w[0] for w in world.writes()] == ["get"]


@pytest.mark.parametrize(("error", "retried_after"), [
    (APIError(409, "Conflict"), 0.5),
    (APIError(500), 0.5),
    (APIError(429, retry_after=3), 3.0),
])
def test_failed_writes_are_retried(error: APIError, retried_after: float) -> None:
    world = World()
    world.own_list([world.stored(desired_slice(svc("web", ["edge-1"]), ["10.9.9.9"], 7780,
                                               None))])
    world.controller.catalog_changed(catalog(svc("web", ["edge-1"])))
    world.settle()
    world.writes("replace")[0][5].errback(error)
    world.clock.advance(retried_after - 0.01)
    assert world.writes() == []
    world.clock.advance(0.02)
    assert [w[0] for w in world.writes()] == ["replace"]


def test_refused_writes_wait_for_a_new_desire() -> None:
    world = World()
    world.own_list([world.stored(desired_slice(svc("web", ["edge-1"]), ["10.9.9.9"], 7780,
                                               None))])
    world.controller.catalog_changed(catalog(svc("web", ["edge-1"])))
    world.settle()
    world.writes("replace")[0][5].errback(APIError(422, "Invalid"))
    world.clock.advance(400)  # past a resync
    assert world.writes() == []
    world.controller.catalog_changed(catalog(svc("web", ["edge-1", "edge-2"]),
                                             nodes=NODES[:2]))
    world.settle()
    assert [w[0] for w in world.writes()] == ["replace"]


def test_writes_in_flight_are_bounded() -> None:
    world = World()
    world.own_list()
    services = [svc(f"s{i}", ["edge-1"], f"10.96.1.{i}") for i in range(20)]
    world.controller.catalog_changed(catalog(*services))
    world.settle()
    assert len(world.writes()) == 4
    for get in world.writes("get"):
        get[5].callback({"metadata": {"uid": "u"}})
    for create in world.writes("create"):
        create[5].callback(world.stored(create[4]))
    world.settle()
    assert len(world.writes()) == 4


def test_stop_cancels_timers_and_writes() -> None:
    world = World()
    world.own_list()
    world.controller.catalog_changed(catalog(svc("web", ["edge-1"])))
    world.settle()
    world.controller.stopService()
    assert world.clock.getDelayedCalls() == []
    assert all(w[5].called for w in world.api.writes)
