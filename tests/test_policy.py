"""
Per-service policy (annotations → ServicePolicy) and the balancer: each lb policy's
distribution, consistent hashing's stability and load bound, session affinity, locality
tiers and unhealthy endpoints.  Plain Python: hand-built catalogs, seeded randomness.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.logger import LogLevel, capturedLogs

from edgemesh.catalog import Catalog, Endpoint, Node, Service, ServicePort
from edgemesh.exchange import RequestHead, Role, SourceKind, TargetKind
from edgemesh.routing import (
    HASH_KEY_ANNOTATION,
    LB_POLICY_ANNOTATION,
    RETRIES_ANNOTATION,
    TIMEOUT_ANNOTATION,
    Balancer,
    LBPolicy,
    PolicyBook,
    ServicePolicy,
    decide,
    parse_duration,
    parse_policy,
)

HTTP = ServicePort("http", 80, 8080)


def endpoints(count: int, node: str = "edge-2", zone: str | None = None) -> tuple[Endpoint, ...]:
    return tuple(Endpoint(f"10.{count}.{i // 250}.{i % 250 + 1}", 8080, node, zone=zone)
                 for i in range(count))


def service(eps: Sequence[Endpoint], annotations: dict[str, str] | None = None,
            affinity: str = "None", name: str = "web") -> Service:
    return Service("shop", name, "10.96.0.10", (HTTP,), {"http": tuple(eps)},
                   annotations or {}, affinity)


def request(client: str = "10.0.0.1", headers: tuple[tuple[bytes, bytes], ...] = ()) -> RequestHead:
    return RequestHead(b"GET", b"/", b"web.shop", headers, 0, client)


RR = ServicePolicy()
RANDOM = parse_policy({LB_POLICY_ANNOTATION: "random"})
LEAST = parse_policy({LB_POLICY_ANNOTATION: "least-request"})
HASH_IP = parse_policy({LB_POLICY_ANNOTATION: "consistent-hash"})
HASH_USER = parse_policy(
    {LB_POLICY_ANNOTATION: "consistent-hash", HASH_KEY_ANNOTATION: "header:X-User"})
AFFINITY = parse_policy({}, "ClientIP")


# --- parsing -------------------------------------------------------------------------------


def test_no_annotations_is_the_default_policy() -> None:
    policy = parse_policy({})
    assert policy == ServicePolicy() and policy.lb is LBPolicy.round_robin and not policy.problems
    assert policy.timeout is None and policy.retries is None and not policy.tracks_load


@pytest.mark.parametrize(("value", "lb", "tracks"), [
    ("round-robin", LBPolicy.round_robin, False),
    ("random", LBPolicy.random, False),
    ("least-request", LBPolicy.least_request, True),
    (" consistent-hash ", LBPolicy.consistent_hash, True),
])
def test_lb_policies(value: str, lb: LBPolicy, tracks: bool) -> None:
    policy = parse_policy({LB_POLICY_ANNOTATION: value})
    assert policy.lb is lb and policy.tracks_load is tracks and not policy.problems


def test_hash_keys() -> None:
    assert HASH_IP.hash_header is None and HASH_IP.bounded_load
    assert HASH_USER.hash_header == b"x-user" and not HASH_USER.problems
    source = parse_policy(
        {LB_POLICY_ANNOTATION: "consistent-hash", HASH_KEY_ANNOTATION: "source-ip"})
    assert source.hash_header is None and not source.problems


@pytest.mark.parametrize(("annotations", "expected", "problem"), [
    ({LB_POLICY_ANNOTATION: "fastest"}, ServicePolicy(), "unknown policy 'fastest'"),
    ({LB_POLICY_ANNOTATION: "consistent-hash", HASH_KEY_ANNOTATION: "cookie:id"},
     HASH_IP, "neither header:NAME nor source-ip"),
    ({LB_POLICY_ANNOTATION: "consistent-hash", HASH_KEY_ANNOTATION: "header:"},
     HASH_IP, "neither header:NAME nor source-ip"),
    ({LB_POLICY_ANNOTATION: "consistent-hash", HASH_KEY_ANNOTATION: "header:a b"},
     HASH_IP, "neither header:NAME nor source-ip"),
    ({HASH_KEY_ANNOTATION: "header:x"}, ServicePolicy(), "no effect unless"),
    ({TIMEOUT_ANNOTATION: "soon"}, ServicePolicy(), "not a duration"),
    ({TIMEOUT_ANNOTATION: "0s"}, ServicePolicy(), "must be more than 0"),
    ({TIMEOUT_ANNOTATION: "-5s"}, ServicePolicy(), "not a duration"),
    ({TIMEOUT_ANNOTATION: "100000"}, ServicePolicy(), "at most 86400"),
    ({RETRIES_ANNOTATION: "many"}, ServicePolicy(), "not a number from 0 to 10"),
    ({RETRIES_ANNOTATION: "11"}, ServicePolicy(), "not a number from 0 to 10"),
    ({RETRIES_ANNOTATION: "-1"}, ServicePolicy(), "not a number from 0 to 10"),
])
def test_invalid_values_are_reported_and_the_default_used(
    annotations: dict[str, str], expected: ServicePolicy, problem: str
) -> None:
    policy = parse_policy(annotations)
    assert len(policy.problems) == 1 and problem in policy.problems[0], policy.problems
    assert (policy.lb, policy.hash_header, policy.timeout, policy.retries) == (
        expected.lb, expected.hash_header, expected.timeout, expected.retries
    )


@pytest.mark.parametrize(("text", "seconds"), [
    ("5s", 5.0), ("250ms", 0.25), ("1m", 60.0), ("1h", 3600.0), ("1.5", 1.5), (" 2s ", 2.0),
    (".5s", 0.5),
])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert parse_policy({TIMEOUT_ANNOTATION: text}).timeout == seconds


def test_retries_and_timeout() -> None:
    policy = parse_policy({RETRIES_ANNOTATION: "0", TIMEOUT_ANNOTATION: "5s"})
    assert policy.retries == 0 and policy.timeout == 5.0 and not policy.problems
    assert parse_policy({RETRIES_ANNOTATION: "3"}).retries == 3


def test_session_affinity_client_ip_hashes_the_client_without_a_load_bound() -> None:
    assert AFFINITY.lb is LBPolicy.consistent_hash and AFFINITY.hash_header is None
    assert not AFFINITY.bounded_load and not AFFINITY.tracks_load and not AFFINITY.problems
    clash = parse_policy({LB_POLICY_ANNOTATION: "random"}, "ClientIP")
    assert clash.lb is LBPolicy.consistent_hash and "ignored" in clash.problems[0]
    # An explicit consistent-hash keeps its own key and bound.
    explicit = parse_policy({LB_POLICY_ANNOTATION: "consistent-hash",
                             HASH_KEY_ANNOTATION: "header:x-user"}, "ClientIP")
    assert explicit.hash_header == b"x-user" and explicit.bounded_load


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from([LB_POLICY_ANNOTATION, HASH_KEY_ANNOTATION,
                                        TIMEOUT_ANNOTATION, RETRIES_ANNOTATION, "other/x"]),
                       st.text(max_size=80)),
       st.sampled_from(["None", "ClientIP"]))
def test_parsing_never_raises(annotations: dict[str, str], affinity: str) -> None:
    policy = parse_policy(annotations, affinity)
    assert isinstance(policy, ServicePolicy)
    assert policy.timeout is None or 0 < policy.timeout <= 86400
    assert policy.retries is None or 0 <= policy.retries <= 10


def test_policy_book_reports_problems_once_and_caches() -> None:
    bad = service(endpoints(2), {LB_POLICY_ANNOTATION: "fastest", TIMEOUT_ANNOTATION: "2s"})
    plain = service(endpoints(2), name="plain")
    book = PolicyBook()
    with capturedLogs() as events:
        book.scan(Catalog([bad, plain]))
        book.scan(Catalog([bad, plain], revision=2))  # the same problems: not logged again
    warnings = [
        e for e in events if e.get("log_level") is LogLevel.warn and e.get("service") == "shop/web"]
    assert len(warnings) == 1 and "fastest" in str(warnings[0]["problem"])
    assert book.problems() == {"shop/web": [bad_problem(bad)]}
    assert book.get(bad) is book.get(bad) and book.get(bad).timeout == 2.0
    assert book.get(plain) == ServicePolicy()
    assert book.describe() == {"shop/web": {"lb": "round-robin", "hash_key": None,
                                            "bounded_load": False, "timeout": 2.0, "retries": None}}
    book.scan(Catalog([plain]))
    assert book.problems() == {}


def bad_problem(svc: Service) -> str:
    return parse_policy(svc.annotations).problems[0]


# --- distributions ---------------------------------------------------------------------------


def picks(balancer: Balancer, svc: Service, policy: ServicePolicy, count: int,
          head: RequestHead | None = None) -> Counter[Endpoint]:
    eps = svc.endpoints["http"]
    chosen: Counter[Endpoint] = Counter()
    for _ in range(count):
        found = balancer.choose(svc, HTTP, eps, head or request(), policy, ())
        assert found is not None
        chosen[found] += 1
    return chosen


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 20))
def test_round_robin_is_exactly_even(count: int) -> None:
    svc = service(endpoints(count))
    chosen = picks(Balancer(), svc, RR, 7 * count)
    assert set(chosen) == set(svc.endpoints["http"]) and set(chosen.values()) == {7}


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 20), st.integers(0, 2**32))
def test_random_spreads_evenly(count: int, seed: int) -> None:
    svc = service(endpoints(count))
    chosen = picks(Balancer(random.Random(seed)), svc, RANDOM, 400 * count)
    assert set(chosen) == set(svc.endpoints["http"])
    assert all(200 < n < 600 for n in chosen.values()), chosen


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=2, max_size=20), st.integers(0, 2**32))
def test_least_request_prefers_the_less_busy(loads: list[int], seed: int) -> None:
    svc = service(endpoints(len(loads)))
    eps = svc.endpoints["http"]
    balancer = Balancer(random.Random(seed))
    balancer.loads.update({(e.host, e.port): n for e, n in zip(eps, loads, strict=True)})
    chosen = picks(balancer, svc, LEAST, 200)
    busiest = max(loads)
    if loads.count(busiest) == 1 and len(loads) > 1:
        # Power of two choices: the single busiest endpoint never wins a comparison.
        assert all(loads[eps.index(e)] != busiest for e in chosen)
    idle = [e for e, n in zip(eps, loads, strict=True) if n == min(loads)]
    assert sum(chosen[e] for e in idle) >= 200 * len(idle) / len(eps) * 0.5


def test_least_request_evens_out_the_load() -> None:
    svc = service(endpoints(5))
    eps = svc.endpoints["http"]
    balancer = Balancer(random.Random(1))
    balancer.loads[(eps[0].host, eps[0].port)] = 40  # a slow endpoint with requests piling up
    chosen = picks(balancer, svc, LEAST, 1000)
    assert chosen[eps[0]] == 0 and all(chosen[e] > 150 for e in eps[1:])


@settings(max_examples=25, deadline=None)
@given(st.sets(st.tuples(st.integers(1, 254), st.integers(1, 65535)), min_size=10, max_size=10),
       st.integers(0, 9))
def test_consistent_hash_keeps_keys_when_an_endpoint_goes(addresses: set[tuple[int, int]],
                                                          gone: int) -> None:
    eps = tuple(Endpoint(f"10.0.1.{a}", p, "edge-2") for a, p in sorted(addresses))
    before, after = service(eps), service(eps[:gone] + eps[gone + 1:])
    balancer = Balancer()
    keys = [request(headers=((b"X-User", b"user-%d" % i),)) for i in range(2000)]
    first = [
        balancer.choose(before, HTTP, before.endpoints["http"], k, HASH_USER, ()) for k in keys]
    second = [balancer.choose(after, HTTP, after.endpoints["http"], k, HASH_USER, ()) for k in keys]
    kept = sum(a == b for a, b in zip(first, second, strict=True))
    assert kept >= 0.8 * len(keys), f"only {kept} of {len(keys)} keys stayed"
    # Stronger: only the keys of the endpoint that went moved.
    assert all(a == b for a, b in zip(first, second, strict=True) if a != eps[gone])
    spread = Counter(first)
    assert len(spread) == 10 and min(spread.values()) > 2000 / 10 * 0.4, spread


def test_consistent_hash_is_stable_per_key_and_across_balancers() -> None:
    svc = service(endpoints(8))
    one, two = Balancer(), Balancer()  # two nodes hash alike
    for i in range(50):
        head = request(client=f"192.0.2.{i}")
        chosen = {one.choose(svc, HTTP, svc.endpoints["http"], head, HASH_IP, ()) for _ in range(3)}
        assert len(chosen) == 1
        assert chosen == {two.choose(svc, HTTP, svc.endpoints["http"], head, HASH_IP, ())}


def test_consistent_hash_bounds_the_load_of_a_hot_key() -> None:
    svc = service(endpoints(4))
    eps = svc.endpoints["http"]
    balancer = Balancer()
    hot = request(headers=((b"x-user", b"celebrity"),))
    # 100 requests of one key in progress at once: each is counted as it starts.
    for _ in range(100):
        chosen = balancer.choose(svc, HTTP, eps, hot, HASH_USER, ())
        assert chosen is not None
        key = (chosen.host, chosen.port)
        balancer.loads[key] = balancer.loads.get(key, 0) + 1
    assert max(balancer.loads.values()) <= 1.25 * 100 / 4 + 1
    assert len(balancer.loads) == 4


def test_session_affinity_is_sticky_whatever_the_load() -> None:
    svc = service(endpoints(4), affinity="ClientIP")
    balancer = Balancer()
    head = request(client="198.51.100.7")
    first = balancer.choose(svc, HTTP, svc.endpoints["http"], head, AFFINITY, ())
    assert first is not None
    balancer.loads[(first.host, first.port)] = 1000
    assert {balancer.choose(svc, HTTP, svc.endpoints["http"], head, AFFINITY, ())
            for _ in range(20)} == {first}


def test_consistent_hash_without_its_key_falls_back_to_round_robin() -> None:
    svc = service(endpoints(3))
    chosen = picks(Balancer(), svc, HASH_USER, 30, request(headers=()))
    assert set(chosen.values()) == {10}
    anonymous = picks(Balancer(), svc, HASH_IP, 30, request(client=""))
    assert set(anonymous.values()) == {10}


def test_consistent_hash_skips_excluded_and_unusable_endpoints_keeping_the_others() -> None:
    svc = service(endpoints(6))
    eps = svc.endpoints["http"]
    down: set[Endpoint] = set()
    balancer = Balancer(usable=lambda e: e not in down, filtering=lambda: bool(down))
    keys = [request(client=f"203.0.113.{i}") for i in range(200)]
    before = [balancer.choose(svc, HTTP, eps, k, HASH_IP, ()) for k in keys]
    down.add(eps[2])
    after = [balancer.choose(svc, HTTP, eps, k, HASH_IP, ()) for k in keys]
    assert eps[2] not in after
    assert all(a == b for a, b in zip(before, after, strict=True) if a != eps[2])
    excluded = {(eps[3].host, eps[3].port)}
    again = [balancer.choose(svc, HTTP, eps, k, HASH_IP, excluded) for k in keys]
    assert eps[3] not in again


def test_ring_cache_is_bounded() -> None:
    balancer = Balancer(max_rings=4)
    for count in range(1, 20):
        svc = service(endpoints(count))
        balancer.choose(svc, HTTP, svc.endpoints["http"], request(), HASH_IP, ())
        assert len(balancer._rings) <= 4


# --- locality and health ---------------------------------------------------------------------

NODES = (
    Node("edge-1", True, "192.0.2.1", 7701, zone="zone-a"),
    Node("edge-2", True, "192.0.2.2", 7701, zone="zone-a"),
    Node("edge-3", True, "192.0.2.3", 7701, zone="zone-b"),
    Node("cloud-1", False, "10.0.0.5", 7701, zone="zone-b"),
)
HERE = Endpoint("10.1.0.1", 8080, "edge-1", zone="zone-a")
HERE_B = Endpoint("10.1.0.2", 8080, "edge-1", zone="zone-a")
ZONE = Endpoint("10.2.0.1", 8080, "edge-2", zone="zone-a")
FAR = Endpoint("10.3.0.1", 8080, "edge-3", zone="zone-b")
CLOUD = Endpoint("10.9.0.1", 8080, "cloud-1", zone="zone-b")


def local_catalog(*eps: Endpoint) -> tuple[Catalog, Service]:
    svc = service(eps)
    return Catalog([svc], NODES, revision=1), svc


def test_tiers_are_node_zone_rest() -> None:
    catalog, svc = local_catalog(FAR, CLOUD, ZONE, HERE, HERE_B)
    assert Balancer().tiers(catalog, "edge-1", svc, HTTP) == ((HERE, HERE_B), (ZONE,), (FAR, CLOUD))
    assert Balancer().tiers(catalog, "edge-3", svc, HTTP) == (
        (FAR,), (CLOUD,), (ZONE, HERE, HERE_B))
    # A node without a zone: its own endpoints, then all the others.
    assert Balancer().tiers(catalog, "router", svc, HTTP) == ((FAR, CLOUD, ZONE, HERE, HERE_B),)


def route_endpoints(catalog: Catalog, svc: Service, balancer: Balancer,
                    count: int) -> Counter[Endpoint]:
    chosen: Counter[Endpoint] = Counter()
    for _ in range(count):
        route = decide(catalog, Role.edge, "edge-1", SourceKind.service_bus, svc, HTTP, None,
                       balancer, head=request())
        assert route.endpoint is not None
        chosen[route.endpoint] += 1
    return chosen


def test_locality_order_when_the_preferred_ones_are_unhealthy() -> None:
    catalog, svc = local_catalog(FAR, CLOUD, ZONE, HERE, HERE_B)
    unhealthy: set[Endpoint] = set()
    balancer = Balancer(usable=lambda e: e not in unhealthy, filtering=lambda: bool(unhealthy))
    assert route_endpoints(catalog, svc, balancer, 4) == {HERE: 2, HERE_B: 2}
    unhealthy.add(HERE)
    assert route_endpoints(catalog, svc, balancer, 4) == {HERE_B: 4}
    unhealthy.add(HERE_B)
    assert route_endpoints(catalog, svc, balancer, 4) == {ZONE: 4}
    unhealthy.add(ZONE)
    assert route_endpoints(catalog, svc, balancer, 4) == {FAR: 2, CLOUD: 2}
    unhealthy.update({FAR, CLOUD})
    # Nothing healthy anywhere: the nearest doubtful ones rather than none.
    assert route_endpoints(catalog, svc, balancer, 4) == {HERE: 2, HERE_B: 2}


def test_locality_routes_take_the_right_way_out() -> None:
    catalog, svc = local_catalog(ZONE, FAR)
    route = decide(
        catalog, Role.edge, "edge-1", SourceKind.service_bus, svc, HTTP, None, Balancer())
    assert route.target is TargetKind.hub and route.endpoint == ZONE and route.peer == "edge-2"
    route = decide(catalog, Role.edge, "edge-1", SourceKind.service_bus, svc,
                   HTTP, None, Balancer(), exclude={(ZONE.host, ZONE.port)})
    assert route.target is TargetKind.hub and route.endpoint == FAR and route.peer == "edge-3"


def test_exclusion_empties_the_choice() -> None:
    catalog, svc = local_catalog(HERE)
    balancer = Balancer()
    assert balancer.select(
        catalog, "edge-1", svc, HTTP, request(), RR, {(HERE.host, HERE.port)}) is None
    assert balancer.choose(svc, HTTP, (), request(), RR, ()) is None


def test_tiers_are_recomputed_after_forget() -> None:
    catalog, svc = local_catalog(HERE, ZONE)
    balancer = Balancer()
    assert balancer.tiers(catalog, "edge-1", svc, HTTP) == ((HERE,), (ZONE,))
    moved = Catalog([svc], (Node("edge-1", True, "192.0.2.1", 7701, zone="zone-z"), *NODES[1:]))
    balancer.forget()
    assert balancer.tiers(moved, "edge-1", svc, HTTP) == ((HERE,), (ZONE,))  # HERE is on edge-1
    assert balancer.tiers(moved, "edge-2", svc, HTTP) == ((ZONE,), (HERE,))


def test_round_robin_keeps_turning_while_endpoints_are_filtered() -> None:
    catalog, svc = local_catalog(HERE, HERE_B, Endpoint("10.1.0.3", 8080, "edge-1", zone="zone-a"))
    unhealthy = {HERE}
    balancer = Balancer(usable=lambda e: e not in unhealthy, filtering=lambda: bool(unhealthy))
    chosen = route_endpoints(catalog, svc, balancer, 10)
    assert HERE not in chosen and sorted(chosen.values()) == [5, 5], chosen


@pytest.mark.parametrize("text", ["²", "١", "1e3", "0x10", " ", "+1"])
def test_only_ascii_numbers(text: str) -> None:
    assert parse_policy({RETRIES_ANNOTATION: text}).retries is None
    with pytest.raises(ValueError):
        parse_duration(text + "s")
