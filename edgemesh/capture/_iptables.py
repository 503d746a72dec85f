"""
Applying, removing and showing the capture rules with ``iptables-save`` and
``iptables-restore --noflush`` subprocesses (the text comes from ``_rules``).

``command`` picks the backend: ``iptables`` (whatever the system's alternative points
at), ``iptables-nft`` or ``iptables-legacy``; ``-save`` and ``-restore`` are appended.
Use the backend the rest of the host uses (kube-proxy, docker): rules split across both
are evaluated in an order nobody chose.

The calls block (a few milliseconds each): the edge makes them when it starts and stops,
as it binds its ports, and the CLI makes them by hand.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ._defaults import BACKENDS
from ._rules import CHAINS, CaptureRules, expected, install_script, parse_nat, remove_script, shown

Runner = Callable[[Sequence[str], str | None], tuple[int, str, str]]
"""Run argv with optional stdin text; (exit status, stdout, stderr)."""

TIMEOUT = 30.0
"""Seconds for one iptables call (the legacy backend waits for the xtables lock)."""


class IptablesError(RuntimeError):
    """An iptables command failed or is missing; the message says which and why."""


def run_subprocess(argv: Sequence[str], stdin: str | None) -> tuple[int, str, str]:
    try:
        done = subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, timeout=TIMEOUT, check=False
        )
    except FileNotFoundError:
        raise IptablesError(f"{argv[0]}: not found (install the iptables package)") from None
    except subprocess.TimeoutExpired:
        raise IptablesError(f"{argv[0]}: no answer within {TIMEOUT:g} s") from None
    except OSError as error:
        raise IptablesError(f"{argv[0]}: {error.strerror or error}") from None
    return done.returncode, done.stdout, done.stderr


@dataclass(frozen=True)
class InstallResult:
    """What an install of the capture rules did: the chains made and the rules added or repaired."""

    script: str
    """What was given to iptables-restore."""
    rules: list[str]
    """Our rules as iptables-save shows them afterwards."""
    repaired: bool
    """Rules of ours were there before and differed (a crash, a hand edit, new settings)."""


class Iptables:
    """The nat table through one iptables backend."""

    def __init__(self, command: str = "iptables", run: Runner = run_subprocess) -> None:
        if command not in BACKENDS:
            raise ValueError(f"iptables backend {command!r}: expected one of {', '.join(BACKENDS)}")
        self.command = command
        self._run = run

    def _call(self, argv: list[str], stdin: str | None = None) -> str:
        status, out, err = self._run(argv, stdin)
        if status != 0:
            detail = " ".join(err.split()) or f"exit status {status}"
            hint = " (capture needs root: CAP_NET_ADMIN)" if "ermission" in detail else ""
            raise IptablesError(f"{' '.join(argv)}: {detail}{hint}")
        return out

    def save(self) -> str:
        """``iptables-save -t nat``."""
        return self._call([f"{self.command}-save", "-t", "nat"])

    def restore(self, script: str) -> None:
        """``iptables-restore --noflush`` fed ``script``: all of it applies, or none."""
        self._call([f"{self.command}-restore", "--noflush"], script)

    def show(self, chains: dict[str, str] | None = None) -> list[str]:
        """Our jumps and chains as they are now, one rule a line."""
        return shown(parse_nat(self.save()), chains)

    def install(self, rules: CaptureRules) -> InstallResult:
        """Make the nat table hold exactly ``rules`` (idempotent; repairs leftovers), then
        read them back and check they are what was asked."""
        before = parse_nat(self.save())
        previous = shown(before, rules.chains)
        script = install_script(rules, before)
        self.restore(script)
        now = self.show(rules.chains)
        if now != expected(rules):
            raise IptablesError(
                "the nat table does not hold the rules just installed (another program "
                "changing it?): " + " | ".join(now)
            )
        return InstallResult(script, now, repaired=bool(previous) and previous != now)

    def remove(self, chains: dict[str, str] | None = None) -> list[str]:
        """Delete our jumps and chains; returns the rules that were removed (empty: none)."""
        chains = CHAINS if chains is None else chains
        before = parse_nat(self.save())
        script = remove_script(before, chains)
        if script is None:
            return []
        removed = shown(before, chains)
        self.restore(script)
        return removed
