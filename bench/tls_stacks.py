"""CPU per MiB of TLS 1.3 bulk data through memory BIOs, in one process, for the two TLS stacks
a link could use: pyOpenSSL (cryptography's bundled OpenSSL, through ``_LinkTLS``'s own
``_Direct``) and the standard library's ``ssl`` (the system's OpenSSL, its ``MemoryBIO``s).

    PYTHONPATH=. /work/main/.venv/bin/python bench/tls_stacks.py [--mib 256] [--rounds 5]

No sockets and no mesh: a client and a server connection shake hands through memory, then
the client sends ``--mib`` MiB in 64 KiB writes, each drained from its send BIO at once, and
the server decrypts each drained piece into one reused buffer (records read one
``SSL_read`` at a time; with ``_Direct``, the drained piece lent as the receive BIO).
Printed: each stack's CPU (process time) per MiB, sender and receiver together, median of
``--rounds``, alternating the stacks.  It answers whether moving the links to ``ssl`` could
pay before any code is written (issue 15's mTLS row); the links' per-frame Python is not in
it.
"""

from __future__ import annotations

import argparse
import datetime
import ssl
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from edgemesh.security._links import _Direct, _new_buffer

CHUNK = 64 * 1024
SUITE = "TLS_AES_128_GCM_SHA256"  # the links' first suite (security/_material.py)
STDLIB_SUITE = "TLS_AES_256_GCM_SHA384"
"""What ``ssl`` negotiates: Python 3.11's ``ssl`` has no call that sets TLS 1.3 suites, and
OpenSSL puts AES-256 first (only its configuration file could change that, process-wide)."""


def _pki(directory: Path) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def run_stdlib(cert: str, key: str, mib: int) -> float:
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    for ctx in (server_ctx, client_ctx):
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_side=False)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side in (client, server):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    cipher = client.cipher()
    assert cipher is not None and cipher[0] == STDLIB_SUITE, cipher
    payload = memoryview(bytes(CHUNK))
    buffer = bytearray(CHUNK + 1024)
    started = time.process_time()
    for _ in range(mib * (1 << 20) // CHUNK):
        client.write(payload)
        s_in.write(c_out.read())
        while True:
            try:
                if not server.read(len(buffer), buffer):
                    break
            except ssl.SSLWantReadError:
                break
    return (time.process_time() - started) / mib


def run_pyopenssl(cert: str, key: str, mib: int, suite: str = SUITE) -> float:
    server_ctx = SSL.Context(SSL.TLS_METHOD)
    server_ctx.use_certificate_file(cert)
    server_ctx.use_privatekey_file(key)
    client_ctx = SSL.Context(SSL.TLS_METHOD)
    for ctx in (server_ctx, client_ctx):
        ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
        ctx.set_tls13_ciphersuites(suite.encode())
    client, server = SSL.Connection(client_ctx, None), SSL.Connection(server_ctx, None)
    client.set_connect_state()
    server.set_accept_state()
    for _ in range(10):
        for side in (client, server):
            try:
                side.do_handshake()
            except SSL.WantReadError:
                pass
        for src, dst in ((client, server), (server, client)):
            try:
                dst.bio_write(src.bio_read(1 << 20))
            except SSL.WantReadError:
                pass
    assert client.get_cipher_name() == suite, client.get_cipher_name()
    # The links' own driver (security/_links.py): whole 64 KiB writes, the send BIO drained
    # into a buffer of its own, the drained records lent to the receiver as its receive BIO,
    # SSL_read into one buffer.
    assert _Direct.usable(client) and _Direct.usable(server)
    sender, receiver = _Direct(client), _Direct(server)
    sender.whole_writes()
    pinned = sender.ffi.from_buffer(bytes(CHUNK))
    buffer = _new_buffer()
    size = len(buffer)
    started = time.process_time()
    for _ in range(mib * (1 << 20) // CHUNK):
        sender.write_from(pinned, 0, CHUNK)
        records = sender.drain()
        assert records is not None and receiver.lend(records)
        try:
            while receiver.read_into(buffer, 0, size) > 0:
                pass
        finally:
            receiver.take_back()
    return (time.process_time() - started) / mib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    cert, key = _pki(Path(tempfile.mkdtemp(prefix="edgemesh-tls-stacks-")))
    runs: dict[str, Any] = {
        f"pyOpenSSL, {SUITE}": run_pyopenssl,
        f"pyOpenSSL, {STDLIB_SUITE}": lambda c, k, m: run_pyopenssl(c, k, m, STDLIB_SUITE),
        f"ssl, {STDLIB_SUITE}": run_stdlib,
    }
    results: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            results[name].append(run(cert, key, args.mib) * 1e3)
    print(f"{ssl.OPENSSL_VERSION} (ssl) / {SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()}"
          f" (pyOpenSSL); {args.mib} MiB in {CHUNK // 1024} KiB writes")
    for name, values in results.items():
        print(f"  {name:32}: {statistics.median(values):.3f} ms per MiB, sender + receiver "
              f"(rounds: {', '.join(f'{v:.3f}' for v in values)})")


if __name__ == "__main__":
    main()
