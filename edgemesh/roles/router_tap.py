"""``twistd edgemesh-router``: the cloud router."""

from __future__ import annotations

import os
from typing import Any, ClassVar

from twisted.application.service import IService
from twisted.python import usage

from ..catalog import Catalog, Scope, ScopeError
from ..sources import KubernetesOptions, http_port, service_account_namespace
from ._heap import set_mmap_threshold
from ._kubernetes import KubernetesConfig
from ._options import CommonOptions, check_endpoint, check_node_name
from ._resilience import second_signal_cuts_the_drain
from ._router import RouterConfig, build_router


class Options(CommonOptions, KubernetesOptions):
    """``twistd edgemesh-router``'s command line, parsed into a RouterConfig."""

    synopsis = (
        "(--catalog FILE | --kubeconfig FILE | --in-cluster) [--namespace NS] "
        "(--tls-dir DIR | --ca FILE --cert FILE --key FILE | --insecure) "
        "[--tunnel tcp:7700] [--http tcp:7780] [--admin tcp:7790]"
    )
    longdesc = ("The edgemesh cloud router: accepts edge tunnels and routes cloud apps to edge "
                "services.")
    optParameters: ClassVar[list[Any]] = [
        ["catalog", None, None, "Kubernetes objects (YAML or JSON) describing nodes and services."],
        ["node", None, "router", "This router's node name."],
        ["tunnel", None, "tcp:7700", "Where edges connect (endpoint string)."],
        ["http", None, "tcp:7780",
         "Where cloud apps send HTTP for edge services (endpoint string)."],
        ["edge-scope", None, "all", ("The Services each edge receives: 'all', or 'local' (the "
                                     "namespaces with endpoints on that node) and/or namespace "
                                     "names; Services annotated edgemesh.io/export=true always. "
                                     "A Node's edgemesh.io/scope annotation overrides it.")],
        ["edge-endpoints", None, "all", ("'trimmed': edges that can read it receive, for other "
                                         "edge nodes, one aggregate entry per node (count, "
                                         "conditions, zone, hints) instead of every pod, and "
                                         "that node picks the pod; 'all': every endpoint.")],
        ["peer-listen", None, None, ("Where other router replicas connect (endpoint string, e.g. "
                                     "tcp:7702); default: no router links in.")],
        ["peer-advertise", None, None, (
            "Where the other replicas reach --peer-listen, published in this replica's Lease "
            "(client endpoint string; default: tcp:$POD_IP (or --advertise):the --peer-listen "
            "port).")],
    ]
    optFlags: ClassVar[list[Any]] = [
        ["no-peer-discovery", None, ("With Kubernetes and --peer-listen: do not publish this "
                                     "replica's Lease nor link to the replicas listed by theirs "
                                     "(--peer-router only).")],
    ]

    def opt_peer_router(self, value: str) -> None:
        """Another router replica: NAME=ENDPOINT (its node name and its --peer-listen, e.g.
        router-b=tcp:10.0.0.2:7702).  Repeatable; the same list may go to every replica
        (its own name is skipped); of each pair, the smaller name dials."""
        name, sep, endpoint = value.partition("=")
        if not sep or not name or ":" in name or not endpoint:
            raise usage.UsageError(f"--peer-router {value!r}: expected NAME=ENDPOINT")
        check_node_name("--peer-router", name, value)
        check_endpoint("--peer-router", value, server=False, used=endpoint)
        self.setdefault("peer_routers_value", []).append((name, endpoint))

    def postOptions(self) -> None:
        self.check_kubernetes()
        if self.kubernetes_requested() and self["catalog"]:
            source = "--in-cluster" if self["in-cluster"] else "--kubeconfig"
            raise usage.UsageError(f"--catalog and {source} exclude each other: the catalog "
                                   "comes from a file or from the Kubernetes API, not both")
        if not self.kubernetes_requested() and not self["catalog"]:
            raise usage.UsageError(
                "--catalog FILE is required (or --kubeconfig FILE or --in-cluster)")
        check_node_name("--node", self["node"])
        self.check_listeners("tunnel", "http", "peer-listen")
        if self["peer-advertise"]:
            check_endpoint("--peer-advertise", self["peer-advertise"], server=False)
        self.check_resilience()
        # With Kubernetes, the catalog comes once the watch has listed everything.
        self["catalog_value"] = (self.load_catalog(self["catalog"]) if self["catalog"]
                                 else Catalog.empty())
        self["tls_value"] = self.tls_config(self["node"], "router")
        self["wire_value"] = self.wire_limits()
        ports = self.get("stream_ports_value")
        if ports is not None:
            taken = [(name, http_port(self[name])) for name in ("http", "tunnel", "admin")]
            for name, port in taken:
                if port is not None and ports[0] <= port <= ports[1]:
                    raise usage.UsageError(f"--stream-ports {ports[0]}-{ports[1]} holds the "
                                           f"--{name} port {port}")
        try:
            self["edge_scope_value"] = Scope.parse(self["edge-scope"])
        except ScopeError as error:
            raise usage.UsageError(f"--edge-scope: {error}") from None
        if self["edge-endpoints"] not in ("all", "trimmed"):
            raise usage.UsageError("--edge-endpoints: 'all' or 'trimmed'")


