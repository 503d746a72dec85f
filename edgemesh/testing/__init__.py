"""Test helpers offered to users: a faithful Kubernetes API server served by Twisted.

- :class:`KubeApiServer` runs on the reactor you give it (e.g. in a trial test).
- :class:`ThreadedKubeApiServer` runs one on a private reactor thread, for tests that use the
  blocking official ``kubernetes`` client.
- ``make_*`` build the JSON objects (Services, EndpointSlices, Nodes, Pods, Namespaces).
- ``bootstrap=True`` gives what a new cluster has (system namespaces, default/kubernetes,
  404 for a missing namespace); ``tls=True`` serves HTTPS with a :class:`CertificateAuthority`
  of its own, ``tokens`` and a :class:`Policy` (RBAC) decide who may do what.
- Doubles for the exchange contract that raise :class:`ContractViolation` when a party
  breaks it: :class:`RecordingBody`, :class:`RecordingResponder`,
  :class:`CompletingResponder`, :class:`TrailerBody`, :class:`TrailerResponder` and
  :class:`ScriptedTarget` (each exchange an :class:`Opened`).
"""

from ._apiserver import DEFAULT_NAMESPACES, KubeApiServer
from ._auth import Policy, Rule, UserInfo, load_policy
from ._exchange import (
    CompletingResponder,
    ContractViolation,
    Opened,
    RecordingBody,
    RecordingResponder,
    ScriptedTarget,
    TrailerBody,
    TrailerResponder,
)
from ._objects import make_endpoint_slice, make_namespace, make_node, make_pod, make_service
from ._patch import JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH
from ._resources import (
    ENDPOINT_SLICES,
    LEASES,
    MESH_RESOURCE_TYPES,
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
from ._tls import CertificateAuthority

__all__ = [
    "DEFAULT_NAMESPACES",
    "ENDPOINT_SLICES",
    "JSON_PATCH",
    "LEASES",
    "MERGE_PATCH",
    "MESH_RESOURCE_TYPES",
    "NAMESPACES",
    "NODES",
    "PODS",
    "RESOURCE_TYPES",
    "SERVICES",
    "STRATEGIC_MERGE_PATCH",
    "CertificateAuthority",
    "CompletingResponder",
    "ContractViolation",
    "KubeApiServer",
    "ObjectStore",
    "Opened",
    "Policy",
    "RecordingBody",
    "RecordingResponder",
    "ResourceType",
    "Rule",
    "ScriptedTarget",
    "SelectorError",
    "StatusError",
    "ThreadedKubeApiServer",
    "TrailerBody",
    "TrailerResponder",
    "UserInfo",
    "load_policy",
    "make_endpoint_slice",
    "make_namespace",
    "make_node",
    "make_pod",
    "make_service",
    "parse_field_selector",
    "parse_label_selector",
]
