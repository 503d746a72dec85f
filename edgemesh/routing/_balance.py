"""
The load balancers that apply a service's traffic policy (``_policy``): per-request round
robin, random, least-request (power of two choices), consistent hash with bounded load,
and ClientIP session affinity with its memory.  Which endpoints are candidates, in which
tiers, is the topology's business (``_topology``).

Plain Python: endpoints, heads and loads in, an endpoint out.
"""

from __future__ import annotations

import hashlib
import random
from array import array
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Final

from ..catalog import Catalog, Endpoint, Service, ServicePort
from ..exchange import RequestHead
from . import _topology
from ._policy import EndpointKey, LBPolicy, ServicePolicy

__all__ = ["Balancer", "RoundRobin"]

RING_POINTS: Final = 128
"""Points per endpoint on a consistent-hash ring: each endpoint's share is within a few
per cent of 1/n, and removing one endpoint moves only its own keys."""
LOAD_BOUND: Final = 1.25
"""Consistent hash with bounded load: no endpoint takes more than 1.25 × the mean number of
requests in progress (+1); a hot key spills over to the next endpoints on the ring."""

_Tiers = tuple[tuple[Endpoint, ...], ...]
_ROUND_ROBIN: Final = LBPolicy.round_robin  # a global: EnumType.__getattr__ (see _decide)


class RoundRobin:
    """Per-request round robin, a counter per service port (bounded).

    Also the policy-less ``select`` of ``decide``: the node's own endpoints first, then
    all of them."""

    def __init__(self, max_keys: int = 65536) -> None:
        self._next: dict[tuple[str, str], int] = {}
        self._max_keys = max_keys

    def pick(self, service: Service, port: ServicePort, endpoints: Sequence[Endpoint]) -> Endpoint:
        key = (service.key, port.name)
        counters = self._next
        index = counters.get(key, 0)
        if index == 0 and len(counters) >= self._max_keys:
            counters.clear()
        counters[key] = index + 1
        return endpoints[index % len(endpoints)]

    def choose(
        self,
        service: Service,
        port: ServicePort,
        endpoints: Sequence[Endpoint],
        head: RequestHead | None,
        policy: ServicePolicy,
        exclude: Collection[EndpointKey],
    ) -> Endpoint | None:
        """One of ``endpoints`` (those not excluded), or None."""
        if not endpoints:
            return None
        if exclude:
            endpoints = [e for e in endpoints if (e.host, e.port) not in exclude]
            if not endpoints:
                return None
        return self.pick(service, port, endpoints)

    def select(
        self,
        catalog: Catalog,
        node: str,
        service: Service,
        port: ServicePort,
        head: RequestHead | None,
        policy: ServicePolicy,
        exclude: Collection[EndpointKey],
    ) -> Endpoint | None:
        """An endpoint of the service port for an exchange that starts on ``node``: from
        the first topology tier with one not excluded."""
        for tier in _topology.tiers(catalog, node, service, port):
            found = self.choose(service, port, tier, head, policy, exclude)
            if found is not None:
                return found
        return None


class _Ring:
    """A consistent-hash ring over endpoints, placed by address (not by list order), so
    that a ring over a subset keeps every remaining endpoint's points.  Compact arrays:
    a ring of 100 endpoints is about 150 KiB."""

    __slots__ = ("endpoints", "hashes", "owners")

    def __init__(self, endpoints: Sequence[Endpoint], points: int = RING_POINTS) -> None:
        placed: list[tuple[int, int]] = []
        for index, endpoint in enumerate(endpoints):
            base = f"{endpoint.host}:{endpoint.port}#".encode()
            for point in range(points):
                placed.append((_hash(base + b"%d" % point), index))
        placed.sort()
        self.endpoints = tuple(endpoints)
        self.hashes = array("Q", [h for h, _ in placed])
        self.owners = array("I", [i for _, i in placed])

    def walk(self, key: int) -> Iterator[int]:
        """Endpoint indexes in ring order from the key's point, each once (lazily: the
        first one is usually the answer)."""
        hashes, owners = self.hashes, self.owners
        size = len(owners)
        start = bisect_left(hashes, key)
        first = owners[start % size]
        yield first
        seen = {first}
        count = len(self.endpoints)
        for step in range(1, size):
            index = owners[(start + step) % size]
            if index not in seen:
                seen.add(index)
                yield index
                if len(seen) == count:
                    return


