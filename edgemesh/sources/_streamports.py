"""
Router ports for the stream ports of edge services (issue 12, ``--stream-ports LOW-HIGH``).

A cloud app that speaks a raw protocol (Redis, MQTT, h2c...) to an edge service's clusterIP
reaches the router through the managed EndpointSlice; kube-proxy's DNAT happened on the
client's node, so the router cannot tell the service from the connection.  It tells it
from the port instead: every stream port of an edge service gets a router port of its own
from the range (Kubernetes' NodePort allocation is the model), written as that port's
``port`` in the managed slice; every replica listens on the numbers the slices name.

Plain functions, no I/O: the controller allocates with ``allocate``, the listeners read the
slices with ``slice_stream_ports``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..catalog import SERVICE_NAME_LABEL

PortKey = tuple[str, str, str]
"""(namespace, service, port name): one stream port of one service."""

PortRange = tuple[int, int]
"""(low, high), both included."""


def parse_port_range(text: str) -> PortRange:
    """``LOW-HIGH`` (1-65535, LOW <= HIGH) → (low, high); ValueError with the reason."""
    low_text, dash, high_text = text.strip().partition("-")
    if not dash or not low_text.strip().isdigit() or not high_text.strip().isdigit():
        raise ValueError(f"{text!r}: not a port range LOW-HIGH")
    low, high = int(low_text), int(high_text)
    if not 1 <= low <= high <= 65535:
        raise ValueError(f"{text!r}: needs 1 <= LOW <= HIGH <= 65535")
    return low, high


def allocate(
    existing: Mapping[PortKey, int], wanted: Iterable[PortKey], ports: PortRange
) -> dict[PortKey, int]:
    """The router port of each wanted stream port.

    A wanted key that already has a port in the range keeps it (unless another key holds
    the same number: the smaller key keeps it).  A new key takes the lowest number that no
    existing allocation names (wanted or not: a slice still naming a port is still
    listened on).  When the range is full a key is left out (its port stays on the HTTP
    port, as without the option).
    """
    low, high = ports
    wanted_keys = sorted(set(wanted))
    taken: set[int] = {p for p in existing.values() if low <= p <= high}
    result: dict[PortKey, int] = {}
    holders: dict[int, PortKey] = {}
    for key in sorted(existing):
        port = existing[key]
        if low <= port <= high and port not in holders:
            holders[port] = key
    for key in wanted_keys:
        held = existing.get(key)
        if held is not None and holders.get(held) == key:
            result[key] = held
    free = (p for p in range(low, high + 1) if p not in taken)
    for key in wanted_keys:
        if key in result:
            continue
        new = next(free, None)
        if new is None:
            break
        result[key] = new
    return result


def slice_stream_ports(obj: Mapping[str, Any], ports: PortRange) -> dict[int, PortKey]:
    """The stream ports a managed EndpointSlice names: router port → (namespace, service,
    port name).  Ports outside the range (the HTTP port) are left out."""
    low, high = ports
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        return {}
    labels = meta.get("labels")
    service = labels.get(SERVICE_NAME_LABEL) if isinstance(labels, Mapping) else None
    if not isinstance(service, str) or not service:
        return {}
    namespace = meta.get("namespace") or "default"
    found: dict[int, PortKey] = {}
    for entry in obj.get("ports") or []:
        if not isinstance(entry, Mapping):
            continue
        port, name = entry.get("port"), entry.get("name") or ""
        if (isinstance(port, int) and low <= port <= high and isinstance(name, str)
                and (entry.get("protocol") or "TCP") == "TCP"):
            found[port] = (str(namespace), service, name)
    return found


def named_stream_ports(
    slices: Iterable[Mapping[str, Any]], ports: PortRange
) -> dict[int, PortKey]:
    """Every stream port the managed slices name (a number named twice: the smaller key)."""
    found: dict[int, PortKey] = {}
    for obj in slices:
        for port, key in slice_stream_ports(obj, ports).items():
            if port not in found or key < found[port]:
                found[port] = key
    return found


def existing_allocations(
    slices: Iterable[Mapping[str, Any]], ports: PortRange
) -> dict[PortKey, int]:
    """The allocation the managed slices hold: (namespace, service, port name) → port."""
    found: dict[PortKey, int] = {}
    for obj in slices:
        for port, key in sorted(slice_stream_ports(obj, ports).items()):
            found.setdefault(key, port)
    return found
