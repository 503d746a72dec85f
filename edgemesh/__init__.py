"""
edgemesh: a service mesh for edge computing, on Twisted.

The names here are the public API for embedding a router or an edge node in an
application's own reactor; the modules behind them are private and may move.
Importing this package never imports or installs a reactor: the builders take one.

    from edgemesh import EdgeConfig, build_edge
    node = build_edge(reactor, EdgeConfig(node="edge-1", state_dir="/var/lib/edgemesh"))
    node.startService()
"""

from typing import TYPE_CHECKING

from ._lazy import lazy_names
from .catalog import Catalog
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
from .roles import EdgeConfig, build_edge
from .routing import Pipeline, Route
from .security import TLSConfig

if TYPE_CHECKING:
    from .catalog import catalog_from_objects, load_manifest
    from .roles import KubernetesConfig, RouterConfig, build_router

# Read on first use: the manifest reader and the router, which an edge never needs.
_lazy = lazy_names(__name__, {
    ".catalog": ("catalog_from_objects", "load_manifest"),
    ".roles": ("KubernetesConfig", "RouterConfig", "build_router"),
}, globals())


def __getattr__(name: str) -> object:
    if name != "__version__":
        return _lazy(name)
    # importlib.metadata costs ~0.5 MiB of RssAnon in every process: read on first use.
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("edgemesh")
    except PackageNotFoundError:  # a bare checkout on sys.path, not installed
        found = "0+unknown"
    globals()["__version__"] = found
    return found


__all__ = [
    "Catalog",
    "EdgeConfig",
    "ICompletingResponder",
    "IRequestBody",
    "IResponder",
    "ISource",
    "ITarget",
    "KubernetesConfig",
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
