"""The roles layer: builders for the cloud router and the edge service bus, and their twistd
taps."""

from typing import TYPE_CHECKING

from .._lazy import lazy_names
from ._node import EdgeConfig, EdgeNode, MeshNode, build_edge

if TYPE_CHECKING:
    from ._kubernetes import KubernetesConfig
    from ._router import RouterConfig, RouterNode, build_router

# The router's code on first use: an edge never loads it (see _router).
__getattr__ = lazy_names(__name__, {
    "._kubernetes": ("KubernetesConfig",),
    "._router": ("RouterConfig", "RouterNode", "build_router"),
}, globals())

__all__ = [
    "EdgeConfig",
    "EdgeNode",
    "KubernetesConfig",
    "MeshNode",
    "RouterConfig",
    "RouterNode",
    "build_edge",
    "build_router",
    "twistd_main",
]


def twistd_main(argv: list[str]) -> int:
    """``edgemesh twistd ARGV``: twistd with only edgemesh's plugins (no plugin scan)."""
    from ._twistd import main

    return main(argv)
