"""Transparent capture on the edge: iptables REDIRECT of the service CIDR to a listener
that reads SO_ORIGINAL_DST, virtual IPs for headless services, and the rules' lifetime."""

from typing import TYPE_CHECKING

from .._lazy import lazy_names
from ._defaults import (
    BACKENDS,
    DEFAULT_SERVICE_CIDR,
    DEFAULT_TRANSPARENT,
    DEFAULT_TRANSPARENT_PORT,
    DEFAULT_VIRTUAL_CIDR,
)
from ._options import CaptureOptions

if TYPE_CHECKING:
    from ._cli import iptables_main
    from ._iptables import InstallResult, Iptables, IptablesError, run_subprocess
    from ._rules import (
        CHAINS,
        OUTPUT_CHAIN,
        PREROUTING_CHAIN,
        CaptureRules,
        Exclusion,
        NatState,
        RulesError,
        chain_body,
        expected,
        install_script,
        parse_nat,
        remove_script,
        shown,
    )
    from ._service import (
        CaptureConfig,
        CaptureRulesService,
        attach_capture,
        attach_capture_dns,
        service_addresses,
    )
    from ._sockopt import SO_ORIGINAL_DST, original_destination, parse_sockaddr_in
    from ._transparent import CapturedConnection, TransparentFrontFactory, TransparentFrontProtocol
    from ._vips import (
        VIRTUAL_IPS_FILE,
        ServiceAddresses,
        VirtualIPs,
        assign_virtual_ips,
        home_offset,
    )


# An edge without --capture needs only CaptureOptions (and the defaults): the rules,
# iptables, the transparent front and the virtual IPs (~0.3 MiB of RssAnon) load on first use.
__getattr__ = lazy_names(__name__, {
    "._cli": ("iptables_main",),
    "._iptables": ("InstallResult", "Iptables", "IptablesError", "run_subprocess"),
    "._rules": ("CHAINS", "OUTPUT_CHAIN", "PREROUTING_CHAIN", "CaptureRules", "Exclusion",
                "NatState", "RulesError", "chain_body", "expected", "install_script",
                "parse_nat", "remove_script", "shown"),
    "._service": ("CaptureConfig", "CaptureRulesService", "attach_capture",
                  "attach_capture_dns", "service_addresses"),
    "._sockopt": ("SO_ORIGINAL_DST", "original_destination", "parse_sockaddr_in"),
    "._transparent": ("CapturedConnection", "TransparentFrontFactory",
                      "TransparentFrontProtocol"),
    "._vips": ("VIRTUAL_IPS_FILE", "ServiceAddresses", "VirtualIPs", "assign_virtual_ips",
               "home_offset"),
}, globals())

__all__ = [
    "BACKENDS",
    "CHAINS",
    "DEFAULT_SERVICE_CIDR",
    "DEFAULT_TRANSPARENT",
    "DEFAULT_TRANSPARENT_PORT",
    "DEFAULT_VIRTUAL_CIDR",
    "OUTPUT_CHAIN",
    "PREROUTING_CHAIN",
    "SO_ORIGINAL_DST",
    "VIRTUAL_IPS_FILE",
    "CaptureConfig",
    "CaptureOptions",
    "CaptureRules",
    "CaptureRulesService",
    "CapturedConnection",
    "Exclusion",
    "InstallResult",
    "Iptables",
    "IptablesError",
    "NatState",
    "RulesError",
    "ServiceAddresses",
    "TransparentFrontFactory",
    "TransparentFrontProtocol",
    "VirtualIPs",
    "assign_virtual_ips",
    "attach_capture",
    "attach_capture_dns",
    "chain_body",
    "expected",
    "home_offset",
    "install_script",
    "iptables_main",
    "original_destination",
    "parse_nat",
    "parse_sockaddr_in",
    "remove_script",
    "run_subprocess",
    "service_addresses",
    "shown",
]
