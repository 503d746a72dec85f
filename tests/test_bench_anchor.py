"""bench/'s nginx anchors render to configurations nginx accepts: the plain hop, and the two
hops of ``relay-nginx-tls`` (mutual TLS between them with the mesh's certificates), whose
figure stands beside the mTLS row of issue 15.  A typo there would only show as a bench run
that fails to start, so nginx itself checks each file (``nginx -t``) where it is installed.
And bench/run.sh refuses, at its start, an interpreter it would otherwise run every mesh row
on only to report each one failed."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgemesh.security.certs import init_ca_dir, issue_into_dir

# bench/ is not a package: its harness (stdlib only) loaded from its file, sys.path untouched.
_SPEC = importlib.util.spec_from_file_location(
    "bench_harness", Path(__file__).resolve().parent.parent / "bench" / "harness.py")
assert _SPEC is not None and _SPEC.loader is not None
harness = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = harness  # (its dataclasses look their module up there)
_SPEC.loader.exec_module(harness)


@pytest.fixture
def ca(tmp_path: Path) -> str:
    directory = str(tmp_path / "ca")
    init_ca_dir(directory)
    for node in ("edge-1", "edge-2"):
        issue_into_dir(directory, node)
    return directory


def _render(tmp_path: Path, name: str, tls: dict[str, str]) -> Path:
    home = tmp_path / name
    home.mkdir()
    conf = home / "proxy.conf"
    harness.render("proxy-nginx.conf", str(conf), TMP=home, PORT=1, ORIGIN_PORT=2,
                   BUFFERING="off", **tls)
    return conf


def _variants(ca: str) -> dict[str, dict[str, str]]:
    return {"plain": harness.NGINX_PLAIN,
            "tls-second-hop": harness.nginx_tls(ca, "edge-2", accept=True, dial=None),
            "tls-first-hop": harness.nginx_tls(ca, "edge-1", accept=False, dial="edge-2")}


def test_the_tls_hops_accept_and_dial_with_the_mesh_certificates(ca: str) -> None:
    second = harness.nginx_tls(ca, "edge-2", accept=True, dial=None)
    first = harness.nginx_tls(ca, "edge-1", accept=False, dial="edge-2")
    assert second["LISTEN_TLS"] == " ssl" and second["SCHEME"] == "http"
    assert "ssl_verify_client on;" in second["SERVER_TLS"] and not second["PROXY_TLS"]
    assert f"{ca}/edge-2.pem" in second["SERVER_TLS"]
    assert first["SCHEME"] == "https" and not first["LISTEN_TLS"] and not first["SERVER_TLS"]
    assert "proxy_ssl_verify on;" in first["PROXY_TLS"]
    assert "proxy_ssl_name edge-2;" in first["PROXY_TLS"]
    assert f"{ca}/edge-1.key" in first["PROXY_TLS"]
    assert harness.NGINX_TLS_SUITE in first["PROXY_TLS"]
    assert harness.NGINX_TLS_SUITE in second["SERVER_TLS"]


def test_every_variant_fills_the_template(tmp_path: Path, ca: str) -> None:
    for name, tls in _variants(ca).items():
        text = _render(tmp_path, name, tls).read_text()
        assert "@" not in text.replace("127.0.0.1", ""), name


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
def test_nginx_accepts_every_variant(tmp_path: Path, ca: str) -> None:
    for name, tls in _variants(ca).items():
        conf = _render(tmp_path, name, tls)
        checked = subprocess.run(
            ["nginx", "-t", "-p", str(conf.parent), "-e", str(conf.parent / "err.log"),
             "-c", str(conf)], capture_output=True, text=True, timeout=30, check=False)
        assert checked.returncode == 0, f"{name}: {checked.stderr.strip()[-500:]}"


def test_run_sh_refuses_an_interpreter_without_the_dependencies(tmp_path: Path) -> None:
    # An "interpreter" that can import nothing: with SKIP_INSTALL=1 nothing would install
    # the dependencies, so the run must stop before it starts any process.
    bare = tmp_path / "python"
    bare.write_text("#!/bin/sh\nexit 1\n")
    bare.chmod(0o755)
    run_sh = Path(__file__).resolve().parent.parent / "bench" / "run.sh"
    done = subprocess.run(
        ["bash", str(run_sh)], capture_output=True, text=True, timeout=60, check=False,
        env={"PATH": "/usr/bin:/bin", "SKIP_INSTALL": "1", "PYTHON": sys.executable,
             "PYTHONS": str(bare), "RESULTS_DIR": str(tmp_path / "results")})
    assert done.returncode == 1, done.stderr
    assert f"PYTHONS: {bare} lacks edgemesh's dependencies" in done.stderr
    assert not (tmp_path / "results").exists()
