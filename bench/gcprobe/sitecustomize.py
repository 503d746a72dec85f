"""GC_PROBE=1 (bench/harness.py): every garbage collection of a mesh process, timed.

harness.py puts this directory first on the mesh processes' PYTHONPATH, so Python imports
it at start-up (as ``sitecustomize``; it hides an interpreter's own, which the bench's do not
have).  A ``gc.callbacks`` hook notes (generation, seconds, wall time at the end) of every
collection, and a daemon thread writes them to ``$EDGEMESH_GC_PROBE/<pid>.json`` every
second (atomically), so a process stopped by a signal still leaves what it saw.  Bounded:
the newest 100 000 collections.
"""

from __future__ import annotations

import gc
import json
import os
import threading
import time
from collections import deque
from typing import Any

_DIR = os.environ.get("EDGEMESH_GC_PROBE", "")
_pauses: deque[tuple[int, float, float]] = deque(maxlen=100_000)
_start = [0.0]


def _callback(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _start[0] = time.perf_counter()
    else:
        _pauses.append((info["generation"], time.perf_counter() - _start[0], time.time()))


def _dump() -> None:
    path = os.path.join(_DIR, f"{os.getpid()}.json")
    while True:
        time.sleep(1.0)
        with open(path + ".tmp", "w") as f:
            json.dump({"pauses": list(_pauses), "frozen": gc.get_freeze_count()}, f)
        os.replace(path + ".tmp", path)


if _DIR:
    gc.callbacks.append(_callback)
    threading.Thread(target=_dump, name="gc-probe", daemon=True).start()
