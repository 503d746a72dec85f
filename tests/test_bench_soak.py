"""bench/soak.py's verdict: what a long run under faults may and may not show.  The run
itself takes minutes of real processes; its judgement is plain code, checked here on made-up
rounds."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

_BENCH = Path(__file__).resolve().parent.parent / "bench"


def _load(name: str) -> ModuleType:
    # bench/ is not a package: soak.py imports its harness as ``harness``, so load that first.
    spec = importlib.util.spec_from_file_location(name, _BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # (dataclasses look their module up there)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def soak() -> ModuleType:
    saved = {name: sys.modules.get(name) for name in ("harness", "soak")}
    _load("harness")
    module = _load("soak")
    yield module
    for name, previous in saved.items():
        if previous is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = previous


def _load_figures(non_2xx: int = 0, socket_errors: int = 0) -> dict[str, Any]:
    return {"rps": 1000.0, "non_2xx": non_2xx, "socket_errors": socket_errors}


def _round(soak: ModuleType, index: int, fault: str = "", anon_mib: float = 30.0,
           fds: int = 20, errors: dict[str, int] | None = None,
           transfer_ms: float | None = 50.0) -> Any:
    r = soak.Round(index, fault, started=60.0 * index)
    for name, path in soak.LOADS:
        r.loads[f"{name} {path}"] = _load_figures(non_2xx=(errors or {}).get(name, 0))
    r.transfer_ms = transfer_ms
    r.samples = {name: {"pid": 100 + n, "anon_kib": int(anon_mib * 1024), "rss_kib": 0,
                        "fds": fds, "cpu_ticks": 100 * index}
                 for n, name in enumerate(("router", "edge-1", "edge-2"))}
    if fault:
        r.recovered_s = 0.5
    return r


def test_the_slope_is_per_hour(soak: ModuleType) -> None:
    # +1 MiB a minute is +60 MiB an hour; a flat line is 0.
    assert soak.slope_per_hour([(60.0 * i, 30.0 + i) for i in range(5)]) == pytest.approx(60.0)
    assert soak.slope_per_hour([(60.0 * i, 30.0) for i in range(5)]) == pytest.approx(0.0)
    assert soak.slope_per_hour([(0.0, 1.0), (60.0, 2.0)]) is None  # too few to say


def test_a_clean_run_passes_and_reports_growth(soak: ModuleType) -> None:
    rounds = [_round(soak, i, fault="restart" if i == 2 else "", anon_mib=30.0 + 0.1 * i,
                     errors={"p2-edge-edge": 40, "p4-cloud-edge": 900} if i == 2 else None)
              for i in range(6)]
    lines, ok = soak.verdict(rounds, warmup=1)
    assert ok, lines
    text = "\n".join(lines)
    assert "errors in steady rounds: 0" in text
    assert "p4-cloud-edge 900" in text
    assert "router: RssAnon 30.1 → 30.5 MiB" in text
    assert "slope +6.0" in text  # 0.1 MiB a minute


def test_an_error_in_a_steady_round_fails(soak: ModuleType) -> None:
    rounds = [_round(soak, i, errors={"p3-edge-cloud": 1} if i == 3 else None)
              for i in range(5)]
    _, ok = soak.verdict(rounds, warmup=1)
    assert not ok


def test_a_fault_on_edge_2_may_not_fail_paths_that_avoid_it(soak: ModuleType) -> None:
    # p1 (edge-1 → its own pod) and p3 (edge-1 → router) never cross edge-2.
    rounds = [_round(soak, i, fault="pause" if i == 1 else "",
                     errors={"p1-local": 3} if i == 1 else None) for i in range(4)]
    _, ok = soak.verdict(rounds, warmup=1)
    assert not ok


def test_a_failed_transfer_outside_a_fault_fails(soak: ModuleType) -> None:
    rounds = [_round(soak, i, transfer_ms=None if i == 2 else 50.0) for i in range(4)]
    lines, ok = soak.verdict(rounds, warmup=1)
    assert not ok
    assert "1 failed" in "\n".join(lines)
