"""The twistd taps: option parsing and makeService for ``edgemesh-router`` and ``edgemesh-edge``.

In the manner of Twisted's web/test/test_tap.py: parse the options, build the service, never
run a reactor.  makeService imports the global reactor when called; these tests hand it a
MemoryReactorClock in its place, so nothing is bound and no reactor gets installed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import twisted.internet
from twisted.application.service import IService
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from zope.interface.verify import verifyObject

from edgemesh.catalog import Catalog
from edgemesh.roles import EdgeNode, RouterNode, edge_tap, router_tap
from edgemesh.transports import FrontLimits
from edgemesh.wire import Limits

CATALOG = """\
apiVersion: v1
kind: Node
metadata:
  name: edge-1
  labels: {node-role.kubernetes.io/edge: ""}
  annotations: {edgemesh.io/hub-address: "127.0.0.1:7701"}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: 8080}]
"""

BAD_CATALOG = """\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  ports: [{name: http, port: 99999, targetPort: 8080}]
"""


@pytest.fixture
def catalog_file(tmp_path: Path) -> str:
    path = tmp_path / "catalog.yaml"
    path.write_text(CATALOG)
    return str(path)


@pytest.fixture
def reactor(monkeypatch: pytest.MonkeyPatch) -> Iterator[MemoryReactorClock]:
    """What ``from twisted.internet import reactor`` gives makeService during the test."""
    fake = MemoryReactorClock()
    monkeypatch.setattr(twisted.internet, "reactor", fake, raising=False)
    yield fake


_TLS_OPTIONS = ("--insecure", "--ca", "--cert", "--key", "--tls-dir")


def _plaintext_unless_tls(argv: tuple[str, ...]) -> list[str]:
    """These tests are about other options: plaintext links unless TLS is asked for (the
    TLS options are tested in test_tls.py)."""
    if any(a.split("=")[0] in _TLS_OPTIONS for a in argv):
        return list(argv)
    return ["--insecure", *argv]


def router_options(*argv: str) -> router_tap.Options:
    options = router_tap.Options()  # type: ignore[no-untyped-call]
    options.parseOptions(_plaintext_unless_tls(argv))  # type: ignore[no-untyped-call]
    return options


def edge_options(*argv: str) -> edge_tap.Options:
    options = edge_tap.Options()  # type: ignore[no-untyped-call]
    options.parseOptions(_plaintext_unless_tls(argv))  # type: ignore[no-untyped-call]
    return options


# --- router options ------------------------------------------------------------------


def test_router_defaults(catalog_file: str) -> None:
    options = router_options("--catalog", catalog_file)
    assert options["node"] == "router"
    assert options["tunnel"] == "tcp:7700"
    assert options["http"] == "tcp:7780"
    assert options["admin"] is None
    assert options["connect-timeout"] == 5.0
    assert options["request-timeout"] == 30.0
    assert options["header-timeout"] == 10.0
    assert options["max-body"] == 1 << 30
    catalog = options["catalog_value"]
    assert isinstance(catalog, Catalog)
    assert set(catalog.services) == {"default/web"}
    assert set(catalog.nodes) == {"edge-1"}


def test_router_every_option(catalog_file: str) -> None:
    options = router_options(
        "--catalog", catalog_file,
        "--node", "router-2",
        "--tunnel", "tcp:7000:interface=127.0.0.1",
        "--http", "tcp:7080",
        "--admin", "tcp:7090:interface=127.0.0.1",
        "--connect-timeout", "2.5",
        "--request-timeout", "12",
        "--header-timeout", "3",
        "--max-body", "16MiB",
    )
    assert options["node"] == "router-2"
    assert options["tunnel"] == "tcp:7000:interface=127.0.0.1"
    assert options["http"] == "tcp:7080"
    assert options["admin"] == "tcp:7090:interface=127.0.0.1"
    assert options["connect-timeout"] == 2.5
    assert options["request-timeout"] == 12.0
    assert options["header-timeout"] == 3.0
    assert options["max-body"] == 16 << 20
    assert options.front_limits() == FrontLimits(max_body_bytes=16 << 20, header_timeout=3.0)


def test_router_requires_catalog() -> None:
    with pytest.raises(usage.UsageError, match=r"--catalog FILE is required"):
        router_options()


def test_router_missing_catalog_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(usage.UsageError) as raised:
        router_options("--catalog", missing)
    assert str(raised.value) == f"--catalog {missing}: no such file"


def test_router_catalog_that_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(usage.UsageError, match="no such file"):
        router_options("--catalog", str(tmp_path))


def test_router_malformed_catalog_names_object_and_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD_CATALOG)
    with pytest.raises(usage.UsageError) as raised:
        router_options("--catalog", str(path))
    message = str(raised.value)
    assert message.startswith("--catalog: ")
    assert str(path) in message
    assert "Service default/web" in message
    assert "spec.ports[0].port" in message
    assert "99999" in message


def test_router_catalog_not_yaml(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("kind: [unclosed\n")
    with pytest.raises(usage.UsageError, match="not valid YAML"):
        router_options("--catalog", str(path))


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--request-timeout", "-1"),
        ("--request-timeout", "0"),
        ("--request-timeout", "86401"),
        ("--request-timeout", "nan"),
        ("--connect-timeout", "inf"),
        ("--header-timeout", "soon"),
        ("--max-body", "abc"),
        ("--max-body", "0"),
        ("--max-body", "-5k"),
        ("--max-body", "1.5m"),
        ("--max-body", ""),
    ],
)
def test_bad_numbers(tmp_path: Path, catalog_file: str, option: str, value: str) -> None:
    with pytest.raises(usage.UsageError, match=f"^{option}: "):
        router_options("--catalog", catalog_file, option, value)
    with pytest.raises(usage.UsageError, match=f"^{option}: "):
        edge_options("--node", "edge-1", "--state-dir", str(tmp_path), option, value)


def test_out_of_range_timeout_says_the_range(catalog_file: str) -> None:
    with pytest.raises(usage.UsageError, match="more than 0 and at most 86400 seconds"):
        router_options("--catalog", catalog_file, "--request-timeout", "-1")


@pytest.mark.parametrize(
    ("text", "size"),
    [("1", 1), ("512k", 512 << 10), ("512KiB", 512 << 10), ("2M", 2 << 20), ("2mb", 2 << 20),
     ("1GiB", 1 << 30), ("100b", 100)],
)
def test_max_body_units(catalog_file: str, text: str, size: int) -> None:
    assert router_options("--catalog", catalog_file, "--max-body", text)["max-body"] == size


def test_unknown_option_is_a_usage_error(catalog_file: str) -> None:
    with pytest.raises(usage.UsageError):
        router_options("--catalog", catalog_file, "--no-such-option")


# --- edge options --------------------------------------------------------------------


def test_edge_defaults(tmp_path: Path) -> None:
    state = tmp_path / "state"
    options = edge_options("--node", "edge-1", "--state-dir", str(state))
    assert options["node"] == "edge-1"
    assert options["state-dir"] == str(state)
    assert options["router"] is None
    assert options["proxy"] == "tcp:7781"
    assert options["hub"] == "tcp:7701"
    assert options["admin"] is None
    assert options["catalog_value"] is None
    assert state.is_dir(), "the state directory is created at parse time"


def test_edge_every_option(tmp_path: Path, catalog_file: str) -> None:
    options = edge_options(
        "--node", "edge-1",
        "--state-dir", str(tmp_path / "state"),
        "--router", "tcp:10.0.0.1:7700",
        "--proxy", "tcp:8781",
        "--hub", "tcp:8701",
        "--catalog", catalog_file,
        "--admin", "tcp:8791:interface=127.0.0.1",
        "--max-body", "1k",
    )
    assert options["router"] == "tcp:10.0.0.1:7700"
    assert options["proxy"] == "tcp:8781"
    assert options["hub"] == "tcp:8701"
    assert options["admin"] == "tcp:8791:interface=127.0.0.1"
    assert options["max-body"] == 1024
    assert set(options["catalog_value"].services) == {"default/web"}


def test_edge_requires_node(tmp_path: Path) -> None:
    with pytest.raises(usage.UsageError, match=r"--node NAME is required"):
        edge_options("--state-dir", str(tmp_path))


def test_edge_requires_state_dir() -> None:
    with pytest.raises(usage.UsageError, match=r"--state-dir DIR is required"):
        edge_options("--node", "edge-1")


def test_edge_state_dir_that_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("")
    with pytest.raises(usage.UsageError) as raised:
        edge_options("--node", "edge-1", "--state-dir", str(path))
    assert str(raised.value).startswith(f"--state-dir {path}: ")


def test_edge_missing_catalog_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "seed.yaml")
    with pytest.raises(usage.UsageError, match=r"--catalog .*seed\.yaml: no such file"):
        edge_options("--node", "edge-1", "--state-dir", str(tmp_path), "--catalog", missing)


def test_edge_malformed_catalog(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD_CATALOG)
    with pytest.raises(usage.UsageError, match=r"Service default/web: spec\.ports\[0\]\.port"):
        edge_options("--node", "edge-1", "--state-dir", str(tmp_path), "--catalog", str(path))


# --- makeService -----------------------------------------------------------------------


def test_router_make_service(catalog_file: str, reactor: MemoryReactorClock) -> None:
    options = router_options(
        "--catalog", catalog_file, "--tunnel", "tcp:7000", "--http", "tcp:7080:interface=127.0.0.1",
        "--admin", "tcp:7090", "--request-timeout", "7", "--max-body", "1m",
    )
    service = router_tap.makeService(options)
    assert verifyObject(IService, service)
    assert isinstance(service, RouterNode)
    assert service.reactor is reactor
    assert not reactor.running
    assert {name: listener.description for name, listener in service.listeners.items()} == {
        "tunnel": "tcp:7000",
        "http": "tcp:7080:interface=127.0.0.1",
        "admin": "tcp:7090:interface=127.0.0.1",  # a bare port: loopback only
    }
    assert service.catalog is options["catalog_value"]
    assert service.config.request_timeout == 7.0
    assert service.config.front.max_body_bytes == 1 << 20
    assert service.freeze_heap  # twistd's process is the mesh's alone: gc.freeze() at start
    assert service.config.malloc_trim_interval == 60.0  # and its heap is trimmed
    # Nothing is bound until twistd starts the service.
    assert reactor.tcpServers == []
    service.privilegedStartService()  # type: ignore[no-untyped-call]
    assert sorted((port, interface) for port, _, _, interface in reactor.tcpServers) == [
        (7000, ""), (7080, "127.0.0.1"), (7090, "127.0.0.1"),
    ]


def test_edge_make_service(tmp_path: Path, catalog_file: str, reactor: MemoryReactorClock) -> None:
    options = edge_options(
        "--node", "edge-1", "--state-dir", str(tmp_path / "state"), "--router", "tcp:10.0.0.1:7700",
        "--proxy", "tcp:8781", "--hub", "tcp:8701", "--catalog", catalog_file,
    )
    service = edge_tap.makeService(options)
    assert verifyObject(IService, service)
    assert isinstance(service, EdgeNode)
    assert service.reactor is reactor
    assert {name: listener.description for name, listener in service.listeners.items()} == {
        "hub": "tcp:8701",
        "proxy": "tcp:8781",
    }
    assert service.catalog is options["catalog_value"]
    assert service.config.state_dir == str(tmp_path / "state")
    assert reactor.tcpServers == [] and reactor.tcpClients == []
    service.privilegedStartService()  # type: ignore[no-untyped-call]
    service.startService()
    assert sorted(port for port, *_ in reactor.tcpServers) == [8701, 8781]
    assert [(host, port) for host, port, *_ in reactor.tcpClients] == [("10.0.0.1", 7700)]
    service.stopService()


def test_edge_make_service_without_router(tmp_path: Path, reactor: MemoryReactorClock) -> None:
    options = edge_options("--node", "edge-1", "--state-dir", str(tmp_path))
    service = edge_tap.makeService(options)
    assert isinstance(service, EdgeNode)
    assert service.catalog == Catalog.empty()
    service.startService()
    assert reactor.tcpClients == []
    service.stopService()


def test_receive_windows_are_options(
    tmp_path: Path, catalog_file: str, reactor: MemoryReactorClock
) -> None:
    """The links' receive budget (issue 15): Limits' defaults, or the options' values."""
    assert router_options("--catalog", catalog_file)["wire_value"] == Limits()
    options = edge_options(
        "--node", "edge-1", "--state-dir", str(tmp_path), "--initial-window", "32KiB",
        "--max-window", "2MiB", "--receive-budget", "1MiB")
    assert options["wire_value"] == Limits(initial_window=32 << 10, max_window=2 << 20,
                                           receive_budget=1 << 20)
    assert edge_tap.makeService(options).config.wire == options["wire_value"]
    with pytest.raises(usage.UsageError, match="--max-window must not be below"):
        router_options("--catalog", catalog_file, "--initial-window", "1m", "--max-window", "64k")
    with pytest.raises(usage.UsageError, match="at most 2GiB"):
        router_options("--catalog", catalog_file, "--initial-window", "2g", "--max-window", "3g")


