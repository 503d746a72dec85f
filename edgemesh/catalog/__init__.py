"""The catalog layer: nodes, services and endpoints; where they come from is not its business."""
from typing import TYPE_CHECKING

from .._lazy import lazy_names
from ._catalog import RESOLVE_CACHE_SIZE, Catalog, one_pod, pod_name
from ._delta import (
    CatalogDelta,
    DeltaError,
    apply_delta,
    delta_from_wire,
    delta_to_wire,
    diff_catalogs,
)
from ._model import (
    CLUSTER_DOMAIN,
    DEFAULT_AFFINITY_TIMEOUT,
    DEFAULT_HUB_PORT,
    DEFAULT_NAMESPACE,
    EDGE_LABEL,
    HUB_ADDRESS_ANNOTATION,
    OPENYURT_POOL_LABEL,
    POOL_LABEL,
    ZONE_LABEL,
    Endpoint,
    Node,
    Service,
    ServicePort,
    is_dns1123_label,
    is_dns1123_subdomain,
)
from ._protocols import PortKind, port_kind
from ._snapshot import SnapshotError, catalog_from_wire, catalog_to_wire
from ._store import CatalogStore
from ._trim import aggregate_of, is_aggregate_tag, trim_service

if TYPE_CHECKING:
    from ._manifest import (
        SERVICE_NAME_LABEL,
        EndpointSliceObject,
        ManifestError,
        PodObject,
        ServiceObject,
        SliceEndpoint,
        assemble_catalog,
        catalog_from_objects,
        load_manifest,
        parse_endpoint_slice,
        parse_node,
        parse_pod,
        parse_service,
    )
    from ._scope import (
        ALL,
        EXPORT_ANNOTATION,
        SCOPE_ANNOTATION,
        Scope,
        ScopeError,
        ScopeIndex,
        advance_view,
        is_exported,
        scope_view,
        wanted,
    )

# Manifests and Kubernetes objects, and scopes: the router's and the tools' business; an
# edge gets its catalog (already scoped) from the router or a snapshot and never loads them
# (0.2 MiB of its RssAnon).
__getattr__ = lazy_names(__name__, {
    "._scope": ("ALL", "EXPORT_ANNOTATION", "SCOPE_ANNOTATION", "Scope", "ScopeError",
                "ScopeIndex", "advance_view", "is_exported", "scope_view", "wanted"),
    "._manifest": ("SERVICE_NAME_LABEL", "EndpointSliceObject", "ManifestError", "PodObject",
                   "ServiceObject", "SliceEndpoint", "assemble_catalog", "catalog_from_objects",
                   "load_manifest", "parse_endpoint_slice", "parse_node", "parse_pod",
                   "parse_service"),
}, globals())

__all__ = [
    "ALL",
    "CLUSTER_DOMAIN",
    "DEFAULT_AFFINITY_TIMEOUT",
    "DEFAULT_HUB_PORT",
    "DEFAULT_NAMESPACE",
    "EDGE_LABEL",
    "EXPORT_ANNOTATION",
    "HUB_ADDRESS_ANNOTATION",
    "OPENYURT_POOL_LABEL",
    "POOL_LABEL",
    "RESOLVE_CACHE_SIZE",
    "SCOPE_ANNOTATION",
    "SERVICE_NAME_LABEL",
    "ZONE_LABEL",
    "Catalog",
    "CatalogDelta",
    "CatalogStore",
    "DeltaError",
    "Endpoint",
    "EndpointSliceObject",
    "ManifestError",
    "Node",
    "PodObject",
    "PortKind",
    "Scope",
    "ScopeError",
    "ScopeIndex",
    "Service",
    "ServiceObject",
    "ServicePort",
    "SliceEndpoint",
    "SnapshotError",
    "advance_view",
    "aggregate_of",
    "apply_delta",
    "assemble_catalog",
    "catalog_from_objects",
    "catalog_from_wire",
    "catalog_to_wire",
    "delta_from_wire",
    "delta_to_wire",
    "diff_catalogs",
    "is_aggregate_tag",
    "is_dns1123_label",
    "is_dns1123_subdomain",
    "is_exported",
    "load_manifest",
    "one_pod",
    "parse_endpoint_slice",
    "parse_node",
    "parse_pod",
    "parse_service",
    "pod_name",
    "port_kind",
    "scope_view",
    "trim_service",
    "wanted",
]
