"""
The capture rules as text: what ``iptables-restore --noflush`` is given, and how the
current state is read back from ``iptables-save -t nat``.  Pure functions, no subprocess.

Two chains of our own in the nat table, jumped to from the first rule of a built-in chain:

    OUTPUT      ─► EDGEMESH-OUTPUT       apps on this host (their connect() to a service IP)
    PREROUTING  ─► EDGEMESH-PREROUTING   containers behind a bridge (docker0, cni0)

Each chain RETURNs the exclusions first, then REDIRECTs TCP to the service CIDR(s) and the
mesh's virtual-IP range to the transparent listener's port.  REDIRECT rewrites the
destination to the host itself (127.0.0.1 in OUTPUT; the incoming interface's address in
PREROUTING, so that listener must not be bound to loopback only), and the listener reads
the original ``clusterIP:port`` back with SO_ORIGINAL_DST.

Idempotent by construction: declaring a chain (``:EDGEMESH-OUTPUT - [0:0]``) in a
``--noflush`` restore creates it, or flushes it if it exists (legacy and nft backends
alike), so the chain body is always exactly ours; the jump from the built-in chain is
added only when missing, and extra copies are deleted.  Installing twice gives the same
rules; installing over a crashed process's leftovers repairs them.

Why the mesh's own traffic never loops: the edge only connects to pod IPs (endpoints),
peer hubs and the router, never to a service IP, so nothing it sends matches the REDIRECT
rules.  The router and hub ports are excluded anyway (``mesh_ports``), in case an address
of the mesh itself sits inside the service CIDR.  Only TCP over IPv4 is captured.

What the host needs: conntrack (for SO_ORIGINAL_DST) and a route to the captured ranges,
because connect() looks the route up before netfilter sees the first packet (a default
route does; without one, put the ranges on a dummy device).  UDP is not captured: pods
resolve names through the edge's DNS server, not a kube-dns clusterIP.

The rules are written in the exact form ``iptables-save`` prints them (``-d`` before
``-p``, ``-m tcp`` spelled out), so what ``show`` reads back compares equal to what was
generated.
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field

from ._defaults import DEFAULT_SERVICE_CIDR, DEFAULT_TRANSPARENT_PORT, DEFAULT_VIRTUAL_CIDR

OUTPUT_CHAIN = "EDGEMESH-OUTPUT"
PREROUTING_CHAIN = "EDGEMESH-PREROUTING"
CHAINS = {"OUTPUT": OUTPUT_CHAIN, "PREROUTING": PREROUTING_CHAIN}
"""Built-in nat chain → the chain of ours it jumps to."""


class RulesError(ValueError):
    """A capture setting that cannot be turned into rules."""


@dataclass(frozen=True, slots=True)
class Exclusion:
    """Traffic left alone: a destination network, a destination TCP port, or both."""

    network: ipaddress.IPv4Network | None = None
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> Exclusion:
        """``10.96.0.1``, ``10.96.0.0/24``, ``:22`` or ``10.96.0.10:53``."""
        address, colon, port_text = text.strip().rpartition(":")
        if not colon:
            address, port_text = port_text, ""
        port: int | None = None
        if colon:
            if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
                raise RulesError(f"exclusion {text!r}: port must be a number 1-65535")
            port = int(port_text)
        network: ipaddress.IPv4Network | None = None
        if address:
            try:
                network = ipaddress.IPv4Network(address, strict=False)
            except ValueError:
                raise RulesError(
                    f"exclusion {text!r}: expected an IPv4 address or CIDR, ':PORT' or both"
                ) from None
        if network is None and port is None:
            raise RulesError(f"exclusion {text!r} is empty")
        return cls(network, port)

    def __str__(self) -> str:
        where = "" if self.network is None else str(self.network)
        return where if self.port is None else f"{where}:{self.port}"


@dataclass(frozen=True)
class CaptureRules:
    """What to capture, and where to send it."""

    port: int = DEFAULT_TRANSPARENT_PORT
    """The transparent listener's TCP port."""
    service_cidrs: tuple[ipaddress.IPv4Network, ...] = (DEFAULT_SERVICE_CIDR,)
    virtual_cidr: ipaddress.IPv4Network | None = DEFAULT_VIRTUAL_CIDR
    """Headless services' virtual IPs (None: headless services are not captured)."""
    exclude: tuple[Exclusion, ...] = ()
    mesh_ports: tuple[int, ...] = ()
    """The router's and hubs' ports: excluded so that the mesh can never capture itself."""
    hooks: tuple[str, ...] = ("OUTPUT", "PREROUTING")
    """The built-in nat chains that jump to ours."""
    chains: dict[str, str] = field(default_factory=lambda: dict(CHAINS))

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise RulesError(f"transparent port {self.port} is not 1-65535")
        if not self.service_cidrs and self.virtual_cidr is None:
            raise RulesError("nothing to capture: no service CIDR and no virtual-IP range")
        for hook in self.hooks:
            if hook not in self.chains:
                raise RulesError(f"cannot hook nat chain {hook!r}: only {sorted(self.chains)}")
        for port in self.mesh_ports:
            if not 1 <= port <= 65535:
                raise RulesError(f"mesh port {port} is not 1-65535")

    @property
    def captured(self) -> tuple[ipaddress.IPv4Network, ...]:
        extra = () if self.virtual_cidr is None else (self.virtual_cidr,)
        return (*self.service_cidrs, *extra)

    def exclusions(self) -> list[Exclusion]:
        """Explicit exclusions, then the mesh's own ports, without repeats, in order."""
        seen: list[Exclusion] = []
        for exclusion in (*self.exclude, *(Exclusion(None, p) for p in self.mesh_ports)):
            if exclusion not in seen:
                seen.append(exclusion)
        return seen


