"""The ``edgemesh`` command: one subcommand per tool, each imported only when it runs."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse


def _demo(argv: list[str]) -> int:
    from edgemesh.cli._demo import main as demo_main

    return demo_main(argv)


def _certs(argv: list[str]) -> int:
    from edgemesh.cli._certs import main as certs_main

    return certs_main(argv)


def _iptables(argv: list[str]) -> int:
    from edgemesh.capture import iptables_main

    return iptables_main(argv)


def _twistd(argv: list[str]) -> int:
    from edgemesh.roles import twistd_main

    return twistd_main(argv)


# name -> (one-line help, runner given every argument after the name, untouched).
_COMMANDS: dict[str, tuple[str, Callable[[list[str]], int]]] = {
    "demo": ("start a small mesh on loopback and send requests through it", _demo),
    "certs": ("make a CA and node certificates for mutual TLS between nodes", _certs),
    "iptables": ("install, remove or show the transparent-capture iptables rules", _iptables),
    "twistd": ("twistd with only edgemesh's plugins: no plugin scan, less memory", _twistd),
}


def _parser() -> argparse.ArgumentParser:
    import argparse  # not at the top: `edgemesh twistd` (a node) never parses with it

    parser = argparse.ArgumentParser(
        prog="edgemesh",
        description="A service mesh for edge computing. The long-running roles are twistd plugins: "
        "`twistd edgemesh-router`, `twistd edgemesh-edge`.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (summary, _) in _COMMANDS.items():
        # add_help=False: `edgemesh demo --help` is the subcommand's own help, not ours.
        commands.add_parser(name, help=summary, description=summary, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``edgemesh COMMAND [ARGS...]``; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["twistd"]:
        # A long-running node: argparse and this parser stay out of its memory.
        return _twistd(argv[1:])
    # parse_known_args keeps the subcommand's own arguments, in order, for it to parse.
    args, rest = _parser().parse_known_args(argv)
    _, run = _COMMANDS[args.command]
    return run(rest)
