"""Sources of truth for the router's catalog beyond a manifest file: the Kubernetes API
(watched with list + watch, through treq configured by the official client), and the
controller that writes EndpointSlices so that cloud apps reach edge services by name."""

from ._controller import EdgeServiceController, desired_slice, is_edge_service
from ._discovery import ReplicaDiscovery, ReplicaLeases
from ._election import ElectionTiming, LeaderElector, LeaseElection
from ._kubeapi import (
    ENDPOINT_SLICES,
    LEASES,
    NODES,
    SERVICES,
    APIError,
    APIUnreachable,
    KubeAPI,
    ListResult,
    Resource,
    TreqKubeAPI,
    Watch,
    load_configuration,
)
from ._kubernetes import EDGEMESH_MANAGER, MANAGED_BY_LABEL, KubernetesSource
from ._options import (
    KubernetesOptions,
    http_port,
    service_account_namespace,
)
from ._reflector import Reflector, State, WatchTiming
from ._streamports import PortKey, PortRange, named_stream_ports

__all__ = [
    "EDGEMESH_MANAGER",
    "ENDPOINT_SLICES",
    "LEASES",
    "MANAGED_BY_LABEL",
    "NODES",
    "SERVICES",
    "APIError",
    "APIUnreachable",
    "EdgeServiceController",
    "ElectionTiming",
    "KubeAPI",
    "KubernetesOptions",
    "KubernetesSource",
    "LeaderElector",
    "LeaseElection",
    "ListResult",
    "PortKey",
    "PortRange",
    "Reflector",
    "ReplicaDiscovery",
    "ReplicaLeases",
    "Resource",
    "State",
    "TreqKubeAPI",
    "Watch",
    "WatchTiming",
    "desired_slice",
    "http_port",
    "is_edge_service",
    "load_configuration",
    "named_stream_ports",
    "service_account_namespace",
]
