"""The router's typed Kubernetes wiring: ``RouterConfig.kubernetes`` (a KubernetesConfig) is
what ``build_router`` wires; ``twistd edgemesh-router`` only parses its options into it, so
an application that embeds the router builds the same services."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import twisted.internet
from twisted.internet.testing import MemoryReactorClock

from edgemesh import Catalog, KubernetesConfig, RouterConfig, build_router
from edgemesh.roles import RouterNode, router_tap
from edgemesh.sources import (
    EdgeServiceController,
    ElectionTiming,
    KubernetesSource,
    LeaderElector,
    LeaseElection,
    ReplicaDiscovery,
)


@pytest.fixture
def reactor(monkeypatch: pytest.MonkeyPatch) -> Iterator[MemoryReactorClock]:
    fake = MemoryReactorClock()
    monkeypatch.setattr(twisted.internet, "reactor", fake, raising=False)
    monkeypatch.delenv("POD_IP", raising=False)
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    yield fake


def options(*argv: str) -> router_tap.Options:
    parsed = router_tap.Options()  # type: ignore[no-untyped-call]
    parsed.parseOptions(["--insecure", *argv])  # type: ignore[no-untyped-call]
    return parsed


def shape(router: RouterNode) -> dict[str, Any]:
    """What a router built with Kubernetes is made of, comparably."""
    children = list(router)  # type: ignore[call-overload]
    (source,) = [c for c in children if isinstance(c, KubernetesSource)]
    electors = [c for c in children if isinstance(c, LeaderElector)]
    controllers = [e.child for e in electors] + [
        c for c in children if isinstance(c, EdgeServiceController)]
    (controller,) = controllers
    election = electors[0].election if electors else None
    (discovery,) = [c for c in children if isinstance(c, ReplicaDiscovery)]
    return {
        "children": sorted(type(c).__name__ for c in children),
        "status_parts": sorted(router.status_parts),
        "catalog_pending": router.catalog_pending,
        "namespace": source.namespace,
        "watching": router.set_catalog in source.listeners,
        "controller": (controller.addresses, controller.port, controller.reflector.namespace),
        "election": None if election is None else (election.identity, election.name,
                                                   election.namespace),
        "elector_api_is_the_source's": all(e.api is source.api for e in electors),
        "leases": (discovery.leases.endpoint, discovery.leases.namespace),
    }


def test_embedding_builds_what_twistd_builds(kubeconfig: str, reactor: MemoryReactorClock) -> None:
    argv = ("--kubeconfig", kubeconfig, "--advertise", "10.244.3.17", "--namespace", "shop",
            "--http", "tcp:7780:interface=0.0.0.0", "--peer-listen", "tcp:7702",
            "--leader-identity", "r1", "--lease-namespace", "ops")
    twistd = router_tap.makeService(options(*argv))
    assert isinstance(twistd, RouterNode)

    embedded = build_router(reactor, RouterConfig(
        catalog=Catalog.empty(),
        http="tcp:7780:interface=0.0.0.0",
        peer_listen="tcp:7702",
        kubernetes=KubernetesConfig.load(
            kubeconfig,
            namespace="shop",
            advertise="10.244.3.17",
            election=LeaseElection("r1", "edgemesh-router", "ops", ElectionTiming(15, 10, 2)),
            peer_advertise="tcp:10.244.3.17:7702",
        ),
        # What twistd adds because the process is the mesh's alone.
        freeze_heap=True,
        malloc_trim_interval=60.0,
    ))
    want = shape(twistd)
    assert want == shape(embedded)
    assert {"KubernetesSource", "LeaderElector", "ReplicaDiscovery"} <= set(want["children"])
    assert want["status_parts"] == ["controller", "discovery", "kubernetes", "leader", "routers"]
    assert want["catalog_pending"] is True
    assert want["controller"] == (["10.244.3.17"], 7780, "shop")
    assert want["leases"] == ("tcp:10.244.3.17:7702", "ops")


def test_the_tap_parses_options_into_the_config(kubeconfig: str,
                                                reactor: MemoryReactorClock) -> None:
    parsed = options("--kubeconfig", kubeconfig, "--advertise", "fd00::5", "--advertise-port",
                     "8080", "--no-controller", "--no-leader-elect", "--no-peer-discovery",
                     "--peer-listen", "tcp:7702", "--lease-namespace", "ops",
                     "--lease-duration", "30", "--retry-period", "5")
    config = router_tap.kubernetes_config(parsed)
    assert config is not None
    assert config.configuration is parsed["kube_configuration"]
    assert config.origin == parsed["kube_origin"]
    assert (config.namespace, config.controller, config.advertise, config.advertise_port,
            config.election, config.peer_discovery, config.peer_advertise,
            config.lease_namespace, config.lease_duration, config.retry_period) == (
        None, False, "fd00::5", 8080, None, False, "tcp:fd00\\:\\:5:7702", "ops", 30.0, 5.0)
    demo = str(Path(__file__).resolve().parent.parent / "examples" / "demo-catalog.yaml")
    assert router_tap.kubernetes_config(options("--catalog", demo)) is None


def test_without_kubernetes_nothing_is_watched(reactor: MemoryReactorClock) -> None:
    router = build_router(reactor, RouterConfig(catalog=Catalog.empty()))
    assert not [c for c in router if isinstance(c, KubernetesSource)]  # type: ignore[attr-defined]
    assert router.catalog_pending is False
    assert "kubernetes" not in router.status_parts
