"""
``edgemesh iptables install|remove|show``: the capture rules by hand, for an init container
(install, then run the edge with ``--transparent`` and no ``--capture``) and for debugging.
``install --dry-run`` prints the ``iptables-restore`` input without running anything.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ._defaults import (
    BACKENDS,
    DEFAULT_SERVICE_CIDR,
    DEFAULT_TRANSPARENT_PORT,
    DEFAULT_VIRTUAL_CIDR,
)
from ._iptables import Iptables, IptablesError
from ._rules import (
    CaptureRules,
    Exclusion,
    NatState,
    RulesError,
    install_script,
    parse_networks,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgemesh iptables",
        description="Install, remove or show the transparent-capture rules (nat table chains "
        "EDGEMESH-OUTPUT and EDGEMESH-PREROUTING). Needs root, except install --dry-run.",
    )
    parser.add_argument("--iptables", choices=BACKENDS, default="iptables",
                        help="iptables backend (default: the system's iptables)")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    install = actions.add_parser("install", help="install or repair the rules (idempotent)")
    install.add_argument("--port", type=int, default=DEFAULT_TRANSPARENT_PORT,
                         help=f"transparent listener port (default {DEFAULT_TRANSPARENT_PORT})")
    install.add_argument("--service-cidr", action="append", default=[],
                         help=f"captured service CIDR, repeatable (default {DEFAULT_SERVICE_CIDR})")
    install.add_argument("--virtual-cidr", default=str(DEFAULT_VIRTUAL_CIDR),
                         help="headless services' virtual-IP range ('none': not captured)")
    install.add_argument("--exclude", action="append", default=[], metavar="IP|CIDR|:PORT|IP:PORT",
                         help="traffic to leave alone, repeatable")
    install.add_argument("--mesh-port", action="append", type=int, default=[],
                         help="router/hub port never to capture, repeatable (default 7700, 7701)")
    install.add_argument("--no-prerouting", action="store_true",
                         help="capture this host's own traffic only (OUTPUT), "
                              "not bridged containers")
    install.add_argument("--dry-run", action="store_true",
                         help="print the iptables-restore input for an empty nat table; "
                              "change nothing")
    actions.add_parser("remove", help="remove the rules (nothing to do is not an error)")
    actions.add_parser("show", help="print the rules as they are now")
    return parser


def _rules(args: argparse.Namespace) -> CaptureRules:
    virtual = None
    if args.virtual_cidr.strip().lower() != "none":
        virtual = parse_networks([args.virtual_cidr], "--virtual-cidr")[0]
    return CaptureRules(
        port=args.port,
        service_cidrs=parse_networks(args.service_cidr or [str(DEFAULT_SERVICE_CIDR)],
                                     "--service-cidr"),
        virtual_cidr=virtual,
        exclude=tuple(Exclusion.parse(text) for text in args.exclude),
        mesh_ports=tuple(args.mesh_port or (7700, 7701)),
        hooks=("OUTPUT",) if args.no_prerouting else ("OUTPUT", "PREROUTING"),
    )


def main(argv: Sequence[str] | None = None, iptables: Iptables | None = None) -> int:
    args = _parser().parse_args(argv)
    out, err = sys.stdout, sys.stderr
    try:
        if args.action == "install" and args.dry_run:
            out.write(install_script(_rules(args), NatState()))
            return 0
        tables = iptables or Iptables(args.iptables)
        if args.action == "install":
            result = tables.install(_rules(args))
            print("repaired:" if result.repaired else "installed:", file=out)
            for line in result.rules:
                print(f"  {line}", file=out)
        elif args.action == "remove":
            removed = tables.remove()
            print(f"removed {len(removed)} rule(s)" if removed else "nothing to remove", file=out)
        else:
            lines = tables.show()
            for line in lines:
                print(line, file=out)
            if not lines:
                print("no edgemesh capture rules", file=err)
    except (RulesError, IptablesError) as error:
        print(f"edgemesh iptables: {error}", file=err)
        return 1
    return 0


iptables_main = main
"""``edgemesh iptables``, as the package exports it (capture/__init__, on first use)."""
