"""What an idle edge imports (issue 15: anonymous memory at idle)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_an_edge_without_admin_never_imports_prometheus_client() -> None:
    """The node's observer, byte-stream counters included, is made without it (~1 MiB):
    only a scrape of the admin API imports it."""
    code = (
        "import sys\n"
        "import edgemesh.roles.edge_tap\n"
        "from twisted.internet.task import Clock\n"
        "from edgemesh.observability import MeshObserver\n"
        "from edgemesh.exchange import Role\n"
        "observer = MeshObserver(Clock(), Role.edge, 'edge-1')\n"
        "assert observer.streams is not None\n"
        "print('prometheus_client' in sys.modules)\n"
        "list(observer.streams.collect())\n"
        "print('prometheus_client' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True"]


def _run(code: str, *args: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, *args, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_an_edge_without_capture_never_imports_the_capture_machinery(tmp_path: Path) -> None:
    """CaptureOptions alone at start; the rules' service, the transparent front and the
    virtual IPs load with --capture (or on first use of the package's other names)."""
    code = (
        "import sys\n"
        "from edgemesh.roles.edge_tap import Options\n"
        "heavy = ('edgemesh.capture._service', 'edgemesh.capture._transparent',\n"
        "         'edgemesh.capture._vips', 'edgemesh.capture._cli')\n"
        f"base = ['--node', 'edge-1', '--state-dir', {str(tmp_path)!r}, '--insecure']\n"
        "Options().parseOptions(base)\n"
        "print(sorted(m for m in heavy if m in sys.modules) or 'none')\n"
        "options = Options()\n"
        "options.parseOptions([*base, '--transparent', 'tcp:15001'])\n"
        "print(type(options['capture_value']).__name__)\n"
        "import edgemesh.capture as capture\n"
        "print(capture.TransparentFrontFactory.__module__, capture.DEFAULT_TRANSPARENT)\n"
    )
    assert _run(code) == [
        "none", "CaptureConfig", "edgemesh.capture._transparent", "tcp:15001:interface=127.0.0.1"]


def test_edgemesh_twistd_skips_the_plugin_scan(tmp_path: Path) -> None:
    """``edgemesh twistd`` parses the same twistd command line as ``twistd`` without
    unpickling every dropin, whose interfaces import unittest and twisted.trial (~1 MiB of
    RssAnon in every node); plain twistd, parsed the same way, does import them."""
    code = (
        "import sys\n"
        "from edgemesh.roles._twistd import EdgemeshServerOptions\n"
        "from twisted.scripts.twistd import ServerOptions\n"
        f"argv = ['-n', 'edgemesh-edge', '--node', 'e', '--state-dir', {str(tmp_path)!r},\n"
        "        '--insecure']\n"
        "for options in (EdgemeshServerOptions(), ServerOptions()):\n"
        "    options.parseOptions(argv)\n"
        "    names = sorted(name for name, *_ in options.subCommands)\n"
        "    print(options.subCommand, 'edgemesh-router' in names, len(names) == 2,\n"
        "          'unittest' in sys.modules, 'twisted.trial' in sys.modules)\n"
    )
    assert _run(code) == [
        "edgemesh-edge", "True", "True", "False", "False",
        "edgemesh-edge", "True", "False", "True", "True"]


def test_edgemesh_twistd_command(tmp_path: Path) -> None:
    """``python -m edgemesh twistd`` is twistd: its --help lists our two roles only."""
    result = subprocess.run(
        [sys.executable, "-m", "edgemesh", "twistd", "--help"], cwd=tmp_path,
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    commands = result.stdout.split("Commands:")[1].split()
    assert [word for word in commands if word.startswith(("edgemesh-", "web", "ftp"))] == [
        "edgemesh-edge", "edgemesh-router"], result.stdout


def test_edgemesh_twistd_installs_edgemeshs_reactor_without_the_scan(tmp_path: Path) -> None:
    """``edgemesh twistd --reactor edgemesh``: twistd's own --reactor looks the name up by the
    same plugin scan; edgemesh's reactor is installed without it."""
    code = (
        "import sys\n"
        "from edgemesh.roles._twistd import EdgemeshServerOptions\n"
        "options = EdgemeshServerOptions()\n"
        f"options.parseOptions(['-n', '--reactor', 'edgemesh', 'edgemesh-edge', '--node', 'e',\n"
        f"    '--state-dir', {str(tmp_path)!r}, '--insecure'])\n"
        "from twisted.internet import reactor\n"
        "print(type(reactor).__name__, options['reactor'], 'unittest' in sys.modules)\n"
    )
    assert _run(code) == ["EdgemeshReactor", "edgemesh", "False"]


def test_a_plaintext_edge_never_imports_tls_manifests_or_capture_rules(tmp_path: Path) -> None:
    """An --insecure edge without --catalog or --capture, built and started: none of the TLS
    modules, the manifest reader, the capture rules, the router's code or argparse (~1 MiB
    of RssAnon); each loads when asked for (TLS files, --catalog FILE, --capture, a router,
    or the package's names)."""
    code = (
        "import sys\n"
        "import edgemesh.cli\n"
        "from edgemesh.roles.edge_tap import Options\n"
        "from edgemesh.roles._node import EdgeConfig, build_edge\n"
        "print('argparse' in sys.modules)\n"
        "from twisted.internet.testing import MemoryReactorClock  # imports argparse itself\n"
        "heavy = ('edgemesh.security._links', 'edgemesh.security._material',\n"
        "         'edgemesh.security._certs', 'edgemesh.security._sockettls',\n"
        "         'edgemesh.catalog._manifest', 'edgemesh.capture._rules',\n"
        "         'edgemesh.capture._iptables', 'edgemesh.roles._router',\n"
        "         'edgemesh.roles._kubernetes', 'edgemesh.roles._pusher',\n"
        "         'edgemesh.catalog._scope', 'edgemesh.routing._homes')\n"
        f"state = {str(tmp_path)!r}\n"
        "Options().parseOptions(['--node', 'edge-1', '--state-dir', state, '--insecure'])\n"
        "config = EdgeConfig(node='edge-1', state_dir=state, router=None, proxy=None, hub=None)\n"
        "node = build_edge(MemoryReactorClock(), config)\n"
        "node.startService()\n"
        "print(sorted(m for m in heavy if m in sys.modules) or 'none')\n"
        "import edgemesh\n"
        "from edgemesh.security import MutualTLS, make_ca\n"
        "from edgemesh.capture import CaptureRules, iptables_main\n"
        "from edgemesh.roles import KubernetesConfig\n"
        "print(edgemesh.load_manifest.__module__, MutualTLS.__module__, make_ca.__module__,\n"
        "      CaptureRules.__module__, iptables_main.__module__,\n"
        "      edgemesh.build_router.__module__, KubernetesConfig.__module__)\n"
    )
    assert _run(code) == [
        "False", "none", "edgemesh.catalog._manifest", "edgemesh.security._links",
        "edgemesh.security._certs", "edgemesh.capture._rules", "edgemesh.capture._cli",
        "edgemesh.roles._router", "edgemesh.roles._kubernetes"]
