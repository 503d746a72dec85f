"""
``edgemesh certs``: a private CA and node certificates for the mesh's mutual TLS.

    edgemesh certs init  --dir DIR                        DIR/ca.pem, DIR/ca.key (0600)
    edgemesh certs issue --dir DIR --name NODE [--router] DIR/NODE.pem, DIR/NODE.key (0600)
    edgemesh certs show  FILE                             who a certificate names, until when

Give each node ``ca.pem`` and its own two files (``--tls-dir`` reads them by the node's
name), never ``ca.key``: whoever holds it can make any node's certificate.
"""

from __future__ import annotations

import argparse
import sys

from ..security._certs import (
    CA_DAYS,
    NODE_DAYS,
    CertError,
    init_ca_dir,
    issue_into_dir,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgemesh certs",
        description="A private CA and node certificates for the mutual TLS between mesh nodes.",
        epilog="Give each node ca.pem and its own NODE.pem and NODE.key; keep ca.key off the nodes.",
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
    issue.add_argument("--days", type=int, default=NODE_DAYS, help=f"validity (default {NODE_DAYS})")
    issue.add_argument("--out", default=None,
                       help="write NAME.pem, NAME.key and a copy of ca.pem here instead of --dir")
    issue.add_argument("--force", action="store_true", help="replace existing files")

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
    print(f"valid:     {cert.not_valid_before_utc:%Y-%m-%d %H:%M}Z .. {cert.not_valid_after_utc:%Y-%m-%d %H:%M}Z")
    try:
        identity = identity_of(cert)
    except IdentityError as error:
        print(f"identity:  none ({error})")
    else:
        print(f"identity:  {identity.name} ({identity.role or 'any role'})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.action == "init":
            cert, key = init_ca_dir(args.dir, name=args.name, days=args.days, force=args.force)
            print(f"CA certificate {cert}")
            print(f"CA key         {key} (0600: keep it off the nodes)")
        elif args.action == "issue":
            cert, key = issue_into_dir(
                args.dir, args.name, router=args.router, days=args.days, out=args.out, force=args.force
            )
            role = "router" if args.router else "node"
            print(f"{role} {args.name}: certificate {cert}")
            print(f"{role} {args.name}: key         {key} (0600)")
        else:
            return _show(args.file)
    except CertError as error:
        print(f"edgemesh certs {args.action}: {error}", file=sys.stderr)
        return 1
    return 0
