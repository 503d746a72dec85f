"""
Which router replica holds each edge's tunnel (sans-IO).

Every replica tells its peers, over the router links, which edges hold a tunnel to it: the
full set when a link comes up, then each change (``EDGES`` frames).  ``EdgeHomes`` keeps
what the peers said; ``home(edge)`` is the replica to forward an exchange for that edge to,
or None when the edge's tunnel is here (or nobody has it).

An edge that moves (its tunnel died, it dialled another replica) may be announced by its new
replica before its old one says it is gone: the latest announcement wins, and a removal by
a replica that no longer holds the edge leaves the newer holder in place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

MAX_EDGES_PER_REPLICA = 100_000
"""Edges remembered for one peer replica (a bound against a misbehaving peer)."""


class EdgeHomes:
    """The edges of the other replicas, and this replica's own (``local``)."""

    def __init__(self, local: Callable[[str], bool]) -> None:
        self.local = local
        """Whether an edge's tunnel is on this replica (it wins over any peer's word)."""
        self._by_replica: dict[str, set[str]] = {}
        self._holder: dict[str, str] = {}

    def home(self, edge: str) -> str | None:
        """The peer replica to forward to for ``edge`` (None: here, or unknown)."""
        holder = self._holder.get(edge)
        if holder is None or self.local(edge):
            return None
        return holder

    def update(self, replica: str, reset: bool, added: Iterable[str],
               removed: Iterable[str]) -> None:
        """What ``replica`` said: its full set (``reset``, first frame) or a change."""
        edges = self._by_replica.setdefault(replica, set())
        if reset:
            for edge in list(edges):
                self._drop(replica, edges, edge)
        for edge in removed:
            self._drop(replica, edges, edge)
        for edge in added:
            if edge in edges or len(edges) < MAX_EDGES_PER_REPLICA:
                edges.add(edge)
                self._holder[edge] = replica

    def forget(self, replica: str) -> None:
        """The link to ``replica`` is gone: none of its edges is reachable through it."""
        edges = self._by_replica.pop(replica, set())
        for edge in edges:
            if self._holder.get(edge) == replica:
                self._fallback(edge)

    def _drop(self, replica: str, edges: set[str], edge: str) -> None:
        edges.discard(edge)
        if self._holder.get(edge) == replica:
            self._fallback(edge)

    def _fallback(self, edge: str) -> None:
        """Another replica that still says it holds ``edge``, if any."""
        for other, edges in self._by_replica.items():
            if edge in edges:
                self._holder[edge] = other
                return
        self._holder.pop(edge, None)

    def replicas(self) -> list[str]:
        return sorted(self._by_replica)

    def remote(self) -> dict[str, str]:
        """Edge → the peer replica that holds it (edges held here left out)."""
        return {e: r for e, r in sorted(self._holder.items()) if not self.local(e)}

    def count(self, replica: str) -> int:
        return len(self._by_replica.get(replica, ()))
