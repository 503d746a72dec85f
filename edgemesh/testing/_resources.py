"""The resource types the test API server serves, and the Status errors it answers with."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ENDPOINT_SLICES",
    "LEASES",
    "MESH_RESOURCE_TYPES",
    "NAMESPACES",
    "NODES",
    "PODS",
    "RESOURCE_TYPES",
    "SERVICES",
    "JSONObject",
    "ResourceType",
    "StatusError",
    "resolve_resource",
    "resource_for_object",
    "status_object",
]

JSONObject = dict[str, Any]

_COMMON_FIELDS = frozenset({"metadata.name"})
_NAMESPACED_FIELDS = frozenset({"metadata.name", "metadata.namespace"})


@dataclass(frozen=True)
class ResourceType:
    """One REST resource: where it lives in the URL space and how the server treats it."""

    group: str  # "" for the core group
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    # The main resource ignores status changes, `/status` changes nothing but status.
    status_subresource: bool = False
    short_names: tuple[str, ...] = ()
    field_paths: frozenset[str] = _COMMON_FIELDS
    # DELETE answers with the object (true) or with a Status (false), as the real registries do.
    delete_returns_object: bool = False
    verbs: tuple[str, ...] = field(
        default=("create", "delete", "get", "list", "patch", "update", "watch")
    )
    # metadata.generation counts spec changes (Services, Pods, workloads).
    generation: bool = False
    # A review (SelfSubjectAccessReview ...): POST answers it, nothing is stored.
    virtual: bool = False
    categories: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    def collection_path(self, namespace: str | None = None) -> str:
        """The URL path of the collection (all namespaces when `namespace` is None)."""
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace is not None:
            return f"{base}/namespaces/{namespace}/{self.plural}"
        return f"{base}/{self.plural}"


SERVICES = ResourceType(
    "", "v1", "services", "service", "Service", namespaced=True, status_subresource=True,
    short_names=("svc",), field_paths=_NAMESPACED_FIELDS, delete_returns_object=True,
    generation=True, categories=("all",),
)
NODES = ResourceType(
    "", "v1", "nodes", "node", "Node", namespaced=False, status_subresource=True,
    short_names=("no",), field_paths=_COMMON_FIELDS | {"spec.unschedulable"},
)
PODS = ResourceType(
    "", "v1", "pods", "pod", "Pod", namespaced=True, status_subresource=True,
    short_names=("po",),
    field_paths=_NAMESPACED_FIELDS | {"spec.nodeName", "status.phase", "status.podIP"},
    delete_returns_object=True, generation=True, categories=("all",),
)
NAMESPACES = ResourceType(
    "", "v1", "namespaces", "namespace", "Namespace", namespaced=False,
    status_subresource=True, short_names=("ns",),
    field_paths=_COMMON_FIELDS | {"status.phase"},
)
ENDPOINT_SLICES = ResourceType(
    "discovery.k8s.io", "v1", "endpointslices", "endpointslice", "EndpointSlice",
    namespaced=True, field_paths=_NAMESPACED_FIELDS | {"addressType"},
)

_ALL = ("all",)
_CREATE_ONLY = ("create",)

# Kinds edgemesh never reads: stored and served generically (no controllers), so that
# `kubectl apply -k examples/kubernetes` and the router replicas' Leases work.
CONFIG_MAPS = ResourceType("", "v1", "configmaps", "configmap", "ConfigMap", namespaced=True,
                           short_names=("cm",), field_paths=_NAMESPACED_FIELDS)
SECRETS = ResourceType("", "v1", "secrets", "secret", "Secret", namespaced=True,
                       field_paths=_NAMESPACED_FIELDS | {"type"})
SERVICE_ACCOUNTS = ResourceType("", "v1", "serviceaccounts", "serviceaccount", "ServiceAccount",
                                namespaced=True, short_names=("sa",),
                                field_paths=_NAMESPACED_FIELDS)
ENDPOINTS = ResourceType("", "v1", "endpoints", "endpoints", "Endpoints", namespaced=True,
                         short_names=("ep",), field_paths=_NAMESPACED_FIELDS)
EVENTS = ResourceType("", "v1", "events", "event", "Event", namespaced=True,
                      short_names=("ev",), field_paths=_NAMESPACED_FIELDS)
DEPLOYMENTS = ResourceType("apps", "v1", "deployments", "deployment", "Deployment",
                           namespaced=True, status_subresource=True, short_names=("deploy",),
                           field_paths=_NAMESPACED_FIELDS, generation=True, categories=_ALL)
DAEMON_SETS = ResourceType("apps", "v1", "daemonsets", "daemonset", "DaemonSet",
                           namespaced=True, status_subresource=True, short_names=("ds",),
                           field_paths=_NAMESPACED_FIELDS, generation=True, categories=_ALL)
STATEFUL_SETS = ResourceType("apps", "v1", "statefulsets", "statefulset", "StatefulSet",
                             namespaced=True, status_subresource=True, short_names=("sts",),
                             field_paths=_NAMESPACED_FIELDS, generation=True, categories=_ALL)
REPLICA_SETS = ResourceType("apps", "v1", "replicasets", "replicaset", "ReplicaSet",
                            namespaced=True, status_subresource=True, short_names=("rs",),
                            field_paths=_NAMESPACED_FIELDS, generation=True, categories=_ALL)
NETWORK_POLICIES = ResourceType("networking.k8s.io", "v1", "networkpolicies", "networkpolicy",
                                "NetworkPolicy", namespaced=True, short_names=("netpol",),
                                field_paths=_NAMESPACED_FIELDS, generation=True)
POD_DISRUPTION_BUDGETS = ResourceType("policy", "v1", "poddisruptionbudgets",
                                      "poddisruptionbudget", "PodDisruptionBudget",
                                      namespaced=True, status_subresource=True,
                                      short_names=("pdb",), field_paths=_NAMESPACED_FIELDS,
                                      generation=True)
ROLES = ResourceType("rbac.authorization.k8s.io", "v1", "roles", "role", "Role",
                     namespaced=True, field_paths=_NAMESPACED_FIELDS)
ROLE_BINDINGS = ResourceType("rbac.authorization.k8s.io", "v1", "rolebindings", "rolebinding",
                             "RoleBinding", namespaced=True, field_paths=_NAMESPACED_FIELDS)
CLUSTER_ROLES = ResourceType("rbac.authorization.k8s.io", "v1", "clusterroles", "clusterrole",
                             "ClusterRole", namespaced=False)
CLUSTER_ROLE_BINDINGS = ResourceType("rbac.authorization.k8s.io", "v1", "clusterrolebindings",
                                     "clusterrolebinding", "ClusterRoleBinding",
                                     namespaced=False)
LEASES = ResourceType("coordination.k8s.io", "v1", "leases", "lease", "Lease", namespaced=True,
                      field_paths=_NAMESPACED_FIELDS)
SELF_SUBJECT_ACCESS_REVIEWS = ResourceType(
    "authorization.k8s.io", "v1", "selfsubjectaccessreviews", "selfsubjectaccessreview",
    "SelfSubjectAccessReview", namespaced=False, verbs=_CREATE_ONLY, virtual=True,
)
SELF_SUBJECT_REVIEWS = ResourceType(
    "authentication.k8s.io", "v1", "selfsubjectreviews", "selfsubjectreview",
    "SelfSubjectReview", namespaced=False, verbs=_CREATE_ONLY, virtual=True,
)

# What edgemesh reads first (their order is kept), then the generic kinds.
MESH_RESOURCE_TYPES: tuple[ResourceType, ...] = (
    SERVICES, NODES, PODS, NAMESPACES, ENDPOINT_SLICES,
)
RESOURCE_TYPES: tuple[ResourceType, ...] = (
    *MESH_RESOURCE_TYPES, CONFIG_MAPS, SECRETS, SERVICE_ACCOUNTS, ENDPOINTS, EVENTS,
    DEPLOYMENTS, DAEMON_SETS, STATEFUL_SETS, REPLICA_SETS, NETWORK_POLICIES,
    POD_DISRUPTION_BUDGETS, ROLES,
    ROLE_BINDINGS, CLUSTER_ROLES, CLUSTER_ROLE_BINDINGS, LEASES, SELF_SUBJECT_ACCESS_REVIEWS,
    SELF_SUBJECT_REVIEWS,
)


def resolve_resource(resource: str | ResourceType) -> ResourceType:
    """Accept a ResourceType, a plural ("services"), a singular, a short name or a kind."""
    if isinstance(resource, ResourceType):
        return resource
    wanted = resource.lower()
    for candidate in RESOURCE_TYPES:
        names = (
            candidate.plural, candidate.singular, candidate.kind.lower(), *candidate.short_names)
        if wanted in names:
            return candidate
    raise KeyError(f"unknown resource {resource!r}")


def resource_for_object(obj: Mapping[str, Any]) -> ResourceType:
    """The resource an object belongs to, from its apiVersion and kind."""
    kind = obj.get("kind")
    api_version = obj.get("apiVersion")
    for candidate in RESOURCE_TYPES:
        if candidate.kind == kind and api_version in (None, candidate.api_version):
            return candidate
    raise KeyError(f"no resource serves apiVersion={api_version!r} kind={kind!r}")


_REASON_FOR_CODE = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    410: "Expired",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


def status_object(
    code: int,
    message: str,
    reason: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> JSONObject:
    """A metav1.Status failure body exactly as the API server writes it."""
    status: JSONObject = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason if reason is not None else _REASON_FOR_CODE.get(code, ""),
        "code": code,
    }
    if details:
        status["details"] = dict(details)
    return status


class StatusError(Exception):
    """An API error: the HTTP status code and the Status body the server sends with it."""

    def __init__(
        self,
        code: int,
        message: str,
        reason: str | None = None,
        details: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message
        self.reason = reason if reason is not None else _REASON_FOR_CODE.get(code, "")
        self.details = dict(details) if details else {}
        self.headers = dict(headers) if headers else {}

    def status(self) -> JSONObject:
        return status_object(self.code, self.message, self.reason, self.details)

    @classmethod
    def not_found(cls, resource: ResourceType, name: str) -> StatusError:
        return cls(
            404,
            f'{resource.plural}{_group_suffix(resource)} "{name}" not found',
            "NotFound",
            {"name": name, **_group_detail(resource), "kind": resource.plural},
        )

    @classmethod
    def already_exists(cls, resource: ResourceType, name: str) -> StatusError:
        return cls(
            409,
            f'{resource.plural}{_group_suffix(resource)} "{name}" already exists',
            "AlreadyExists",
            {"name": name, **_group_detail(resource), "kind": resource.plural},
        )

    @classmethod
    def conflict(cls, resource: ResourceType, name: str, why: str) -> StatusError:
        return cls(
            409,
            f'Operation cannot be fulfilled on {resource.plural}{_group_suffix(resource)} '
            f'"{name}": {why}',
            "Conflict",
            {"name": name, **_group_detail(resource), "kind": resource.plural},
        )

    @classmethod
    def invalid(cls, resource: ResourceType, name: str, why: str) -> StatusError:
        return cls(
            422,
            f'{resource.kind} "{name}" is invalid: {why}',
            "Invalid",
            {"name": name, **_group_detail(resource), "kind": resource.kind},
        )

    @classmethod
    def expired(cls, message: str, reason: str = "Expired") -> StatusError:
        return cls(410, message, reason)


def _group_suffix(resource: ResourceType) -> str:
    return f".{resource.group}" if resource.group else ""


def _group_detail(resource: ResourceType) -> dict[str, str]:
    return {"group": resource.group} if resource.group else {}
