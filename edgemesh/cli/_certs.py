"""
``edgemesh certs``: a private CA and node certificates for the mesh's mutual TLS.

    edgemesh certs init  --dir DIR                        DIR/ca.pem, DIR/ca.key (0600)
    edgemesh certs issue --dir DIR --name NODE [--router] DIR/NODE.pem, DIR/NODE.key (0600)
    edgemesh certs show  FILE                             who a certificate names, until when
    edgemesh certs trust --dir DIR [--add CA] [--remove CA]  the CAs in DIR/ca.pem (a bundle)

Give each node ``ca.pem`` and its own two files (``--tls-dir`` reads them by the node's
name), never ``ca.key``: whoever holds it can make any node's certificate.  ``issue --out``
adds its CA to an existing ``ca.pem`` and never drops one; ``trust`` adds and removes CAs
for a CA rotation (docs/security.md).
"""

from __future__ import annotations

import argparse
import os
import sys

from cryptography import x509

from ..security.certs import (
    CA_DAYS,
    CA_FILE,
    NODE_DAYS,
    SHORT_FINGERPRINT,
    CertError,
    TrustChange,
    change_trust,
    describe_ca,
    fingerprint,
    init_ca_dir,
    issue_node_files,
    node_certificates,
    parse_fingerprint,
    read_cas,
    signed_by,
)

RELOAD_HINT = "reload the node: kill -HUP its twistd, or wait for --tls-reload-interval"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgemesh certs",
        description="A private CA and node certificates for the mutual TLS between mesh nodes.",
        epilog="Give each node ca.pem and its own NODE.pem and NODE.key; "
        "keep ca.key off the nodes.",
    )
    commands = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    init = commands.add_parser("init", help="make a CA: DIR/ca.pem and DIR/ca.key")
    init.add_argument("--dir", required=True, help="directory for the CA (created 0700 if missing)")
    init.add_argument("--name", default="edgemesh CA", help="the CA's common name")
    init.add_argument("--days", type=int, default=CA_DAYS, help=f"validity (default {CA_DAYS})")
    init.add_argument("--force", action="store_true", help="replace an existing CA")

    issue = commands.add_parser(
        "issue", help="make a node's (or the router's) key and certificate, signed by the CA"
    )
    issue.add_argument("--dir", required=True, help="the CA's directory (from `certs init`)")
    issue.add_argument("--name", required=True,
                       help="the node name, as in the catalog (or the router's --node name)")
    issue.add_argument("--router", action="store_true", help="a router certificate")
    issue.add_argument(
        "--days", type=int, default=NODE_DAYS, help=f"validity (default {NODE_DAYS})")
    issue.add_argument("--out", default=None,
                       help="write NAME.pem and NAME.key here instead of --dir, and add the CA to "
                       "OUT/ca.pem (an existing bundle keeps every CA it holds)")
    issue.add_argument(
        "--force", action="store_true", help="replace existing NAME.pem and NAME.key")

    trust = commands.add_parser(
        "trust", help="list, add or remove the CAs a node trusts (its ca.pem bundle)",
        description="The CAs in a node's bundle (DIR/ca.pem, or --bundle FILE): listed without "
        "--add/--remove.  The file is rewritten atomically, keeping its mode, only when it "
        "changes; the node uses it after a reload (SIGHUP or its periodic check).",
    )
    where = trust.add_mutually_exclusive_group(required=True)
    where.add_argument("--dir", help="a node's --tls-dir: its bundle is DIR/ca.pem")
    where.add_argument("--bundle", help="the bundle file itself (a node's --ca FILE)")
    trust.add_argument("--add", action="append", default=[], metavar="CA",
                       help="trust the CA certificate(s) in this PEM file (or CA-DIR/ca.pem); "
                       "repeatable; a CA already there is not added twice")
    trust.add_argument("--remove", action="append", default=[], metavar="CA",
                       help="stop trusting the CA(s) in this PEM file, or the CA with this "
                       f"SHA-256 fingerprint (as listed, or its first {SHORT_FINGERPRINT} hex "
                       "digits or more, as printed when added); repeatable")
    trust.add_argument("--force", action="store_true",
                       help="remove even a CA that signs a node certificate in the same directory")

    show = commands.add_parser("show", help="print the identity and validity of a certificate")
    show.add_argument("file")
    return parser


