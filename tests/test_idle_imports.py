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
