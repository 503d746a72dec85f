"""``python -m edgemesh.testing``: serve the test Kubernetes API server until interrupted.

For manual runs and for tests in other processes.  It prints ``serving <url>`` once listening
(a parent waits for that line), writes a kubeconfig if asked, and creates the objects of the
YAML documents given with ``--load``.  The Python controls (restart, faults) need the
in-process API: :class:`edgemesh.testing.KubeApiServer` / ``ThreadedKubeApiServer``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import yaml

from ._apiserver import KubeApiServer
from ._resources import StatusError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m edgemesh.testing", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback)")
    parser.add_argument("--port", type=int, default=0, help="port (0: any free port)")
    parser.add_argument("--token", default=None, help="require this bearer token")
    parser.add_argument("--kubeconfig", default=None, help="write a kubeconfig to this path")
    parser.add_argument("--history-size", type=int, default=1000, help="watch history length")
    parser.add_argument("--bookmark-interval", type=float, default=60.0,
                        help="seconds between BOOKMARK events (0: never)")
    parser.add_argument("--expired-form", choices=("event", "status"), default="event",
                        help="how a too-old watch fails: ERROR event or HTTP 410")
    parser.add_argument("--load", action="append", default=[], metavar="FILE",
                        help="YAML file of objects to create at start (repeatable)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    options = _parser().parse_args(argv)
    from twisted.internet import reactor

    server = KubeApiServer(
        reactor,
        host=options.host,
        port=options.port,
        token=options.token,
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
    if options.kubeconfig:
        server.write_kubeconfig(options.kubeconfig)
    print(f"serving {server.url}", flush=True)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
