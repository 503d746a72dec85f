"""Every listener of real router and edge processes has a listen queue of 4096 (Twisted's
default of 50 dropped most SYNs of edges reconnecting together), as the kernel reports it:
``ss -ltn`` shows a listening socket's backlog in its Send-Q column."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from meshkit import Mesh

EXPECTED = min(4096, int(Path("/proc/sys/net/core/somaxconn").read_text()))
"""The kernel caps a backlog at net.core.somaxconn."""


def backlog(port: int) -> int:
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True,
                         check=True, timeout=10).stdout.split()
    assert out and out[0] == "LISTEN", f"nothing listens on {port}: {out}"
    return int(out[2])  # State Recv-Q Send-Q ...: Send-Q is the backlog


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")
def test_every_listener_has_a_large_backlog(mesh: Mesh) -> None:
    t = mesh.topology
    ports = {"router tunnel": t.router_tunnel, "router http": t.router_http,
             "router admin": t.router_admin}
    for kind, port in t.edges["edge-1"].items():
        ports[f"edge-1 {kind}"] = port
    assert {name: backlog(port) for name, port in ports.items()} == dict.fromkeys(ports, EXPECTED)