def _hash(data: bytes) -> int:
    """A hash that is the same in every process (Python's hash() of bytes is salted)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class Balancer(RoundRobin):
    """The node's balancer: the topology's tiers (``_topology``: by default this node, its
    pool, its zone, the rest), skipping unhealthy endpoints while healthy ones remain, the
    service's lb policy, and ClientIP affinity's memory.

    ``loads`` maps an endpoint to its exchanges in progress (kept by the pipeline for the
    policies that read it); ``usable`` says whether an endpoint may be chosen now (not
    ejected, not on a draining node); ``filtering`` is cheap and says whether ``usable``
    can say no at all (the common case: no); ``now`` is the clock for affinity timeouts
    (the pipeline's; by default time stands still)."""

    def __init__(
        self,
        rng: random.Random | None = None,
        usable: Callable[[Endpoint], bool] | None = None,
        filtering: Callable[[], bool] | None = None,
        max_keys: int = 4096,
        max_rings: int = 64,
        now: Callable[[], float] | None = None,
        max_affinity: int = 65536,
    ) -> None:
        super().__init__()
        self._random = (rng or random.Random()).random
        self.loads: dict[EndpointKey, int] = {}
        self.usable = usable
        self.filtering = filtering
        self._max_keys = max_keys
        self._max_rings = max_rings
        self._tiers: dict[int, tuple[Service, ServicePort, str, _Tiers]] = {}
        self._rings: dict[int, tuple[Sequence[Endpoint], _Ring]] = {}
        self._groups: dict[int, tuple[Sequence[Endpoint], _topology.NodeGroups]] = {}
        self._turns: dict[int, int] = {}
        self.now: Callable[[], float] = now or (lambda: 0.0)
        self._affinity: OrderedDict[tuple[str, str, str], tuple[EndpointKey, float]] = (
            OrderedDict()
        )
        """(service, port name, client IP) → (endpoint, last used): least recently used
        first, at most ``max_affinity`` (the oldest client is forgotten first)."""
        self._max_affinity = max_affinity

    def forget(self) -> None:
        """Drop the caches (a new catalog: its tuples replace the old ones)."""
        self._tiers.clear()
        self._rings.clear()
        self._groups.clear()
        self._turns.clear()

    # locality

    def tiers(
        self, catalog: Catalog, node: str, service: Service, port: ServicePort
    ) -> _Tiers:
        """The usable endpoints in order of preference, non-empty tiers only
        (``_topology.tiers``).  Cached until ``forget`` (the pipeline calls it when the
        catalog changes): hot path."""
        cached = self._tiers.get(id(port))  # the entry holds the port: ids stay unique
        if cached is not None and cached[0] is service and cached[1] is port and cached[2] is node:
            return cached[3]
        tiers = _topology.tiers(catalog, node, service, port)
        if len(self._tiers) >= self._max_keys:
            self._tiers.clear()
        self._tiers[id(port)] = (service, port, node, tiers)
        return tiers

    def select(
        self,
        catalog: Catalog,
        node: str,
        service: Service,
        port: ServicePort,
        head: RequestHead | None,
        policy: ServicePolicy,
        exclude: Collection[EndpointKey],
    ) -> Endpoint | None:
        tiers = self.tiers(catalog, node, service, port)
        if not tiers:
            return None
        filtering = self.filtering is not None and self.filtering()
        if policy.affinity is not None and head is not None and head.client:
            return self._sticky(service, port, tiers, head, policy, exclude, filtering)
        if not exclude and not filtering:
            return self._pick(service, port, tiers[0], head, policy, None)
        return self._first_usable(service, port, tiers, head, policy, exclude, filtering)

    def _sticky(
        self,
        service: Service,
        port: ServicePort,
        tiers: _Tiers,
        head: RequestHead,
        policy: ServicePolicy,
        exclude: Collection[EndpointKey],
        filtering: bool,
    ) -> Endpoint | None:
        """ClientIP affinity: the client's endpoint of its last exchange, while that was
        less than the timeout ago and the endpoint is still in the tier the balancer would
        choose from now (a closer tier that comes back wins, as the topology says); else
        the hash's choice, remembered."""
        assert policy.affinity is not None
        key = (service.key, port.name, head.client)
        now = self.now()
        memory = self._affinity
        entry = memory.get(key)
        if entry is not None and now - entry[1] < policy.affinity and entry[0] not in exclude:
            usable = self.usable if filtering else None
            for tier in tiers:
                allowed = [e for e in tier if (e.host, e.port) not in exclude
                           and (usable is None or usable(e))]
                if not allowed:
                    continue
                for endpoint in allowed:
                    if (endpoint.host, endpoint.port) == entry[0]:
                        memory[key] = (entry[0], now)
                        memory.move_to_end(key)
                        return endpoint
                break
        if not exclude and not filtering:
            chosen: Endpoint | None = self._pick(service, port, tiers[0], head, policy, None)
        else:
            chosen = self._first_usable(service, port, tiers, head, policy, exclude, filtering)
        if chosen is not None:
            if entry is None and len(memory) >= self._max_affinity:
                memory.popitem(last=False)
            memory[key] = ((chosen.host, chosen.port), now)
            memory.move_to_end(key)
        return chosen

    def choose(
        self,
        service: Service,
        port: ServicePort,
        endpoints: Sequence[Endpoint],
        head: RequestHead | None,
        policy: ServicePolicy,
        exclude: Collection[EndpointKey],
    ) -> Endpoint | None:
        if not endpoints:
            return None
        filtering = self.filtering is not None and self.filtering()
        if not exclude and not filtering:
            return self._pick(service, port, endpoints, head, policy, None)
        return self._first_usable(service, port, (tuple(endpoints),), head, policy, exclude,
                                  filtering)

    def _first_usable(
        self,
        service: Service,
        port: ServicePort,
        tiers: Sequence[Sequence[Endpoint]],
        head: RequestHead | None,
        policy: ServicePolicy,
        exclude: Collection[EndpointKey],
        filtering: bool,
    ) -> Endpoint | None:
        usable = self.usable if filtering else None
        # The first tier with a healthy endpoint; when none is healthy anywhere (panic),
        # the first tier with any endpoint not excluded: a doubtful endpoint beats none.
        passes = (usable, None) if usable is not None else (None,)
        for check in passes:
            for tier in tiers:
                allowed = [
                    e for e in tier
                    if (e.host, e.port) not in exclude and (check is None or check(e))
                ]
                if allowed:
                    if policy.hashed and len(allowed) < len(tier):
                        skip = ({(e.host, e.port) for e in tier}
                                - {(e.host, e.port) for e in allowed})
                        return self._pick(service, port, tier, head, policy, skip)
                    # The round-robin counter stays the tier's (the filtered list is new).
                    return self._pick(service, port, allowed, head, policy, None, tier)
        return None

    # policies

    def _pick(
        self,
        service: Service,
        port: ServicePort,
        endpoints: Sequence[Endpoint],
        head: RequestHead | None,
        policy: ServicePolicy,
        skip: set[EndpointKey] | None,
        tier: Sequence[Endpoint] | None = None,
    ) -> Endpoint:
        lb = policy.lb
        if lb is _ROUND_ROBIN or len(endpoints) == 1 and skip is None:
            # A counter per tier (computed once per catalog, held by the tiers cache, so its
            # id is stable), also when only part of it is usable now.
            counters = self._turns
            turn = id(endpoints if tier is None else tier)
            index = counters.get(turn, 0)
            if index == 0 and len(counters) >= self._max_keys:
                counters.clear()
            counters[turn] = index + 1
            if endpoints[-1].pods:  # aggregates (last): each takes its pods' turns
                return _topology.weighted_at(endpoints, index)
            return endpoints[index % len(endpoints)]
        if lb is LBPolicy.random:
            if endpoints[-1].pods:
                return _topology.weighted_at(
                    endpoints, int(self._random() * sum(e.weight for e in endpoints)))
            return endpoints[int(self._random() * len(endpoints))]
        if lb is LBPolicy.least_request:
            return self._least_request(endpoints)
        key = self._hash_key(head, policy)
        if key is None:
            if skip:
                endpoints = [e for e in endpoints if (e.host, e.port) not in skip]
            return self.pick(service, port, endpoints)
        if len(self._by_node(endpoints)) > 1:
            # Several nodes: node first, on every node alike (trimmed views hold other
            # nodes as aggregates; docs/topology.md, "Trimmed endpoints").
            return self._two_level(service, port, endpoints, key, policy.bounded_load, skip)
        return self._consistent(service, port, endpoints, key, policy.bounded_load, skip)

    def _two_level(
        self,
        service: Service,
        port: ServicePort,
        endpoints: Sequence[Endpoint],
        key: bytes,
        bounded: bool,
        skip: set[EndpointKey] | None,
    ) -> Endpoint:
        """A tier over several nodes: the node by weighted rendezvous (as every node
        picks it, trimmed view or not), then the pod on that node's ring as that node
        would pick it, or its aggregate (that node picks the pod with the same key)."""
        groups = self._by_node(endpoints)
        index = _topology.rendezvous(groups, key, skip)
        assert index is not None, "a tier with every endpoint skipped"
        members = groups[index][1]
        if not members[0].pods:
            return self._consistent(service, port, members, key, bounded, skip)
        chosen = _topology.rendezvous_entry(members, key, skip)
        assert chosen is not None
        return chosen

    def _by_node(self, endpoints: Sequence[Endpoint]) -> _topology.NodeGroups:
        # Cached by the tier's identity, as rings are (their member tuples key the rings).
        cached = self._groups.get(id(endpoints))
        if cached is not None and cached[0] is endpoints:
            return cached[1]
        groups = _topology.by_node(endpoints)
        if len(self._groups) >= self._max_rings:
            self._groups.clear()
        self._groups[id(endpoints)] = (endpoints, groups)
        return groups

    def _least_request(self, endpoints: Sequence[Endpoint]) -> Endpoint:
        count = len(endpoints)
        if count == 1:
            return endpoints[0]
        draw = self._random
        if endpoints[-1].pods:  # aggregates: drawn by their pods
            total = sum(e.weight for e in endpoints)
            a = _topology.weighted_at(endpoints, int(draw() * total))
            b = _topology.weighted_at(endpoints, int(draw() * total))
            loads = self.loads
            return b if loads.get((b.host, b.port), 0) * a.weight < loads.get(
                (a.host, a.port), 0) * b.weight else a
        first = int(draw() * count)
        second = int(draw() * (count - 1))
        if second >= first:
            second += 1
        a, b = endpoints[first], endpoints[second]
        loads = self.loads
        return b if loads.get((b.host, b.port), 0) < loads.get((a.host, a.port), 0) else a

    @staticmethod
    def _hash_key(head: RequestHead | None, policy: ServicePolicy) -> bytes | None:
        if head is None:
            return None
        name = policy.hash_header
        if name is None:
            return head.client.encode() if head.client else None
        for field, value in head.headers:
            if len(field) == len(name) and field.lower() == name:
                return value
        return None

    def ring(self, endpoints: Sequence[Endpoint]) -> _Ring:
        """The ring over ``endpoints``, cached by the sequence's identity (the tiers are
        computed once per catalog; the cache holds the sequence, so its id stays unique)."""
        key = id(endpoints)
        cached = self._rings.get(key)
        if cached is not None and cached[0] is endpoints:
            return cached[1]
        ring = _Ring(endpoints)
        if len(self._rings) >= self._max_rings:
            self._rings.clear()
        self._rings[key] = (endpoints, ring)
        return ring

    def _consistent(
        self,
        service: Service,
        port: ServicePort,
        endpoints: Sequence[Endpoint],
        key: bytes,
        bounded: bool,
        skip: set[EndpointKey] | None,
    ) -> Endpoint:
        ring = self.ring(endpoints)
        members = ring.endpoints
        loads = self.loads
        capacity: float | None = None
        fallback: Endpoint | None = None
        for index in ring.walk(_hash(key)):
            endpoint = members[index]
            address = (endpoint.host, endpoint.port)
            if skip is not None and address in skip:
                continue
            if fallback is None:
                fallback = endpoint
            if not bounded:
                return endpoint
            load = loads.get(address, 0)
            if load == 0:
                return endpoint
            if capacity is None:
                total = sum(loads.get((e.host, e.port), 0) for e in members)
                usable = len(members) - (len(skip) if skip else 0)
                capacity = LOAD_BOUND * (total + 1) / max(usable, 1)
            if load + 1 <= capacity:
                return endpoint
        assert fallback is not None, "a ring walk with every endpoint skipped"
        return fallback
