"""Catalog: name resolution (every name form, ports, clusterIPs, errors), the cache, lookups."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgemesh.catalog import (
    RESOLVE_CACHE_SIZE,
    Catalog,
    Endpoint,
    Node,
    Service,
    ServicePort,
)
from edgemesh.exchange import MeshError, Reason


def _service(
    name: str,
    namespace: str = "default",
    cluster_ip: str | None = None,
    ports: tuple[ServicePort, ...] = (ServicePort("http", 80, 8080),),
) -> Service:
    return Service(namespace=namespace, name=name, cluster_ip=cluster_ip, ports=ports)


WEB = _service("web", cluster_ip="10.96.0.10")
PROD_WEB = _service("web", namespace="prod", cluster_ip="10.96.0.20")
API = _service(
    "api",
    cluster_ip="fd00::10",
    ports=(ServicePort("grpc", 9000, 9000), ServicePort("metrics", 9100, 9100)),
)
SINGLE = _service("single", ports=(ServicePort("", 8443, 8443),))
DNS = _service(
    "dns",
    cluster_ip="10.96.0.53",
    ports=(ServicePort("dns-udp", 53, 53, "UDP"), ServicePort("dns-tcp", 53, 53, "TCP")),
)
ONLY_UDP = _service("syslog", ports=(ServicePort("syslog", 514, 514, "UDP"),))
HEADLESS = _service("db", ports=(ServicePort("pg", 5432, 5432),))

NODES = (
    Node("cloud-1", edge=False, hub_host=None, hub_port=7701),
    Node("edge-1", edge=True, hub_host="127.0.0.1", hub_port=17701),
)


@pytest.fixture
def catalog() -> Catalog:
    return Catalog(
        services=[WEB, PROD_WEB, API, SINGLE, DNS, ONLY_UDP, HEADLESS], nodes=NODES, revision=3
    )


def _error(catalog: Catalog, authority: bytes) -> MeshError:
    with pytest.raises(MeshError) as caught:
        catalog.resolve(authority)
    return caught.value


@pytest.mark.parametrize(
    "authority",
    [
        b"web",
        b"web.default",
        b"web.default.svc",
        b"web.default.svc.cluster.local",
        b"web.default.svc.cluster.local.",
        b"web.",
        b"WEB",
        b"Web.Default.SVC.Cluster.Local",
        b"web:80",
        b"web.default:80",
        b"web.default.svc:80",
        b"web.default.svc.cluster.local:80",
        b"web.default.svc.cluster.local.:80",
        b"10.96.0.10",
        b"10.96.0.10:80",
    ],
)
def test_name_forms_of_default_namespace(catalog: Catalog, authority: bytes) -> None:
    service, port = catalog.resolve(authority)
    assert service is WEB
    assert port.port == 80


@pytest.mark.parametrize(
    "authority",
    [b"web.prod", b"web.prod.svc", b"web.prod.svc.cluster.local", b"WEB.PROD:80", b"10.96.0.20"],
)
def test_name_forms_with_namespace(catalog: Catalog, authority: bytes) -> None:
    assert catalog.resolve(authority)[0] is PROD_WEB


def test_port_chooses_among_several(catalog: Catalog) -> None:
    assert catalog.resolve(b"api:9100")[1].name == "metrics"
    assert catalog.resolve(b"api:9000")[1].name == "grpc"


def test_without_port_the_only_port_is_used(catalog: Catalog) -> None:
    assert catalog.resolve(b"single") == (SINGLE, SINGLE.ports[0])


def test_without_port_and_several_ports_the_error_lists_them(catalog: Catalog) -> None:
    error = _error(catalog, b"api")
    assert error.reason is Reason.unknown_service
    assert "9000" in error.detail and "9100" in error.detail
    assert "'api'" in error.detail


def test_missing_port_lists_the_ports(catalog: Catalog) -> None:
    error = _error(catalog, b"web:8080")
    assert error.reason is Reason.unknown_service
    assert error.status == 404
    assert "8080" in error.detail and "80" in error.detail
    assert "'web:8080'" in error.detail


def test_only_tcp_ports_are_considered(catalog: Catalog) -> None:
    # The same number as UDP and TCP: HTTP means the TCP one.
    assert catalog.resolve(b"dns:53")[1].name == "dns-tcp"
    assert catalog.resolve(b"dns")[1].name == "dns-tcp"
    for authority in (b"syslog:514", b"syslog"):
        error = _error(catalog, authority)
        assert error.reason is Reason.unknown_service
        # Said as it is: not "several ports, name one of: none".
        assert "service default/syslog has no TCP port (the mesh carries TCP only)" in \
            error.detail


def test_ipv6_cluster_ip(catalog: Catalog) -> None:
    assert catalog.resolve(b"[fd00::10]:9000") == (API, API.ports[0])
    # Any spelling of the same address.
    assert catalog.resolve(b"[FD00:0:0:0:0:0:0:10]:9100") == (API, API.ports[1])
    assert _error(catalog, b"[fd00::10]").reason is Reason.unknown_service  # two ports


def test_headless_service_resolves_by_name_only(catalog: Catalog) -> None:
    assert catalog.resolve(b"db")[0] is HEADLESS
    assert catalog.service("default/db") is HEADLESS


@pytest.mark.parametrize(
    ("authority", "why"),
    [
        (b"nope", "no service default/nope"),
        (b"web.other", "no service other/web"),
        (b"web.default.svc.example.org", "not a service name"),
        (b"a.b.c.d", "not a service name"),
        (b"web.default.pod", "not a service name"),
        (b"10.96.0.99", "no service has clusterIP 10.96.0.99"),
        (b"[fd00::99]:80", "no service has clusterIP fd00::99"),
        (b"web:81", "no TCP port 81"),
    ],
)
def test_unknown_service(catalog: Catalog, authority: bytes, why: str) -> None:
    error = _error(catalog, authority)
    assert error.reason is Reason.unknown_service
    assert why in error.detail
    assert repr(authority)[1:] in error.detail


@pytest.mark.parametrize(
    "authority",
    [
        b"",
        b"web:",
        b"web:0",
        b"web:65536",
        b"web:99999999",
        b"web:+80",
        b"web:8 0",
        b"web:-1",
        b"web:http",
        b"we b",
        b"web\x00",
        b"web\r\nX-Injected: 1",
        b"w\xc3\xa9b",
        b"web_1",
        b"-web",
        b"web-",
        b"a..b",
        b".web",
        b"web..",
        b"user@web",
        b"web/x",
        b"fd00::10",
        b"1:2:3",
        b"[fd00::10",
        b"[fd00::10]x",
        b"[fd00::10]:",
        b"[zz::1]:80",
        b"[fe80::1%eth0]:80",
        b"[]",
        b"256.1.1.1",
        b"1.2.3",
        b"010.96.0.10",
        b"x" * 64,
        b"a." * 200,
    ],
)
def test_malformed_authority(catalog: Catalog, authority: bytes) -> None:
    error = _error(catalog, authority)
    assert error.reason is Reason.bad_request
    assert error.status == 400
    assert "\n" not in error.detail and "\r" not in error.detail
    assert error.detail.startswith("malformed authority ")


def test_detail_of_a_very_long_authority_is_bounded(catalog: Catalog) -> None:
    error = _error(catalog, b"x" * 100_000)
    assert len(error.detail) < 300


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_any_bytes_resolve_or_fail_cleanly(authority: bytes) -> None:
    catalog = Catalog(services=[WEB, API])
    try:
        service, port = catalog.resolve(authority)
    except MeshError as error:
        assert error.reason in (Reason.bad_request, Reason.unknown_service)
        assert error.detail.isprintable()
    else:
        assert port in service.ports


def test_results_are_cached(catalog: Catalog) -> None:
    first = catalog.resolve(b"Web.Default:80")
    assert catalog.resolve(b"Web.Default:80") is first


def test_errors_are_raised_every_time(catalog: Catalog) -> None:
    for _ in range(3):
        assert _error(catalog, b"nope").reason is Reason.unknown_service


def test_cache_is_bounded(catalog: Catalog) -> None:
    spellings = (
        "".join(chars).encode()
        for chars in itertools.product(*(c + c.upper() for c in "web.default.svc"))
    )
    count = 0
    for authority in itertools.islice(spellings, RESOLVE_CACHE_SIZE + 10):
        assert catalog.resolve(authority)[0] is WEB
        count += 1
        assert len(catalog.resolved) <= RESOLVE_CACHE_SIZE
    assert count == RESOLVE_CACHE_SIZE + 10
    assert catalog.resolve(b"web")[0] is WEB


def test_resolved_holds_the_answers_so_far_and_only_them(catalog: Catalog) -> None:
    """What the pipeline looks up before it calls ``resolve``: the same answer, for
    authorities resolved before only (an error is never kept)."""
    assert b"web" not in catalog.resolved
    answer = catalog.resolve(b"web")
    assert catalog.resolved[b"web"] == answer and catalog.resolved[b"web"][0] is WEB
    _error(catalog, b"nope")
    assert b"nope" not in catalog.resolved
    assert not Catalog.assembled({}, {}, 1).resolved


def test_node_lookups(catalog: Catalog) -> None:
    assert catalog.node("edge-1") == NODES[1]
    assert catalog.node("edge-9") is None
    assert catalog.is_edge("edge-1")
    assert not catalog.is_edge("cloud-1")
    assert not catalog.is_edge("edge-9")
    assert not catalog.is_edge(None)


def test_mappings_are_read_only(catalog: Catalog) -> None:
    with pytest.raises(TypeError):
        catalog.services["default/x"] = WEB  # type: ignore[index]
    with pytest.raises(TypeError):
        catalog.nodes["x"] = NODES[0]  # type: ignore[index]
    with pytest.raises(AttributeError):
        catalog.revision = 9  # type: ignore[misc]


def test_revision_and_equality(catalog: Catalog) -> None:
    assert catalog.revision == 3
    newer = catalog.with_revision(4)
    assert newer.revision == 4
    assert newer.services == catalog.services
    assert newer != catalog
    assert newer.with_revision(3) == catalog
    assert Catalog.empty() == Catalog()
    assert Catalog.empty().services == {}
    assert Catalog.empty() != catalog
    same = Catalog({s.key: s for s in catalog.services.values()}, catalog.nodes, 3)
    assert same == catalog


def test_endpoint_and_node_addresses() -> None:
    assert Endpoint("fd00::1", 80, None).address == "[fd00::1]:80"
    assert Endpoint("10.0.0.1", 80, None).address == "10.0.0.1:80"
    assert Node("n", True, "fd00::1", 7701).hub_address == "[fd00::1]:7701"
    assert Node("n", True, "10.0.0.1", 7701).hub_address == "10.0.0.1:7701"
    assert Node("n", True, None, 7701).hub_address is None


def test_duplicate_cluster_ips_pick_the_first_key() -> None:
    a = _service("a", cluster_ip="10.0.0.1")
    b = _service("b", cluster_ip="10.0.0.1")
    assert Catalog(services=[b, a]).resolve(b"10.0.0.1")[0] is a


@pytest.mark.parametrize(
    "build",
    [
        lambda: Catalog(services={"default/other": WEB}),
        lambda: Catalog(services=[WEB, WEB]),
        lambda: Catalog(nodes={"x": NODES[0]}),
        lambda: Catalog(nodes=[NODES[0], NODES[0]]),
        lambda: Catalog(revision=-1),
        lambda: Catalog(revision=True),
        lambda: Catalog(services=[_service("bad", cluster_ip="10.0.0.300")]),
    ],
)
def test_inconsistent_catalogs_are_refused(build: object) -> None:
    assert callable(build)
    with pytest.raises(ValueError):
        build()


@given(st.text(min_size=1, max_size=8), st.text(min_size=1, max_size=8),
       st.text(min_size=1, max_size=8))
def test_service_key_follows_its_names_through_copies(namespace: str, name: str,
                                                      other: str) -> None:
    """``Service.key`` is made once at construction (not a property): it stays
    ``namespace/name`` through dataclasses.replace, copies and pickling, and takes no
    part in equality or the repr."""
    import copy
    import dataclasses
    import pickle

    service = _service(name, namespace=namespace)
    assert service.key == f"{namespace}/{name}"
    renamed = dataclasses.replace(service, name=other)
    assert renamed.key == f"{namespace}/{other}"
    moved = dataclasses.replace(service, namespace=other)
    assert moved.key == f"{other}/{name}"
    for clone in (copy.copy(service), copy.deepcopy(service),
                  pickle.loads(pickle.dumps(service))):
        assert clone.key == service.key
        assert clone == service
    assert "key=" not in repr(service)
    assert (renamed == service) is (other == name)
