"""What the byte-level fuzz tests share (the HTTP front, the pod client, the DNS server):
mutations of a valid seed (flips, insertions of bytes and of the tokens that matter, deletions,
repeats) and reads cut at random points (docs/fuzzing.md)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

FUZZ = settings(
    # CI runs a modest number; a longer run: EDGEMESH_FUZZ_EXAMPLES=200000 (docs/fuzzing.md).
    max_examples=int(os.environ.get("EDGEMESH_FUZZ_EXAMPLES", "250")),
    deadline=2000,
    suppress_health_check=[HealthCheck.too_slow],
)
"""The settings of the HTTP front's, the pod client's and the DNS server's fuzz tests."""

Mutation = tuple[str, int, "int | bytes"]

SEPARATORS: tuple[bytes, ...] = (
    b"\r", b"\n", b"\x00", b" ", b"\t", b",", b"\x0b", b"\r\n", b"\r\n\r\n",
)
"""Bytes that end, split or fold lines and fields."""


def mutations(tokens: Sequence[bytes]) -> st.SearchStrategy[Mutation]:
    """One mutation of a seed: ``tokens`` are the fields and lines worth inserting whole
    (framing fields, a message's start line) besides SEPARATORS."""
    return st.one_of(
        st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(1, 255)),
        st.tuples(st.just("insert"), st.integers(0, 10_000), st.binary(min_size=1, max_size=8)),
        st.tuples(st.just("insert"), st.integers(0, 10_000),
                  st.sampled_from([*SEPARATORS, *tokens])),
        st.tuples(st.just("delete"), st.integers(0, 10_000), st.integers(1, 16)),
        st.tuples(st.just("repeat"), st.integers(0, 10_000), st.integers(1, 64)),
    )


def mutate(seed: bytes, changes: Sequence[Mutation]) -> bytes:
    data = bytearray(seed)
    for kind, where, what in changes:
        at = where % (len(data) + 1)
        if kind == "flip" and data:
            assert isinstance(what, int)
            data[at % len(data)] ^= what
        elif kind == "insert":
            assert isinstance(what, bytes)
            data[at:at] = what
        elif kind == "delete":
            assert isinstance(what, int)
            del data[at : at + what]
        elif kind == "repeat":
            assert isinstance(what, int)
            data[at:at] = data[at : at + what]
    return bytes(data)


def split(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    """``data`` as the reads that ``cuts`` (positions, modulo its length) make of it."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]
