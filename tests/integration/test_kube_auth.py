"""The router (real ``twistd``) against the test API server over HTTPS with authentication:
client certificates, bearer tokens, in-cluster files (``--in-cluster --service-account-dir``,
so no test touches /var/run/secrets), and the failures: a wrong CA, 401, 403 on list, 403 on
watch only.  A working credential makes the router ready; a failing one leaves it running and
not ready (``/readyz`` 503).  Only such coarse facts are asserted, not log wording.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from meshkit import LOOPBACK, Mesh, Proc, Topology, admin_get

from edgemesh.testing import ThreadedKubeApiServer, make_node
from edgemesh.testing._auth import Policy, Rule, UserInfo
from edgemesh.testing._tls import CertificateAuthority

TOKENS = {
    "router-token": UserInfo("router"),
    "nobody-token": UserInfo("nobody"),
    "lister-token": UserInfo("lister"),
}
POLICY = Policy([
    Rule(users=frozenset({"router"})),
    Rule(users=frozenset({"lister"}), verbs=frozenset({"get", "list"})),
])
OBSERVE = 3.0
"""Seconds a failing router is watched, never becoming ready."""


@pytest.fixture(scope="module")
def api() -> Iterator[ThreadedKubeApiServer]:
    with ThreadedKubeApiServer(tls=True, bootstrap=True, tokens=TOKENS, policy=POLICY,
                               bookmark_interval=1.0) as server:
        server.create(make_node("cloud-1", internal_ip="10.0.0.9"))
        yield server


@pytest.fixture(autouse=True)
def fresh_request_log(api: ThreadedKubeApiServer) -> None:
    """The API server is the module's: its request log starts empty for each test, so that
    assert_never_ready counts this test's router's attempts only (earlier tests' routers
    watched the same paths)."""
    api.call(api.server.request_log.clear)


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    mesh = Mesh(tmp_path, Topology.allocate([], [], []), tmp_path / "unused.yaml")
    try:
        yield mesh
    finally:
        mesh.stop_all()


def start_router(mesh: Mesh, *source: str, env: dict[str, str] | None = None) -> Proc:
    t = mesh.topology
    argv = [
        "edgemesh-router", *source, "--no-controller",
        "--tunnel", f"tcp:{t.router_tunnel}:interface={LOOPBACK}",
        "--http", f"tcp:{t.router_http}:interface={LOOPBACK}",
        "--admin", f"tcp:{t.router_admin}:interface={LOOPBACK}",
        *mesh._tls_args("router", (), True, t.router_tunnel),
    ]
    if env:
        original = mesh._env
        mesh._env = lambda: {**original(), **env}  # type: ignore[method-assign]
    proc = mesh._spawn("router", argv, t.router_admin, mesh=True)
    mesh.wait_healthy(proc)
    return proc


def readyz(mesh: Mesh) -> int:
    return admin_get(mesh.topology.router_admin, "/readyz")[0]


def assert_ready(mesh: Mesh, proc: Proc) -> None:
    mesh.wait_for("the router to be ready", lambda: readyz(mesh) == 200, [proc])
    services = admin_get(mesh.topology.router_admin, "/catalog")[1]["services"]
    assert any(s[0] == "default" and s[1] == "kubernetes" for s in services), \
        "the router's catalog holds default/kubernetes"


def assert_never_ready(mesh: Mesh, proc: Proc, api: ThreadedKubeApiServer,
                       attempts_of: str | None) -> None:
    """Not ready and alive; with `attempts_of`, only after the router has sent at least two
    such requests for one resource (it keeps trying) -- else for OBSERVE seconds.  Two of one
    resource, not two in all: each resource's first watch goes out at once after its list,
    and until the router has read a refusal it is rightly ready (everything listed, nothing
    refused yet); a second attempt of the same resource comes only after its refusal."""
    if attempts_of is not None:
        def tried() -> bool:
            paths = Counter(uri.split("?")[0] for _, uri in api.request_log()
                            if attempts_of in uri)
            return max(paths.values(), default=0) >= 2

        mesh.wait_for(f"two attempts of {attempts_of}", tried, [proc])
    else:
        end = time.monotonic() + OBSERVE
        while time.monotonic() < end:
            assert readyz(mesh) == 503
            time.sleep(0.1)
    assert readyz(mesh) == 503
    assert proc.alive(), "the router keeps running"


def test_client_certificate(mesh: Mesh, api: ThreadedKubeApiServer, tmp_path: Path) -> None:
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", user="router")
    assert_ready(mesh, start_router(mesh, "--kubeconfig", kubeconfig))


def test_bearer_token(mesh: Mesh, api: ThreadedKubeApiServer, tmp_path: Path) -> None:
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", token="router-token")
    assert_ready(mesh, start_router(mesh, "--kubeconfig", kubeconfig))


def test_in_cluster_files(mesh: Mesh, api: ThreadedKubeApiServer, tmp_path: Path) -> None:
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text("router-token")
    assert api.server.ca is not None
    api.server.ca.write(str(account / "ca.crt"))
    proc = start_router(mesh, "--in-cluster", "--service-account-dir", str(account), env={
        "KUBERNETES_SERVICE_HOST": api.server.host,
        "KUBERNETES_SERVICE_PORT": str(api.server.port)})
    assert_ready(mesh, proc)


def test_wrong_ca(mesh: Mesh, api: ThreadedKubeApiServer, tmp_path: Path) -> None:
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", user="router",
                                      ca_pem=CertificateAuthority("another-ca").cert_pem)
    assert_never_ready(mesh, start_router(mesh, "--kubeconfig", kubeconfig), api, None)


def test_unauthorized_token(mesh: Mesh, api: ThreadedKubeApiServer, tmp_path: Path) -> None:
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", token="not-a-token")
    assert_never_ready(mesh, start_router(mesh, "--kubeconfig", kubeconfig), api,
                       "/api/v1/services")


def test_forbidden_list(mesh: Mesh, api: ThreadedKubeApiServer, tmp_path: Path) -> None:
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", token="nobody-token")
    assert_never_ready(mesh, start_router(mesh, "--kubeconfig", kubeconfig), api,
                       "/api/v1/services")


def test_forbidden_watch_only(mesh: Mesh, api: ThreadedKubeApiServer, tmp_path: Path) -> None:
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", user="lister")
    assert_never_ready(mesh, start_router(mesh, "--kubeconfig", kubeconfig), api, "watch=")
