"""Shared pytest setup: import edgemesh from this checkout, whatever the working directory."""

import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

# An editable install points here anyway; this also covers a plain `pytest` with the repo
# not installed.  (The `twisted/` folder here has no __init__.py, so it never shadows Twisted.)
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: {server: "http://127.0.0.1:6443"}
users:
- name: test
  user: {token: "abc"}
contexts:
- name: test
  context: {cluster: test, user: test}
current-context: test
"""


@pytest.fixture
def kubeconfig(tmp_path: Path) -> str:
    """A kubeconfig file naming a loopback API server (nothing listens there)."""
    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG)
    return str(path)


@pytest.fixture
def socket_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected socket pair: ours non-blocking (a Twisted transport goes over it), theirs
    blocking (the test plays the peer); both closed after the test."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    try:
        yield ours, theirs
    finally:
        ours.close()
        theirs.close()