def _show(path: str) -> int:
    from cryptography import x509

    from ..security import IdentityError, identity_of

    try:
        with open(path, "rb") as handle:
            cert = x509.load_pem_x509_certificate(handle.read(1 << 20))
    except (OSError, ValueError) as error:
        print(f"edgemesh certs show: {path}: {error}", file=sys.stderr)
        return 1
    print(f"subject:   {cert.subject.rfc4514_string()}")
    print(f"issuer:    {cert.issuer.rfc4514_string()}")
    print(f"valid:     {cert.not_valid_before_utc:%Y-%m-%d %H:%M}Z .. "
          f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M}Z")
    try:
        identity = identity_of(cert)
    except IdentityError as error:
        print(f"identity:  none ({error})")
    else:
        print(f"identity:  {identity.name} ({identity.role or 'any role'})")
    return 0


def _removal(argument: str) -> list[x509.Certificate | str]:
    if os.path.exists(argument):
        return list(read_cas(argument))
    value = parse_fingerprint(argument)
    if value is None:
        raise CertError(f"--remove {argument}: neither a PEM file nor a SHA-256 fingerprint "
                        f"(64 hex digits, or the first {SHORT_FINGERPRINT} or more)")
    return [value]


def _print_change(change: TrustChange) -> None:
    path = change.path
    for cert in change.added:
        print(f"{path}: added        {describe_ca(cert)}")
    for cert in change.already:
        print(f"{path}: already has  {describe_ca(cert)}")
    for cert in change.removed:
        print(f"{path}: removed      {describe_ca(cert)}")
    for value in change.absent:
        print(f"{path}: does not hold sha256 {value[:SHORT_FINGERPRINT]} (nothing to remove)")
    count = len(change.bundle)
    noun = "CA" if count == 1 else "CAs"
    if change.changed:
        print(f"{path}: now trusts {count} {noun}; {RELOAD_HINT}")
    else:
        print(f"{path}: unchanged ({count} {noun})")


def _trust(args: argparse.Namespace) -> int:
    path = args.bundle or os.path.join(args.dir, CA_FILE)
    if not args.add and not args.remove:
        return _list(path)
    add = [cert for argument in args.add for cert in read_cas(argument)]
    remove = [item for argument in args.remove for item in _removal(argument)]
    _print_change(change_trust(path, add=add, remove=remove, force=args.force))
    return 0


def _list(path: str) -> int:
    cas = read_cas(path)
    directory = os.path.dirname(os.path.abspath(path))
    nodes = list(node_certificates(directory, path))
    print(f"{path}: {len(cas)} CA{'' if len(cas) == 1 else 's'}")
    for index, cert in enumerate(cas, 1):
        print(f"{index}. {cert.subject.rfc4514_string()}")
        print(f"   sha256 {fingerprint(cert)}")
        print(f"   valid  {cert.not_valid_before_utc:%Y-%m-%d %H:%M}Z .. "
              f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M}Z")
        signs = [os.path.basename(p) for p, node in nodes if signed_by(node, cert)]
        if signs:
            print(f"   signs  {', '.join(signs)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.action == "init":
            cert, key = init_ca_dir(args.dir, name=args.name, days=args.days, force=args.force)
            print(f"CA certificate {cert}")
            print(f"CA key         {key} (0600: keep it off the nodes)")
        elif args.action == "issue":
            issued = issue_node_files(
                args.dir, args.name, router=args.router, days=args.days,
                out=args.out, force=args.force
            )
            role = "router" if args.router else "node"
            print(f"{role} {args.name}: certificate {issued.cert}")
            print(f"{role} {args.name}: key         {issued.key} (0600)")
            if issued.bundle is not None:
                _print_change(issued.bundle)
        elif args.action == "trust":
            return _trust(args)
        else:
            return _show(args.file)
    except CertError as error:
        print(f"edgemesh certs {args.action}: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # a read-only mount, a full disk: one line, not a traceback
        where = f"{error.filename}: " if error.filename else ""
        print(f"edgemesh certs {args.action}: {where}{error.strerror or error}", file=sys.stderr)
        return 1
    return 0
