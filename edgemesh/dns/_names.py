"""
Which DNS names are the mesh's: pure string logic, no twisted.names.

A pod asks for a service as ``name``, ``name.ns``, ``name.ns.svc`` or
``name.ns.svc.cluster.local`` (its resolver appends the search domains
``ns.svc.cluster.local svc.cluster.local cluster.local`` to short names first).  Names
under ``cluster.local`` and ``*.svc`` are the mesh's zone: an unknown one is NXDOMAIN,
never forwarded.  ``name`` and ``name.ns`` are answered when the catalog has the service
and otherwise belong to the rest of the world (``example.com`` is not service
``example`` of namespace ``com`` unless the catalog says so).  One pod of a headless
service (a StatefulSet's) is ``pod-0.name[.ns[.svc[.cluster.local]]]``: ``pod`` says which
pod a name would be, and the catalog whether it is one.  A named port of a service is
``_port._tcp.name.ns.svc.cluster.local`` (SRV, as Kubernetes DNS has it; TCP only, the
mesh's), and an address is ``d.c.b.a.in-addr.arpa`` (PTR; ``reverse_address``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ..catalog import CLUSTER_DOMAIN, DEFAULT_NAMESPACE, pod_name

_CLUSTER_LABELS = tuple(CLUSTER_DOMAIN.split("."))
_MAX_NAME = 253
_HEX = "0123456789abcdef"


@dataclass(frozen=True, slots=True)
class NameClass:
    """What a queried name is to the mesh: a service name, a search-suffix expansion, or not ours.
    """

    key: str | None
    """The service ``namespace/name`` the name would be, if any."""
    in_zone: bool
    """The name is inside the mesh's zone: unknown means NXDOMAIN, not forwarding."""
    pod: tuple[str, str] | None = None
    """(service ``namespace/name``, hostname) the name would be as one pod's, if any."""
    srv: tuple[str, str, str] | None = None
    """(service ``namespace/name``, port name, protocol: "TCP") of an SRV name."""


NOT_OURS = NameClass(None, False)


def classify(name: str) -> NameClass:
    """What ``name`` (any case, trailing dot or not) means to the mesh."""
    name = name.lower().rstrip(".")
    if not name or len(name) > _MAX_NAME:
        return NOT_OURS
    labels = name.split(".")
    if any(not label for label in labels):
        return NOT_OURS
    cluster = len(_CLUSTER_LABELS)
    pod = pod_name(labels)
    if tuple(labels[-cluster:]) == _CLUSTER_LABELS:
        if len(labels) == cluster + 3 and labels[2] == "svc":
            return NameClass(f"{labels[1]}/{labels[0]}", True)
        if (len(labels) == cluster + 5 and labels[4] == "svc" and len(labels[0]) > 1
                and labels[0][0] == "_" and labels[1] == "_tcp"):  # (the mesh carries TCP)
            return NameClass(None, True, srv=(f"{labels[3]}/{labels[2]}", labels[0][1:], "TCP"))
        return NameClass(None, True, pod)
    if labels[-1] == "svc" and len(labels) != 2:
        if len(labels) == 3:
            return NameClass(f"{labels[1]}/{labels[0]}", True)
        return NameClass(None, True, pod)
    if len(labels) == 2:
        return NameClass(f"{labels[1]}/{labels[0]}", False, pod)
    if len(labels) == 1:
        return NameClass(f"{DEFAULT_NAMESPACE}/{labels[0]}", False)
    return NameClass(None, False, pod) if pod is not None else NOT_OURS


def reverse_address(name: str) -> str | None:
    """The address a PTR name stands for (``4.3.2.1.in-addr.arpa`` is 1.2.3.4, and
    ``ip6.arpa``'s 32 nibbles an IPv6 address), else None."""
    labels = name.lower().rstrip(".").split(".")
    try:
        if len(labels) == 6 and labels[4:] == ["in-addr", "arpa"]:
            return str(ipaddress.IPv4Address(".".join(reversed(labels[:4]))))
        if (len(labels) == 34 and labels[32:] == ["ip6", "arpa"]
                and all(len(nibble) == 1 and nibble in _HEX for nibble in labels[:32])):
            return str(ipaddress.IPv6Address(int("".join(reversed(labels[:32])), 16)))
    except ValueError:
        pass
    return None


def search_expansions(name: str, search: list[str], ndots: int = 5) -> list[str]:
    """The names a glibc/musl stub resolver tries for ``name``, in order (resolv.conf
    ``search`` and ``options ndots``): for tests and documentation of what pods send."""
    if name.endswith("."):
        return [name.rstrip(".")]
    expanded = [f"{name}.{domain}" for domain in search]
    if name.count(".") >= ndots:
        return [name, *expanded]
    return [*expanded, name]
