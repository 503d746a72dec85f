"""
Cloud apps reaching edge services by name: EndpointSlices that send a Service's cloud
traffic to the router.

For every *edge service* — a Service with a clusterIP whose endpoints all run on edge
nodes (at least one) — the controller keeps one EndpointSlice in the Service's namespace:

    name:   <service>-edgemesh
    labels: kubernetes.io/service-name: <service>
            endpointslice.kubernetes.io/managed-by: edgemesh.io/router
    owner:  the Service (deleted with it by the garbage collector)
    addressType: IPv4 or IPv6 (the router's address family)
    ports:  one per TCP service port, same name, the router's HTTP port; with
            ``--stream-ports`` a stream port gets a router port of its own from that
            range instead (sources/_streamports.py), kept as long as the slice names it
    endpoints: the router's address (downward API ``POD_IP``), ready; zone hints naming the
               cloud nodes' zones when every cloud node has one

kube-proxy on cloud nodes then sends ``clusterIP:port`` to the router, and cluster DNS
already resolves the name to that clusterIP; the router routes by the Host header (the
name, or ``clusterIP:port``) through the tunnel to the edge.  The watch leaves these slices
out of the catalog (they point at the router itself).  Services with cloud endpoints too are
left alone: kube-proxy reaches those, and the router would send their cloud share back to
the clusterIP, and so to itself.  docs/kubernetes.md has the whole story, RBAC included.

Reconciling: the controller watches its own slices (a Reflector with a label selector),
compares them with what the newest catalog asks for, and creates, replaces (with the
resourceVersion it saw: a conflict waits for the watch) or deletes (with a precondition)
the difference, a few writes at a time, again after a backoff when the API server fails,
and every ``resync`` seconds anyway.
"""

from __future__ import annotations

import ipaddress
import random as _random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.application.service import Service as TwistedService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..catalog import SERVICE_NAME_LABEL, Catalog, PortKind, Service
from ._kubeapi import ENDPOINT_SLICES, SERVICES, APIError, KubeAPI, Resource
from ._kubernetes import EDGEMESH_MANAGER, MANAGED_BY_LABEL
from ._reflector import Reflector, WatchTiming
from ._streamports import PortKey, PortRange, allocate, existing_allocations

SLICE_SUFFIX = "-edgemesh"
MAX_WRITES = 4
"""Writes in flight at once."""


def slice_name(service: Service) -> str:
    return service.name + SLICE_SUFFIX


def is_edge_service(catalog: Catalog, service: Service) -> bool:
    """A clusterIP service whose endpoints (ready or not) all run on edge nodes."""
    if service.cluster_ip is None:
        return False
    nodes = [e.node for endpoints in service.endpoints.values() for e in endpoints]
    return bool(nodes) and all(catalog.is_edge(n) for n in nodes)


def cloud_zones(catalog: Catalog) -> list[str] | None:
    """The zones of the cloud (non-edge) nodes, if every one of them has one."""
    cloud = [n for n in catalog.nodes.values() if not n.edge]
    if not cloud or any(n.zone is None for n in cloud):
        return None
    return sorted({n.zone for n in cloud if n.zone is not None})


def desired_slice(service: Service, addresses: Sequence[str], port: int,
                  zones: list[str] | None,
                  stream_ports: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The EndpointSlice (as JSON) that sends ``service``'s cloud traffic to the router;
    ``stream_ports``: the router port of a service port (by name) other than ``port``."""
    own = stream_ports or {}
    family = "IPv6" if ":" in addresses[0] else "IPv4"
    endpoint_base: dict[str, Any] = {
        "conditions": {"ready": True, "serving": True, "terminating": False},
    }
    if zones:
        endpoint_base["hints"] = {"forZones": [{"name": z} for z in zones]}
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": slice_name(service),
            "namespace": service.namespace,
            "labels": {SERVICE_NAME_LABEL: service.name, MANAGED_BY_LABEL: EDGEMESH_MANAGER},
        },
        "addressType": family,
        "ports": [{"name": p.name, "port": own.get(p.name, port), "protocol": "TCP"}
                  for p in service.ports if p.protocol == "TCP"],
        "endpoints": [{"addresses": [a], **endpoint_base} for a in addresses],
    }


def _spec(obj: Mapping[str, Any]) -> tuple[object, ...]:
    """What the controller owns in a slice: compared to decide on a write."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    ports = sorted((p.get("name") or "", p.get("port"), p.get("protocol") or "TCP")
                   for p in obj.get("ports") or [] if isinstance(p, Mapping))
    endpoints = []
    for e in obj.get("endpoints") or []:
        if not isinstance(e, Mapping):
            continue
        conditions = e.get("conditions") or {}
        hints = e.get("hints") or {}
        zones = sorted(z.get("name", "") for z in hints.get("forZones") or []
                       if isinstance(z, Mapping))
        endpoints.append((tuple(e.get("addresses") or ()), conditions.get("ready"),
                          conditions.get("serving"), conditions.get("terminating"),
                          tuple(zones)))
    return (labels.get(SERVICE_NAME_LABEL), labels.get(MANAGED_BY_LABEL),
            obj.get("addressType"), tuple(ports), tuple(sorted(endpoints, key=repr)))


