"""The roles layer: builders for the cloud router and the edge service bus, and their twistd
taps."""

from ._kubernetes import KubernetesConfig
from ._node import (
    EdgeConfig,
    EdgeNode,
    MeshNode,
    RouterConfig,
    RouterNode,
    build_edge,
    build_router,
)

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
