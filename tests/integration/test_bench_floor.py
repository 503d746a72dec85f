"""bench/run.sh's floor of a Twisted process (issue 15): ``twisted-portforward`` starts
Twisted's own TCP relay on the mesh's reactor, ``twisted-portforward-stock`` on Twisted's
default one, and both carry a real HTTP exchange to the origin.  A relay that failed to start
(a wrong option, a reactor plugin not found) would only show as a bench run that stops, and
a relay that ran on the wrong reactor would make the verdict's floor a different figure.

curl is the client and the sample pod server the origin; every process is stopped by PID.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from meshkit import LOOPBACK, PODSERVER, free_ports, sha256_of
from podserver import pattern

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("curl") is None or shutil.which("taskset") is None,
                       reason="needs curl and taskset"),
]

BENCH = Path(__file__).resolve().parents[2] / "bench"
SIZE = 300_000
DEADLINE = 30.0


def _harness() -> Any:
    spec = importlib.util.spec_from_file_location("bench_harness_floor", BENCH / "harness.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (its dataclasses look their module up there)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[tuple[Any, int]]:
    """The bench harness pointed at fresh ports, with a sample pod as its origin."""
    harness = _harness()
    relay, origin = free_ports(2)
    harness.PORTS.update({"edge-1-proxy": relay, "origin": origin})
    harness.CFG.update(PYTHON=sys.executable, MESH_CPU="0", NICE="")
    try:
        pods = harness.spawn("pods", [sys.executable, str(PODSERVER), f"origin={origin}"],
                             "0", str(tmp_path))
        harness.wait_port(origin, pods, timeout=DEADLINE)
        yield harness, relay
    finally:
        for proc in list(harness.started):  # the pod server and the relay, by PID
            harness.stop(proc, grace=5.0)


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


@pytest.mark.parametrize("stock", [False, True], ids=["mesh-reactor", "stock"])
def test_the_twisted_floor_relays_an_exchange(bench: tuple[Any, int], tmp_path: Path,
                                              stock: bool) -> None:
    harness, relay = bench
    (proc,) = harness.start_twisted_portforward(str(tmp_path), stock)
    # taskset execs the interpreter: the pid is the relay's own.
    argv = _cmdline(proc.pid)
    assert "portforward" in argv
    assert ("--reactor" in argv) is not stock
    done = subprocess.run(
        ["curl", "--silent", "--show-error", "--max-time", str(DEADLINE), "--noproxy", "*",
         "--output", "-", "--write-out", "\n%{http_code}",
         f"http://{LOOPBACK}:{relay}/bytes?n={SIZE}&seed=7"],
        capture_output=True, timeout=DEADLINE + 5, check=False)
    assert done.returncode == 0, done.stderr.decode()
    body, _, status = done.stdout.rpartition(b"\n")
    assert status == b"200"
    assert (len(body), hashlib.sha256(body).hexdigest()) == sha256_of(pattern(7, SIZE))
    assert proc.popen.poll() is None, harness.tail(proc.log)
