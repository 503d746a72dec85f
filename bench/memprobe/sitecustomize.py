"""MEM_PROBE=1 (bench/harness.py): what a mesh process holds at its peak RSS.

harness.py puts this directory first on the mesh processes' PYTHONPATH (as bench/gcprobe):
Python imports it at start-up as ``sitecustomize``.  Nothing runs in the hot path: a
``SIGALRM`` interval timer (every ``EDGEMESH_MEM_PROBE_TICK`` s, default 0.02) reads
/proc/self/status; at each new peak of RssAnon (by 128 KiB or more) it notes glibc's
``mallinfo2`` (heap in use, free but kept, mmapped chunks) and, with
``EDGEMESH_MEM_PROBE_TRACE=1``, a tracemalloc snapshot's top allocation sites (tracing starts
``EDGEMESH_MEM_PROBE_AFTER`` s after start-up, default 4, so start-up is not traced; the
traces' own memory is malloc'd and counted in RSS: read the RSS of a traced run as
inflated).  Each peak rewrites ``$EDGEMESH_MEM_PROBE/<pid>.json`` atomically; the file keeps
the first record after tracing starts (the baseline) and the highest peak.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import time
from collections import deque
from typing import Any

_DIR = os.environ.get("EDGEMESH_MEM_PROBE", "")
_TICK = float(os.environ.get("EDGEMESH_MEM_PROBE_TICK", "0.02"))
_AFTER = float(os.environ.get("EDGEMESH_MEM_PROBE_AFTER", "4"))
_TRACE = os.environ.get("EDGEMESH_MEM_PROBE_TRACE", "") == "1"
_STEP_KIB = 128
_TOP = 40


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


_state: dict[str, Any] = {"t0": time.monotonic(), "peak": 0, "base": None, "best": None,
                          "started": False, "samples": deque(maxlen=3000)}
try:
    _libc = ctypes.CDLL(None)
    _libc.mallinfo2.restype = _Mallinfo2
except (OSError, AttributeError):
    _libc = None


def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status", "rb") as f:
        for line in f:
            if line.startswith((b"RssAnon", b"VmRSS", b"VmHWM")):
                key, value = line.split(b":", 1)
                out[key.decode()] = int(value.split()[0])
    return out


def _record(status: dict[str, int]) -> dict[str, Any]:
    rec: dict[str, Any] = {"t": round(time.monotonic() - _state["t0"], 3), **status}
    if _libc is not None:
        m = _libc.mallinfo2()
        rec["malloc"] = {"heap_kib": m.arena // 1024, "in_use_kib": m.uordblks // 1024,
                         "free_kib": m.fordblks // 1024, "mmapped_kib": m.hblkhd // 1024,
                         "mmapped_chunks": m.hblks, "top_pad_kib": m.keepcost // 1024}
    import tracemalloc
    if tracemalloc.is_tracing():
        current, peak = tracemalloc.get_traced_memory()
        rec["traced_kib"] = current // 1024
        rec["traced_peak_kib"] = peak // 1024  # exact: the most ever traced at once
        snap = tracemalloc.take_snapshot()
        stats = snap.statistics("traceback")[:_TOP]
        rec["top"] = [{"kib": round(s.size / 1024, 1), "count": s.count,
                       "where": [f"{fr.filename.rsplit('/', 2)[-1]}:{fr.lineno}"
                                 for fr in s.traceback]} for s in stats]
        sizes: dict[str, list[int]] = {}
        for trace in snap.traces:
            size = trace.size
            band = ("<=512" if size <= 512 else "<=16K" if size <= 16384 else
                    "<=64K" if size <= 65536 else "<=128K" if size <= 131072 else
                    "<=256K" if size <= 262144 else ">256K")
            entry = sizes.setdefault(band, [0, 0])
            entry[0] += 1
            entry[1] += size
        rec["by_size"] = {k: {"count": v[0], "kib": v[1] // 1024} for k, v in sizes.items()}
    return rec


def _write() -> None:
    path = os.path.join(_DIR, f"{os.getpid()}.json")
    try:
        with open(path + ".tmp", "w") as f:
            json.dump({"argv": sys.argv[-12:], "base": _state["base"], "peak": _state["best"],
                       "samples": list(_state["samples"])}, f)
        os.replace(path + ".tmp", path)
    except OSError:
        pass


def _tick(signum: int, frame: Any) -> None:
    try:
        _tick_now()
    except Exception:  # noqa: BLE001, S110 -- never raise into the process under test
        pass


def _tick_now() -> None:
    if "twisted.internet.reactor" not in sys.modules:
        return  # not a mesh process (or not yet running)
    now = time.monotonic() - _state["t0"]
    if not _state["started"]:
        if now < _AFTER:
            return
        _state["started"] = True
        if _TRACE:
            import tracemalloc
            tracemalloc.start(6)
        status = _status()
        _state["base"] = _record(status)
        _state["peak"] = status.get("RssAnon", 0) if not _TRACE else 0
        _write()
        return
    status = _status()
    anon = status.get("RssAnon", 0)
    _state["samples"].append((round(now, 2), anon))
    if _TRACE:
        # RSS counts the traces' own memory: the peak is that of the traced allocations.
        import tracemalloc
        anon = tracemalloc.get_traced_memory()[0] // 1024
    if anon >= _state["peak"] + _STEP_KIB:
        _state["peak"] = anon
        _state["best"] = _record(status)
        _write()
    elif int(now / _TICK) % 250 == 0:
        _write()


if _DIR:
    signal.signal(signal.SIGALRM, _tick)
    signal.setitimer(signal.ITIMER_REAL, _TICK, _TICK)
