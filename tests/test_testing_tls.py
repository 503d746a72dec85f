"""The test API server's throwaway CA (edgemesh.testing._tls) under strict X.509 checks.

Python 3.13's ``ssl.create_default_context()`` sets VERIFY_X509_STRICT: OpenSSL then refuses a
chain whose certificates lack the key identifiers ("Missing Authority Key Identifier"). These
tests set the flag themselves, so they check the same on every Python the suite runs on.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from edgemesh.testing._tls import CertificateAuthority, Issued


def _strict(context: ssl.SSLContext) -> ssl.SSLContext:
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


def _handshake(client: ssl.SSLContext, server: ssl.SSLContext) -> ssl.SSLObject:
    """One TLS handshake in memory; returns the client's end (raises what a side raises)."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_hostname="127.0.0.1")
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):  # a TLS 1.3 handshake takes two or three round trips
        for name, end in (("client", c), ("server", s)):
            if not done[name]:
                try:
                    end.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return c
    raise AssertionError("the handshake did not finish")


def _server(tmp_path: Path, ca: CertificateAuthority, issued: Issued) -> ssl.SSLContext:
    context = _strict(ssl.create_default_context(ssl.Purpose.CLIENT_AUTH,
                                                 cadata=ca.cert_pem.decode()))
    context.load_cert_chain(*issued.write(str(tmp_path), "server"))
    return context


def test_a_strict_client_accepts_the_serving_certificate(tmp_path: Path) -> None:
    ca = CertificateAuthority()
    client = _strict(ssl.create_default_context(cadata=ca.cert_pem.decode()))
    peer = _handshake(client, _server(tmp_path, ca, ca.issue_server())).getpeercert()
    assert peer is not None
    assert peer["subject"] == ((("commonName", "kube-apiserver"),),)


def test_a_strict_server_accepts_a_client_certificate(tmp_path: Path) -> None:
    ca = CertificateAuthority()
    server = _server(tmp_path, ca, ca.issue_server())
    server.verify_mode = ssl.CERT_REQUIRED
    client = _strict(ssl.create_default_context(cadata=ca.cert_pem.decode()))
    client.load_cert_chain(*ca.issue_client("alice", ["team"]).write(str(tmp_path), "client"))
    end = _handshake(client, server)
    assert end.version() is not None


def test_another_ca_is_still_refused(tmp_path: Path) -> None:
    """The strict flag is not why the two tests above pass: a stranger's chain still fails."""
    ca, other = CertificateAuthority(), CertificateAuthority("another-ca")
    client = _strict(ssl.create_default_context(cadata=other.cert_pem.decode()))
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        _handshake(client, _server(tmp_path, ca, ca.issue_server()))
