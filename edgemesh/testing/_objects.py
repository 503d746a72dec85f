"""Small builders for the Kubernetes objects tests create (plain JSON dicts)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..catalog import EDGE_LABEL, HUB_ADDRESS_ANNOTATION
from ._resources import JSONObject

__all__ = ["make_endpoint_slice", "make_namespace", "make_node", "make_pod", "make_service"]

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"


def _metadata(
    name: str,
    namespace: str | None,
    labels: Mapping[str, str] | None,
    annotations: Mapping[str, str] | None,
) -> JSONObject:
    metadata: JSONObject = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    if labels:
        metadata["labels"] = dict(labels)
    if annotations:
        metadata["annotations"] = dict(annotations)
    return metadata


def make_service(
    name: str,
    namespace: str = "default",
    *,
    ports: Iterable[int | Mapping[str, Any]] = (80,),
    selector: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    cluster_ip: str | None = None,
    service_type: str = "ClusterIP",
) -> JSONObject:
    """A v1 Service; an int port becomes ``{"name": "p<port>", "port": p, "protocol": "TCP"}``."""
    port_list: list[JSONObject] = []
    for port in ports:
        if isinstance(port, int):
            port_list.append({"name": f"p{port}", "port": port, "protocol": "TCP"})
        else:
            port_list.append(dict(port))
    spec: JSONObject = {"type": service_type, "ports": port_list}
    if selector is not None:
        spec["selector"] = dict(selector)
    if cluster_ip is not None:
        spec["clusterIP"] = cluster_ip
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(name, namespace, labels, annotations),
        "spec": spec,
    }


def make_endpoint_slice(
    service: str,
    addresses: Sequence[str | Mapping[str, Any]],
    namespace: str = "default",
    *,
    name: str | None = None,
    port: int = 80,
    port_name: str | None = None,
    ports: Sequence[Mapping[str, Any]] | None = None,
    ready: bool = True,
    serving: bool | None = None,
    terminating: bool | None = None,
    node_name: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> JSONObject:
    """A discovery.k8s.io/v1 EndpointSlice for `service` (labelled kubernetes.io/service-name).

    A string address becomes one endpoint with the given conditions and node; pass mappings to
    build endpoints by hand.  `port_name` defaults to ``p<port>`` (what make_service names it).
    """
    endpoints: list[JSONObject] = []
    for address in addresses:
        if isinstance(address, str):
            conditions: JSONObject = {"ready": ready}
            if serving is not None:
                conditions["serving"] = serving
            if terminating is not None:
                conditions["terminating"] = terminating
            endpoint: JSONObject = {"addresses": [address], "conditions": conditions}
            if node_name is not None:
                endpoint["nodeName"] = node_name
            endpoints.append(endpoint)
        else:
            endpoints.append(dict(address))
    all_labels = {SERVICE_NAME_LABEL: service, MANAGED_BY_LABEL: "edgemesh-testing"}
    all_labels.update(labels or {})
    if ports is None:
        ports = [{"name": port_name if port_name is not None else f"p{port}", "port": port,
                  "protocol": "TCP"}]
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": _metadata(name or f"{service}-slice", namespace, all_labels, None),
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [dict(p) for p in ports],
    }


def make_node(
    name: str,
    *,
    internal_ip: str | None = None,
    edge: bool = False,
    hub_address: str | None = None,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    ready: bool = True,
) -> JSONObject:
    """A v1 Node; `edge` adds the edge role label, `hub_address` the hub-address annotation."""
    all_labels = {"kubernetes.io/hostname": name, **(labels or {})}
    if edge:
        all_labels[EDGE_LABEL] = ""
    all_annotations = dict(annotations or {})
    if hub_address is not None:
        all_annotations[HUB_ADDRESS_ANNOTATION] = hub_address
    addresses: list[JSONObject] = [{"type": "Hostname", "address": name}]
    if internal_ip is not None:
        addresses.insert(0, {"type": "InternalIP", "address": internal_ip})
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": _metadata(name, None, all_labels, all_annotations),
        "spec": {},
        "status": {
            "addresses": addresses,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def make_pod(
    name: str,
    namespace: str = "default",
    *,
    labels: Mapping[str, str] | None = None,
    node_name: str | None = None,
    pod_ip: str | None = None,
    image: str = "example.invalid/app:1",
) -> JSONObject:
    """A v1 Pod with one container; `pod_ip` sets status.podIP and phase Running."""
    spec: JSONObject = {"containers": [{"name": "app", "image": image}]}
    if node_name is not None:
        spec["nodeName"] = node_name
    status: JSONObject = {"phase": "Pending"}
    if pod_ip is not None:
        status = {"phase": "Running", "podIP": pod_ip, "podIPs": [{"ip": pod_ip}]}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _metadata(name, namespace, labels, None),
        "spec": spec,
        "status": status,
    }


def make_namespace(name: str, *, labels: Mapping[str, str] | None = None) -> JSONObject:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": _metadata(name, None, labels, None), "spec": {}}
