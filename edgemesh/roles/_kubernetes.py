"""
The router's Kubernetes wiring, typed: where the API server is, what to watch, whether to
write EndpointSlices (and who of several replicas does, by a Lease), and replica discovery.
``build_router`` wires it from ``RouterConfig.kubernetes``; ``twistd edgemesh-router`` only
parses its options into it, so an application that embeds the router builds the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

if TYPE_CHECKING:
    from ..sources import KubernetesSource, LeaseElection
    from ._router import RouterNode

__all__ = ["KubernetesConfig", "attach_kubernetes"]

log = Logger(namespace="edgemesh.roles.kubernetes")


@dataclass(frozen=True)
class KubernetesConfig:
    """The router's catalog from the Kubernetes API (Nodes, Services, EndpointSlices,
    watched) and what it writes back there."""

    configuration: Any
    """The API client's configuration (``edgemesh.sources.load_configuration``: a
    kubeconfig and its context, or the in-cluster service account); see ``load``."""
    origin: tuple[str, str | None] | None = None
    """Where that configuration came from and which CA it trusts, in words (for error
    messages); None: not said."""
    namespace: str | None = None
    """Watch Services and EndpointSlices of this namespace only; None: all namespaces."""
    controller: bool = True
    """Write the EndpointSlices that send cloud traffic for edge services to this router
    (needs ``advertise``)."""
    advertise: str | None = None
    """The IP address cloud traffic reaches this router at (the controller's, and this
    replica's in its Lease); None: controller off (a warning)."""
    advertise_port: int | None = None
    """The port for it; None: the port of ``RouterConfig.http``."""
    election: LeaseElection | None = None
    """Of several replicas, only the holder of this Lease runs the controller; None: this
    router runs it alone."""
    peer_discovery: bool = True
    """With ``RouterConfig.peer_listen``: publish this replica's Lease and link to the
    replicas listed by theirs (else ``peer_routers`` only)."""
    peer_advertise: str | None = None
    """Where the other replicas reach this one's ``peer_listen`` (client endpoint string);
    None: discovery off (a warning)."""
    lease_namespace: str = "default"
    """The namespace of the replicas' Leases (the election's, when there is one)."""
    lease_duration: float = 15.0
    """Seconds a replica's Lease holds without renewal."""
    retry_period: float = 2.0
    """Seconds between renewals of the replica's Lease and lookups of the others'."""
    stream_ports: tuple[int, int] | None = None
    """``--stream-ports``: (low, high) router ports for the stream ports of edge services,
    written into their EndpointSlices and listened on by every replica; None: stream ports
    stay on the HTTP port (cloud apps reach them by CONNECT only)."""
    stream_interface: str | None = None
    """Where the stream ports listen; None: the interface of ``RouterConfig.http`` (all
    interfaces if it names none)."""

    @classmethod
    def load(
        cls,
        kubeconfig: str | None = None,
        *,
        in_cluster: bool = False,
        context: str | None = None,
        **options: Any,
    ) -> KubernetesConfig:
        """The configuration of a kubeconfig file (and context) or of the in-cluster
        service account, with the other fields as given."""
        from ..sources import load_configuration

        configuration = load_configuration(kubeconfig, in_cluster, context)
        return cls(configuration, **options)


def attach_kubernetes(router: RouterNode, reactor: Any, config: KubernetesConfig) -> None:
    """Start watching (and controlling, and discovering) as services of ``router``."""
    from ..sources import EdgeServiceController, KubernetesSource, TreqKubeAPI, http_port

    origin, ca = config.origin or (None, None)
    api = TreqKubeAPI(reactor, config.configuration, origin=origin, ca=ca)
    source = KubernetesSource(reactor, api, namespace=config.namespace)
    source.subscribe(router.set_catalog)
    source.setServiceParent(router)  # type: ignore[no-untyped-call]
    readiness = router.observer.readiness

    # /readyz says why the watch is not ready (401, 403 on what, TLS against which CA).
    def gate(ready: bool, why: str) -> None:
        readiness.set("kubernetes", ready, why)

    source.on_readiness = gate
    gate(*source.readiness())
    status_parts = router.status_parts
    status_parts["kubernetes"] = source.status
    address = config.advertise
    port = config.advertise_port or http_port(router.config.http)
    controller: EdgeServiceController | None = None
    if config.controller and address and port:
        controller = EdgeServiceController(reactor, api, [address], port,
                                           namespace=config.namespace,
                                           stream_ports=config.stream_ports)
        source.subscribe(controller.catalog_changed)
        status_parts["controller"] = controller.status
        if config.election is None:
            controller.setServiceParent(router)  # type: ignore[no-untyped-call]
        else:
            # Of several replicas, only the Lease's holder runs the controller.
            from ..sources import LeaderElector

            elector = LeaderElector(reactor, api, config.election, controller)
            elector.setServiceParent(router)  # type: ignore[no-untyped-call]
            status_parts["leader"] = elector.status
    elif config.controller:
        log.warn("no --advertise address (nor $POD_IP), or no HTTP port: cloud apps "
                 "cannot reach edge services through this router (controller off)")
    if config.stream_ports is not None:
        from ._streamports import StreamPortListeners, interface_of

        interface = config.stream_interface or interface_of(router.config.http)
        listeners = StreamPortListeners(router, api, config.stream_ports, interface,
                                        namespace=config.namespace, limits=router.config.front)
        listeners.setServiceParent(router)  # type: ignore[no-untyped-call]
        status_parts["stream_ports"] = listeners.status
    if router.config.peer_listen and config.peer_discovery:
        _attach_discovery(router, reactor, config, source, controller)


def _attach_discovery(
    router: RouterNode,
    reactor: Any,
    config: KubernetesConfig,
    source: KubernetesSource,
    controller: Any,
) -> None:
    """One Lease per replica (sources/_discovery.py): publish ours, link to the others."""
    from ..sources import ReplicaDiscovery, ReplicaLeases

    endpoint = config.peer_advertise
    if endpoint is None:
        log.warn("no --peer-advertise (nor --advertise / $POD_IP): the other replicas "
                 "cannot find this one (replica discovery off)")
        return
    namespace = (config.election.namespace if config.election is not None
                 else config.lease_namespace)
    address = config.advertise
    leases = ReplicaLeases(router.config.node, endpoint, namespace, config.lease_duration,
                           address)
    static = list(router.config.peer_routers)

    def found(peers: list[Any]) -> None:
        router.set_peers(static + [(p.node, p.endpoint) for p in peers])
        if controller is not None and address:
            # Cloud traffic for edge services may enter at any live replica.
            controller.set_addresses([address, *(p.address for p in peers if p.address)])

    discovery = ReplicaDiscovery(reactor, source.api, leases, found, config.retry_period)
    discovery.setServiceParent(router)  # type: ignore[no-untyped-call]
    router.status_parts["discovery"] = discovery.status
