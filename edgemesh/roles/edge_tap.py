"""``twistd edgemesh-edge``: an edge node's service bus."""

from __future__ import annotations

import os
from typing import Any, ClassVar

from twisted.application.service import IService
from twisted.python import usage

from ..capture import CaptureOptions
from ._heap import set_mmap_threshold
from ._node import EdgeConfig, build_edge, router_entry
from ._options import CommonOptions, check_endpoint, check_node_name
from ._resilience import second_signal_cuts_the_drain


class Options(CommonOptions, CaptureOptions):
    """``twistd edgemesh-edge``'s command line, parsed into an EdgeConfig."""

    synopsis = (
        "--node NAME --state-dir DIR "
        "(--tls-dir DIR | --ca FILE --cert FILE --key FILE | --insecure) "
        "[--router tcp:HOST:7700] [--proxy tcp:7781:interface=127.0.0.1] [--hub tcp:7701] "
        "[--catalog FILE] [--admin tcp:7791]"
    )
    longdesc = (
        "The edgemesh edge service bus: local apps, pods on this node, other edges and the router.")
    optParameters: ClassVar[list[Any]] = [
        ["node", None, None, "This edge's node name (as in the catalog)."],
        ["state-dir", None, None, "Directory for the persisted catalog."],
        ["proxy", None, "tcp:7781", "The service bus listener for local apps (endpoint string)."],
        ["hub", None, "tcp:7701", "Where other edges connect (endpoint string)."],
        ["catalog", None, None, "Catalog to start from when the state directory holds none."],
        ["router-name", None, "router",
         "The router's node name (its TLS certificate must name it)."],
        ["outbound", None, "deny", (
            "CONNECT to a name the catalog does not know: deny (the mesh's 404) or allow "
            "(a direct TCP connection from this node, Istio's ALLOW_ANY).")],
    ]

    def opt_router(self, value: str) -> None:
        """A router's tunnel (client endpoint string, e.g. tcp:10.0.0.1:7700), optionally
        NAME=ENDPOINT (the replica's certificate name; default --router-name; * for any
        router certificate of the CA).  Repeatable: router replicas, dialled in turn (a
        tunnel that dies moves to the next one).  tcp:NAME:PORT with a DNS name (e.g. a
        headless Service) is resolved by the edge: every address is a replica, dialled in
        turn, and the name is resolved again once all were tried."""
        self.setdefault("routers", []).append(value)

    def check_routers(self, routers: list[str]) -> None:
        """Each --router: a node name (when given, NAME=) and a client endpoint string."""
        for entry in routers:
            if entry.startswith("="):
                check_node_name("--router", "", entry)  # router_entry would dial "=tcp:..."
            name, endpoint = router_entry(entry, self["router-name"])
            check_node_name("--router", name, entry, any_name=True)
            check_endpoint("--router", entry, server=False, used=endpoint)

    def postOptions(self) -> None:
        routers = self.get("routers", [])
        self["router"] = routers[0] if routers else None
        self["more_routers"] = tuple(routers[1:])
        if self["node"] is None:
            raise usage.UsageError("--node NAME is required")
        check_node_name("--node", self["node"])
        if not self["state-dir"]:
            raise usage.UsageError("--state-dir DIR is required")
        if self["outbound"] not in ("allow", "deny"):
            raise usage.UsageError(f"--outbound must be allow or deny, not {self['outbound']!r}")
        check_node_name("--router-name", self["router-name"], any_name=True)
        self.check_routers(routers)
        self.check_listeners("proxy", "hub", "transparent")
        self.check_resilience()
        try:
            os.makedirs(self["state-dir"], exist_ok=True)
        except OSError as error:
            why = ("not a directory" if os.path.exists(self["state-dir"])
                   and not os.path.isdir(self["state-dir"]) else error.strerror)
            raise usage.UsageError(f"--state-dir {self['state-dir']}: {why}") from None
        self["catalog_value"] = self.load_catalog(self["catalog"]) if self["catalog"] else None
        self["tls_value"] = self.tls_config(self["node"], "edge")
        self["wire_value"] = self.wire_limits()
        self["capture_value"], self["dns_value"] = self.capture_settings()


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    set_mmap_threshold(options["malloc-mmap-threshold"])  # the process is the mesh's alone

    config = EdgeConfig(
        node=options["node"],
        state_dir=options["state-dir"],
        router=options["router"],
        routers=options["more_routers"],
        proxy=options["proxy"],
        hub=options["hub"],
        catalog=options["catalog_value"],
        admin=options["admin"],
        front=options.front_limits(),
        wire=options["wire_value"],
        connect_timeout=options["connect-timeout"],
        request_timeout=options["request-timeout"],
        pool_idle_timeout=options["pool-idle-timeout"],
        tls=options["tls_value"],
        router_name=options["router-name"],
        capture=options["capture_value"],
        dns=options["dns_value"],
        observability=options.observability_config(),
        resilience=options.resilience(),
        outbound=options["outbound"],
        freeze_heap=True,  # twistd: this process is the mesh's alone
        malloc_trim_interval=options["malloc-trim-interval"],
        splice=not options["no-splice"],
    )
    node = build_edge(reactor, config)
    second_signal_cuts_the_drain(reactor, node)  # twistd: the process is the node's alone
    return node
