"""``python -m edgemesh demo --once``: a whole mesh on loopback answers on all four paths."""

from __future__ import annotations

import errno
import importlib
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 60


def demo_ports() -> list[int]:
    """Every port the demo binds on 127.0.0.1 (its fixed constants and the pods' endpoints)."""
    # By module name: edgemesh.cli also has a function called _demo.
    _demo = importlib.import_module("edgemesh.cli._demo")

    ports = {_demo.ROUTER_TUNNEL, _demo.ROUTER_HTTP, _demo.ROUTER_ADMIN}
    for proxy, hub, admin in _demo.EDGES.values():
        ports |= {proxy, hub, admin}
    for service in _demo.demo_catalog().services.values():
        for endpoints in service.endpoints.values():
            ports |= {endpoint.port for endpoint in endpoints}
    return sorted(ports)


def busy_ports(ports: list[int]) -> list[int]:
    busy = []
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # As Twisted's listenTCP does: a port in TIME_WAIT from an earlier run is not busy.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError as error:
                if error.errno != errno.EADDRINUSE:
                    raise
                busy.append(port)
    return busy


def parse_table(stdout: str) -> list[dict[str, str]]:
    """The demo's table as rows keyed by its header (columns are two or more spaces apart)."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    start = next(i for i, line in enumerate(lines) if line.startswith("path "))
    header = re.split(r"\s{2,}", lines[start].strip())
    rows = []
    for line in lines[start + 2:]:
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) != len(header):
            break
        rows.append(dict(zip(header, cells)))
    return rows


def test_demo_ports_are_the_documented_ones() -> None:
    ports = demo_ports()
    assert all(17700 <= p <= 17792 or 18001 <= p <= 18006 for p in ports), ports


@pytest.mark.slow
def test_demo_once() -> None:
    busy = busy_ports(demo_ports())
    if busy:
        pytest.skip(f"the demo needs fixed ports on 127.0.0.1 and these are in use: {busy}")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "edgemesh", "demo", "--once"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )
    output = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 0, output
    rows = parse_table(result.stdout)
    by_path: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_path.setdefault(row["path"], []).append(row)
    for path in ("1 edge → same node", "2 edge → edge", "3 edge → cloud", "4 cloud → edge"):
        assert by_path.get(path), f"no row for {path!r}\n{output}"
        assert [row["status"] for row in by_path[path]] == ["200"] * len(by_path[path]), output
        assert all(row["answered by"].startswith("default/hello-") for row in by_path[path]), output
    # A TCP service through the mesh: CONNECT, 10 kB echoed back, from an edge and the cloud.
    for path in ("stream edge → edge", "stream cloud → edge"):
        (row,) = by_path.get(path) or [{}]
        assert row.get("status") == "200", output
        assert row.get("answered by") == "echo-0 (echoed)", output
    (error,) = by_path["error"]
    assert error["status"] == "404", output
    assert error["answered by"] == "(unknown-service)", output
    assert "Traceback" not in result.stderr, output
