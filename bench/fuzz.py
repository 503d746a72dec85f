#!/usr/bin/env python3
"""The longer fuzz run (docs/fuzzing.md): the hypothesis fuzz tests of the HTTP front, the
frame decoder and the envelope link, with many more inputs than CI gives them.

    python3 bench/fuzz.py                      # 20 000 inputs per test: ~6 min on 2 cores
    python3 bench/fuzz.py --examples 200000    # an hour or so
    python3 bench/fuzz.py --seed 7             # a reproducible run

Same as ``EDGEMESH_FUZZ_EXAMPLES=N python -m pytest TESTS --hypothesis-show-statistics``;
this adds the summary: per test, how many inputs ran, how many failed, how long it took.
Each input is bounded in time by the test's hypothesis deadline (an input slower than that
is a failure).  Exit status 1 when any test failed.  Run it with the project's Python
(``.venv/bin/python`` after ``dev.py test``, or /work/venv/bin/python).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = [
    "tests/test_front_hardening.py::test_16_random_bytes",
    "tests/test_front_hardening.py::test_16_mutated_seed_corpus",
    "tests/test_wire_frames.py::test_random_bytes",
    "tests/test_wire_frames.py::test_random_payloads_of_every_frame_type",
    "tests/test_wire_frames.py::test_mutated_corpus",
    "tests/test_wire_frames.py::test_garbage_after_valid_frames",
    "tests/test_fuzz_links.py::test_frames_in_any_order",
    "tests/test_fuzz_links.py::test_mutated_frames_after_a_hello",
    "tests/test_fuzz_links.py::test_random_bytes_after_a_hello",
    "tests/test_fuzz_upstream.py::test_mutated_pod_responses",
    "tests/test_fuzz_upstream.py::test_random_bytes_as_a_pod_response",
    "tests/test_fuzz_dns.py::test_mutated_queries_over_udp",
    "tests/test_fuzz_dns.py::test_random_datagrams",
    "tests/test_fuzz_dns.py::test_mutated_query_streams_over_tcp",
    # Both ways the TLS layer runs (pyOpenSSL's C binding, its public API): two tests.
    "tests/test_tls.py::test_link_tls_bytes_changed_anywhere_never_reach_the_link",
]
_HEADER = re.compile(r"^(tests/\S+::\S+):$")
_COUNTS = re.compile(r"(\d+) passing, (\d+) failing, and (\d+) invalid")
_PHASE = re.compile(r"during (\w+) phase \(([\d.]+) seconds\)")


def summarize(output: str) -> list[tuple[str, int, int, int, float]]:
    """(test, passing, failing, invalid, seconds) from hypothesis' statistics."""
    rows: dict[str, list[float]] = {}
    current = None
    for line in output.splitlines():
        if match := _HEADER.match(line.strip()):
            current = match.group(1)
            rows[current] = [0, 0, 0, 0.0]
        elif current is not None and (match := _PHASE.search(line)):
            rows[current][3] += float(match.group(2))
        elif current is not None and (match := _COUNTS.search(line)):
            for index in range(3):
                rows[current][index] += int(match.group(index + 1))
    return [(name, int(r[0]), int(r[1]), int(r[2]), r[3]) for name, r in rows.items()]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--examples", type=int, default=20_000, help="inputs per test (default 20000)")
    parser.add_argument(
        "--seed", type=int, default=None, help="hypothesis seed, for a reproducible run")
    parser.add_argument(
        "-k", dest="select", default=None, help="only the tests whose id contains this")
    args = parser.parse_args()
    tests = [t for t in TESTS if args.select is None or args.select in t]
    env = {**os.environ, "EDGEMESH_FUZZ_EXAMPLES": str(args.examples),
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               "--hypothesis-show-statistics", *tests]
    if args.seed is not None:
        command.append(f"--hypothesis-seed={args.seed}")
    print(f"fuzz: {len(tests)} tests x {args.examples} inputs: {' '.join(command[1:])}", flush=True)
    started = time.monotonic()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    took = time.monotonic() - started
    rows = summarize(result.stdout)
    width = max((len(r[0]) for r in rows), default=10)
    print(f"{'test':{width}}  {'inputs':>8}  {'failing':>7}  {'invalid':>7}  {'seconds':>8}")
    for name, passing, failing, invalid, seconds in rows:
        print(
            f"{name:{width}}  {passing + failing:>8}  {failing:>7}  {invalid:>7}  {seconds:>8.1f}")
    total = sum(r[1] + r[2] for r in rows)
    failed = sum(r[2] for r in rows)
    print(f"{'total':{width}}  {total:>8}  {failed:>7}  {'':>7}  {took:>8.1f}")
    if result.returncode != 0:
        print(result.stdout[-20000:])
        print(result.stderr[-5000:], file=sys.stderr)
        print(f"fuzz: FAILED (pytest exit {result.returncode})", file=sys.stderr)
        return 1
    print("fuzz: no failure")
    return 0


if __name__ == "__main__":
    sys.exit(main())
