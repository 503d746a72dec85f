"""
Router replicas find each other through the API server: one ``coordination.k8s.io/v1``
Lease per replica.

Each replica keeps a Lease named ``edgemesh-router-<node>`` in the election's namespace,
labelled ``edgemesh.io/router-replica=true``, whose annotation ``edgemesh.io/router-link``
says where its router links are accepted (``tcp:POD_IP:PORT``, from ``--peer-listen`` and
``--advertise``/``$POD_IP``).  It renews it every retry period (``renewTime``), lists the
Leases with that label, and links to the replicas whose Lease is live.  Several replicas on
one host with different ports work as well as one per pod.

"Live" is judged as the election does (``_election.py``): a Lease whose record has not
changed for its ``leaseDurationSeconds`` **on our own clock** is stale, whatever the time of
day in it; so clock skew between replicas does not matter.  On a clean stop a replica
deletes its Lease; after a crash it goes stale within the lease duration (and its links
drop at once anyway: the peers see the connection close).

``ReplicaLeases`` holds the rules (no I/O); ``ReplicaDiscovery`` runs them on the reactor
and hands the live peers to the router (``RouterNode.set_peers``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from ._election import _record, micro_time
from ._kubeapi import LEASES, APIError, KubeAPI
from ._warnings import WARN_INTERVAL, RepeatedWarnings, bounded, error_text

REPLICA_LABEL = "edgemesh.io/router-replica"
LINK_ANNOTATION = "edgemesh.io/router-link"
NODE_ANNOTATION = "edgemesh.io/router-node"
HTTP_ANNOTATION = "edgemesh.io/router-address"
"""The IP cloud traffic reaches the replica at (``--advertise``): the leader's EndpointSlices
for edge services list every live replica's."""
LEASE_PREFIX = "edgemesh-router-"
MAX_PEERS = 256
"""Replicas linked to at most (a bound against a namespace full of stray Leases)."""


@dataclass(frozen=True)
class Peer:
    node: str
    endpoint: str
    address: str | None = None
    """Its ``--advertise`` IP, when it published one."""


class ReplicaLeases:
    """This replica's Lease and what the other replicas' Leases say (sans-IO)."""

    def __init__(self, node: str, endpoint: str, namespace: str, duration: float = 15.0,
                 address: str | None = None) -> None:
        self.node = node
        self.endpoint = endpoint
        self.address = address
        self.namespace = namespace
        self.duration = duration
        self.name = (LEASE_PREFIX + node.lower())[:253].rstrip("-.")
        self._seen: dict[str, tuple[tuple[object, ...], float]] = {}
        """Lease name → (its record, when we saw that record first, on our clock)."""

    def body(self, current: Mapping[str, Any] | None, now: float) -> dict[str, Any]:
        """This replica's Lease renewed at ``now`` (``current``: as read, for its
        resourceVersion and acquireTime; None: it does not exist yet)."""
        metadata: dict[str, Any] = {
            "name": self.name, "namespace": self.namespace,
            "labels": {REPLICA_LABEL: "true"},
            "annotations": {LINK_ANNOTATION: self.endpoint, NODE_ANNOTATION: self.node,
                            **({HTTP_ANNOTATION: self.address} if self.address else {})},
        }
        acquired = micro_time(now)
        if current is not None:
            version = (current.get("metadata") or {}).get("resourceVersion")
            if version:
                metadata["resourceVersion"] = version
            spec = current.get("spec") or {}
            if spec.get("holderIdentity") == self.node and spec.get("acquireTime"):
                acquired = spec["acquireTime"]
        return {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata,
            "spec": {"holderIdentity": self.node,
                     "leaseDurationSeconds": max(1, round(self.duration)),
                     "acquireTime": acquired, "renewTime": micro_time(now)},
        }

    def peers(self, leases: Sequence[Mapping[str, Any]], now: float) -> list[Peer]:
        """The other replicas whose Lease is live, from a list of the labelled Leases."""
        live: list[Peer] = []
        present: set[str] = set()
        for lease in leases:
            metadata = lease.get("metadata") or {}
            name = metadata.get("name")
            spec = lease.get("spec") or {}
            annotations = metadata.get("annotations") or {}
            node = annotations.get(NODE_ANNOTATION) or spec.get("holderIdentity")
            endpoint = annotations.get(LINK_ANNOTATION)
            if not isinstance(name, str) or name == self.name or not isinstance(node, str) \
                    or not node or node == self.node or not isinstance(endpoint, str) \
                    or not endpoint:
                continue
            present.add(name)
            record = _record(spec)
            seen = self._seen.get(name)
            if seen is None or seen[0] != record:
                seen = self._seen[name] = (record, now)
            duration = spec.get("leaseDurationSeconds")
            duration = duration if isinstance(duration, int) and duration > 0 else self.duration
            if now - seen[1] < duration and len(live) < MAX_PEERS:
                live.append(Peer(node, endpoint, _ip(annotations.get(HTTP_ANNOTATION))))
        for name in list(self._seen):
            if name not in present:
                del self._seen[name]
        return sorted(live, key=lambda p: p.node)


