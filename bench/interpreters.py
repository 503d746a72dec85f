"""How fast each interpreter runs edgemesh's own per-request Python, in-process (issue 15).

    PYTHONPATH=. python bench/interpreters.py /usr/bin/python3.11 /work/main/.venv/bin/python

For each interpreter given (each needs the dependencies: a venv of its own), alternating
``--rounds`` times, pinned to one CPU: µs per iteration of a loop that parses a /small
request head with httptools and encodes and decodes its REQUEST frame with the wire codec
(the front's and the link's per-exchange work, no sockets, no reactor).  The best of 15
short runs per round (each fits in a scheduler slice), then the median over rounds.  It
tells apart interpreter *builds* (PGO + LTO or not, static or shared libpython) of the same
version, which callgrind's instruction counts understate: PGO's gain is mostly in branches
and the instruction cache, not fewer instructions.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

ITERATIONS = 5000

CHILD = r"""
import sys, time
import httptools
from edgemesh.wire import FrameDecoder, Limits, encode_request

RAW = b"GET /small HTTP/1.1\r\nHost: svc-edge2\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"
HEADERS = ((b"user-agent", b"wrk"), (b"accept", b"*/*"))


class Head:
    def on_url(self, url): self.url = url
    def on_header(self, name, value): pass
    def on_message_complete(self): pass


def work(n):
    decoder = FrameDecoder(Limits())
    parser = httptools.HttpRequestParser(Head())
    for i in range(n):
        parser.feed_data(RAW)
        decoder.feed(encode_request(i * 2 + 1, True, b"GET", b"/small", b"svc-edge2", HEADERS,
                                    None, "10.0.0.1", "svc-edge2", 80, None, b""))


n = int(sys.argv[1])
best = float("inf")
for _ in range(15):
    started = time.perf_counter()
    work(n)
    best = min(best, time.perf_counter() - started)
print(best * 1e6 / n)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("pythons", nargs="+")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cpu", default="1")
    args = parser.parse_args()
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=repo)
    results: dict[str, list[float]] = {python: [] for python in args.pythons}
    for _ in range(args.rounds):
        for python in args.pythons:
            out = subprocess.run(
                ["taskset", "-c", args.cpu, python, "-c", CHILD, str(ITERATIONS)],
                env=env, capture_output=True, text=True, check=True)
            results[python].append(float(out.stdout))
    first = statistics.median(results[args.pythons[0]])
    print("| interpreter | version | µs per iteration (median of rounds) | ÷ the first |")
    print("|---|---|---:|---:|")
    for python in args.pythons:
        version = subprocess.run([python, "-c", "import sys; print(sys.version.split()[0])"],
                                 capture_output=True, text=True, check=True).stdout.strip()
        median = statistics.median(results[python])
        print(f"| {python} | {version} | {median:.2f} | {median / first:.2f} |")
    print(f"\n{args.rounds} rounds alternating, each the best of 15 × {ITERATIONS} iterations"
          f" on CPU {args.cpu}; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    sys.exit(main())
