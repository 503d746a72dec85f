"""``python -m edgemesh.testing``: serve the test Kubernetes API server until interrupted.

For manual runs, for kubectl and for tests in other processes.  It prints ``serving <url>``
once listening (a parent waits for that line), writes a kubeconfig if asked, and creates the
objects of the YAML documents given with ``--load``.  A new server has what a new cluster has
(the system namespaces, the default/kubernetes Service) unless ``--no-bootstrap``.  With
``--tls`` it serves HTTPS with a fresh CA and requires a client certificate (CN = user,
O = groups) or a bearer token; ``--policy`` says who may do what.  The Python controls
(restart, faults) need the in-process API: :class:`edgemesh.testing.KubeApiServer` /
``ThreadedKubeApiServer``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import yaml

from ._apiserver import KubeApiServer
from ._auth import ADMIN_GROUP, UserInfo, load_policy
from ._resources import StatusError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m edgemesh.testing", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback)")
    parser.add_argument("--port", type=int, default=0, help="port (0: any free port)")
    parser.add_argument("--token", default=None,
                        help="require this bearer token (an admin's, in system:masters)")
    parser.add_argument("--user-token", action="append", default=[], metavar="TOKEN=USER[:G,..]",
                        help="a bearer token of USER in groups G (repeatable)")
    parser.add_argument("--tls", action="store_true",
                        help="serve HTTPS with a new CA; require a client certificate or token")
    parser.add_argument("--pki-dir", default=None, metavar="DIR",
                        help="with --tls: write ca.crt, and client.crt/client.key (0600) of "
                        "the kubeconfig's user, here")
    parser.add_argument("--policy", default=None, metavar="FILE",
                        help="RBAC YAML: who may do which verb on which resource "
                        "(default: everyone authenticated may do everything)")
    parser.add_argument("--kubeconfig", default=None, metavar="PATH",
                        help="write a kubeconfig to this path (0600: it holds the client key)")
    parser.add_argument("--kubeconfig-user", default=None, metavar="USER",
                        help="with --tls: the kubeconfig's client certificate is USER's "
                        "(default: an admin in system:masters)")
    parser.add_argument("--kubeconfig-group", action="append", default=[], metavar="GROUP",
                        help="a group (O) of --kubeconfig-user's certificate (repeatable)")
    parser.add_argument("--no-bootstrap", action="store_true",
                        help="start empty: no system namespaces, no default/kubernetes "
                        "Service, objects may be created in namespaces that do not exist")
    parser.add_argument("--history-size", type=int, default=1000, help="watch history length")
    parser.add_argument("--bookmark-interval", type=float, default=60.0,
                        help="seconds between BOOKMARK events (0: never)")
    parser.add_argument("--expired-form", choices=("event", "status"), default="event",
                        help="how a too-old watch fails: ERROR event or HTTP 410")
    parser.add_argument("--load", action="append", default=[], metavar="FILE",
                        help="YAML file of objects to create at start (repeatable)")
    return parser


def _user_tokens(specs: Sequence[str]) -> dict[str, UserInfo]:
    tokens: dict[str, UserInfo] = {}
    for spec in specs:
        token, _, who = spec.partition("=")
        user, _, groups = who.partition(":")
        if not token or not user:
            raise SystemExit(f"--user-token {spec!r}: expected TOKEN=USER[:GROUP,...]")
        tokens[token] = UserInfo(user, tuple(g for g in groups.split(",") if g))
    return tokens


def main(argv: Sequence[str] | None = None) -> int:
    options = _parser().parse_args(argv)
    from twisted.internet import reactor

    try:
        policy = load_policy(options.policy) if options.policy else None
    except (OSError, ValueError, yaml.YAMLError) as error:
        print(f"--policy {options.policy}: {error}", file=sys.stderr)
        return 2
    server = KubeApiServer(
        reactor,
        host=options.host,
        port=options.port,
        token=options.token,
        tokens=_user_tokens(options.user_token),
        tls=options.tls,
        policy=policy,
        bootstrap=not options.no_bootstrap,
        history_size=options.history_size,
        bookmark_interval=options.bookmark_interval or None,
        expired_form=options.expired_form,
    )
    server.start()
    for path in options.load:
        with open(path, encoding="utf-8") as handle:
            for document in yaml.safe_load_all(handle):
                if not document:
                    continue
                try:
                    server.apply(document)
                except (StatusError, KeyError) as error:
                    print(f"{path}: cannot load object: {error}", file=sys.stderr)
                    return 2
    if options.pki_dir and server.ca is not None:
        os.makedirs(options.pki_dir, exist_ok=True)
        server.ca.write(os.path.join(options.pki_dir, "ca.crt"))
        user = options.kubeconfig_user or "edgemesh-admin"
        groups = options.kubeconfig_group if options.kubeconfig_user else [ADMIN_GROUP]
        server.ca.issue_client(user, groups).write(options.pki_dir, "client")
    if options.kubeconfig:
        server.write_kubeconfig(options.kubeconfig, user=options.kubeconfig_user,
                                groups=options.kubeconfig_group)
    print(f"serving {server.url}", flush=True)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