def chain_body(rules: CaptureRules, chain: str) -> list[str]:
    """The ``-A`` lines of one of our chains, as iptables-save prints them."""
    lines = []
    for exclusion in rules.exclusions():
        parts = ["-A", chain]
        if exclusion.network is not None:
            parts += ["-d", str(exclusion.network)]
        if exclusion.port is not None:
            parts += ["-p", "tcp", "-m", "tcp", "--dport", str(exclusion.port)]
        parts += ["-j", "RETURN"]
        lines.append(" ".join(parts))
    for network in rules.captured:
        lines.append(f"-A {chain} -d {network} -p tcp -j REDIRECT --to-ports {rules.port}")
    return lines


def jump_rule(hook: str, chain: str) -> str:
    return f"-A {hook} -j {chain}"


@dataclass
class NatState:
    """The nat table as iptables-save printed it: chain names and ``-A`` lines in order."""

    chains: list[str] = field(default_factory=list)
    rules: list[str] = field(default_factory=list)

    def chain_rules(self, chain: str) -> list[str]:
        return [line for line in self.rules if _chain_of(line) == chain]

    def jumps_to(self, hook: str, chain: str) -> list[str]:
        """The rules of built-in ``hook`` whose target is ``chain``, whatever their matches."""
        return [
            line for line in self.rules if _chain_of(line) == hook and _target_of(line) == chain
        ]


