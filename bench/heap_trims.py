"""Is a node's RssAnon growth under load memory in use, or freed memory glibc has not given
back yet?  The bench mesh (router, two edges; ``--tls`` for mutual-TLS links) with the heap
trimmed every ``--interval`` seconds (``--malloc-trim-interval``); rounds of wrk on one path,
and each node's RssAnon sampled right after the round and again once a trim has run.

    python bench/heap_trims.py --path p3-edge-cloud --rounds 24 --seconds 20 --tls

The session-37 figures are in bench/results-2026-12-07.md section 10.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time

import harness as h
from soak import router_trims, start_wrk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", default="p3-edge-cloud", choices=sorted(h.TARGETS))
    parser.add_argument("--body", default="/big", choices=["/small", "/big"])
    parser.add_argument("--rounds", type=int, default=24)
    parser.add_argument("--seconds", type=int, default=20, help="seconds of wrk per round")
    parser.add_argument("--conns", type=int, default=8)
    parser.add_argument("--interval", type=float, default=2.0,
                        help="--malloc-trim-interval of every node (seconds)")
    parser.add_argument("--tls", action="store_true", help="mutual-TLS links")
    args = parser.parse_args()
    h.CFG["MESH_ARGS"] = f"{h.CFG['MESH_ARGS']} --malloc-trim-interval {args.interval:g}"
    base = tempfile.mkdtemp(prefix="edgemesh-trims-")
    try:
        bodies = h.bench_bodies()
        tmp = h.run_dir(base, "mesh", bodies)
        h.start_origin(tmp)
        procs = h.start_mesh(tmp, 0, args.tls)
        h.check_until_ready(h.TARGETS[args.path], bodies, [args.body])
        print(f"| round | {' | '.join(f'{n} right after → after a trim (MiB)' for n in procs)} |")
        print("|---" * (1 + len(procs)) + "|")
        for index in range(args.rounds):
            start_wrk(h.TARGETS[args.path], args.body, args.conns, args.seconds).communicate(
                timeout=args.seconds + 60)
            after = {n: h.status_kib(p.pid, "RssAnon") / 1024 for n, p in procs.items()}
            time.sleep(args.interval * 2 + 0.5)  # a trim has run since
            trimmed = {n: h.status_kib(p.pid, "RssAnon") / 1024 for n, p in procs.items()}
            print(f"| {index} | "
                  + " | ".join(f"{after[n]:.1f} → {trimmed[n]:.1f}" for n in procs) + " |",
                  flush=True)
        print(router_trims())
    finally:
        h.stop_all()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
