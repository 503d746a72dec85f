"""GC_PROBE=1 (bench/harness.py): every garbage collection of a mesh process, timed.

harness.py puts this directory first on the mesh processes' PYTHONPATH, so Python imports
it at start-up (as ``sitecustomize``; it hides an interpreter's own, which the bench's do not
have).  A ``gc.callbacks`` hook notes (generation, seconds, wall time at the end) of every
collection and rewrites ``$EDGEMESH_GC_PROBE/<pid>.json`` (atomically) right after it, so a
process stopped by a signal still leaves what it saw.  No thread and no timer: a first
version wrote the file every second from a thread, and the GIL hand-offs stalled the
reactor for up to ~10 ms each time (at 1000 requests/s, p1's p99 went from 0.5-0.7 ms to
3-13 ms, the slow requests one second apart).  The write lands after the pause it times,
and under load a mesh process collects about once in 10 s.  Bounded: the newest 10 000
collections.
"""

from __future__ import annotations

import gc
import json
import os
import time
from collections import deque
from typing import Any

_DIR = os.environ.get("EDGEMESH_GC_PROBE", "")
_pauses: deque[tuple[int, float, float]] = deque(maxlen=10_000)
_start = [0.0]


def _callback(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _start[0] = time.perf_counter()
        return
    _pauses.append((info["generation"], time.perf_counter() - _start[0], time.time()))
    path = os.path.join(_DIR, f"{os.getpid()}.json")
    try:
        with open(path + ".tmp", "w") as f:
            json.dump({"pauses": list(_pauses), "frozen": gc.get_freeze_count()}, f)
        os.replace(path + ".tmp", path)
    except OSError:
        pass


if _DIR:
    gc.callbacks.append(_callback)
