"""
Which ports are byte streams (issue 12): the pure rule, appProtocol read from Kubernetes
objects, and carried in snapshots and deltas in a way older nodes ignore.
"""

from __future__ import annotations

from typing import Any

import pytest

from edgemesh.catalog import (
    Catalog,
    ManifestError,
    PortKind,
    Service,
    ServicePort,
    SnapshotError,
    apply_delta,
    catalog_from_objects,
    catalog_from_wire,
    catalog_to_wire,
    delta_from_wire,
    delta_to_wire,
    diff_catalogs,
    port_kind,
)
from edgemesh.catalog._protocols import port_kind_table
from edgemesh.testing import make_service

HTTP, STREAM, UNSUPPORTED = PortKind.http, PortKind.stream, PortKind.unsupported


@pytest.mark.parametrize(
    ("protocol", "app_protocol", "name", "kind"),
    [
        # appProtocol first, whatever the name says.
        ("TCP", "http", "grpc", HTTP),
        ("TCP", "HTTP", "", HTTP),
        ("TCP", "kubernetes.io/h2c", "http", STREAM),
        ("TCP", "kubernetes.io/ws", "http-web", STREAM),
        ("TCP", "grpc", "http", STREAM),
        ("TCP", "tcp", "", STREAM),
        ("TCP", "mqtt", "web", STREAM),
        ("TCP", "example.com/custom", "http", STREAM),
        # Else the name's prefix.
        ("TCP", None, "http", HTTP),
        ("TCP", None, "http-api", HTTP),
        ("TCP", None, "http2", STREAM),
        ("TCP", None, "http2-api", STREAM),
        ("TCP", None, "grpc-api", STREAM),
        ("TCP", None, "tcp-db", STREAM),
        ("TCP", None, "mongo", STREAM),
        ("TCP", None, "redis-main", STREAM),
        ("TCP", None, "mysql-0", STREAM),
        ("TCP", None, "tls-x", STREAM),
        ("TCP", None, "https", STREAM),
        # Anything else is HTTP: a port is HTTP unless it says otherwise.
        ("TCP", None, "web", HTTP),
        ("TCP", None, "", HTTP),
        ("TCP", None, "httpx", HTTP),
        ("TCP", None, "tcpish", HTTP),
        ("TCP", "", "tcp", STREAM),  # an empty appProtocol is no appProtocol
        # UDP and SCTP are not carried.
        ("UDP", None, "dns", UNSUPPORTED),
        ("UDP", "tcp", "tcp", UNSUPPORTED),
        ("SCTP", None, "http", UNSUPPORTED),
    ],
)
def test_port_kind(protocol: str, app_protocol: str | None, name: str, kind: PortKind) -> None:
    assert port_kind(protocol, app_protocol, name) is kind
    assert ServicePort(name, 80, 80, protocol, app_protocol).kind is kind


def test_the_documented_table_is_the_rule() -> None:
    """docs/protocols.md lists port_kind_table(); each example row gives its kind."""
    with open("docs/protocols.md", encoding="utf-8") as doc:
        text = doc.read()
    for condition, _example, kind in port_kind_table():
        assert f"| {condition} |" in text and kind in text
    for condition, example, kind in port_kind_table():
        first = example.split(",")[0].strip().strip("'")
        if condition.startswith("protocol"):
            continue
        if condition.startswith("appProtocol"):
            assert port_kind("TCP", first, "").value == kind
        else:
            assert port_kind("TCP", None, first).value == kind


def _service(ports: list[dict[str, Any]]) -> dict[str, Any]:
    return make_service("db", cluster_ip="10.96.0.5", ports=ports)


def test_app_protocol_is_read_from_the_service() -> None:
    catalog = catalog_from_objects([_service([
        {"name": "redis", "port": 6379, "protocol": "TCP"},
        {"name": "web", "port": 80, "protocol": "TCP", "appProtocol": "kubernetes.io/ws"},
        {"name": "api", "port": 8080, "protocol": "TCP", "appProtocol": "http"},
    ])])
    ports = {p.name: p for p in catalog.services["default/db"].ports}
    assert ports["redis"].app_protocol is None and ports["redis"].kind is STREAM
    assert ports["web"].app_protocol == "kubernetes.io/ws" and ports["web"].kind is STREAM
    assert ports["api"].app_protocol == "http" and ports["api"].kind is HTTP


@pytest.mark.parametrize("value", ["has space", "a/b/c", "-x", 7, "x" * 64])
def test_a_bad_app_protocol_is_refused_with_its_path(value: object) -> None:
    problems: list[ManifestError] = []
    catalog_from_objects(
        [_service([{"name": "p", "port": 1, "appProtocol": value}])],
        on_invalid=problems.append,
    )
    assert len(problems) == 1 and "spec.ports[0].appProtocol" in str(problems[0])


def _catalog(app_protocol: str | None, revision: int = 1) -> Catalog:
    ports = (ServicePort("tcp-db", 5432, 5432, "TCP", app_protocol), ServicePort("http", 80, 8080))
    return Catalog([Service("shop", "db", "10.96.0.5", ports)], [], revision=revision)


def test_snapshot_round_trip_with_app_protocols() -> None:
    catalog = _catalog("postgresql")
    wire = catalog_to_wire(catalog)
    assert wire["app_protocols"] == {"shop/db": {"tcp-db": "postgresql"}}
    assert catalog_from_wire(wire) == catalog


def test_snapshot_records_keep_their_old_shape() -> None:
    """An older node reads the same records (it ignores the side table, and carries such
    ports by name), and a snapshot without any appProtocol has no side table at all."""
    wire = catalog_to_wire(_catalog("grpc"))
    [service] = wire["services"]  # type: ignore[misc]
    assert [len(port) for port in service[3]] == [4, 4]
    assert "app_protocols" not in catalog_to_wire(_catalog(None))
    old = {k: v for k, v in wire.items() if k != "app_protocols"}
    assert catalog_from_wire(old) == _catalog(None)


@pytest.mark.parametrize(
    "table",
    [
        [], {"shop/nope": {"tcp-db": "grpc"}}, {"shop/db": {"nope": "grpc"}},
        {"shop/db": {"tcp-db": 7}}, {"shop/db": {"tcp-db": ""}}, {"shop/db": ["grpc"]},
        {"shop/db": {"tcp-db": "x\n"}},
    ],
)
def test_a_bad_side_table_is_a_snapshot_error(table: object) -> None:
    wire = catalog_to_wire(_catalog(None))
    wire["app_protocols"] = table
    with pytest.raises(SnapshotError):
        catalog_from_wire(wire)


def test_deltas_carry_app_protocols() -> None:
    old, new = _catalog(None, 1), _catalog("grpc", 2)
    delta = diff_catalogs(old, new)
    assert len(delta.services) == 1
    wire = delta_to_wire(delta)
    assert wire["app_protocols"] == {"shop/db": {"tcp-db": "grpc"}}
    assert apply_delta(old, delta_from_wire(wire)) == new
    # And back: the side table is gone, the port is plain again.
    back = diff_catalogs(new, _catalog(None, 3))
    assert "app_protocols" not in delta_to_wire(back)
    assert apply_delta(new, delta_from_wire(delta_to_wire(back))) == _catalog(None, 3)
