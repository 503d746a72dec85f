"""Test helpers offered to users: a faithful Kubernetes API server served by Twisted.

- :class:`KubeApiServer` runs on the reactor you give it (e.g. in a trial test).
- :class:`ThreadedKubeApiServer` runs one on a private reactor thread, for tests that use the
  blocking official ``kubernetes`` client.
- ``make_*`` build the JSON objects (Services, EndpointSlices, Nodes, Pods, Namespaces).
"""

from ._apiserver import KubeApiServer
from ._objects import make_endpoint_slice, make_namespace, make_node, make_pod, make_service
from ._patch import JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH
from ._resources import (
    ENDPOINT_SLICES,
    NAMESPACES,
    NODES,
    PODS,
    RESOURCE_TYPES,
    SERVICES,
    ResourceType,
    StatusError,
)
from ._selectors import SelectorError, parse_field_selector, parse_label_selector
from ._store import ObjectStore
from ._threaded import ThreadedKubeApiServer

__all__ = [
    "ENDPOINT_SLICES",
    "JSON_PATCH",
    "MERGE_PATCH",
    "NAMESPACES",
    "NODES",
    "PODS",
    "RESOURCE_TYPES",
    "SERVICES",
    "STRATEGIC_MERGE_PATCH",
    "KubeApiServer",
    "ObjectStore",
    "ResourceType",
    "SelectorError",
    "StatusError",
    "ThreadedKubeApiServer",
    "make_endpoint_slice",
    "make_namespace",
    "make_node",
    "make_pod",
    "make_service",
    "parse_field_selector",
    "parse_label_selector",
]