def kubernetes_config(options: Options) -> KubernetesConfig | None:
    """The Kubernetes wiring the options ask for (None: ``--catalog`` alone)."""
    if not options.kubernetes_requested():
        return None
    election = options.get("election_value")
    if election is not None:
        lease_namespace = election.namespace
    else:
        lease_namespace = (options["lease-namespace"] or os.environ.get("POD_NAMESPACE")
                           or service_account_namespace() or "default")
    return KubernetesConfig(
        configuration=options["kube_configuration"],
        origin=options.get("kube_origin"),
        namespace=options["namespace"],
        controller=not options["no-controller"],
        advertise=options.get("advertise_value"),
        advertise_port=options["advertise-port"],
        election=election,
        peer_discovery=not options["no-peer-discovery"],
        peer_advertise=peer_advertise(options),
        lease_namespace=lease_namespace,
        lease_duration=options["lease-duration"],
        retry_period=options["retry-period"],
        stream_ports=options.get("stream_ports_value"),
        stream_interface=options["stream-interface"],
    )


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    set_mmap_threshold(options["malloc-mmap-threshold"])  # the process is the mesh's alone

    config = RouterConfig(
        catalog=options["catalog_value"],
        node=options["node"],
        tunnel=options["tunnel"],
        http=options["http"],
        admin=options["admin"],
        front=options.front_limits(),
        wire=options["wire_value"],
        connect_timeout=options["connect-timeout"],
        request_timeout=options["request-timeout"],
        pool_idle_timeout=options["pool-idle-timeout"],
        tls=options["tls_value"],
        catalog_pending=options.kubernetes_requested(),
        observability=options.observability_config(),
        resilience=options.resilience(),
        edge_scope=options["edge_scope_value"],
        trim_endpoints=options["edge-endpoints"] == "trimmed",
        peer_listen=options["peer-listen"],
        peer_routers=tuple(options.get("peer_routers_value", [])),
        kubernetes=kubernetes_config(options),
        freeze_heap=True,  # twistd: this process is the mesh's alone
        malloc_trim_interval=options["malloc-trim-interval"],
        splice=not options["no-splice"],
    )
    node = build_router(reactor, config)
    second_signal_cuts_the_drain(reactor, node)  # twistd: the process is the node's alone
    return node


def peer_advertise(options: Options) -> str | None:
    """The endpoint the other replicas dial: --peer-advertise, else the advertised IP and
    the --peer-listen port (None: not enough to say)."""
    if options["peer-advertise"]:
        return str(options["peer-advertise"])
    address = options.get("advertise_value")
    port = http_port(options["peer-listen"])
    if not address or port is None:
        return None
    host = address.replace(":", "\\:")  # an IPv6 address: escaped in an endpoint string
    return f"tcp:{host}:{port}"
