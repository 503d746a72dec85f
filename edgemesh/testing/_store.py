"""The object store behind the test API server: plain Python, no reactor, no sockets.

It keeps what etcd plus the API server's watch cache keep: one global, monotonic
resourceVersion counter (each write bumps it by one), the current objects, and a bounded
history of change events.  A watch can resume from any resourceVersion still covered by the
history; an older one is "too old" (410 Expired).  The history also lets a list be served
exactly as it was at an older resourceVersion (``resourceVersionMatch=Exact`` and
``continue`` tokens), as long as that version has not been compacted away.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import copy
import ipaddress
import json
import random
import re
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

from ._fields import (
    Path,
    changed_paths,
    from_fields_v1,
    get_path,
    leaf_paths,
    remove_path,
    set_path,
    to_fields_v1,
)
from ._patch import (
    JSON_PATCH,
    MERGE_PATCH,
    STRATEGIC_MERGE_PATCH,
    PatchError,
    apply_json_patch,
    apply_merge_patch,
    apply_strategic_merge_patch,
)
from ._resources import (
    ENDPOINT_SLICES,
    NAMESPACES,
    RESOURCE_TYPES,
    SERVICES,
    JSONObject,
    ResourceType,
    StatusError,
    resolve_resource,
)
from ._selectors import FieldSelector, LabelSelector
from ._validation import validate

__all__ = [
    "DEFAULT_HISTORY_SIZE",
    "ObjectStore",
    "StoreEvent",
    "WatchSink",
    "WatchSubscription",
]

DEFAULT_HISTORY_SIZE = 1000
# The resourceVersion of an empty store; the first write gets the next one.
INITIAL_RESOURCE_VERSION = 1

ADDED = "ADDED"
MODIFIED = "MODIFIED"
DELETED = "DELETED"

_Key = tuple[str, str]  # (namespace or "", name)

APPLY_PATCH = "application/apply-patch+yaml"
# The NamespaceLifecycle admission plugin refuses to delete these.
_UNDELETABLE_NAMESPACES = frozenset({"default", "kube-system", "kube-public"})
NODE_PORT_RANGE = (30000, 32767)
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
# Fields the server owns; an update cannot change them.
_SYSTEM_METADATA = ("uid", "creationTimestamp", "generation", "deletionTimestamp")


@dataclass(frozen=True)
class StoreEvent:
    """One write, as the watch cache records it (`old` is the state before, if any)."""

    resource_version: int
    resource: ResourceType
    type: str
    object: JSONObject
    old: JSONObject | None


class WatchSink(Protocol):
    """Where a subscription delivers its events (the HTTP watch stream, in the server)."""

    def deliver(self, event_type: str, obj: JSONObject) -> None: ...


class WatchSubscription:
    """One open watch: filters the store's events down to what this watcher may see."""

    def __init__(
        self,
        store: ObjectStore,
        resource: ResourceType,
        namespace: str | None,
        labels: LabelSelector,
        fields: FieldSelector,
        after: int,
        sink: WatchSink,
    ) -> None:
        self.store = store
        self.resource = resource
        self.namespace = namespace
        self.labels = labels
        self.fields = fields
        self.after = after
        self.sink = sink
        self.active = True

    def matches(self, obj: JSONObject) -> bool:
        metadata = obj.get("metadata") or {}
        if self.namespace is not None and metadata.get("namespace") != self.namespace:
            return False
        return self.labels.matches(metadata.get("labels")) and self.fields.matches(obj)

    def translate(self, event: StoreEvent) -> tuple[str, JSONObject] | None:
        """The event this watcher sees, after its selectors (as the watch cache filters)."""
        if event.resource != self.resource or event.resource_version <= self.after:
            return None
        if event.type == DELETED:
            return (DELETED, event.object) if self.matches(event.object) else None
        now_matches = self.matches(event.object)
        was_matching = event.old is not None and self.matches(event.old)
        if now_matches and was_matching:
            return (MODIFIED, event.object)
        if now_matches:
            return (ADDED, event.object)
        if was_matching:
            # The object left the selection: the watcher sees it deleted, in its new state.
            return (DELETED, event.object)
        return None

    def offer(self, event: StoreEvent) -> None:
        if not self.active:
            return
        seen = self.translate(event)
        if seen is not None:
            self.sink.deliver(*seen)

    def cancel(self) -> None:
        self.active = False
        self.store._unsubscribe(self)


def _parse_resource_version(text: str, what: str = "resourceVersion") -> int:
    try:
        value = int(text)
    except ValueError:
        raise StatusError(400, f"{what}: Invalid value: {text!r}: must be an integer") from None
    if value < 0:
        raise StatusError(400, f"{what}: Invalid value: {text!r}: must be non-negative")
    return value


def _encode_continue(resource_version: int, start_after: _Key) -> str:
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": resource_version, "start": list(start_after)})
    return base64.urlsafe_b64encode(raw.encode()).decode()


def _decode_continue(token: str) -> tuple[int, _Key]:
    try:
        decoded = json.loads(base64.urlsafe_b64decode(token.encode()))
        resource_version = int(decoded["rv"])
        namespace, name = decoded["start"]
        return resource_version, (str(namespace), str(name))
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise StatusError(400, "continue key is not valid: malformed token") from None


