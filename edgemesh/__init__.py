"""
edgemesh: a service mesh for edge computing, on Twisted.

The names here are the public API for embedding a router or an edge node in an
application's own reactor; the modules behind them are private and may move.
Importing this package never imports or installs a reactor: the builders take one.

    from edgemesh import EdgeConfig, build_edge
    node = build_edge(reactor, EdgeConfig(node="edge-1", state_dir="/var/lib/edgemesh"))
    node.startService()
"""

from importlib.metadata import PackageNotFoundError, version

from .catalog import Catalog, catalog_from_objects, load_manifest
from .exchange import (
    ICompletingResponder,
    IRequestBody,
    IResponder,
    ISource,
    ITarget,
    MeshError,
    Reason,
    RequestHead,
    ResponseHead,
    Role,
    SourceKind,
    TargetKind,
)
from .roles import EdgeConfig, RouterConfig, build_edge, build_router
from .routing import Pipeline, Route
from .security import TLSConfig

try:
    __version__ = version("edgemesh")
except PackageNotFoundError:  # a bare checkout on sys.path, not installed
    __version__ = "0+unknown"

__all__ = [
    "Catalog",
    "EdgeConfig",
    "ICompletingResponder",
    "IRequestBody",
    "IResponder",
    "ISource",
    "ITarget",
    "MeshError",
    "Pipeline",
    "Reason",
    "RequestHead",
    "ResponseHead",
    "Role",
    "Route",
    "RouterConfig",
    "SourceKind",
    "TLSConfig",
    "TargetKind",
    "build_edge",
    "build_router",
    "catalog_from_objects",
    "load_manifest",
]
