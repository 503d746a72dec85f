"""Server-side printing: the ``Table`` (meta.k8s.io) that ``kubectl get`` asks for.

The columns are those of k8s.io/kubernetes/pkg/printers/internalversion for the kinds edgemesh
cares about (Services, EndpointSlices, Nodes, Pods, Leases, Namespaces, ...); every other kind
gets NAME and AGE.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

from ._resources import JSONObject, ResourceType

__all__ = ["human_duration", "table_for", "wants_table"]

_Column = tuple[str, str, str, int]  # name, type, format, priority (1: -o wide)
_Row = Callable[[JSONObject, float], list[Any]]


def wants_table(accept: str) -> str | None:
    """The Table apiVersion an Accept header asks for (``meta.k8s.io/v1``...), else None."""
    for media in accept.split(","):
        params = {}
        for part in media.split(";")[1:]:
            key, _, value = part.strip().partition("=")
            params[key.strip()] = value.strip()
        if params.get("as") == "Table" and params.get("g") == "meta.k8s.io":
            return f"meta.k8s.io/{params.get('v', 'v1')}"
    return None


def human_duration(seconds: float) -> str:
    """k8s.io/apimachinery/pkg/util/duration.HumanDuration."""
    seconds = int(seconds)
    if seconds < 0:
        return "<invalid>"
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        rest = seconds % 60
        return f"{minutes}m" if rest == 0 else f"{minutes}m{rest}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = seconds // 3600
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h" if rest == 0 else f"{hours}h{rest}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d" if rest == 0 else f"{hours // 24}d{rest}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if days == 0 else f"{hours // 24 // 365}y{days}d"
    return f"{hours // 24 // 365}y"


def _age(obj: JSONObject, now: float) -> str:
    stamp = (obj.get("metadata") or {}).get("creationTimestamp")
    if not stamp:
        return "<unknown>"
    try:
        created = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return "<unknown>"
    return human_duration(now - created.timestamp())


def _name(obj: JSONObject) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def _service_ports(spec: JSONObject) -> str:
    parts = []
    for port in spec.get("ports") or []:
        text = f"{port.get('port')}"
        if port.get("nodePort"):
            text += f":{port['nodePort']}"
        parts.append(f"{text}/{port.get('protocol', 'TCP')}")
    return ",".join(parts) if parts else "<none>"


def _external_ip(spec: JSONObject, status: JSONObject) -> str:
    kind = spec.get("type", "ClusterIP")
    external = list(spec.get("externalIPs") or [])
    if kind == "ExternalName":
        return str(spec.get("externalName", ""))
    if kind == "LoadBalancer":
        ingress = [i.get("ip") or i.get("hostname") for i in
                   (status.get("loadBalancer") or {}).get("ingress") or []]
        found = [*ingress, *external]
        return ",".join(str(i) for i in found) if found else "<pending>"
    return ",".join(external) if external else "<none>"


def _selector(selector: Any) -> str:
    if not selector:
        return "<none>"
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items()))


def _service_row(obj: JSONObject, now: float) -> list[Any]:
    spec = obj.get("spec") or {}
    cluster_ip = spec.get("clusterIP") or "<none>"
    return [_name(obj), spec.get("type", "ClusterIP"), cluster_ip,
            _external_ip(spec, obj.get("status") or {}), _service_ports(spec), _age(obj, now),
            _selector(spec.get("selector"))]


def _limited(items: Sequence[str], limit: int = 3) -> str:
    if not items:
        return "<unset>"
    if len(items) > limit:
        return ",".join(items[:limit]) + f" + {len(items) - limit} more..."
    return ",".join(items)


def _slice_row(obj: JSONObject, now: float) -> list[Any]:
    ports = [str(p.get("port")) if p.get("port") is not None else "<unset>"
             for p in obj.get("ports") or []]
    addresses = [str(a) for e in obj.get("endpoints") or [] for a in e.get("addresses") or []]
    return [_name(obj), obj.get("addressType", ""), _limited(ports) if ports else "<unset>",
            _limited(addresses) if addresses else "<unset>", _age(obj, now)]


def _node_row(obj: JSONObject, now: float) -> list[Any]:
    status = obj.get("status") or {}
    ready = "Unknown"
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Ready":
            ready = "Ready" if condition.get("status") == "True" else "NotReady"
    if (obj.get("spec") or {}).get("unschedulable"):
        ready += ",SchedulingDisabled"
    roles = sorted(
        key.split("/", 1)[1] for key in ((obj.get("metadata") or {}).get("labels") or {})
        if key.startswith("node-role.kubernetes.io/") and key.split("/", 1)[1]
    )
    info = status.get("nodeInfo") or {}
    addresses = {a.get("type"): a.get("address") for a in status.get("addresses") or []}
    return [_name(obj), ready, ",".join(roles) or "<none>", _age(obj, now),
            info.get("kubeletVersion", ""), addresses.get("InternalIP", "<none>"),
            addresses.get("ExternalIP", "<none>"), info.get("osImage", "<unknown>"),
            info.get("kernelVersion", "<unknown>"), info.get("containerRuntimeVersion",
                                                              "<unknown>")]


def _pod_row(obj: JSONObject, now: float) -> list[Any]:
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    containers = spec.get("containers") or []
    statuses = status.get("containerStatuses") or []
    ready = sum(1 for s in statuses if s.get("ready"))
    restarts = sum(int(s.get("restartCount", 0)) for s in statuses)
    reason = status.get("reason") or status.get("phase") or "Unknown"
    if (obj.get("metadata") or {}).get("deletionTimestamp"):
        reason = "Terminating"
    return [_name(obj), f"{ready}/{len(containers)}", reason, restarts, _age(obj, now),
            status.get("podIP") or "<none>", spec.get("nodeName") or "<none>",
            status.get("nominatedNodeName") or "<none>", "<none>"]


def _lease_row(obj: JSONObject, now: float) -> list[Any]:
    return [_name(obj), (obj.get("spec") or {}).get("holderIdentity") or "", _age(obj, now)]


def _namespace_row(obj: JSONObject, now: float) -> list[Any]:
    return [_name(obj), (obj.get("status") or {}).get("phase", ""), _age(obj, now)]


def _config_map_row(obj: JSONObject, now: float) -> list[Any]:
    return [_name(obj), len(obj.get("data") or {}) + len(obj.get("binaryData") or {}),
            _age(obj, now)]


def _secret_row(obj: JSONObject, now: float) -> list[Any]:
    return [_name(obj), obj.get("type", "Opaque"),
            len(obj.get("data") or {}) + len(obj.get("stringData") or {}), _age(obj, now)]


def _deployment_row(obj: JSONObject, now: float) -> list[Any]:
    status = obj.get("status") or {}
    desired = (obj.get("spec") or {}).get("replicas", 1)
    return [_name(obj), f"{status.get('readyReplicas', 0)}/{desired}",
            status.get("updatedReplicas", 0), status.get("availableReplicas", 0),
            _age(obj, now)]


def _daemon_set_row(obj: JSONObject, now: float) -> list[Any]:
    status = obj.get("status") or {}
    selector = ((obj.get("spec") or {}).get("template") or {}).get("spec", {}).get(
        "nodeSelector")
    return [_name(obj), status.get("desiredNumberScheduled", 0),
            status.get("currentNumberScheduled", 0), status.get("numberReady", 0),
            status.get("updatedNumberScheduled", 0), status.get("numberAvailable", 0),
            _selector(selector), _age(obj, now)]


def _generic_row(obj: JSONObject, now: float) -> list[Any]:
    return [_name(obj), _age(obj, now)]


_NAME: _Column = ("Name", "string", "name", 0)
_AGE: _Column = ("Age", "string", "", 0)

_PRINTERS: dict[str, tuple[tuple[_Column, ...], _Row]] = {
    "Service": ((_NAME, ("Type", "string", "", 0), ("Cluster-IP", "string", "", 0),
                 ("External-IP", "string", "", 0), ("Port(s)", "string", "", 0), _AGE,
                 ("Selector", "string", "", 1)), _service_row),
    "EndpointSlice": ((_NAME, ("AddressType", "string", "", 0), ("Ports", "string", "", 0),
                       ("Endpoints", "string", "", 0), _AGE), _slice_row),
    "Node": ((_NAME, ("Status", "string", "", 0), ("Roles", "string", "", 0), _AGE,
              ("Version", "string", "", 0), ("Internal-IP", "string", "", 1),
              ("External-IP", "string", "", 1), ("OS-Image", "string", "", 1),
              ("Kernel-Version", "string", "", 1), ("Container-Runtime", "string", "", 1)),
             _node_row),
    "Pod": ((_NAME, ("Ready", "string", "", 0), ("Status", "string", "", 0),
             ("Restarts", "string", "", 0), _AGE, ("IP", "string", "", 1),
             ("Node", "string", "", 1), ("Nominated Node", "string", "", 1),
             ("Readiness Gates", "string", "", 1)), _pod_row),
    "Lease": ((_NAME, ("Holder", "string", "", 0), _AGE), _lease_row),
    "Namespace": ((_NAME, ("Status", "string", "", 0), _AGE), _namespace_row),
    "ConfigMap": ((_NAME, ("Data", "string", "", 0), _AGE), _config_map_row),
    "Secret": ((_NAME, ("Type", "string", "", 0), ("Data", "string", "", 0), _AGE),
               _secret_row),
    "Deployment": ((_NAME, ("Ready", "string", "", 0), ("Up-to-date", "string", "", 0),
                    ("Available", "string", "", 0), _AGE), _deployment_row),
    "DaemonSet": ((_NAME, ("Desired", "string", "", 0), ("Current", "string", "", 0),
                   ("Ready", "string", "", 0), ("Up-to-date", "string", "", 0),
                   ("Available", "string", "", 0), ("Node Selector", "string", "", 0), _AGE),
                  _daemon_set_row),
}


def _row_object(obj: JSONObject, rtype: ResourceType, include: str) -> JSONObject | None:
    if include == "None":
        return None
    if include == "Object":
        full = copy.deepcopy(obj)
        full.setdefault("kind", rtype.kind)
        full.setdefault("apiVersion", rtype.api_version)
        return full
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
            "metadata": copy.deepcopy(obj.get("metadata") or {})}


def table_for(
    rtype: ResourceType,
    objects: Sequence[JSONObject],
    *,
    api_version: str,
    now: float,
    list_metadata: JSONObject | None = None,
    include_object: str = "PartialObjectMetadata",
    with_columns: bool = True,
) -> JSONObject:
    """A Table of `objects`; `include_object` is the request's includeObject."""
    columns, row = _PRINTERS.get(rtype.kind, ((_NAME, _AGE), _generic_row))
    definitions = [
        {"name": name, "type": kind, "format": fmt, "description": f"{name} of the {rtype.kind}",
         "priority": priority}
        for name, kind, fmt, priority in columns
    ]
    rows = []
    for obj in objects:
        entry: JSONObject = {"cells": row(obj, now)}
        included = _row_object(obj, rtype, include_object)
        if included is not None:
            entry["object"] = included
        rows.append(entry)
    table: JSONObject = {
        "kind": "Table", "apiVersion": api_version,
        "metadata": dict(list_metadata or {}),
        "columnDefinitions": definitions if with_columns else None,
        "rows": rows,
    }
    return table