def _timestamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _sort_key(obj: JSONObject) -> _Key:
    metadata = obj["metadata"]
    return (metadata.get("namespace", ""), metadata["name"])


def _as_list_item(obj: JSONObject) -> JSONObject:
    item = copy.deepcopy(obj)
    item.pop("kind", None)
    item.pop("apiVersion", None)
    return item


def _managed_entries(obj: JSONObject | None) -> dict[tuple[str, str], set[Path]]:
    """(manager, operation) -> owned paths, from an object's managedFields."""
    entries: dict[tuple[str, str], set[Path]] = {}
    for entry in ((obj or {}).get("metadata") or {}).get("managedFields") or []:
        if not isinstance(entry, dict) or entry.get("subresource"):
            continue
        key = (str(entry.get("manager", "")), str(entry.get("operation", "Update")))
        entries[key] = entries.get(key, set()) | from_fields_v1(entry.get("fieldsV1"))
    return entries


def _entries_to_json(
    entries: dict[tuple[str, str], set[Path]], rtype: ResourceType, now: float
) -> list[JSONObject]:
    return [
        {"manager": manager, "operation": operation, "apiVersion": rtype.api_version,
         "time": _timestamp(now), "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(paths)}
        for (manager, operation), paths in entries.items()
    ]


def _without_version(obj: JSONObject) -> JSONObject:
    trimmed = copy.deepcopy(obj)
    trimmed.get("metadata", {}).pop("resourceVersion", None)
    trimmed.get("metadata", {}).pop("managedFields", None)
    return trimmed


class ObjectStore:
    """Objects, the resourceVersion counter and the bounded event history.

    Every method that fails raises :class:`StatusError` carrying the HTTP status and the
    Status body the real API server would answer with.  Objects handed out are copies.
    """

    def __init__(
        self,
        *,
        now: Callable[[], float],
        history_size: int = DEFAULT_HISTORY_SIZE,
        history_seconds: float | None = None,
        resources: tuple[ResourceType, ...] = RESOURCE_TYPES,
        rng: random.Random | None = None,
        require_namespaces: bool = False,
    ) -> None:
        if history_size < 1:
            raise ValueError("history_size must be at least 1")
        self._now = now
        self._rng = rng if rng is not None else random.Random()
        self._resources = resources
        self._objects: dict[ResourceType, dict[_Key, JSONObject]] = {r: {} for r in resources}
        self._resource_version = INITIAL_RESOURCE_VERSION
        self._history: deque[StoreEvent] = deque()
        # When each history event was written (same order), for the time bound.
        self._history_times: deque[float] = deque()
        self._history_size = history_size
        # Like the watch cache's ~5 minutes: events older than this are forgotten (None: never).
        self.history_seconds = history_seconds
        # Every event newer than this is still in the history: the oldest resumable version.
        self._compacted = INITIAL_RESOURCE_VERSION
        self._subscriptions: list[WatchSubscription] = []
        self._next_cluster_ip = int(ipaddress.IPv4Address("10.96.0.10"))
        self.expired_reason = "Expired"
        # As kube-apiserver: a namespaced object needs its Namespace, which must not be
        # Terminating, and deleting a Namespace only marks it (see finalize_namespace).
        self.require_namespaces = require_namespaces

    # -- versions and history ------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        """The current (latest) resourceVersion of the whole store."""
        return self._resource_version

    @property
    def oldest_resource_version(self) -> int:
        """The oldest resourceVersion a watch may still start from."""
        return self._compacted

    @property
    def history_size(self) -> int:
        return self._history_size

    def set_history_size(self, size: int) -> None:
        """Bound the history to `size` events (dropping the oldest beyond it)."""
        if size < 1:
            raise ValueError("history size must be at least 1")
        self._history_size = size
        while len(self._history) > size:
            self._forget_oldest()

    def _forget_oldest(self) -> None:
        self._compacted = self._history.popleft().resource_version
        self._history_times.popleft()

    def _expire_old_history(self) -> None:
        if self.history_seconds is None:
            return
        horizon = self._now() - self.history_seconds
        while self._history_times and self._history_times[0] < horizon:
            self._forget_oldest()

    def compact(self, resource_version: int | None = None) -> None:
        """Forget history up to `resource_version` (default: all of it).

        Watches and exact lists from any older version then fail with 410 Expired, as after
        an etcd compaction or an API server restart.  Open watches keep streaming.
        """
        target = self._resource_version if resource_version is None else resource_version
        target = min(target, self._resource_version)
        while self._history and self._history[0].resource_version <= target:
            self._history.popleft()
            self._history_times.popleft()
        self._compacted = max(self._compacted, target)

    @property
    def watch_count(self) -> int:
        return len(self._subscriptions)

    def subscriptions(self) -> list[WatchSubscription]:
        return list(self._subscriptions)

    def resources(self) -> tuple[ResourceType, ...]:
        return self._resources

    def _resource(self, resource: str | ResourceType) -> ResourceType:
        resolved = resolve_resource(resource)
        if resolved not in self._objects:
            raise KeyError(f"resource {resolved.plural!r} is not served")
        return resolved

    def _record(
        self, resource: ResourceType, event_type: str, obj: JSONObject, old: JSONObject | None
    ) -> None:
        event = StoreEvent(self._resource_version, resource, event_type, obj, old)
        if len(self._history) >= self._history_size:
            self._forget_oldest()
        self._history.append(event)
        self._history_times.append(self._now())
        self._expire_old_history()
        for subscription in list(self._subscriptions):
            subscription.offer(event)

    def _bump(self) -> str:
        self._resource_version += 1
        return str(self._resource_version)

    def _check_not_compacted(self, resource_version: int) -> None:
        self._expire_old_history()
        if resource_version < self._compacted:
            raise StatusError.expired(
                f"too old resource version: {resource_version} ({self._compacted})",
                self.expired_reason,
            )

    def _check_not_future(self, resource_version: int) -> None:
        if resource_version > self._resource_version:
            raise StatusError(
                504,
                f"Too large resource version: {resource_version}, "
                f"current: {self._resource_version}",
                "Timeout",
                {"causes": [{"reason": "ResourceVersionTooLarge",
                             "message": "Too large resource version"}],
                 "retryAfterSeconds": 1},
            )

    def _state_at(self, resource: ResourceType, resource_version: int) -> dict[_Key, JSONObject]:
        """The objects of `resource` as they were at `resource_version` (undoing history)."""
        self._check_not_compacted(resource_version)
        self._check_not_future(resource_version)
        state = dict(self._objects[resource])
        for event in reversed(self._history):
            if event.resource_version <= resource_version:
                break
            if event.resource != resource:
                continue
            key = _sort_key(event.object)
            if event.type == ADDED:
                state.pop(key, None)
            elif event.old is not None:
                state[key] = event.old
        return state

    # -- reads -----------------------------------------------------------------------------

    def get(self, resource: str | ResourceType, namespace: str | None, name: str) -> JSONObject:
        rtype = self._resource(resource)
        key = ((namespace or "") if rtype.namespaced else "", name)
        found = self._objects[rtype].get(key)
        if found is None:
            raise StatusError.not_found(rtype, name)
        return copy.deepcopy(found)

    def list(
        self,
        resource: str | ResourceType,
        namespace: str | None = None,
        *,
        labels: LabelSelector | None = None,
        fields: FieldSelector | None = None,
        resource_version: str | None = None,
        resource_version_match: str | None = None,
        limit: int | None = None,
        continue_token: str | None = None,
    ) -> JSONObject:
        """A ``<Kind>List`` object, with the list resourceVersion and a continue token."""
        rtype = self._resource(resource)
        labels = labels or LabelSelector()
        fields = fields or FieldSelector()
        start_after: _Key | None = None
        if continue_token:
            if resource_version not in (None, "", "0"):
                raise StatusError(
                    400, "specifying resource version is not allowed when using continue"
                )
            list_version, start_after = _decode_continue(continue_token)
            try:
                state = self._state_at(rtype, list_version)
            except StatusError as error:
                if error.code == 410:
                    raise StatusError.expired(
                        "The provided continue parameter is too old to display a consistent "
                        "list result. You can start a new list without the continue "
                        "parameter.",
                        self.expired_reason,
                    ) from None
                raise
        elif resource_version_match:
            if not resource_version:
                raise StatusError(
                    400,
                    "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden "
                    "unless resourceVersion is provided",
                )
            requested = _parse_resource_version(resource_version)
            if resource_version_match == "Exact":
                if requested == 0:
                    raise StatusError(
                        400, "resourceVersionMatch: Forbidden: resourceVersionMatch \"Exact\" "
                        "is forbidden for resourceVersion \"0\""
                    )
                list_version = requested
                state = self._state_at(rtype, requested)
            elif resource_version_match == "NotOlderThan":
                self._check_not_future(requested)
                list_version, state = self._resource_version, self._objects[rtype]
            else:
                raise StatusError(
                    400, f"resourceVersionMatch: Unsupported value: {resource_version_match!r}"
                )
        else:
            if resource_version not in (None, "", "0"):
                self._check_not_future(_parse_resource_version(resource_version))
            list_version, state = self._resource_version, self._objects[rtype]

        probe = WatchSubscription(self, rtype, namespace, labels, fields, 0, _NullSink())
        selected = [obj for key, obj in sorted(state.items()) if probe.matches(obj)]
        if start_after is not None:
            selected = [obj for obj in selected if _sort_key(obj) > start_after]
        metadata: JSONObject = {"resourceVersion": str(list_version)}
        if limit is not None and limit > 0 and len(selected) > limit:
            remaining = len(selected) - limit
            selected = selected[:limit]
            metadata["continue"] = _encode_continue(list_version, _sort_key(selected[-1]))
            metadata["remainingItemCount"] = remaining
        return {
            "kind": rtype.list_kind,
            "apiVersion": rtype.api_version,
            "metadata": metadata,
            # Like kube-apiserver's JSON lists: items carry no kind/apiVersion of their own.
            "items": [_as_list_item(obj) for obj in selected],
        }

    # -- watches ---------------------------------------------------------------------------

    def watch(
        self,
        resource: str | ResourceType,
        namespace: str | None,
        sink: WatchSink,
        *,
        labels: LabelSelector | None = None,
        fields: FieldSelector | None = None,
        resource_version: str | None = None,
    ) -> WatchSubscription:
        """Open a watch: replay what it missed, then deliver every new matching event.

        With no resourceVersion (or "0") the watcher first gets a synthetic ADDED for every
        existing object.  With a version older than the history, raises 410 Expired.
        """
        rtype = self._resource(resource)
        labels = labels or LabelSelector()
        fields = fields or FieldSelector()
        if resource_version in (None, "", "0"):
            subscription = WatchSubscription(
                self, rtype, namespace, labels, fields, self._resource_version, sink
            )
            backlog: list[tuple[str, JSONObject]] = [
                (ADDED, obj)
                for _, obj in sorted(self._objects[rtype].items())
                if subscription.matches(obj)
            ]
        else:
            after = _parse_resource_version(resource_version)
            self._check_not_compacted(after)
            subscription = WatchSubscription(self, rtype, namespace, labels, fields, after, sink)
            backlog = []
            for event in self._history:
                seen = subscription.translate(event)
                if seen is not None:
                    backlog.append(seen)
        self._subscriptions.append(subscription)
        for event_type, obj in backlog:
            if not subscription.active:
                break
            sink.deliver(event_type, obj)
        return subscription

    def _unsubscribe(self, subscription: WatchSubscription) -> None:
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)

    # -- writes ----------------------------------------------------------------------------

    def _prepare_new(
        self, rtype: ResourceType, obj: Any, namespace: str | None
    ) -> tuple[JSONObject, _Key]:
        if not isinstance(obj, dict):
            raise StatusError(400, "the request body must be a JSON object")
        body = copy.deepcopy(obj)
        api_version = body.get("apiVersion")
        kind = body.get("kind")
        if api_version not in (None, "", rtype.api_version):
            raise StatusError(
                400,
                f"the API version in the data ({api_version}) does not match the expected "
                f"API version ({rtype.api_version})",
            )
        if kind not in (None, "", rtype.kind):
            raise StatusError(
                400,
                f"the kind in the data ({kind}) does not match the expected kind ({rtype.kind})"
            )
        body["apiVersion"] = rtype.api_version
        body["kind"] = rtype.kind
        metadata = body.get("metadata")
        if metadata is None:
            metadata = body["metadata"] = {}
        if not isinstance(metadata, dict):
            raise StatusError(400, "metadata must be a JSON object")
        if rtype.namespaced:
            body_namespace = metadata.get("namespace")
            if namespace is None:
                namespace = body_namespace or "default"
            elif body_namespace not in (None, "", namespace):
                raise StatusError(
                    400,
                    "the namespace of the provided object does not match the namespace sent "
                    "on the request",
                )
            metadata["namespace"] = namespace
        else:
            metadata.pop("namespace", None)
        name = metadata.get("name")
        if not isinstance(name, str) or not name:
            raise StatusError.invalid(rtype, "", "metadata.name: Required value: name or "
                                      "generateName is required")
        if len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
            raise StatusError.invalid(
                rtype, name,
                f'metadata.name: Invalid value: "{name}": a lowercase RFC 1123 subdomain must '
                "consist of lower case alphanumeric characters, '-' or '.'",
            )
        for section in ("labels", "annotations"):
            value = metadata.get(section)
            if value is not None and (
                not isinstance(value, dict)
                or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
            ):
                raise StatusError.invalid(
                    rtype, name, f"metadata.{section}: Invalid value: must map strings to strings"
                )
        return body, (metadata.get("namespace", ""), name)

    def _generate_name(self, rtype: ResourceType, obj: Any, namespace: str | None) -> None:
        if not isinstance(obj, dict) or not isinstance(obj.get("metadata"), dict):
            return
        metadata = obj["metadata"]
        prefix = metadata.get("generateName")
        if metadata.get("name") or not isinstance(prefix, str) or not prefix:
            return
        space = self._objects[rtype]
        ns = (metadata.get("namespace") or namespace or "default") if rtype.namespaced else ""
        for _ in range(100):
            suffix = "".join(self._rng.choice(_GENERATE_ALPHABET) for _ in range(5))
            if (ns, prefix + suffix) not in space:
                metadata["name"] = prefix + suffix
                return
        raise StatusError(409, "could not generate a unique name", "AlreadyExists")

    def _allocate_cluster_ip(self) -> str:
        taken = {
            obj.get("spec", {}).get("clusterIP") for obj in self._objects[SERVICES].values()
        }
        while True:
            address = str(ipaddress.IPv4Address(self._next_cluster_ip))
            self._next_cluster_ip += 1
            if address not in taken:
                return address

    def _node_ports_taken(self, exclude: _Key | None) -> set[int]:
        taken: set[int] = set()
        for key, obj in self._objects[SERVICES].items():
            if key == exclude:
                continue
            for port in obj.get("spec", {}).get("ports") or []:
                if isinstance(port, dict) and isinstance(port.get("nodePort"), int):
                    taken.add(port["nodePort"])
        return taken

    def _default_service(self, body: JSONObject, old: JSONObject | None) -> None:
        """SetDefaults_Service plus what the Service registry allocates (IPs, node ports)."""
        name = body["metadata"]["name"]
        spec = body.setdefault("spec", {})
        if not isinstance(spec, dict):
            raise StatusError.invalid(SERVICES, name, "spec: must be an object")
        old_spec = (old or {}).get("spec", {})
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        service_type = spec["type"]
        if spec["sessionAffinity"] == "ClientIP":
            spec.setdefault("sessionAffinityConfig", {"clientIP": {"timeoutSeconds": 10800}})
        old_ip = old_spec.get("clusterIP") if old_spec.get("type") != "ExternalName" else None
        if service_type == "ExternalName":
            for dropped in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
                spec.pop(dropped, None)
        elif not spec.get("clusterIP"):
            spec["clusterIP"] = old_ip or self._allocate_cluster_ip()
        elif old_ip and spec["clusterIP"] != old_ip:
            raise StatusError.invalid(
                SERVICES, name,
                f'spec.clusterIPs[0]: Invalid value: ["{spec["clusterIP"]}"]: may not change '
                "once set",
            )
        if spec.get("clusterIP"):
            spec["clusterIPs"] = [spec["clusterIP"]]
            spec.setdefault("ipFamilies", ["IPv4"])
            spec.setdefault("ipFamilyPolicy", "SingleStack")
        if service_type != "ExternalName":
            spec.setdefault("internalTrafficPolicy", "Cluster")
        node_ports = service_type == "NodePort" or (
            service_type == "LoadBalancer" and spec.setdefault(
                "allocateLoadBalancerNodePorts", True) is not False
        )
        if service_type in ("NodePort", "LoadBalancer"):
            spec.setdefault("externalTrafficPolicy", "Cluster")
        else:
            spec.pop("externalTrafficPolicy", None)
        ports = spec.get("ports") or []
        if not isinstance(ports, list):
            raise StatusError.invalid(SERVICES, name, "spec.ports: must be a list")
        old_node_ports = {
            (p.get("port"), p.get("protocol", "TCP")): p.get("nodePort")
            for p in old_spec.get("ports") or [] if isinstance(p, dict)
        }
        key = (body["metadata"].get("namespace", ""), name)
        taken: set[int] | None = None
        for index, port in enumerate(ports):
            if not isinstance(port, dict) or not isinstance(port.get("port"), int):
                raise StatusError.invalid(SERVICES, name, "spec.ports[].port: Required value")
            port.setdefault("protocol", "TCP")
            if port.get("targetPort") in (None, 0, ""):
                port["targetPort"] = port["port"]
            if not node_ports:
                port.pop("nodePort", None)
                continue
            if taken is None:
                taken = self._node_ports_taken(key)
            wanted = port.get("nodePort") or old_node_ports.get((port["port"], port["protocol"]))
            if wanted:
                if not isinstance(wanted, int) or not (
                        NODE_PORT_RANGE[0] <= wanted <= NODE_PORT_RANGE[1]):
                    raise StatusError.invalid(
                        SERVICES, name, f"spec.ports[{index}].nodePort: Invalid value: "
                        f"{wanted}: provided port is not in the valid range. The range of valid "
                        f"ports is {NODE_PORT_RANGE[0]}-{NODE_PORT_RANGE[1]}")
                if wanted in taken:
                    raise StatusError.invalid(
                        SERVICES, name, f"spec.ports[{index}].nodePort: Invalid value: "
                        f"{wanted}: provided port is already allocated")
            else:
                free = [n for n in range(NODE_PORT_RANGE[0], NODE_PORT_RANGE[1] + 1)
                        if n not in taken]
                if not free:
                    raise StatusError(500, "range is full")
                wanted = self._rng.choice(free)
            port["nodePort"] = wanted
            taken.add(wanted)

    def _default(self, rtype: ResourceType, body: JSONObject, old: JSONObject | None) -> None:
        if rtype == SERVICES:
            self._default_service(body, old)
        elif rtype == ENDPOINT_SLICES:
            # SetDefaults_EndpointPort.
            for port in body.get("ports") or []:
                if isinstance(port, dict):
                    port.setdefault("name", "")
                    port.setdefault("protocol", "TCP")
        elif rtype == NAMESPACES:
            labels = body["metadata"].setdefault("labels", {})
            if isinstance(labels, dict):
                labels["kubernetes.io/metadata.name"] = body["metadata"]["name"]
            spec = body.setdefault("spec", {})
            if isinstance(spec, dict):
                spec.setdefault("finalizers", ["kubernetes"])
            status = body.setdefault("status", {})
            if isinstance(status, dict):
                status.setdefault("phase", "Active")

    def _check_namespace(
        self, rtype: ResourceType, namespace: str, *, ensure: bool, dry_run: bool
    ) -> None:
        if not self.require_namespaces or not rtype.namespaced:
            return
        found = self._objects[NAMESPACES].get(("", namespace))
        if found is None:
            if not ensure:
                raise StatusError.not_found(NAMESPACES, namespace)
            self.create(NAMESPACES, {"metadata": {"name": namespace}}, dry_run=dry_run)
        elif found.get("metadata", {}).get("deletionTimestamp"):
            raise StatusError(
                403, f'{rtype.plural}{"." + rtype.group if rtype.group else ""} '
                f'"{found["metadata"]["name"]}" is forbidden: unable to create new content in '
                f"namespace {namespace} because it is being terminated", "Forbidden",
                {"name": namespace, "kind": rtype.plural,
                 "causes": [{"reason": "NamespaceTerminating",
                             "message": f"namespace {namespace} is being terminated",
                             "field": "metadata.namespace"}]},
            )

    def _track_update(
        self,
        rtype: ResourceType,
        body: JSONObject,
        old: JSONObject | None,
        manager: str | None,
        subresource: str | None = None,
    ) -> None:
        """managedFields after an Update (POST/PUT/PATCH): `manager` owns what it changed."""
        metadata = body["metadata"]
        entries = _managed_entries(old)
        if manager is None:
            if entries:
                metadata["managedFields"] = _entries_to_json(entries, rtype, self._now())
            return
        if subresource is not None:
            # Status writes are owned per subresource; the main fields stay as they were.
            if entries:
                metadata["managedFields"] = _entries_to_json(entries, rtype, self._now())
            return
        changed = changed_paths(old or {}, body)
        present = leaf_paths(body)
        for key in list(entries):
            entries[key] = (entries[key] - changed) & present
        mine = entries.get((manager, "Update"), set())
        entries[(manager, "Update")] = (mine | changed) & present
        metadata["managedFields"] = _entries_to_json(
            {k: v for k, v in entries.items() if v}, rtype, self._now())

    def create(
        self,
        resource: str | ResourceType,
        obj: Any,
        namespace: str | None = None,
        *,
        keep_status: bool = False,
        dry_run: bool = False,
        manager: str | None = None,
        ensure_namespace: bool = False,
        managed: dict[tuple[str, str], set[Path]] | None = None,
    ) -> JSONObject:
        """Create an object (POST); `keep_status` lets test fixtures set status directly.

        `dry_run` answers as a create would without storing anything; `manager` records a
        managedFields entry (the HTTP fieldManager); `ensure_namespace` creates a missing
        Namespace first (a fixture convenience) where a real server answers 404.
        """
        rtype = self._resource(resource)
        if rtype.virtual:
            raise StatusError(405, f"{rtype.plural} are answered, not stored", "MethodNotAllowed")
        self._generate_name(rtype, obj, namespace)
        body, key = self._prepare_new(rtype, obj, namespace)
        metadata = body["metadata"]
        if metadata.get("resourceVersion"):
            raise StatusError(500, "resourceVersion should not be set on objects to be created")
        self._check_namespace(rtype, key[0], ensure=ensure_namespace, dry_run=dry_run)
        if key in self._objects[rtype]:
            raise StatusError.already_exists(rtype, key[1])
        self._default(rtype, body, None)
        validate(rtype, body, None)
        if not keep_status:
            if rtype.kind == "Service":
                body["status"] = {"loadBalancer": {}}
            elif rtype.kind == "Pod":
                body["status"] = {"phase": "Pending"}
            elif rtype.kind == "Namespace":
                body["status"] = {"phase": "Active"}
            elif rtype.status_subresource:
                body["status"] = {}
        metadata["uid"] = str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
        metadata["creationTimestamp"] = _timestamp(self._now())
        if rtype.generation:
            metadata["generation"] = 1
        for system in ("deletionTimestamp", "managedFields"):
            metadata.pop(system, None)
        if managed is not None:
            metadata["managedFields"] = _entries_to_json(managed, rtype, self._now())
        else:
            self._track_update(rtype, body, None, manager)
        if dry_run:
            return copy.deepcopy(body)
        metadata["resourceVersion"] = self._bump()
        self._objects[rtype][key] = body
        self._record(rtype, ADDED, body, None)
        return copy.deepcopy(body)

    def update(
        self,
        resource: str | ResourceType,
        obj: Any,
        namespace: str | None = None,
        name: str | None = None,
        *,
        subresource: str | None = None,
        keep_status: bool = False,
        dry_run: bool = False,
        manager: str | None = None,
        managed: dict[tuple[str, str], set[Path]] | None = None,
    ) -> JSONObject:
        """Replace an object (PUT), checking metadata.resourceVersion when it is given."""
        rtype = self._resource(resource)
        body, key = self._prepare_new(rtype, obj, namespace)
        if name is not None and key[1] != name:
            raise StatusError(
                400, f"the name of the object ({key[1]}) does not match the name on the URL "
                f"({name})"
            )
        old = self._objects[rtype].get(key)
        if old is None:
            raise StatusError.not_found(rtype, key[1])
        wanted_version = body["metadata"].get("resourceVersion")
        if wanted_version and wanted_version != old["metadata"]["resourceVersion"]:
            raise StatusError.conflict(
                rtype, key[1], "the object has been modified; please apply your changes to the "
                "latest version and try again",
            )
        if subresource == "status":
            updated = copy.deepcopy(old)
            if "status" in body:
                updated["status"] = body["status"]
            else:
                updated.pop("status", None)
            body = updated
        elif subresource is not None:
            raise StatusError(
                404, f"the server could not find the requested resource ({subresource})")
        else:
            if rtype.status_subresource and not keep_status:
                if "status" in old:
                    body["status"] = copy.deepcopy(old["status"])
                else:
                    body.pop("status", None)
            self._default(rtype, body, old)
            validate(rtype, body, old)
        for system in (*_SYSTEM_METADATA, "managedFields"):
            if system in old["metadata"]:
                body["metadata"][system] = copy.deepcopy(old["metadata"][system])
            else:
                body["metadata"].pop(system, None)
        body["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        if _without_version(body) == _without_version(old) and managed is None:
            # A no-op write: no new resourceVersion, no event (as the real server does).
            return copy.deepcopy(old)
        if managed is not None:
            body["metadata"]["managedFields"] = _entries_to_json(managed, rtype, self._now())
        else:
            self._track_update(rtype, body, old, manager, subresource)
        if _without_version(body) == _without_version(old) and (
                body["metadata"].get("managedFields") == old["metadata"].get("managedFields")):
            return copy.deepcopy(old)
        if "generation" in old["metadata"] and body.get("spec") != old.get("spec"):
            body["metadata"]["generation"] = old["metadata"]["generation"] + 1
        if dry_run:
            return copy.deepcopy(body)
        body["metadata"]["resourceVersion"] = self._bump()
        self._objects[rtype][key] = body
        self._record(rtype, MODIFIED, body, old)
        return copy.deepcopy(body)

    def patch(
        self,
        resource: str | ResourceType,
        namespace: str | None,
        name: str,
        patch: Any,
        content_type: str = MERGE_PATCH,
        *,
        subresource: str | None = None,
        dry_run: bool = False,
        manager: str | None = None,
        force: bool = False,
    ) -> JSONObject:
        """Patch an object (PATCH) with a merge, strategic merge, JSON or apply patch."""
        rtype = self._resource(resource)
        media_type = content_type.split(";")[0].strip().lower()
        if media_type == APPLY_PATCH:
            return self.server_side_apply(
                rtype, namespace, name, patch, manager, force=force, dry_run=dry_run,
                subresource=subresource,
            )
        current = self.get(rtype, namespace, name)
        try:
            if media_type == MERGE_PATCH:
                patched = apply_merge_patch(current, patch)
            elif media_type == STRATEGIC_MERGE_PATCH:
                patched = apply_strategic_merge_patch(current, patch)
            elif media_type == JSON_PATCH:
                patched = apply_json_patch(current, patch)
            else:
                raise StatusError(
                    415,
                    f"the body of the request was in an unknown format - accepted media types "
                    f"include: {JSON_PATCH}, {MERGE_PATCH}, {APPLY_PATCH}, "
                    f"{STRATEGIC_MERGE_PATCH}",
                )
        except PatchError as error:
            raise StatusError.invalid(rtype, name, str(error)) from None
        if not isinstance(patched, dict):
            raise StatusError.invalid(rtype, name, "the patched object is not a JSON object")
        metadata = patched.get("metadata")
        if not isinstance(metadata, dict):
            raise StatusError.invalid(rtype, name, "metadata: Required value")
        if metadata.get("resourceVersion") is None:
            # A patch that removes the version means "unconditional".
            metadata["resourceVersion"] = ""
        return self.update(rtype, patched, namespace, name, subresource=subresource,
                           dry_run=dry_run, manager=manager)

    def server_side_apply(
        self,
        resource: str | ResourceType,
        namespace: str | None,
        name: str,
        applied: Any,
        manager: str | None,
        *,
        force: bool = False,
        dry_run: bool = False,
        subresource: str | None = None,
    ) -> JSONObject:
        """Server-side apply: the applied fields replace, the manager owns them, fields it
        applied before and dropped now are removed, and another manager's differing field is
        a conflict (409) unless `force`.  Lists are atomic (a useful subset of SSA)."""
        rtype = self._resource(resource)
        if not manager:
            raise StatusError(
                422, "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: "
                "is required for apply patch", "Invalid")
        if not isinstance(applied, dict):
            raise StatusError(400, "the apply configuration must be an object")
        for required in ("apiVersion", "kind"):
            if not applied.get(required):
                raise StatusError(400, f"{required} must be set in the apply configuration")
        metadata = applied.get("metadata")
        if not isinstance(metadata, dict):
            raise StatusError(400, "metadata must be set in the apply configuration")
        if metadata.get("name") not in (None, name):
            raise StatusError(400, f"the name of the object ({metadata.get('name')}) does not "
                              f"match the name on the URL ({name})")
        key = ((namespace or "") if rtype.namespaced else "", name)
        current = self._objects[rtype].get(key)
        wanted = leaf_paths(applied)
        if current is None:
            if subresource is not None:
                raise StatusError.not_found(rtype, name)
            body = copy.deepcopy(applied)
            body["metadata"]["name"] = name
            return self.create(rtype, body, namespace, dry_run=dry_run,
                               managed={(manager, "Apply"): wanted})
        entries = _managed_entries(current)
        # Compare what the applied fields become once defaulted (a Service's ports gain
        # their protocol and kept nodePort), as the real server compares typed values.
        candidate = copy.deepcopy(current)
        for path in wanted:
            set_path(candidate, path, get_path(applied, path))
        try:
            self._default(rtype, candidate, current)
        except StatusError:
            candidate = applied
        conflicts: list[tuple[str, Path]] = []
        for (other, operation), owned in entries.items():
            if (other, operation) == (manager, "Apply"):
                continue
            for path in sorted(owned & wanted):
                if get_path(current, path) != get_path(candidate, path):
                    conflicts.append((other, path))
        if conflicts and not force:
            described = [f'conflict with "{other}" using {rtype.api_version}: '
                         f'.{".".join(path)}' for other, path in conflicts]
            count = len(conflicts)
            raise StatusError(
                409, f"Apply failed with {count} conflict{'s' if count > 1 else ''}: "
                + "\n".join(described), "Conflict",
                {"causes": [{"reason": "FieldManagerConflict",
                             "message": f'conflict with "{other}"',
                             "field": "." + ".".join(path)} for other, path in conflicts]},
            )
        merged = copy.deepcopy(current)
        previous = entries.get((manager, "Apply"), set())
        owned_by_others = set().union(*(
            owned for entry, owned in entries.items() if entry != (manager, "Apply")))
        for path in previous - wanted - owned_by_others:
            remove_path(merged, path)
        for path in wanted:
            set_path(merged, path, get_path(applied, path))
        taken = {path for _, path in conflicts}
        for entry in list(entries):
            entries[entry] = entries[entry] - taken
        entries[(manager, "Apply")] = wanted
        merged["metadata"]["resourceVersion"] = ""
        return self.update(rtype, merged, namespace, name, dry_run=dry_run,
                           subresource=subresource,
                           managed={k: v for k, v in entries.items() if v})

    def delete(
        self,
        resource: str | ResourceType,
        namespace: str | None,
        name: str,
        *,
        precondition_uid: str | None = None,
        precondition_resource_version: str | None = None,
        dry_run: bool = False,
    ) -> JSONObject:
        """Delete an object; returns its last state, carrying the deletion resourceVersion.

        With ``require_namespaces`` a Namespace is only marked (Terminating, with a
        deletionTimestamp); :meth:`finalize_namespace` deletes its content and then it.
        """
        rtype = self._resource(resource)
        key = ((namespace or "") if rtype.namespaced else "", name)
        old = self._objects[rtype].get(key)
        if old is None:
            raise StatusError.not_found(rtype, name)
        have_uid = old["metadata"].get("uid")
        if precondition_uid is not None and precondition_uid != have_uid:
            raise StatusError.conflict(
                rtype, name, f"Precondition failed: UID in precondition: {precondition_uid}, "
                f"UID in object meta: {have_uid}",
            )
        have_version = old["metadata"].get("resourceVersion")
        if (precondition_resource_version is not None
                and precondition_resource_version != have_version):
            raise StatusError.conflict(
                rtype, name, "Precondition failed: ResourceVersion in precondition: "
                f"{precondition_resource_version}, ResourceVersion in object meta: {have_version}",
            )
        if rtype == NAMESPACES and self.require_namespaces:
            if name in _UNDELETABLE_NAMESPACES:
                raise StatusError(
                    403, f'namespaces "{name}" is forbidden: this namespace may not be deleted',
                    "Forbidden", {"name": name, "kind": "namespaces"})
            if old["metadata"].get("deletionTimestamp"):
                return copy.deepcopy(old)
            marked = copy.deepcopy(old)
            marked["metadata"]["deletionTimestamp"] = _timestamp(self._now())
            marked.setdefault("status", {})["phase"] = "Terminating"
            if dry_run:
                return marked
            marked["metadata"]["resourceVersion"] = self._bump()
            self._objects[rtype][key] = marked
            self._record(rtype, MODIFIED, marked, old)
            return copy.deepcopy(marked)
        gone = copy.deepcopy(old)
        if dry_run:
            return gone
        del self._objects[rtype][key]
        gone["metadata"]["resourceVersion"] = self._bump()
        self._record(rtype, DELETED, gone, old)
        return copy.deepcopy(gone)

    def terminating_namespaces(self) -> builtins.list[str]:
        return [key[1] for key, obj in sorted(self._objects[NAMESPACES].items())
                if obj["metadata"].get("deletionTimestamp")]

    def finalize_namespace(self, name: str) -> bool:
        """The namespace controller's work for a Terminating namespace: delete every object in
        it, then the Namespace itself.  Returns whether the namespace was removed."""
        found = self._objects[NAMESPACES].get(("", name))
        if found is None or not found["metadata"].get("deletionTimestamp"):
            return False
        for rtype in self._resources:
            if not rtype.namespaced:
                continue
            for key in sorted(k for k in self._objects[rtype] if k[0] == name):
                self.delete(rtype, name, key[1])
        old = self._objects[NAMESPACES].pop(("", name))
        gone = copy.deepcopy(old)
        gone.setdefault("spec", {})["finalizers"] = []
        gone["metadata"]["resourceVersion"] = self._bump()
        self._record(NAMESPACES, DELETED, gone, old)
        return True

    # -- helpers for tests -----------------------------------------------------------------

    def apply(self, obj: JSONObject, *, keep_status: bool = True) -> JSONObject:
        """Create `obj`, or replace it unconditionally if it exists (a test fixture helper)."""
        rtype = resolve_resource(str(obj.get("kind", "")))
        metadata = obj.get("metadata") or {}
        namespace = (metadata.get("namespace") or "default") if rtype.namespaced else None
        body = copy.deepcopy(obj)
        body.setdefault("metadata", {}).pop("resourceVersion", None)
        key = (namespace or "", str(metadata.get("name", "")))
        if key in self._objects[rtype]:
            return self.update(rtype, body, namespace, keep_status=keep_status)
        return self.create(rtype, body, namespace, keep_status=keep_status,
                           ensure_namespace=True)

    def objects(self, resource: str | ResourceType) -> Iterator[JSONObject]:
        """Copies of every current object of a resource, in key order."""
        rtype = self._resource(resource)
        for _, obj in sorted(self._objects[rtype].items()):
            yield copy.deepcopy(obj)


class _NullSink:
    def deliver(self, event_type: str, obj: JSONObject) -> None:
        pass
