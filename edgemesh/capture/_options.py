"""
The edge's command-line options for capture and DNS (``twistd edgemesh-edge``), as a
mixin for its ``Options``:

    --capture                        install the iptables rules at start, remove them at stop
    --transparent tcp:15001:interface=127.0.0.1
                                     the transparent listener (alone: listener only, rules by hand)
    --service-cidr 10.96.0.0/12      repeatable; what is captured
    --virtual-cidr 240.240.0.0/16    headless services' virtual IPs ("none": not captured)
    --capture-exclude 10.96.0.1 | 10.96.0.0/28 | :22 | 10.96.0.10:53     repeatable
    --iptables iptables|iptables-nft|iptables-legacy
    --dns 169.254.96.16[:53]         the DNS server (UDP and TCP)
    --dns-upstream 10.0.0.2[:53]     repeatable; names that are not the mesh's
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any, ClassVar

from twisted.python import usage

from ..catalog import DEFAULT_HUB_PORT
from ..dns import DEFAULT_DNS_PORT, DNSConfig, DNSConfigError, parse_host_port
from ._defaults import BACKENDS, DEFAULT_SERVICE_CIDR, DEFAULT_TRANSPARENT, DEFAULT_VIRTUAL_CIDR

if TYPE_CHECKING:
    from ._service import CaptureConfig


def _virtual_cidr(value: str) -> ipaddress.IPv4Network | None:
    if value.strip().lower() == "none":
        return None
    from ._rules import parse_networks

    return parse_networks([value], "--virtual-cidr")[0]


class CaptureOptions(usage.Options):
    """Capture and DNS options; ``capture_settings()`` turns them into configs."""

    optFlags: ClassVar[list[Any]] = [
        ["capture", None,
         "Install the iptables capture rules at start (root), remove them at stop."],
    ]
    optParameters: ClassVar[list[Any]] = [
        ["transparent", None, None,
         ("Transparent listener for captured traffic (endpoint string; default with "
          f"--capture: {DEFAULT_TRANSPARENT}; bind beyond loopback for bridged containers).")],
        ["virtual-cidr", None, str(DEFAULT_VIRTUAL_CIDR),
         "Range for headless services' virtual IPs ('none': headless services not captured)."],
        ["iptables", None, "iptables", f"iptables backend: {', '.join(BACKENDS)}."],
        ["dns", None, None,
         "Run the DNS server on IP[:PORT], UDP and TCP (e.g. 169.254.96.16:53)."],
    ]

    def opt_service_cidr(self, value: str) -> None:
        """Service CIDR to capture (repeatable; default 10.96.0.0/12)."""
        self._append("service-cidr", value)

    def opt_capture_exclude(self, value: str) -> None:
        """Leave traffic alone: IP, CIDR, :PORT or IP:PORT (repeatable)."""
        self._append("capture-exclude", value)

    def opt_dns_upstream(self, value: str) -> None:
        """Upstream resolver IP[:PORT] for other names (repeatable; none: NXDOMAIN)."""
        self._append("dns-upstream", value)

    def _append(self, key: str, value: str) -> None:
        values: list[str] = self.setdefault(key, [])
        values.append(value)

    def capture_settings(self) -> tuple[CaptureConfig | None, DNSConfig | None]:
        """The capture and DNS configs these options ask for (None: not asked for)."""
        try:
            return self._capture(), self._dns()
        except DNSConfigError as error:
            raise usage.UsageError(str(error)) from None

    def _capture(self) -> CaptureConfig | None:
        install = bool(self["capture"])
        transparent = self["transparent"]
        if not install and transparent is None:
            for option in ("service-cidr", "capture-exclude"):
                if self.get(option):
                    raise usage.UsageError(f"--{option} needs --capture (or --transparent)")
            return None
        transparent = transparent or DEFAULT_TRANSPARENT
        if self["iptables"] not in BACKENDS:
            raise usage.UsageError(f"--iptables: expected one of {', '.join(BACKENDS)}")
        # The rules' module with --capture or --transparent only (an idle edge has neither).
        from ._rules import CaptureRules, Exclusion, RulesError, endpoint_port, parse_networks

        try:
            virtual = _virtual_cidr(self["virtual-cidr"])
            rules = None
            if install:
                port = endpoint_port(transparent)
                if port is None or port == 0:
                    raise usage.UsageError(
                        f"--transparent {transparent!r}: --capture needs a tcp:PORT endpoint "
                        "with a fixed port to redirect to"
                    )
                cidrs = parse_networks(self.get("service-cidr") or [str(DEFAULT_SERVICE_CIDR)],
                                       "--service-cidr")
                excludes = tuple(Exclusion.parse(v) for v in self.get("capture-exclude") or [])
                mesh_ports = [endpoint_port(self.get("router")), endpoint_port(self.get("hub"))]
                rules = CaptureRules(
                    port=port,
                    service_cidrs=cidrs,
                    virtual_cidr=virtual,
                    exclude=excludes,
                    mesh_ports=tuple(sorted({p for p in (*mesh_ports, DEFAULT_HUB_PORT) if p})),
                )
        except RulesError as error:
            raise usage.UsageError(str(error)) from None
        from ._service import CaptureConfig  # the transparent front etc.: only with capture

        return CaptureConfig(transparent=transparent, rules=rules, virtual_cidr=virtual,
                             iptables=self["iptables"])

    def _dns(self) -> DNSConfig | None:
        upstream_texts = self.get("dns-upstream") or []
        if self["dns"] is None:
            if upstream_texts:
                raise usage.UsageError("--dns-upstream needs --dns")
            return None
        host, port = parse_host_port(self["dns"], DEFAULT_DNS_PORT, "--dns")
        upstreams = tuple(parse_host_port(t, DEFAULT_DNS_PORT, "--dns-upstream")
                          for t in upstream_texts)
        return DNSConfig(address=host, port=port, upstreams=upstreams)
