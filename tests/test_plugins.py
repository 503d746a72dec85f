"""The installed edgemesh exposes its two roles to twistd.

These run twistd in a fresh interpreter outside the checkout with PYTHONPATH unset, so what they
see is what `pip install` put into this interpreter's environment, not the files beside the tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin, getPlugins
from twisted.python import usage
from zope.interface.verify import verifyObject

TAPNAMES = ("edgemesh-router", "edgemesh-edge")
NOT_INSTALLED = "is edgemesh installed into {python}? `python3 dev.py test` installs it into .venv"


def _run_installed(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    return subprocess.run(
        [sys.executable, *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_twistd_lists_both_tapnames(tmp_path: Path) -> None:
    result = _run_installed(tmp_path, "-m", "twisted", "--help")
    assert result.returncode == 0, result.stderr
    missing = [name for name in TAPNAMES if name not in result.stdout]
    assert not missing, f"{missing} not in twistd --help; " + NOT_INSTALLED.format(
        python=sys.executable
    )


@pytest.mark.parametrize("tapname", TAPNAMES)
def test_twistd_role_help(tmp_path: Path, tapname: str) -> None:
    """`twistd ROLE --help` imports the role's tap module and prints its Options."""
    result = _run_installed(tmp_path, "-m", "twisted", tapname, "--help")
    hint = NOT_INSTALLED.format(python=sys.executable)
    assert result.returncode == 0, f"{hint}\n{result.stdout}{result.stderr}"
    usage_line = result.stdout.splitlines()[0]
    assert usage_line.startswith("Usage:") and tapname in usage_line, result.stdout


def test_installed_plugin_file_is_edgemesh_plugins(tmp_path: Path) -> None:
    """The plugin twistd finds is ours, and edgemesh imports from outside the checkout."""
    probe = (
        "from twisted.application.service import IServiceMaker\n"
        "from twisted.plugin import getPlugins\n"
        "import edgemesh\n"
        "for maker in getPlugins(IServiceMaker):\n"
        "    if maker.tapname.startswith('edgemesh-'):\n"
        "        print(maker.tapname, maker.module)\n"
    )
    result = _run_installed(tmp_path, "-c", probe)
    assert result.returncode == 0, result.stderr
    found = dict(line.split() for line in result.stdout.splitlines())
    assert found == {
        "edgemesh-router": "edgemesh.roles.router_tap",
        "edgemesh-edge": "edgemesh.roles.edge_tap",
    }, f"{result.stdout!r}; {NOT_INSTALLED.format(python=sys.executable)}"


def test_get_plugins_loads_both_roles() -> None:
    makers = {m.tapname: m for m in getPlugins(IServiceMaker) if m.tapname in TAPNAMES}
    assert sorted(makers) == sorted(TAPNAMES)
    for maker in makers.values():
        assert verifyObject(IPlugin, maker)
        assert verifyObject(IServiceMaker, maker)
        # Both attributes import the role's tap module: a broken module fails here.
        assert issubclass(maker.options, usage.Options)
        assert callable(maker.makeService)
        assert maker.options().getUsage()
