"""The public surface of ``edgemesh``: a small, deliberate set of names (klein style)."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import edgemesh

REPO_ROOT = Path(__file__).resolve().parent.parent

EXPECTED = {
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
}


def test_all_is_the_expected_set() -> None:
    assert set(edgemesh.__all__) == EXPECTED
    assert len(edgemesh.__all__) == len(EXPECTED), "no name listed twice"


def test_all_is_sorted() -> None:
    assert list(edgemesh.__all__) == sorted(edgemesh.__all__)


def test_nothing_private_is_exported() -> None:
    assert [name for name in edgemesh.__all__ if name.startswith("_")] == []


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_name_is_importable(name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from edgemesh import {name}", namespace)  # noqa: S102 - the import statement is the test
    assert namespace[name] is getattr(edgemesh, name)


def test_names_are_the_real_objects() -> None:
    """Re-exports, not copies: the same objects as in the (private) modules."""
    from edgemesh import catalog, exchange, roles, routing, security

    assert edgemesh.build_router is roles.build_router
    assert edgemesh.build_edge is roles.build_edge
    assert edgemesh.RouterConfig is roles.RouterConfig
    assert edgemesh.EdgeConfig is roles.EdgeConfig
    assert edgemesh.KubernetesConfig is roles.KubernetesConfig
    assert edgemesh.Catalog is catalog.Catalog
    assert edgemesh.load_manifest is catalog.load_manifest
    assert edgemesh.catalog_from_objects is catalog.catalog_from_objects
    assert edgemesh.Pipeline is routing.Pipeline
    assert edgemesh.Route is routing.Route
    assert edgemesh.TLSConfig is security.TLSConfig
    for name in ("MeshError", "Reason", "RequestHead", "ResponseHead", "ISource", "ITarget",
                 "IRequestBody", "IResponder", "ICompletingResponder", "Role", "SourceKind",
                 "TargetKind"):
        assert getattr(edgemesh, name) is getattr(exchange, name)


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from edgemesh import *", namespace)  # noqa: S102 - the star import is the test
    assert set(namespace) - {"__builtins__"} == EXPECTED


def test_version() -> None:
    assert isinstance(edgemesh.__version__, str) and edgemesh.__version__
    try:
        installed = metadata.version("edgemesh")
    except metadata.PackageNotFoundError:
        assert edgemesh.__version__ == "0+unknown"
    else:
        assert edgemesh.__version__ == installed


def _python(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )


def test_importing_edgemesh_installs_no_reactor() -> None:
    result = _python(
        "import sys\n"
        "import edgemesh\n"
        "from edgemesh import *\n"
        "import edgemesh.roles.router_tap, edgemesh.roles.edge_tap, edgemesh.cli\n"
        "assert 'twisted.internet.reactor' not in sys.modules, 'a reactor was imported'\n"
        "print('ok')\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_version_falls_back_when_not_installed() -> None:
    result = _python(
        "import importlib.metadata as m\n"
        "def missing(name):\n"
        "    raise m.PackageNotFoundError(name)\n"
        "m.version = missing\n"
        "import edgemesh\n"
        "print(edgemesh.__version__)\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0+unknown"


def test_embedding_example_needs_only_the_public_names() -> None:
    """examples/embed.py imports from ``edgemesh`` itself, never from its private modules."""
    import ast

    tree = ast.parse((REPO_ROOT / "examples" / "embed.py").read_text())
    modules = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert "edgemesh" in modules
    assert [m for m in modules if m and m.startswith("edgemesh.")] == []
