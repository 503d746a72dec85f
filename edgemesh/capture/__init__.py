"""Transparent capture on the edge: iptables REDIRECT of the service CIDR to a listener
that reads SO_ORIGINAL_DST, virtual IPs for headless services, and the rules' lifetime."""

import importlib
from typing import TYPE_CHECKING

from ._options import CaptureOptions

if TYPE_CHECKING:
    from ._cli import main as iptables_main
    from ._iptables import BACKENDS, InstallResult, Iptables, IptablesError, run_subprocess
    from ._rules import (
        CHAINS,
        DEFAULT_SERVICE_CIDR,
        DEFAULT_TRANSPARENT,
        DEFAULT_TRANSPARENT_PORT,
        DEFAULT_VIRTUAL_CIDR,
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

_LAZY = {
    "iptables_main": ("_cli", "main"),
    "BACKENDS": ("_iptables", "BACKENDS"),
    "InstallResult": ("_iptables", "InstallResult"),
    "Iptables": ("_iptables", "Iptables"),
    "IptablesError": ("_iptables", "IptablesError"),
    "run_subprocess": ("_iptables", "run_subprocess"),
    "CHAINS": ("_rules", "CHAINS"),
    "DEFAULT_SERVICE_CIDR": ("_rules", "DEFAULT_SERVICE_CIDR"),
    "DEFAULT_TRANSPARENT_PORT": ("_rules", "DEFAULT_TRANSPARENT_PORT"),
    "DEFAULT_VIRTUAL_CIDR": ("_rules", "DEFAULT_VIRTUAL_CIDR"),
    "OUTPUT_CHAIN": ("_rules", "OUTPUT_CHAIN"),
    "PREROUTING_CHAIN": ("_rules", "PREROUTING_CHAIN"),
    "CaptureRules": ("_rules", "CaptureRules"),
    "Exclusion": ("_rules", "Exclusion"),
    "NatState": ("_rules", "NatState"),
    "RulesError": ("_rules", "RulesError"),
    "chain_body": ("_rules", "chain_body"),
    "expected": ("_rules", "expected"),
    "install_script": ("_rules", "install_script"),
    "parse_nat": ("_rules", "parse_nat"),
    "remove_script": ("_rules", "remove_script"),
    "shown": ("_rules", "shown"),
    "DEFAULT_TRANSPARENT": ("_rules", "DEFAULT_TRANSPARENT"),
    "CaptureConfig": ("_service", "CaptureConfig"),
    "CaptureRulesService": ("_service", "CaptureRulesService"),
    "attach_capture": ("_service", "attach_capture"),
    "attach_capture_dns": ("_service", "attach_capture_dns"),
    "service_addresses": ("_service", "service_addresses"),
    "SO_ORIGINAL_DST": ("_sockopt", "SO_ORIGINAL_DST"),
    "original_destination": ("_sockopt", "original_destination"),
    "parse_sockaddr_in": ("_sockopt", "parse_sockaddr_in"),
    "CapturedConnection": ("_transparent", "CapturedConnection"),
    "TransparentFrontFactory": ("_transparent", "TransparentFrontFactory"),
    "TransparentFrontProtocol": ("_transparent", "TransparentFrontProtocol"),
    "VIRTUAL_IPS_FILE": ("_vips", "VIRTUAL_IPS_FILE"),
    "ServiceAddresses": ("_vips", "ServiceAddresses"),
    "VirtualIPs": ("_vips", "VirtualIPs"),
    "assign_virtual_ips": ("_vips", "assign_virtual_ips"),
    "home_offset": ("_vips", "home_offset"),
}


def __getattr__(name: str) -> object:
    # An edge without --capture needs only CaptureOptions: the rules, iptables, the
    # transparent front and the virtual IPs (~0.2 MiB of RssAnon) load on first use.
    found = _LAZY.get(name)
    if found is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attribute = found
    value = getattr(importlib.import_module(f"{__name__}.{module}"), attribute)
    globals()[name] = value
    return value


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
