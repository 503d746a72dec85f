"""
Traffic topology: which endpoints of a service port an exchange starting on a node may
use, and in which order of preference.  Pure functions of the catalog and the calling
node (no I/O, no state); the balancer caches their result per catalog.

The order (docs/topology.md has the diagram):

1. ``internalTrafficPolicy: Local``: this node's endpoints only (ready ones, else
   serving-and-terminating ones); nothing else, ever.  Hints and trafficDistribution are
   not read (as kube-proxy).
2. Topology hints, as kube-proxy reads them: when every ready endpoint has
   ``hints.forNodes`` and one names this node, only the endpoints hinted for this node;
   else when every ready endpoint has ``hints.forZones`` and one names this node's zone,
   only those hinted for the zone; else hints are ignored.
3. Conditions: ready endpoints (of what the hints left); when none is ready anywhere,
   the serving-and-terminating ones (hints ignored then, as kube-proxy).
4. Preference tiers from ``spec.trafficDistribution``:

   - none (the mesh's default), ``PreferSameNode``, or a value this release does not
     know: this node, this node's pool, this node's zone, the rest;
   - ``PreferSameZone`` (``PreferClose``, its older name): this node's pool, its zone,
     the rest (no preference for this node itself: the zone shares the load).

   A tier is used when it has an endpoint; the balancer (health, then the lb policy and
   annotations) chooses within the first tier with a usable endpoint.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Sequence

from ..catalog import Catalog, Endpoint, Service, ServicePort

PREFER_SAME_NODE = "PreferSameNode"
PREFER_SAME_ZONE = "PreferSameZone"
PREFER_CLOSE = "PreferClose"
"""The older name of PreferSameZone (Kubernetes 1.31-1.32)."""
KNOWN_DISTRIBUTIONS = frozenset({PREFER_SAME_NODE, PREFER_SAME_ZONE, PREFER_CLOSE})
LOCAL = "Local"

Tiers = tuple[tuple[Endpoint, ...], ...]


def zone_first(service: Service) -> bool:
    """The service asks for its zone first (PreferSameZone or PreferClose)."""
    return service.traffic_distribution in (PREFER_SAME_ZONE, PREFER_CLOSE)


def hint_mode(endpoints: Sequence[Endpoint], node: str, zone: str | None) -> str | None:
    """``"node"``, ``"zone"`` or None: which hints an exchange on ``node`` (in ``zone``)
    follows, with kube-proxy's fallbacks (an endpoint without hints, or no endpoint hinted
    for here, and the hints are ignored)."""
    any_ready = False
    all_nodes = all_zones = True
    for_node = for_zone = False
    for endpoint in endpoints:
        if not endpoint.ready:
            continue
        any_ready = True
        if not endpoint.for_nodes:
            all_nodes = False
        elif node in endpoint.for_nodes:
            for_node = True
        if not endpoint.for_zones:
            all_zones = False
        elif zone is not None and zone in endpoint.for_zones:
            for_zone = True
    if not any_ready:
        return None
    if all_nodes and for_node:
        return "node"
    if all_zones and for_zone:
        return "zone"
    return None


def local_endpoints(service: Service, port: ServicePort, node: str) -> tuple[Endpoint, ...]:
    """The endpoints on ``node`` an exchange may use: the ready ones, else the serving and
    terminating ones (what ``internalTrafficPolicy: Local`` allows, and what a node
    delivers to when another node chose it)."""
    mine = [e for e in service.endpoints.get(port.name, ()) if e.node == node]
    ready = tuple(e for e in mine if e.ready)
    if ready:
        return ready
    return tuple(e for e in mine if e.serving and e.terminating)


def usable(endpoint: Endpoint) -> bool:
    """Ready, or still serving while it terminates: may receive an exchange another node
    chose for it."""
    return endpoint.ready or (endpoint.serving and endpoint.terminating)


def candidates(
    catalog: Catalog, node: str, service: Service, port: ServicePort
) -> tuple[Endpoint, ...]:
    """Steps 1-3: the endpoints an exchange starting on ``node`` may use, unordered."""
    if service.internal_traffic_policy == LOCAL:
        return local_endpoints(service, port, node)
    endpoints = service.endpoints.get(port.name, ())
    here = catalog.node(node)
    zone = here.zone if here is not None else None
    mode = hint_mode(endpoints, node, zone)
    if mode == "node":
        ready = tuple(e for e in endpoints if e.ready and node in e.for_nodes)
    elif mode == "zone":
        ready = tuple(e for e in endpoints if e.ready and zone in e.for_zones)
    else:
        ready = tuple(e for e in endpoints if e.ready)
    if ready:
        return ready
    return tuple(e for e in endpoints if e.serving and e.terminating)


def tiers(catalog: Catalog, node: str, service: Service, port: ServicePort) -> Tiers:
    """Steps 1-4: the endpoints an exchange starting on ``node`` may use, in tiers of
    preference (non-empty tiers only; empty: no endpoint at all)."""
    found = candidates(catalog, node, service, port)
    if not found:
        return ()
    if service.internal_traffic_policy == LOCAL:
        return (found,)
    here = catalog.node(node)
    zone = here.zone if here is not None else None
    pool = here.pool if here is not None else None

    def rank(endpoint: Endpoint) -> int:
        if endpoint.node == node and not by_zone:
            return 0
        if pool is not None and endpoint.node is not None:
            other = catalog.node(endpoint.node)
            if other is not None and other.pool == pool:
                return 1
        if zone is not None and endpoint.zone == zone:
            return 2
        return 3

    by_zone = zone_first(service)
    ranked: tuple[list[Endpoint], ...] = ([], [], [], [])
    for endpoint in found:
        ranked[rank(endpoint)].append(endpoint)
    return tuple(tuple(tier) for tier in ranked if tier)


# -- trimmed views: aggregates (catalog/_trim.py) -------------------------------------------
# An edge's tier may hold aggregates (other nodes' pods, one entry per node and kind, last in
# each list) beside its own exact endpoints.  Balancers weigh an entry by ``weight``, and a
# hash picks a node first (the same on every edge), then the pod within it.


def weighted_at(endpoints: Sequence[Endpoint], position: int) -> Endpoint:
    """The entry at ``position`` (modulo the total weight) when each entry takes ``weight``
    consecutive positions: weighted round robin, or a weighted draw."""
    position %= sum(e.weight for e in endpoints)
    for endpoint in endpoints:
        position -= endpoint.weight
        if position < 0:
            return endpoint
    raise AssertionError("position within the total weight")


NodeGroups = tuple[tuple[str, tuple[Endpoint, ...]], ...]


def by_node(endpoints: Sequence[Endpoint]) -> NodeGroups:
    """The entries grouped by node ('' for none), in order of first appearance."""
    groups: dict[str, list[Endpoint]] = {}
    for endpoint in endpoints:
        groups.setdefault(endpoint.node or "", []).append(endpoint)
    return tuple((node, tuple(members)) for node, members in groups.items())


def _unit(key: bytes, name: str) -> float:
    """A uniform draw in (0, 1) fixed by the key and the name (the same in every process)."""
    digest = hashlib.blake2b(key + b"\0" + name.encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 0.5) / 2.0**64


def rendezvous(groups: NodeGroups, key: bytes,
               skip: Collection[tuple[str, int]] | None = None) -> int | None:
    """The index of the group ``key`` goes to: weighted rendezvous hashing (highest random
    weight, score = -weight / ln(u)), the weight a group's entries' pods (those not in
    ``skip``).  A function of the key, the node names and the counts only: every edge that
    sees the same nodes and counts picks the same node, and a node that leaves moves only
    its own keys.  None when every entry is skipped."""
    best, chosen = 0.0, None
    for index, (node, members) in enumerate(groups):
        weight = sum(e.weight for e in members
                     if skip is None or (e.host, e.port) not in skip)
        if weight:
            score = -weight / math.log(_unit(key, node))
            if score > best:
                best, chosen = score, index
    return chosen


def rendezvous_entry(members: Sequence[Endpoint], key: bytes,
                     skip: Collection[tuple[str, int]] | None = None) -> Endpoint | None:
    """Among one node's aggregates (kinds of pods: conditions, hints), the one ``key`` goes
    to, by the same weighted rendezvous over their tags."""
    groups = tuple((e.host, (e,)) for e in members)
    index = rendezvous(groups, key, skip)
    return None if index is None else members[index]


__all__ = [
    "KNOWN_DISTRIBUTIONS",
    "LOCAL",
    "PREFER_CLOSE",
    "PREFER_SAME_NODE",
    "PREFER_SAME_ZONE",
    "NodeGroups",
    "Tiers",
    "by_node",
    "candidates",
    "hint_mode",
    "local_endpoints",
    "rendezvous",
    "rendezvous_entry",
    "tiers",
    "usable",
    "weighted_at",
    "zone_first",
]