def _key_of(obj: Mapping[str, Any]) -> str | None:
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        return None
    name, namespace = meta.get("name"), meta.get("namespace") or "default"
    return f"{namespace}/{name}" if isinstance(name, str) else None


class _OwnSlices:
    """The Reflector's handler for the controller's own slices."""

    def __init__(self, changed: Callable[[], None]) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.changed = changed

    def replace(self, resource: Resource, items: list[dict[str, Any]]) -> None:
        self.objects = {k: obj for obj in items if (k := _key_of(obj)) is not None}
        self.changed()

    def upsert(self, resource: Resource, obj: dict[str, Any]) -> None:
        key = _key_of(obj)
        if key is not None:
            self.objects[key] = obj
            self.changed()

    def delete(self, resource: Resource, obj: dict[str, Any]) -> None:
        key = _key_of(obj)
        if key is not None and self.objects.pop(key, None) is not None:
            self.changed()


class EdgeServiceController(TwistedService):
    """Keeps the router EndpointSlices of edge services in step with the catalog."""

    log = Logger()

    def __init__(
        self,
        clock: Any,
        api: KubeAPI,
        addresses: Sequence[str],
        port: int,
        *,
        namespace: str | None = None,
        timing: WatchTiming | None = None,
        delay: float = 0.05,
        resync: float = 300.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        random: Callable[[], float] = _random.random,
        stream_ports: PortRange | None = None,
    ) -> None:
        if not addresses:
            raise ValueError("the controller needs the router's address")
        families = {ipaddress.ip_address(a).version for a in addresses}
        if len(families) != 1:
            raise ValueError("the router's addresses must be of one family")
        self.clock = clock
        self.api = api
        self.addresses = list(addresses)
        self.port = port
        self.delay = delay
        self.resync = resync
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.random = random
        self.stream_ports = stream_ports
        """``--stream-ports``: router ports for stream ports; None: all on ``port``."""
        self._full: set[PortKey] = set()
        """Stream ports left on the HTTP port for want of a free number (logged once)."""
        self.catalog: Catalog | None = None
        self.own = _OwnSlices(self._schedule)
        label = f"{MANAGED_BY_LABEL}={EDGEMESH_MANAGER}"
        self.reflector = Reflector(clock, api, ENDPOINT_SLICES, self.own, namespace=namespace,
                                   label_selector=label, timing=timing, random=random)
        self.in_flight: dict[str, Deferred[Any]] = {}
        self.failures = 0
        self.refused: dict[str, tuple[object, ...]] = {}
        """Slices the API server refused (422...) as desired then: not tried again until
        what is desired changes."""
        self.writes = {"create": 0, "replace": 0, "delete": 0, "errors": 0}
        self._timer: IDelayedCall | None = None
        self._resync_timer: IDelayedCall | None = None
        self._stopped = True

    # -- service ---------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._stopped = False
        self.reflector.start()
        self._resync_timer = self.clock.callLater(self.resync, self._periodic)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()  # type: ignore[no-untyped-call]
        self._stopped = True
        self.reflector.stop()
        for timer in (self._timer, self._resync_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = self._resync_timer = None
        for pending in list(self.in_flight.values()):
            pending.cancel()
        return None

    def catalog_changed(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._schedule()

    def set_addresses(self, addresses: Sequence[str]) -> None:
        """The router replicas' addresses changed (replica discovery): rewrite the slices.
        Addresses of another family than the first are left out (one family per slice)."""
        family = ipaddress.ip_address(self.addresses[0]).version
        kept = sorted({a for a in addresses if ipaddress.ip_address(a).version == family})
        if kept and kept != sorted(self.addresses):
            self.addresses = kept
            self._schedule()

    # -- reconciling -------------------------------------------------------------------

    def desired(self) -> dict[str, dict[str, Any]]:
        catalog = self.catalog
        if catalog is None:
            return {}
        zones = cloud_zones(catalog)
        services = [s for s in catalog.services.values()
                    if is_edge_service(catalog, s) and any(p.protocol == "TCP" for p in s.ports)]
        allocated = self._allocate(services)
        wanted = {}
        for service in services:
            own = {name: port for (ns, svc, name), port in allocated.items()
                   if ns == service.namespace and svc == service.name}
            obj = desired_slice(service, self.addresses, self.port, zones, own)
            wanted[f"{service.namespace}/{slice_name(service)}"] = obj
        return wanted

    def _allocate(self, services: Sequence[Service]) -> dict[PortKey, int]:
        """Router ports for the stream ports of ``services``, stable across reconciles and
        leaders: read back from the managed slices."""
        if self.stream_ports is None:
            return {}
        keys = [(s.namespace, s.name, p.name) for s in services for p in s.ports
                if p.kind is PortKind.stream]
        existing = existing_allocations(self.own.objects.values(), self.stream_ports)
        allocated = allocate(existing, keys, self.stream_ports)
        full = {k for k in keys if k not in allocated}
        for namespace, service, name in sorted(full - self._full):
            low, high = self.stream_ports
            self.log.error("--stream-ports {low}-{high} is full: stream port {name!r} of "
                           "{namespace}/{service} stays on the HTTP port", low=low, high=high,
                           name=name, namespace=namespace, service=service)
        self._full = full
        return allocated

    def _periodic(self) -> None:
        self._resync_timer = self.clock.callLater(self.resync, self._periodic)
        self._schedule()

    def _schedule(self, delay: float | None = None) -> None:
        if self._stopped or self._timer is not None:
            return
        self._timer = self.clock.callLater(self.delay if delay is None else delay,
                                           self.reconcile)

    def reconcile(self) -> None:
        """Start the writes that bring the API server's slices to what is desired."""
        self._timer = None
        if self._stopped or self.catalog is None or not self.reflector.synced:
            return
        wanted = self.desired()
        actual = self.own.objects
        for key, obj in wanted.items():
            if len(self.in_flight) >= MAX_WRITES:
                break
            if key in self.in_flight:
                continue
            spec = _spec(obj)
            if self.refused.get(key) == spec:
                continue
            have = actual.get(key)
            if have is None:
                self._write(key, "create", self._create(obj), spec)
            elif _spec(have) != spec:
                body = {**obj, "metadata": {**have.get("metadata", {}), **obj["metadata"]}}
                namespace, name = key.split("/", 1)
                self._write(key, "replace",
                            self.api.replace(ENDPOINT_SLICES, namespace, name, body), spec)
        for key, have in list(actual.items()):
            if len(self.in_flight) >= MAX_WRITES:
                break
            if key in wanted or key in self.in_flight:
                continue
            namespace, name = key.split("/", 1)
            version = (have.get("metadata") or {}).get("resourceVersion")
            self._write(key, "delete", self.api.delete(ENDPOINT_SLICES, namespace, name,
                                                        version), None)

    async def _create_async(self, obj: dict[str, Any]) -> Any:
        meta = obj["metadata"]
        service = meta["labels"][SERVICE_NAME_LABEL]
        # The Service owns the slice: the garbage collector deletes it with the Service.
        owner = await self.api.get(SERVICES, meta["namespace"], service)
        uid = (owner.get("metadata") or {}).get("uid")
        if isinstance(uid, str) and uid:
            meta = {**meta, "ownerReferences": [{
                "apiVersion": "v1", "kind": "Service", "name": service, "uid": uid,
                "blockOwnerDeletion": False, "controller": False}]}
        return await self.api.create(ENDPOINT_SLICES, meta["namespace"], {**obj, "metadata": meta})

    def _create(self, obj: dict[str, Any]) -> Deferred[Any]:
        return Deferred.fromCoroutine(self._create_async(obj))

    def _write(self, key: str, verb: str, work: Deferred[Any],
               spec: tuple[object, ...] | None) -> None:
        self.in_flight[key] = work
        work.addCallbacks(self._written, self._failed, callbackArgs=(key, verb),
                          errbackArgs=(key, verb, spec))

    def _written(self, result: Any, key: str, verb: str) -> None:
        self.in_flight.pop(key, None)
        self.writes[verb] += 1
        self.failures = 0
        self.refused.pop(key, None)
        self.log.info("{done} EndpointSlice {key}", done=verb + "d", key=key)
        # Fold the answer in now rather than wait for the watch (it may lag).
        if verb == "delete":
            self.own.objects.pop(key, None)
        elif isinstance(result, dict):
            self.own.objects[key] = result
        self._schedule()

    def _failed(self, reason: Failure, key: str, verb: str,
                spec: tuple[object, ...] | None) -> None:
        self.in_flight.pop(key, None)
        if self._stopped:
            return
        self.writes["errors"] += 1
        error = reason.value
        if isinstance(error, APIError) and error.status in (404, 409):
            # A conflict or a vanished object (or Service): the watch brings the truth.
            if verb == "delete" and error.status == 404:
                self.own.objects.pop(key, None)
            self.log.info("EndpointSlice {key}: {verb} answered {status}; will look again",
                          key=key, verb=verb, status=error.status)
            self._schedule(self.backoff_initial)
            return
        if isinstance(error, APIError) and 400 <= error.status < 500 and error.status != 429:
            if spec is not None:
                self.refused[key] = spec
            self.log.error("EndpointSlice {key}: {verb} refused: {error}", key=key, verb=verb,
                           error=str(error))
            return
        delay = min(self.backoff_max, self.backoff_initial * 2 ** min(self.failures, 20))
        delay *= 1 + self.random()
        if isinstance(error, APIError) and error.retry_after is not None:
            delay = max(delay, min(error.retry_after, self.backoff_max))
        self.failures += 1
        self.log.warn("EndpointSlice {key}: {verb} failed ({error}); again in {delay:.1f}s",
                      key=key, verb=verb, error=str(error), delay=delay)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._schedule(delay)

    def status(self) -> dict[str, object]:
        return {"slices": len(self.own.objects), "desired": len(self.desired()),
                "in_flight": len(self.in_flight), **self.writes}
