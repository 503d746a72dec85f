"""
Capture on an edge node: the transparent listener, the iptables rules' lifetime, and the
service addresses (clusterIPs and virtual IPs) that DNS shares.

``attach_capture`` adds to an edge node (any ``CaptureHost``: roles' ``EdgeNode`` is the one
twistd builds), in this order (a MultiService starts its
children in order and stops them in reverse):

1. the transparent listener (a Source of kind service-bus), bound in
   ``privilegedStartService`` like every listener;
2. when rules are configured, ``CaptureRulesService``: installs them once the listener
   is bound (installing before would refuse the captured connections meanwhile), repairing
   whatever a crashed process left behind, and removes them on a clean stop.  If the
   install fails (no root, no iptables) the edge does not start: capture was asked for.
   After a crash the rules stay and captured connections are refused at once (nothing
   listens on the port) until the edge is back: they fail closed and fast, never leak.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from twisted.application.service import Service
from twisted.logger import Logger

from ..exchange import SourceKind
from ..routing import Pipeline
from ..transports import FrontLimits
from ._defaults import DEFAULT_TRANSPARENT, DEFAULT_VIRTUAL_CIDR
from ._iptables import Iptables, IptablesError
from ._rules import CaptureRules
from ._transparent import OriginalDestination, TransparentFrontFactory, socket_original_destination
from ._vips import VIRTUAL_IPS_FILE, ServiceAddresses, VirtualIPs

if TYPE_CHECKING:
    from ..dns import DNSConfig

log = Logger()


class _HostConfig(Protocol):
    @property
    def state_dir(self) -> str: ...
    @property
    def front(self) -> FrontLimits: ...


class CaptureHost(Protocol):
    """What capture (and DNS) need of the node they attach to: a seam, so that this layer
    never imports the roles that compose it.  Services are added with ``setServiceParent``,
    so a host is also an ``IServiceCollection``."""

    @property
    def reactor(self) -> Any: ...
    @property
    def config(self) -> _HostConfig: ...
    @property
    def pipeline(self) -> Pipeline: ...

    def listen(self, name: str, kind: SourceKind, description: str, factory: Any) -> Any:
        """Add a listener (a Source of ``kind``) bound like every other of the node."""


@dataclass(frozen=True)
class CaptureConfig:
    """Transparent capture on an edge."""

    transparent: str = DEFAULT_TRANSPARENT
    """The transparent listener (server endpoint string); the rules REDIRECT to its port."""
    rules: CaptureRules | None = None
    """The iptables rules to install while the edge runs; None: the listener only (rules
    installed by hand or by an init container: ``edgemesh iptables install``)."""
    virtual_cidr: ipaddress.IPv4Network | None = DEFAULT_VIRTUAL_CIDR
    """Headless services' virtual IPs; None: headless services are not captured."""
    iptables: str = "iptables"
    """The backend: iptables, iptables-nft or iptables-legacy."""
    lookup: OriginalDestination = field(default=socket_original_destination, compare=False)
    """How a connection's original destination is read (tests replace it)."""


class CaptureRulesService(Service):
    """Installs the capture rules at start (idempotently, repairing), removes them at stop."""

    def __init__(self, iptables: Iptables, rules: CaptureRules) -> None:
        self.iptables = iptables
        self.rules = rules
        self.installed = False

    def privilegedStartService(self) -> None:
        super().privilegedStartService()  # type: ignore[no-untyped-call]
        self._install()

    def startService(self) -> None:
        if not self.installed:
            self._install()
        super().startService()  # type: ignore[no-untyped-call]

    def _install(self) -> None:
        result = self.iptables.install(self.rules)  # raises: the edge must not start without
        self.installed = True
        captured = ", ".join(str(n) for n in self.rules.captured)
        log.info(
            "capture rules {how} ({backend}): TCP to {captured} redirected to port {port}; "
            "{count} rules",
            how="repaired" if result.repaired else "installed",
            backend=self.iptables.command,
            captured=captured,
            port=self.rules.port,
            count=len(result.rules),
        )

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        if not self.installed:
            return
        self.installed = False
        try:
            removed = self.iptables.remove(self.rules.chains)
        except IptablesError as error:
            log.error("capture rules not removed: {error}", error=str(error))
            return
        log.info("capture rules removed ({count})", count=len(removed))


def service_addresses(node: CaptureHost,
                      virtual_cidr: ipaddress.IPv4Network | None) -> ServiceAddresses:
    """Addresses for ``node``'s live catalog; virtual IPs persisted in its state directory."""
    virtual = None
    if virtual_cidr is not None:
        virtual = VirtualIPs(virtual_cidr, os.path.join(node.config.state_dir, VIRTUAL_IPS_FILE))
    pipeline = node.pipeline
    return ServiceAddresses(lambda: pipeline.catalog, virtual)


def _loopback_only(description: str) -> bool:
    for part in description.split(":")[1:]:
        key, _, value = part.partition("=")
        if key == "interface":
            return value.startswith("127.") or value in ("::1", "localhost")
    return False


def attach_capture(
    node: CaptureHost, config: CaptureConfig, addresses: ServiceAddresses | None = None
) -> ServiceAddresses:
    """Add the transparent listener (and the rules' service) to ``node``; returns the
    service addresses it resolves original destinations with (DNS answers from the same)."""
    if addresses is None:
        addresses = service_addresses(node, config.virtual_cidr)
    factory = TransparentFrontFactory(
        node.reactor,
        addresses,
        node.pipeline.dispatch_resolved,
        node.config.front,
        config.lookup,
        node.pipeline.dispatch_stream_resolved,
    )
    node.listen("transparent", SourceKind.service_bus, config.transparent, factory)
    if config.rules is not None and "PREROUTING" in config.rules.hooks and _loopback_only(
        config.transparent
    ):
        # PREROUTING's REDIRECT goes to the incoming interface's address (a bridge's, for
        # containers), where a loopback listener is not: only this host's apps are captured.
        log.warn("transparent listener {where} is on loopback: traffic from containers behind "
                 "a bridge (PREROUTING) is refused; bind it beyond loopback to capture that too",
                 where=config.transparent)
    if config.rules is not None:
        rules_service = CaptureRulesService(Iptables(config.iptables), config.rules)
        rules_service.setServiceParent(node)  # type: ignore[no-untyped-call]
    return addresses


def attach_capture_dns(node: CaptureHost, capture: CaptureConfig | None,
                       dns: DNSConfig | None) -> None:
    """What ``build_edge`` calls: capture and/or DNS sharing one view of service addresses
    (virtual IPs exist only with capture: without it they would lead nowhere)."""
    addresses = service_addresses(node, capture.virtual_cidr if capture is not None else None)
    if capture is not None:
        attach_capture(node, capture, addresses)
    if dns is not None:
        from ..dns import attach_dns

        attach_dns(node, dns, addresses)
