"""
The catalog from a Kubernetes API server: Nodes, Services and EndpointSlices, each kept by
a Reflector (list, then watch), joined by the same code as ``--catalog FILE``.

Objects are parsed as they arrive by ``edgemesh.catalog``'s per-object parsers
(``parse_node``, ``parse_service``, ``parse_endpoint_slice``, from the raw camelCase JSON),
and a change marks the services it touches.  Rebuilding runs ``assemble_catalog`` on those
services only and keeps every other Service object as it was, so the catalog the file
source builds and this one are the same structure, and the router's deltas compare
unchanged services by identity.  An object the parsers refuse is reported (once per
object and problem) and left out; it never stops the watch.

Changes are gathered for ``settle`` seconds (from the first one) before a catalog is made:
a burst of events is one new revision.  Nothing is emitted before all three resources have
been listed once: a router that starts while the API server is down pushes nothing, and
its edges keep the catalog they have.

Revisions are ``(start second << 20) + n`` (at least the previous one plus one): growing
with each change, and across router restarts as long as the wall clock does.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable, Mapping
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from ..catalog import (
    SERVICE_NAME_LABEL,
    Catalog,
    EndpointSliceObject,
    ManifestError,
    Node,
    ServiceObject,
    assemble_catalog,
    parse_endpoint_slice,
    parse_node,
    parse_service,
)
from ..catalog import Service as CatalogService
from ._kubeapi import ENDPOINT_SLICES, NODES, SERVICES, KubeAPI, Resource
from ._reflector import Reflector, WatchTiming

MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
EDGEMESH_MANAGER = "router.edgemesh.io"
"""The managed-by value of the EndpointSlices edgemesh's controller writes (they point at
the router itself: never part of the catalog)."""
REVISION_SHIFT = 20

CatalogListener = Callable[[Catalog], None]


def _key(obj: Mapping[str, Any], namespaced: bool) -> str | None:
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        return None
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        return None
    if not namespaced:
        return name
    namespace = meta.get("namespace")
    return f"{namespace if isinstance(namespace, str) and namespace else 'default'}/{name}"


def _managed_by_edgemesh(obj: Mapping[str, Any]) -> bool:
    meta = obj.get("metadata")
    labels = meta.get("labels") if isinstance(meta, Mapping) else None
    return isinstance(labels, Mapping) and labels.get(MANAGED_BY_LABEL) == EDGEMESH_MANAGER


class KubernetesSource(Service):
    """Watches the API server and calls each listener with every new Catalog."""

    log = Logger()

    def __init__(
        self,
        clock: Any,
        api: KubeAPI,
        *,
        namespace: str | None = None,
        timing: WatchTiming | None = None,
        settle: float = 0.02,
        random: Callable[[], float] = _random.random,
    ) -> None:
        self.clock = clock
        self.api = api
        self.namespace = namespace
        self.settle = settle
        self.listeners: list[CatalogListener] = []
        self.catalog: Catalog | None = None
        """The last catalog emitted (None before the first complete list)."""
        self.nodes: dict[str, Node] = {}
        self.services: dict[str, ServiceObject] = {}
        self.slices: dict[str, EndpointSliceObject] = {}
        self.slices_by_service: dict[str, dict[str, EndpointSliceObject]] = {}
        self.built: dict[str, CatalogService] = {}
        self.invalid: dict[str, str] = {}
        """Objects left out, by "Kind key": the problem last reported."""
        self._dirty: set[str] = set()
        self._nodes_dirty = False
        self._timer: IDelayedCall | None = None
        self._start_second = int(clock.seconds())
        self._last_revision = 0
        self.emitted = 0
        self.reflectors = [
            Reflector(clock, api, NODES, self, timing=timing, random=random),
            Reflector(clock, api, SERVICES, self, namespace=namespace, timing=timing,
                      random=random),
            Reflector(clock, api, ENDPOINT_SLICES, self, namespace=namespace, timing=timing,
                      random=random, label_selector=f"{MANAGED_BY_LABEL}!={EDGEMESH_MANAGER}"),
        ]
        self.on_readiness: Callable[[bool, str], None] | None = None
        """Called with ``readiness()`` whenever it may have changed."""
        for reflector in self.reflectors:
            reflector.on_synced = self._synced
            reflector.on_problem = self._readiness_changed

    def subscribe(self, listener: CatalogListener) -> None:
        """``listener`` gets every catalog from now on (and the current one, if any)."""
        self.listeners.append(listener)
        if self.catalog is not None:
            listener(self.catalog)

    @property
    def synced(self) -> bool:
        return all(r.synced for r in self.reflectors)

    # -- service ---------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        for reflector in self.reflectors:
            reflector.start()

    def stopService(self) -> Deferred[None] | None:
        super().stopService()  # type: ignore[no-untyped-call]
        for reflector in self.reflectors:
            reflector.stop()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        close = getattr(self.api, "close", None)
        closed: Deferred[None] | None = close() if close is not None else None
        return closed

    def readiness(self) -> tuple[bool, str]:
        """(ready, why) for /readyz: not ready before every resource is listed, nor while a
        list or watch fails for a reason that will not pass by itself (401, 403, TLS); a
        passing failure (refused, 5xx) after the first list keeps the last catalog and says
        so."""
        # The same failure of several resources (a wrong CA...) is said once.
        by_text: dict[str, list[str]] = {}
        for reflector in self.reflectors:
            if reflector.problem_of is not None:
                what, why = reflector.problem_of
                by_text.setdefault(why, []).append(what)
        text = "; ".join(f"{', '.join(whats)}: {why}" for why, whats in by_text.items())
        if not self.synced:
            waiting = ", ".join(r.name for r in self.reflectors if not r.synced)
            return False, f"not listed yet: {waiting}" + (f"; {text}" if text else "")
        if any(r.problem_persistent for r in self.reflectors if r.problem_of):
            return False, text
        return True, f"serving the last catalog: {text}" if text else ""

    def _readiness_changed(self) -> None:
        if self.on_readiness is not None:
            self.on_readiness(*self.readiness())

    def status(self) -> dict[str, object]:
        return {
            "synced": self.synced,
            "problems": {r.resource.plural: r.problem for r in self.reflectors if r.problem},
            "revision": None if self.catalog is None else self.catalog.revision,
            "invalid_objects": len(self.invalid),
            "watches": {
                r.resource.plural: {"state": r.state.value, "resource_version": r.resource_version,
                                    **r.counts}
                for r in self.reflectors
            },
        }

    # -- Handler (what the reflectors call) ----------------------------------------------

    def replace(self, resource: Resource, items: list[dict[str, Any]]) -> None:
        keys = {k for obj in items if (k := _key(obj, resource.namespaced)) is not None}
        if resource is NODES:
            for name in [n for n in self.nodes if n not in keys]:
                self._drop_node(name)
        elif resource is SERVICES:
            for key in [k for k in self.services if k not in keys]:
                self._drop_service(key)
        else:
            for key in [k for k in self.slices if k not in keys]:
                self._drop_slice(key)
        for kind_key in [k for k in self.invalid if k.startswith(resource.kind + " ")]:
            if kind_key.partition(" ")[2] not in keys:
                del self.invalid[kind_key]
        for obj in items:
            self.upsert(resource, obj)

    def upsert(self, resource: Resource, obj: dict[str, Any]) -> None:
        key = _key(obj, resource.namespaced)
        try:
            if resource is NODES:
                self._set_node(parse_node(obj))
            elif resource is SERVICES:
                self._set_service(parse_service(obj))
            elif not _managed_by_edgemesh(obj):
                self._set_slice(parse_endpoint_slice(obj))
            else:
                return
        except ManifestError as error:
            self._invalid(resource, key, error)
            return
        if key is not None:
            self.invalid.pop(f"{resource.kind} {key}", None)

    def delete(self, resource: Resource, obj: dict[str, Any]) -> None:
        key = _key(obj, resource.namespaced)
        if key is None:
            return
        self.invalid.pop(f"{resource.kind} {key}", None)
        if resource is NODES:
            self._drop_node(key)
        elif resource is SERVICES:
            self._drop_service(key)
        else:
            self._drop_slice(key)

    def _invalid(self, resource: Resource, key: str | None, error: ManifestError) -> None:
        """Report it (once per problem) and leave it out: as if it were not there."""
        if key is not None:
            problem = str(error)
            if self.invalid.get(f"{resource.kind} {key}") != problem:
                self.log.warn("ignoring invalid {kind}: {problem}", kind=resource.kind,
                              problem=problem)
            self.invalid[f"{resource.kind} {key}"] = problem
            self.delete(resource, {"metadata": _metadata_of(key, resource.namespaced)})
            self.invalid[f"{resource.kind} {key}"] = problem
        else:
            self.log.warn("ignoring invalid {kind}: {problem}", kind=resource.kind,
                          problem=str(error))

    # -- the cache and what each change dirties ----------------------------------------------

    def _set_node(self, node: Node) -> None:
        before = self.nodes.get(node.name)
        if before == node:
            return
        self.nodes[node.name] = node
        self._node_changed(before, node)

    def _drop_node(self, name: str) -> None:
        before = self.nodes.pop(name, None)
        if before is not None:
            self._node_changed(before, None)

    def _node_changed(self, before: Node | None, after: Node | None) -> None:
        self._nodes_dirty = True
        # Endpoints without a zone of their own take their node's.
        if (before.zone if before else None) != (after.zone if after else None):
            self._dirty.update(self.services)
        self._changed()

    def _set_service(self, parsed: ServiceObject) -> None:
        key = parsed.service.key
        if self.services.get(key) == parsed:
            return
        self.services[key] = parsed
        self._dirty.add(key)
        self._changed()

    def _drop_service(self, key: str) -> None:
        if self.services.pop(key, None) is not None:
            self._dirty.add(key)
            self._changed()

    def _set_slice(self, piece: EndpointSliceObject) -> None:
        before = self.slices.get(piece.key)
        if before == piece:
            return
        if before is not None:
            self._unindex(before)
        self.slices[piece.key] = piece
        service = f"{piece.namespace}/{piece.service_name}"
        self.slices_by_service.setdefault(service, {})[piece.key] = piece
        self._dirty.add(service)
        self._changed()

    def _drop_slice(self, key: str) -> None:
        before = self.slices.pop(key, None)
        if before is not None:
            self._unindex(before)
            self._changed()

    def _unindex(self, piece: EndpointSliceObject) -> None:
        service = f"{piece.namespace}/{piece.service_name}"
        own = self.slices_by_service.get(service)
        if own is not None:
            own.pop(piece.key, None)
            if not own:
                del self.slices_by_service[service]
        self._dirty.add(service)

    # -- emitting ------------------------------------------------------------------------

    def _synced(self) -> None:
        self._readiness_changed()
        if self.synced and self.catalog is None:
            self._emit()

    def _changed(self) -> None:
        if self.catalog is None or self._timer is not None:
            return  # before the first catalog, _synced emits; else one is scheduled
        self._timer = self.clock.callLater(self.settle, self._emit)

    def _emit(self) -> None:
        self._timer = None
        if not self.synced:
            return
        dirty, self._dirty = self._dirty, set()
        nodes_dirty, self._nodes_dirty = self._nodes_dirty, False
        changed = self._rebuild(dirty)
        if self.catalog is not None and not changed and not nodes_dirty:
            return
        revision = max(self._last_revision + 1,
                       (self._start_second << REVISION_SHIFT) + self.emitted + 1)
        self._last_revision = revision
        catalog = Catalog(services=self.built, nodes=self.nodes, revision=revision)
        self.catalog = catalog
        self.emitted += 1
        for listener in list(self.listeners):
            try:
                listener(catalog)
            except Exception:  # noqa: BLE001 - one consumer's bug must not stop the watch
                self.log.failure("a catalog listener failed")

    def _rebuild(self, dirty: set[str]) -> bool:
        """Assemble the dirty services again; True if any of them changed."""
        if not dirty:
            return False
        wanted = [self.services[k] for k in dirty if k in self.services]
        pieces = [p for k in dirty for p in self.slices_by_service.get(k, {}).values()]
        partial = assemble_catalog(self.nodes.values(), wanted, pieces)
        changed = False
        for key in dirty:
            fresh = partial.services.get(key)
            before = self.built.get(key)
            if fresh is None:
                if before is not None:
                    del self.built[key]
                    changed = True
            elif before != fresh:
                self.built[key] = fresh
                changed = True
        return changed


def _metadata_of(key: str, namespaced: bool) -> dict[str, str]:
    if not namespaced:
        return {"name": key}
    namespace, _, name = key.partition("/")
    return {"namespace": namespace, "name": name}


__all__ = ["EDGEMESH_MANAGER", "MANAGED_BY_LABEL", "SERVICE_NAME_LABEL", "KubernetesSource"]
