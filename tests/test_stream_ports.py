"""``--stream-ports``: the allocation of router ports to the stream ports of edge services
(a pure function, property-tested), and the controller writing it into the managed
EndpointSlices, stable across reconciles and leaders (scripted KubeAPI, Clock)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_sources_controller import NODES, World
from test_sources_fakes import FakeAPI
from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransportWithDisconnection
from twisted.logger import capturedLogs

from edgemesh.catalog import Catalog, Endpoint, Service, ServicePort
from edgemesh.roles import RouterConfig, build_router
from edgemesh.roles._streamports import StreamPortListeners, interface_of, stream_endpoint
from edgemesh.sources import (
    EDGEMESH_MANAGER,
    ENDPOINT_SLICES,
    MANAGED_BY_LABEL,
    EdgeServiceController,
    desired_slice,
)
from edgemesh.sources._streamports import (
    PortKey,
    allocate,
    existing_allocations,
    named_stream_ports,
    parse_port_range,
)

# -- the allocation -----------------------------------------------------------------------------

keys = st.tuples(st.sampled_from(["default", "shop"]), st.sampled_from(["a", "b", "c", "d"]),
                 st.sampled_from(["", "redis", "tcp-x"]))
ranges = st.tuples(st.integers(30000, 30010), st.integers(0, 6)).map(lambda t: (t[0], t[0] + t[1]))


@given(st.dictionaries(keys, st.integers(29995, 30020), max_size=8),
       st.lists(keys, max_size=12), ranges)
def test_allocation_properties(existing: dict[PortKey, int], wanted: list[PortKey],
                               ports: tuple[int, int]) -> None:
    low, high = ports
    got = allocate(existing, wanted, ports)
    assert set(got) <= set(wanted)
    assert all(low <= p <= high for p in got.values()), "within the range"
    assert len(set(got.values())) == len(got), "unique"
    held = {k: p for k, p in existing.items() if low <= p <= high}
    for key, port in got.items():
        if key in held and held[key] == port:
            continue
        # A new number is never one an existing allocation still names.
        assert port not in held.values(), (key, port)
    for key in set(wanted):
        # Stable: a key that holds a number nobody else holds keeps it.
        port = held.get(key)
        if port is not None and list(held.values()).count(port) == 1:
            assert got[key] == port
    # Left out only when the range is full.
    if set(wanted) - set(got):
        assert len(set(got.values()) | set(held.values())) >= high - low + 1
    # Allocating again from what is written then (the slices not wanted yet to be deleted)
    # changes nothing.
    after = {k: p for k, p in existing.items() if k not in set(wanted)}
    after.update(got)
    assert allocate(after, wanted, ports) == got


def test_allocation_takes_the_lowest_free_and_logs_nothing_when_unchanged() -> None:
    existing = {("default", "a", "redis"): 30001}
    wanted = [("default", "b", "redis"), ("default", "a", "redis"), ("default", "c", "tcp")]
    assert allocate(existing, wanted, (30000, 30002)) == {
        ("default", "a", "redis"): 30001, ("default", "b", "redis"): 30000,
        ("default", "c", "tcp"): 30002}
    assert allocate(existing, wanted, (30000, 30001)) == {
        ("default", "a", "redis"): 30001, ("default", "b", "redis"): 30000}


@pytest.mark.parametrize(("text", "expected"), [
    ("30000-30099", (30000, 30099)), ("7000-7000", (7000, 7000)),
    ("0-10", None), ("10-5", None), ("30000", None), ("a-b", None), ("1-70000", None)])
def test_parse_port_range(text: str, expected: tuple[int, int] | None) -> None:
    if expected is None:
        with pytest.raises(ValueError, match="LOW"):
            parse_port_range(text)
    else:
        assert parse_port_range(text) == expected


def test_endpoint_strings() -> None:
    assert stream_endpoint(30000, None) == "tcp:30000"
    assert stream_endpoint(30000, "::1") == "tcp:30000:interface=\\:\\:1"
    assert interface_of("tcp:7780:interface=127.0.0.1") == "127.0.0.1"
    assert interface_of("tcp:7780:interface=\\:\\:1") == "::1"
    assert interface_of("tcp:7780") is None


# -- the controller ------------------------------------------------------------------------------


def edge_svc(name: str, *ports: ServicePort) -> Service:
    return Service("default", name, "10.96.0.10", ports,
                   {p.name: (Endpoint("10.1.0.1", p.port, "edge-1"),) for p in ports})


REDIS = ServicePort("redis", 6379, 6379)
WEB = ServicePort("http", 80, 8080)


class StreamWorld(World):
    def __init__(self, ports: tuple[int, int] = (30000, 30001)) -> None:
        self.clock = Clock()
        self.api = FakeAPI()
        self.controller = EdgeServiceController(self.clock, self.api, ["10.244.1.7"], 7780,
                                                random=lambda: 0.0, stream_ports=ports)
        self.controller.startService()
        self.version = 10


def stream_world() -> World:
    return StreamWorld()


def slice_ports(obj: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["port"] for p in obj["ports"]}


def test_stream_ports_get_router_ports_http_ports_keep_the_http_port() -> None:
    world = stream_world()
    world.own_list()
    world.controller.catalog_changed(Catalog((edge_svc("cache", WEB, REDIS),), NODES, 1))
    wanted = world.controller.desired()["default/cache-edgemesh"]
    assert slice_ports(wanted) == {"http": 7780, "redis": 30000}


def test_allocation_is_read_back_from_the_slices_a_new_leader_keeps_it() -> None:
    world = stream_world()
    # The previous leader gave "b" 30000 and "a" 30001 (not the order a fresh start would).
    a = desired_slice(edge_svc("a", REDIS), ["10.244.1.7"], 7780, ["cloud-a"],
                      {"redis": 30001})
    b = desired_slice(edge_svc("b", REDIS), ["10.244.1.7"], 7780, ["cloud-a"],
                      {"redis": 30000})
    world.own_list([world.stored(a), world.stored(b)])
    world.controller.catalog_changed(
        Catalog((edge_svc("a", REDIS), edge_svc("b", REDIS), edge_svc("c", REDIS)), NODES, 1))
    world.settle()
    desired = world.controller.desired()
    assert slice_ports(desired["default/a-edgemesh"]) == {"redis": 30001}
    assert slice_ports(desired["default/b-edgemesh"]) == {"redis": 30000}
    # The range is full: "c" stays on the HTTP port, as without the option.
    assert slice_ports(desired["default/c-edgemesh"]) == {"redis": 7780}
    assert [w[0] for w in world.writes()] == ["get"], "a and b in step: only c is created"
    assert named_stream_ports([a, b], (30000, 30001)) == {
        30001: ("default", "a", "redis"), 30000: ("default", "b", "redis")}
    assert existing_allocations([a, b], (30000, 30001)) == {
        ("default", "a", "redis"): 30001, ("default", "b", "redis"): 30000}


def test_without_the_option_stream_ports_stay_on_the_http_port() -> None:
    controller = EdgeServiceController(Clock(), FakeAPI(), ["10.244.1.7"], 7780)
    controller.catalog_changed(Catalog((edge_svc("cache", WEB, REDIS),), NODES, 1))
    assert slice_ports(controller.desired()["default/cache-edgemesh"]) == {
        "http": 7780, "redis": 7780}


# -- the listeners (every replica) ---------------------------------------------------------------


class BusyReactor(MemoryReactorClock):
    """Port 30001 is taken by someone else."""

    def listenTCP(self, port: int, factory: Any, backlog: int = 50,  # type: ignore[override]
                  interface: str = "") -> Any:
        if port == 30001:
            raise CannotListenError(interface, port, OSError("address in use"))
        return super().listenTCP(port, factory, backlog, interface)


def test_every_replica_listens_on_the_ports_the_slices_name() -> None:
    reactor = BusyReactor()
    catalog = Catalog((edge_svc("a", REDIS), edge_svc("b", REDIS), edge_svc("c", REDIS)),
                      NODES, 1)
    router = build_router(reactor, RouterConfig(catalog=catalog, http=None))
    api = FakeAPI()
    listeners = StreamPortListeners(router, api, (30000, 30002), "127.0.0.1")
    listeners.startService()
    a = desired_slice(edge_svc("a", REDIS), ["10.244.1.7"], 7780, None, {"redis": 30000})
    b = desired_slice(edge_svc("b", REDIS), ["10.244.1.7"], 7780, None, {"redis": 30001})
    c = desired_slice(edge_svc("c", REDIS), ["10.244.1.7"], 7780, None, {"redis": 30002})
    pending = api.last_list(ENDPOINT_SLICES)
    assert pending.label_selector == f"{MANAGED_BY_LABEL}={EDGEMESH_MANAGER}"
    pending.answer([a, b, c], "5")
    # 30001 is busy: that port only is left out (and said in the status).
    assert sorted((s[0], s[3]) for s in reactor.tcpServers) == [
        (30000, "127.0.0.1"), (30002, "127.0.0.1")]
    assert listeners.status() == {"named": 3, "listening": [30000, 30002], "failed": [30001]}

    # A connection on a port whose service port left the catalog is closed, not routed.
    factory = reactor.tcpServers[0][1]
    router.set_catalog(Catalog((), NODES, 2))
    protocol = factory.buildProtocol(IPv4Address("TCP", "10.0.0.9", 40000))
    transport = StringTransportWithDisconnection()
    transport.protocol = protocol
    with capturedLogs() as events:
        protocol.makeConnection(transport)
    assert not transport.connected
    assert [e["detail"] for e in events if "detail" in e] == [
        "no port 'redis' of service default/a"]

    # A slice deleted: its listener closes.
    api.last_watch(ENDPOINT_SLICES).send("DELETED", {**c, "metadata": {
        **c["metadata"], "resourceVersion": "6"}})
    assert listeners.status()["listening"] == [30000]
    listeners.stopService()
    assert listeners.listening == {}


def test_a_stream_port_is_one_of_the_routers_own_listeners() -> None:
    """An endpoint at one of the router's stream ports would send the router's connections back
    into itself: refused while that port listens (the loop check of routing/_loops.py), and no
    longer once it is closed."""
    reactor = MemoryReactorClock()
    # A cloud service whose endpoint is (by mistake) this host's stream port 30000.
    looping = Service("default", "looping", "10.96.0.20", (WEB,),
                      {"http": (Endpoint("127.0.0.1", 30000, "cloud-1"),)})
    catalog = Catalog((edge_svc("a", REDIS), looping), NODES, 1)
    router = build_router(reactor, RouterConfig(catalog=catalog, http=None))
    router.startService()
    api = FakeAPI()
    listeners = StreamPortListeners(router, api, (30000, 30001), None)
    listeners.startService()
    assert router.pipeline.refused_endpoints() == []
    a = desired_slice(edge_svc("a", REDIS), ["10.244.1.7"], 7780, None, {"redis": 30000})
    api.last_list(ENDPOINT_SLICES).answer([a], "5")
    assert router.pipeline.refused_endpoints() == [
        {"endpoint": "127.0.0.1:30000", "listener": "stream-port-30000",
         "services": ["default/looping"]}]
    api.last_watch(ENDPOINT_SLICES).send("DELETED", {**a, "metadata": {
        **a["metadata"], "resourceVersion": "6"}})
    assert listeners.listening == {}
    assert router.pipeline.refused_endpoints() == []
    listeners.stopService()
    router.stopService()