def _ip(value: object) -> str | None:
    import ipaddress

    if not isinstance(value, str):
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


class ReplicaDiscovery(Service):
    """Renews this replica's Lease and lists the others' every ``period`` seconds; tells
    ``on_peers`` the live ones (each time: the router keeps what did not change)."""

    log = Logger()

    def __init__(self, clock: Any, api: KubeAPI, leases: ReplicaLeases,
                 on_peers: Callable[[list[Peer]], None], period: float = 2.0, *,
                 warn_interval: float = WARN_INTERVAL) -> None:
        self.clock = clock
        self.api = api
        self.leases = leases
        self.on_peers = on_peers
        self.period = period
        self.errors = 0
        self.last_error = ""
        self.warnings = RepeatedWarnings(self.log, warn_interval)
        """A failure every period while the API server is away: summarised."""
        self.peers: list[Peer] = []
        self._timer: IDelayedCall | None = None
        self._in_flight: Deferred[Any] | None = None
        self._stopped = True

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._stopped = False
        self._timer = self.clock.callLater(0, self._tick)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()  # type: ignore[no-untyped-call]
        self._stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._in_flight is not None:
            self._in_flight.cancel()
        # Best effort: the peers stop dialling at once instead of after the lease duration.
        gone: Deferred[None] = self.api.delete(LEASES, self.leases.namespace, self.leases.name)
        gone.addTimeout(self.period, self.clock)
        gone.addErrback(self._not_deleted)
        return gone

    def _not_deleted(self, reason: Failure) -> None:
        """Never fails the stop; but a Lease left behind (RBAC refused the delete, say) is
        said, or the peers dial a stopped replica for a lease duration with no reason."""
        error = reason.value
        if isinstance(error, APIError) and error.status == 404:
            return  # already gone
        self.log.warn("could not delete router replica Lease {ns}/{name} ({error}); the "
                      "other replicas drop it within {seconds:.0f}s",
                      ns=self.leases.namespace, name=self.leases.name, error=error_text(error),
                      seconds=self.leases.duration)

    def _tick(self) -> None:
        self._timer = None
        if self._stopped or self._in_flight is not None:
            return
        work = Deferred.fromCoroutine(self._round())
        self._in_flight = work
        work.addTimeout(self.period * 2, self.clock)
        work.addBoth(self._done)

    def _done(self, result: object) -> None:
        self._in_flight = None
        if self._stopped:
            return
        if isinstance(result, Failure):
            self.errors += 1
            text = error_text(result.value)
            self.last_error = bounded(text)
            self.warnings.failed(text, self.clock.seconds(), "router replica Leases: {error}",
                                 error=text)
        else:
            failures = self.warnings.reset()
            if failures:
                self.log.info("router replica Leases: read again after {count} failures",
                              count=failures)
        self._timer = self.clock.callLater(self.period, self._tick)

    async def _round(self) -> None:
        leases = self.leases
        # self.api.METHOD(RESOURCE, ...) calls: tests/test_manifests.py derives RBAC from them.
        try:
            current: dict[str, Any] | None = await self.api.get(LEASES, leases.namespace,
                                                                leases.name)
        except APIError as error:
            if error.status != 404:
                raise
            current = None
        body = leases.body(current, self.clock.seconds())
        if current is None:
            await self.api.create(LEASES, leases.namespace, body)
        else:
            await self.api.replace(LEASES, leases.namespace, leases.name, body)
        listed = await self.api.list(LEASES, leases.namespace,
                                     label_selector=f"{REPLICA_LABEL}=true")
        peers = leases.peers(listed.items, self.clock.seconds())
        if peers != self.peers:
            self.log.info("router replicas: {peers}",
                          peers=", ".join(f"{p.node} at {p.endpoint}" for p in peers) or "none")
        self.peers = peers
        self.last_error = ""
        self.on_peers(peers)

    def status(self) -> dict[str, object]:
        return {"lease": f"{self.leases.namespace}/{self.leases.name}",
                "link": self.leases.endpoint, "discovered": [p.node for p in self.peers],
                "errors": self.errors,
                **({"last_error": self.last_error} if self.last_error else {})}
