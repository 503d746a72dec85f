"""``python -m edgemesh demo --once``: a whole mesh on loopback answers on all four paths."""

from __future__ import annotations

import errno
import importlib
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
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


def skip_unless_ports_free() -> None:
    busy = busy_ports(demo_ports())
    if busy:
        pytest.skip(f"the demo needs fixed ports on 127.0.0.1 and these are in use: {busy}")


def demo_environment(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """The demo's environment with its own empty TMPDIR (returned), to see what it leaves."""
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TMPDIR": str(temporary),
           "PYTHONUNBUFFERED": "1"}
    return env, temporary


@pytest.mark.slow
def test_demo_once(tmp_path: Path) -> None:
    skip_unless_ports_free()
    env, temporary = demo_environment(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "edgemesh", "demo", "--once"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )
    output = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 0, output
    # Its certificates (the CA key among them) and the edges' state went with it.
    assert "certificates in " + str(temporary) in result.stdout, output
    assert list(temporary.iterdir()) == [], output
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


def read_until(process: subprocess.Popen[bytes], marker: str, deadline: float,
               stderr_path: Path) -> str:
    """The process's stdout up to `marker` (fails at the deadline, with what it wrote to
    `stderr_path`).  Reads the descriptor itself: a buffered readline could hold the marker
    while select() waits for more."""
    assert process.stdout is not None
    descriptor = process.stdout.fileno()
    seen = b""
    with selectors.DefaultSelector() as selector:
        selector.register(descriptor, selectors.EVENT_READ)
        while marker.encode() not in seen:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                raise AssertionError(f"no {marker!r} before the deadline:\n"
                                     f"{seen.decode()}\n{stderr_path.read_text()}")
            chunk = os.read(descriptor, 65536)
            if not chunk:
                raise AssertionError(f"the demo ended before {marker!r}:\n"
                                     f"{seen.decode()}\n{stderr_path.read_text()}")
            seen += chunk
    return seen.decode()


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_demo_removes_its_directories_when_stopped(tmp_path: Path, stop: signal.Signals) -> None:
    skip_unless_ports_free()
    env, temporary = demo_environment(tmp_path)
    # To a file, not a pipe nobody reads while it runs: a full pipe would stall the demo.
    with (tmp_path / "stderr").open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "edgemesh", "demo"], cwd=REPO_ROOT, env=env,
            stdout=subprocess.PIPE, stderr=stderr)
    try:
        read_until(process, "Ctrl-C to stop", time.monotonic() + TIMEOUT, tmp_path / "stderr")
        assert list(temporary.iterdir()), "the demo writes its files in TMPDIR"
        process.send_signal(stop)
        status = process.wait(TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(TIMEOUT)
    assert list(temporary.iterdir()) == [], (tmp_path / "stderr").read_text()
    # Stopping is how this demo ends: the status is the table's (every path behaved), not 1.
    assert status == 0, (tmp_path / "stderr").read_text()


@pytest.mark.slow
def test_demo_removes_its_directories_after_an_error(tmp_path: Path) -> None:
    skip_unless_ports_free()
    _demo = importlib.import_module("edgemesh.cli._demo")
    env, temporary = demo_environment(tmp_path)
    # Someone else holds the router's tunnel port: the demo fails after writing certificates.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        # As busy_ports: an earlier run's connections in TIME_WAIT do not make it busy.
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", _demo.ROUTER_TUNNEL))
        squatter.listen()
        result = subprocess.run(
            [sys.executable, "-m", "edgemesh", "demo", "--once"],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT,
            check=False,
        )
    output = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode != 0, output
    assert "certificates in " + str(temporary) in result.stdout, output
    assert list(temporary.iterdir()) == [], output
