"""
Catalog deltas: what changed between two revisions, so that the router pushes a rollout of
one service as that service, not as the whole catalog.

A delta takes a catalog at revision ``base`` to revision ``revision``: services and nodes
upserted whole (a service is small; its endpoints change together), and the keys of those
removed.  ``diff_catalogs(old, new)`` makes one, ``apply_delta(catalog, delta)`` applies
one; both are pure and ``apply_delta(old, diff_catalogs(old, new)) == new``.

Wire layout (version 1), beside the snapshot's (records as in ``_snapshot``)::

    {"format": "edgemesh.catalog.delta", "version": 1, "base": int, "revision": int,
     "nodes": [node record, ...], "removed_nodes": [name, ...],
     "services": [service record, ...], "removed_services": ["namespace/name", ...],
     "topology": {...},   # optional: as the snapshot's, for the nodes and services upserted
     "app_protocols": {...},   # optional, for the upserted services: see _snapshot
     "hostnames": {...},       # optional, likewise
     "aggregates": {...},      # optional: a trimmed view's aggregates, as the snapshot's
     "rebase": true}   # optional: see below

A *rebase* (``"rebase": true``) is the first push on a link to an edge that said, in its
hello, which catalog it holds (``roles/_push.py``): it starts at the edge's revision and
ends at the router's, which may be at or below it (each router replica numbers its own
revisions).  Only a rebase may have ``revision <= base``.

``delta_from_wire`` reads network input: anything off raises DeltaError (a SnapshotError).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ._catalog import Catalog
from ._model import Node, Service, is_dns1035_label, is_dns1123_label, is_dns1123_subdomain
from ._snapshot import (
    SnapshotError,
    _app_protocols_to_wire,
    _int,
    _list,
    _map,
    _node,
    _service,
    _service_to_wire,
    _str,
    _with_app_protocols,
    aggregates_to_wire,
    hostnames_to_wire,
    topology_to_wire,
    with_aggregates,
    with_hostnames,
    with_topology,
)

DELTA_FORMAT = "edgemesh.catalog.delta"
DELTA_VERSION = 1
_MAX_REVISION = 2**63 - 1


class DeltaError(SnapshotError):
    """A delta that is not one, or that does not apply to the catalog at hand."""


@dataclass(frozen=True, slots=True)
class CatalogDelta:
    """The changes from revision ``base`` to ``revision``."""

    base: int
    revision: int
    services: tuple[Service, ...] = ()
    """Added or changed services, whole."""
    removed_services: tuple[str, ...] = ()
    """``namespace/name`` of services that are gone."""
    nodes: tuple[Node, ...] = ()
    removed_nodes: tuple[str, ...] = ()
    rebase: bool = False
    """From the edge's own revision to another router's numbering (first push on a link)."""

    @property
    def empty(self) -> bool:
        return not (self.services or self.removed_services or self.nodes or self.removed_nodes)

    def __len__(self) -> int:
        """How many objects it changes."""
        return (len(self.services) + len(self.removed_services) + len(self.nodes)
                + len(self.removed_nodes))


def diff_catalogs(old: Catalog, new: Catalog) -> CatalogDelta:
    """The delta from ``old`` to ``new``.  Services and nodes that are the same object in
    both (a source that rebuilds only what changed keeps the rest) cost one identity check."""
    old_services, old_nodes = old.services, old.nodes
    services = tuple(
        s for key, s in new.services.items()
        if (was := old_services.get(key)) is not s and was != s
    )
    removed_services = tuple(key for key in old_services if key not in new.services)
    nodes = tuple(
        n for name, n in new.nodes.items()
        if (had := old_nodes.get(name)) is not n and had != n
    )
    removed_nodes = tuple(name for name in old.nodes if name not in new.nodes)
    return CatalogDelta(old.revision, new.revision, services, removed_services, nodes,
                        removed_nodes)


def apply_delta(catalog: Catalog, delta: CatalogDelta) -> Catalog:
    """``catalog`` with ``delta`` applied.  Raises DeltaError unless the delta starts at
    this catalog's revision (the caller decides what an older or a gapped delta means)."""
    if delta.base != catalog.revision:
        raise DeltaError(
            f"catalog delta: from revision {delta.base}, but the catalog is at {catalog.revision}"
        )
    services = dict(catalog.services)
    for key in delta.removed_services:
        services.pop(key, None)
    for service in delta.services:
        services[service.key] = service
    nodes = dict(catalog.nodes)
    for name in delta.removed_nodes:
        nodes.pop(name, None)
    for node in delta.nodes:
        nodes[node.name] = node
    try:
        return Catalog(services=services, nodes=nodes, revision=delta.revision)
    except ValueError as error:  # checked on the way in; belt and braces
        raise DeltaError(f"catalog delta: {error}") from None


