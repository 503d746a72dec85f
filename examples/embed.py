"""
Embedding edgemesh in your own program: the builders that ``twistd`` uses take
the reactor as a parameter, so an application can run an edge service bus next
to its own protocols, in its own reactor.

    edgemesh certs init --dir certs                      # once: a CA
    edgemesh certs issue --dir certs --name edge-1       # this node's certificate and key
    python examples/embed.py --node edge-1 --catalog examples/demo-catalog.yaml --tls-dir certs

Links to the router and to other edges use mutual TLS with those files (``--insecure``
instead of ``--tls-dir``: plaintext).  Then, from another shell (with a pod listening on
127.0.0.1:18001, e.g. the demo's):

    curl -H 'Host: hello-edge1' http://127.0.0.1:27781/
"""

from __future__ import annotations

import argparse
import tempfile

from twisted.internet.defer import Deferred
from twisted.internet.task import react

from edgemesh import EdgeConfig, TLSConfig, build_edge, load_manifest


async def main(reactor: object, args: argparse.Namespace) -> None:
    edge = build_edge(
        reactor,
        EdgeConfig(
            node=args.node,
            state_dir=args.state_dir or tempfile.mkdtemp(prefix="edgemesh-embed-"),
            router=args.router,  # None: no router, the catalog alone
            proxy="tcp:27781:interface=127.0.0.1",
            hub="tcp:27701:interface=127.0.0.1",
            catalog=load_manifest(args.catalog),
            # DIR/ca.pem, DIR/NODE.pem, DIR/NODE.key, as `edgemesh certs` writes them.
            tls=None if args.insecure else TLSConfig.from_directory(args.tls_dir, args.node),
        ),
    )
    edge.startService()  # binds the listeners now; raises if a port is taken
    print(f"edge {args.node} serving: {sorted(edge.listeners)}; Ctrl-C to stop")
    try:
        await Deferred()  # your application runs here, in the same reactor
    finally:
        await edge.stopService()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--node", default="edge-1")
    parser.add_argument("--catalog", required=True)
    parser.add_argument("--router", default=None, help="e.g. tcp:127.0.0.1:17700")
    parser.add_argument("--state-dir", default=None)
    parser.add_argument(
        "--tls-dir", default=None, help="CA, certificate and key (`edgemesh certs`)")
    parser.add_argument("--insecure", action="store_true", help="plaintext links (tests only)")
    args = parser.parse_args()
    if bool(args.tls_dir) == args.insecure:
        parser.error("give --tls-dir DIR (mutual TLS between nodes) or --insecure (plaintext)")
    react(lambda reactor: Deferred.fromCoroutine(main(reactor, args)))