def test_header_limits_are_options(catalog_file: str) -> None:
    """Hardening scenario 8: the header limits are options, with Envoy's defaults."""
    assert router_options("--catalog", catalog_file).front_limits() == FrontLimits()
    options = router_options(
        "--catalog", catalog_file, "--max-headers", "20", "--max-header-bytes", "8KiB")
    assert options.front_limits() == FrontLimits(max_header_count=20, max_header_bytes=8 << 10)
    with pytest.raises(usage.UsageError):
        router_options("--catalog", catalog_file, "--max-headers", "0")


@pytest.mark.parametrize("role", ["router", "edge"])
def test_keep_alive_idle_timeouts_are_options(
    role: str, tmp_path: Path, catalog_file: str, reactor: MemoryReactorClock
) -> None:
    """Issue 11, item 6: the idle timeouts of client connections and of pooled pod
    connections (60 s each) are options of both roles."""
    from edgemesh.exchange import TargetKind

    extra = ("--client-idle-timeout", "7", "--pool-idle-timeout", "11.5")
    if role == "router":
        service: RouterNode | EdgeNode = router_tap.makeService(
            router_options("--catalog", catalog_file, *extra))
        upstream, listener = TargetKind.cluster_ip, "http"
    else:
        service = edge_tap.makeService(edge_options(
            "--node", "edge-1", "--state-dir", str(tmp_path), "--catalog", catalog_file, *extra))
        upstream, listener = TargetKind.service_bus, "proxy"
    assert service.config.front.idle_timeout == 7.0
    assert service.config.pool_idle_timeout == 11.5
    pods: Any = service.pipeline.targets[upstream]
    assert pods.idle_timeout == 11.5
    factory: Any = service.listeners[listener].factory
    while not hasattr(factory, "limits"):
        factory = factory.wrappedFactory
    assert factory.limits.idle_timeout == 7.0


def test_keep_alive_idle_timeouts_default_to_60_seconds(catalog_file: str) -> None:
    options = router_options("--catalog", catalog_file)
    assert options["client-idle-timeout"] == 60.0 and options["pool-idle-timeout"] == 60.0
    assert options.front_limits().idle_timeout == 60.0


def test_only_the_twistd_plugins_freeze_the_heap(tmp_path: Any, monkeypatch: Any) -> None:
    """A library must not gc.freeze() its host's heap: embedding leaves it off."""
    import gc

    from twisted.internet.testing import MemoryReactorClock

    from edgemesh.catalog import Catalog
    from edgemesh.roles import RouterConfig, build_router

    frozen: list[bool] = []
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(True))
    embedded = build_router(MemoryReactorClock(), RouterConfig(catalog=Catalog.empty(),
                                                               http=None))
    embedded.startService()
    assert frozen == []
    embedded.stopService()
    assert RouterConfig(catalog=Catalog.empty()).freeze_heap is False
    assert embedded.heap is None  # nor is its host's heap trimmed