def delta_to_wire(delta: CatalogDelta) -> dict[str, object]:
    wire: dict[str, object] = {
        "format": DELTA_FORMAT,
        "version": DELTA_VERSION,
        "base": delta.base,
        "revision": delta.revision,
        "nodes": [[n.name, n.edge, n.hub_host, n.hub_port, n.zone] for n in delta.nodes],
        "removed_nodes": list(delta.removed_nodes),
        "services": [_service_to_wire(s) for s in delta.services],
        "removed_services": list(delta.removed_services),
        **_app_protocols_to_wire(delta.services),
        **hostnames_to_wire(delta.services),
        **aggregates_to_wire(delta.services),
    }
    topology = topology_to_wire(delta.nodes, delta.services)
    if topology is not None:
        wire["topology"] = topology
    if delta.rebase:
        wire["rebase"] = True
    return wire


def _fail(problem: str) -> DeltaError:
    return DeltaError(f"catalog delta: {problem}")


def _service_key(value: object, path: str) -> str:
    text = _str(value, path)
    namespace, slash, name = text.partition("/")
    if not slash or not is_dns1123_label(namespace) or not is_dns1035_label(name):
        raise _fail(f"{path}: must be namespace/name")
    return text


def _node_name(value: object, path: str) -> str:
    text = _str(value, path)
    if not is_dns1123_subdomain(text):
        raise _fail(f"{path}: not a valid node name (DNS-1123 subdomain)")
    return text


def _unique(keys: Iterable[str], what: str) -> None:
    seen: set[str] = set()
    for key in keys:
        if key in seen:
            raise _fail(f"{what}: {key} listed twice")
        seen.add(key)


def delta_from_wire(obj: object) -> CatalogDelta:
    """The CatalogDelta in a plain structure made by ``delta_to_wire``.  Raises DeltaError
    for anything that does not fit; unknown top-level keys are ignored."""
    try:
        top = _map(obj, "top level")
        for key in ("format", "version"):
            if key not in top:
                raise _fail(f"{key}: required")
        if top["format"] != DELTA_FORMAT:
            raise _fail(f"format: must be {DELTA_FORMAT!r}")
        version = top["version"]
        if isinstance(version, bool) or not isinstance(version, int) or version != DELTA_VERSION:
            raise _fail(f"version: unsupported (this node reads version {DELTA_VERSION})")
        for key in ("base", "revision", "nodes", "removed_nodes", "services",
                    "removed_services"):
            if key not in top:
                raise _fail(f"{key}: required")
        base = _int(top["base"], "base", 0, _MAX_REVISION)
        revision = _int(top["revision"], "revision", 0, _MAX_REVISION)
        rebase = top.get("rebase", False)
        if type(rebase) is not bool:
            raise _fail("rebase: must be a boolean")
        if revision <= base and not rebase:
            raise _fail(f"revision {revision} does not follow base {base}")
        nodes = tuple(_node(n, f"nodes[{i}]") for i, n in enumerate(_list(top["nodes"], "nodes")))
        removed_nodes = tuple(
            _node_name(n, f"removed_nodes[{i}]")
            for i, n in enumerate(_list(top["removed_nodes"], "removed_nodes"))
        )
        services = tuple(with_hostnames(_with_app_protocols(
            (_service(s, f"services[{i}]")
             for i, s in enumerate(_list(top["services"], "services"))),
            top,
        ), top))
        removed_services = tuple(
            _service_key(s, f"removed_services[{i}]")
            for i, s in enumerate(_list(top["removed_services"], "removed_services"))
        )
        topo_nodes, topo_services = with_topology(top, nodes, services)
        nodes = tuple(topo_nodes)
        services = tuple(with_aggregates(top, topo_services))
    except DeltaError:
        raise
    except SnapshotError as error:  # a record's own check, worded for a snapshot
        raise _fail(str(error).removeprefix("catalog snapshot: ")) from None
    # One change per key: a delta that upserts and removes the same thing is ambiguous.
    _unique([n.name for n in nodes] + list(removed_nodes), "nodes")
    _unique([s.key for s in services] + list(removed_services), "services")
    return CatalogDelta(base, revision, services, removed_services, nodes, removed_nodes, rebase)
