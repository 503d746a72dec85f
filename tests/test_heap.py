"""roles/_heap.py: the fixed mmap threshold (``--malloc-mmap-threshold``) and its option.

The allocation test runs in a fresh interpreter: glibc's threshold is process-wide and only
moves upwards, so the test process's own history would decide the answer."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from twisted.python import usage

from edgemesh.roles import edge_tap, router_tap
from edgemesh.roles._heap import DEFAULT_MMAP_THRESHOLD, set_mmap_threshold
from edgemesh.transports._io import LARGE_BUFFER
from edgemesh.transports._upconnection import MAX_READ

ROOT = Path(__file__).resolve().parents[1]

_glibc = hasattr(ctypes.CDLL(None), "mallinfo2")
needs_glibc = pytest.mark.skipif(not _glibc, reason="glibc's mallinfo2 (2.33+) needed")

# A link's read (LARGE_BUFFER) freed, then another: mapped again, or from the heap?
_PROBE = """
import ctypes, json, sys
from edgemesh.roles._heap import set_mmap_threshold

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
if sys.argv[1] != "0":
    assert set_mmap_threshold(int(sys.argv[1]))
size = int(sys.argv[2])
mapped = []
for _ in range(3):
    before = libc.mallinfo2().hblks
    block = bytes(size)
    mapped.append(libc.mallinfo2().hblks - before)
    del block
print(json.dumps(mapped))
"""


def _mapped(threshold: int, size: int) -> list[int]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("GLIBC_TUNABLES", None)
    done = subprocess.run([sys.executable, "-c", _PROBE, str(threshold), str(size)],
                          capture_output=True, text=True, env=env, timeout=60, check=True)
    result: list[int] = json.loads(done.stdout)
    return result


BLOCK = 4 << 20
"""Larger than any free space a fresh interpreter's heap has: the heap must grow for it."""


@needs_glibc
def test_glibcs_default_threshold_follows_what_was_freed() -> None:
    # The behaviour the option exists for: once a mapped block was freed, glibc raises its
    # threshold (and its trim threshold, to twice that) and grows the heap for the next.
    assert _mapped(0, BLOCK) == [1, 0, 0]


@needs_glibc
def test_fixed_threshold_stays_where_it_was_set() -> None:
    assert _mapped(DEFAULT_MMAP_THRESHOLD, BLOCK) == [1, 1, 1]


@needs_glibc
def test_fixed_threshold_leaves_pod_reads_on_the_heap() -> None:
    # The pod connections' largest read stays a heap block: no page faults per read.
    assert _mapped(DEFAULT_MMAP_THRESHOLD, MAX_READ) == [0, 0, 0]


def test_zero_leaves_glibc_alone() -> None:
    assert set_mmap_threshold(0) is False


def test_option_default_and_values(tmp_path: Path) -> None:
    argv = ["--insecure", "--node", "edge-1", "--state-dir", str(tmp_path)]
    options = edge_tap.Options()  # type: ignore[no-untyped-call]
    options.parseOptions(argv)  # type: ignore[no-untyped-call]
    assert options["malloc-mmap-threshold"] == DEFAULT_MMAP_THRESHOLD == LARGE_BUFFER
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text("apiVersion: v1\nkind: Node\nmetadata: {name: edge-1}\n")
    for text, value in (("0", 0), ("128KiB", 128 << 10), ("32MiB", 32 << 20)):
        options = router_tap.Options()  # type: ignore[no-untyped-call]
        options.parseOptions(  # type: ignore[no-untyped-call]
            ["--insecure", "--catalog", str(catalog), "--malloc-mmap-threshold", text])
        assert options["malloc-mmap-threshold"] == value


@pytest.mark.parametrize("text", ["33MiB", "-1", "lots", ""])
def test_option_refuses_what_glibc_would(tmp_path: Path, text: str) -> None:
    options = edge_tap.Options()  # type: ignore[no-untyped-call]
    with pytest.raises(usage.UsageError, match="^--malloc-mmap-threshold: "):
        options.parseOptions(  # type: ignore[no-untyped-call]
            ["--insecure", "--node", "edge-1", "--state-dir", str(tmp_path),
             "--malloc-mmap-threshold", text])