def _words(line: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError:  # an unbalanced quote in someone else's comment
        return line.split()


def _chain_of(line: str) -> str | None:
    words = line.split(None, 2)
    return words[1] if len(words) >= 2 and words[0] == "-A" else None


def _target_of(line: str) -> str | None:
    words = _words(line)
    for index, word in enumerate(words[:-1]):
        if word in ("-j", "--jump", "-g", "--goto"):
            return words[index + 1]
    return None


def parse_nat(saved: str) -> NatState:
    """Read the ``*nat`` section of ``iptables-save`` output (other tables are ignored)."""
    state = NatState()
    in_nat = False
    for raw in saved.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            in_nat = line == "*nat"
        elif not in_nat:
            continue
        elif line == "COMMIT":
            in_nat = False
        elif line.startswith(":"):
            state.chains.append(line[1:].split()[0])
        elif line.startswith("-A "):
            state.rules.append(line)
    return state


def install_script(rules: CaptureRules, current: NatState) -> str:
    """The ``iptables-restore --noflush`` input that makes the nat table hold exactly our
    rules, given its current state: our chains (re)declared and filled, exactly one jump
    from each hooked built-in chain, as its first rule; stray jumps and chains of ours
    removed.  Nothing else in the table is touched."""
    wanted = {hook: rules.chains[hook] for hook in rules.hooks}
    lines = ["*nat"]
    lines += [f":{chain} - [0:0]" for chain in wanted.values()]
    for chain in wanted.values():
        lines += chain_body(rules, chain)
    insertions: list[str] = []
    for hook, chain in rules.chains.items():
        exact = jump_rule(hook, chain)
        jumps = current.jumps_to(hook, chain)
        hook_rules = current.chain_rules(hook)
        if hook in wanted and jumps == [exact] and hook_rules[:1] == [exact]:
            continue  # exactly one jump, first in its chain: as it should be
        # Otherwise every jump goes (``-D`` removes the first match, so each copy of a
        # repeated spec is deleted in turn) and one is inserted first, after the deletions.
        lines += ["-D" + line[2:] for line in jumps]
        if hook in wanted:
            insertions.append(f"-I {hook} 1 -j {chain}")
    lines += insertions
    for hook, chain in rules.chains.items():
        if hook not in wanted and chain in current.chains:
            lines += [f"-F {chain}", f"-X {chain}"]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def remove_script(current: NatState, chains: dict[str, str] | None = None) -> str | None:
    """The restore input that deletes every jump to our chains and the chains themselves;
    None when there is nothing of ours to remove."""
    chains = CHAINS if chains is None else chains
    lines: list[str] = []
    for hook, chain in chains.items():
        lines += ["-D" + line[2:] for line in current.jumps_to(hook, chain)]
    for chain in chains.values():
        if chain in current.chains:
            lines += [f"-F {chain}", f"-X {chain}"]
    if not lines:
        return None
    return "\n".join(["*nat", *lines, "COMMIT"]) + "\n"


def shown(current: NatState, chains: dict[str, str] | None = None) -> list[str]:
    """Our rules as they are now: the jumps into our chains, then the chains' bodies."""
    chains = CHAINS if chains is None else chains
    lines: list[str] = []
    for hook, chain in chains.items():
        lines += current.jumps_to(hook, chain)
    for chain in chains.values():
        if chain in current.chains:
            lines.append(f":{chain}")
            lines += current.chain_rules(chain)
    return lines


def expected(rules: CaptureRules) -> list[str]:
    """What ``shown`` reads back after a successful install of ``rules``."""
    lines = [jump_rule(hook, rules.chains[hook]) for hook in rules.chains if hook in rules.hooks]
    for hook in rules.chains:
        if hook in rules.hooks:
            chain = rules.chains[hook]
            lines += [f":{chain}", *chain_body(rules, chain)]
    return lines


def parse_networks(values: Iterable[str], what: str) -> tuple[ipaddress.IPv4Network, ...]:
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.IPv4Network(value.strip(), strict=False))
        except ValueError:
            raise RulesError(f"{what} {value!r} is not an IPv4 CIDR (e.g. 10.96.0.0/12)") from None
    return tuple(networks)


def endpoint_port(description: str | None) -> int | None:
    """The port of a ``tcp:HOST:PORT`` client or ``tcp:PORT[:interface=...]`` server
    endpoint string (``port=`` spelled out too), for excluding the mesh's own ports; None
    for anything else (unix sockets, IPv6 hosts, unparseable strings)."""
    if not description:
        return None
    kind, *arguments = description.split(":")
    if kind not in ("tcp", "tcp6", "tls", "ssl"):
        return None
    positional: list[str] = []
    port_text: str | None = None
    for argument in arguments:
        key, equals, value = argument.partition("=")
        if not equals:
            positional.append(argument)
        elif key == "port":
            port_text = value
    if port_text is None and positional:
        # Server strings: tcp:PORT; client strings: tcp:HOST:PORT.
        port_text = positional[0] if len(positional) == 1 else positional[1]
    if port_text is None or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        return None
    return int(port_text)
