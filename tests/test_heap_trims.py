"""roles/_heap.HeapTrimmer: the C heap's free pages given back every ``--malloc-trim-interval``
seconds and soon after a link closes, on a Clock; its option, its metrics, and that only a
process that owns its heap (twistd) gets one."""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.web.resource import getChildForRequest
from twisted.web.server import Site
from twisted.web.test.requesthelper import DummyRequest

from edgemesh.catalog import Catalog, Node
from edgemesh.exchange import Role, SourceKind
from edgemesh.roles import (
    EdgeConfig,
    EdgeNode,
    RouterConfig,
    RouterNode,
    build_edge,
    build_router,
    edge_tap,
    router_tap,
)
from edgemesh.roles._heap import (
    TRIM_GAP,
    TRIM_INTERVAL,
    TRIM_SETTLE,
    HeapTrimmer,
    heap_trimmer,
    resident_anonymous,
)
from edgemesh.roles._node import _EdgeLinks
from edgemesh.transports import EnvelopeLink

glibc = pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "malloc_trim"),
                           reason="glibc's malloc_trim needed")


class Heap:
    """A stand-in for glibc and /proc: each trim gives back ``freed`` bytes."""

    def __init__(self, resident: int = 40 << 20, freed: int = 3 << 20) -> None:
        self.resident = resident
        self.freed = freed
        self.trimmed_at: list[float] = []
        self.clock = Clock()

    def trim(self) -> None:
        self.trimmed_at.append(self.clock.seconds())
        self.resident -= self.freed

    def read(self) -> int:
        return self.resident


def started(heap: Heap, interval: float = TRIM_INTERVAL) -> HeapTrimmer:
    trimmer = HeapTrimmer(heap.clock, interval, trim=heap.trim, resident=heap.read)
    trimmer.startService()  # type: ignore[no-untyped-call]
    return trimmer


def test_trims_every_interval() -> None:
    heap = Heap()
    trimmer = started(heap)
    heap.clock.advance(TRIM_INTERVAL - 0.1)
    assert heap.trimmed_at == []
    heap.clock.advance(0.1)
    heap.clock.advance(TRIM_INTERVAL / 2)
    heap.clock.advance(TRIM_INTERVAL / 2)
    heap.clock.advance(TRIM_INTERVAL)
    assert heap.trimmed_at == [TRIM_INTERVAL, 2 * TRIM_INTERVAL, 3 * TRIM_INTERVAL]
    assert trimmer.counters() == (3, 9 << 20)


def test_a_closed_link_brings_the_trim_forward_once_it_settles() -> None:
    heap = Heap()
    trimmer = started(heap)
    heap.clock.advance(20)
    trimmer.soon()
    heap.clock.advance(TRIM_SETTLE - 0.1)
    assert heap.trimmed_at == []
    heap.clock.advance(0.1)
    assert heap.trimmed_at == [20 + TRIM_SETTLE]
    # The next periodic trim counts from this one, not from the start.
    heap.clock.advance(TRIM_INTERVAL - 0.1)
    assert len(heap.trimmed_at) == 1
    heap.clock.advance(0.1)
    assert heap.trimmed_at == [20 + TRIM_SETTLE, 20 + TRIM_SETTLE + TRIM_INTERVAL]


def test_links_closing_together_bring_one_trim() -> None:
    heap = Heap()
    trimmer = started(heap)
    heap.clock.advance(5)
    for _ in range(1000):  # a thousand edges gone at once
        trimmer.soon()
        heap.clock.advance(0.001)
    heap.clock.advance(TRIM_SETTLE)
    assert len(heap.trimmed_at) == 1


def test_trims_brought_forward_keep_their_gap() -> None:
    heap = Heap()
    trimmer = started(heap)
    heap.clock.advance(10)
    trimmer.soon()
    heap.clock.advance(TRIM_SETTLE)
    first = heap.clock.seconds()
    assert heap.trimmed_at == [first]
    trimmer.soon()  # another link, right after
    heap.clock.advance(TRIM_GAP - 0.1)
    assert heap.trimmed_at == [first]
    heap.clock.advance(0.1)
    assert heap.trimmed_at == [first, first + TRIM_GAP]


def test_soon_never_delays_a_trim_already_due_sooner() -> None:
    heap = Heap()
    trimmer = started(heap, interval=1.0)
    heap.clock.advance(0.5)
    trimmer.soon()  # due at 0.5 + settle, later than the periodic one at 1.0
    heap.clock.advance(0.5)
    assert heap.trimmed_at == [1.0]


def test_released_counts_only_what_went_back() -> None:
    heap = Heap(freed=0)
    trimmer = started(heap)
    heap.clock.advance(TRIM_INTERVAL)
    heap.resident += 5 << 20  # grew between the reads: nothing negative is counted
    heap.clock.advance(TRIM_INTERVAL)
    assert trimmer.counters() == (2, 0)


def test_without_proc_trims_are_counted_not_measured() -> None:
    heap = Heap()
    trimmer = HeapTrimmer(heap.clock, 1.0, trim=heap.trim, resident=lambda: None)
    trimmer.startService()  # type: ignore[no-untyped-call]
    heap.clock.advance(1.0)
    assert trimmer.counters() == (1, 0)


def test_stopped_trimmer_leaves_no_call_and_ignores_links() -> None:
    heap = Heap()
    trimmer = started(heap)
    trimmer.stopService()  # type: ignore[no-untyped-call]
    assert heap.clock.getDelayedCalls() == []
    trimmer.soon()
    assert heap.clock.getDelayedCalls() == []
    heap.clock.advance(10 * TRIM_INTERVAL)
    assert heap.trimmed_at == []


def test_resident_anonymous_is_this_process_rss_anon() -> None:
    measured = resident_anonymous()
    if measured is None:
        pytest.skip("no /proc")
    with open("/proc/self/status") as status:
        (kib,) = (int(line.split()[1]) for line in status if line.startswith("RssAnon:"))
    # Read a moment apart: within a MiB of each other.
    assert abs(measured - kib * 1024) < 1 << 20


@glibc
def test_a_real_trim_gives_back_freed_heap() -> None:
    clock = Clock()
    trimmer = heap_trimmer(clock, 1.0)
    assert trimmer is not None
    if resident_anonymous() is None:
        pytest.skip("no /proc: nothing to measure what a trim gives back")
    # 32 MiB in blocks under the mmap threshold, every other one freed: holes glibc keeps.
    blocks = [bytearray(64 << 10) for _ in range(512)]
    for block in blocks:
        block[::4096] = b"x" * len(block[::4096])  # touched: resident
    del blocks[::2]
    trimmer.startService()  # type: ignore[no-untyped-call]
    clock.advance(1.0)
    trims, released = trimmer.counters()
    assert trims == 1
    assert released >= 8 << 20  # of the 16 MiB freed; glibc keeps some at the top
    del blocks


def test_interval_zero_means_no_trimmer() -> None:
    assert heap_trimmer(Clock(), 0) is None


# -- in the nodes ------------------------------------------------------------------------


def catalog() -> Catalog:
    return Catalog(nodes=(Node("edge-1", edge=True, hub_host="127.0.0.1", hub_port=7701),))


def router(interval: float, reactor: MemoryReactorClock | None = None) -> RouterNode:
    return build_router(reactor or MemoryReactorClock(), RouterConfig(
        catalog=catalog(), admin="tcp:7790", malloc_trim_interval=interval))


def edge(tmp_path: Path, interval: float) -> EdgeNode:
    return build_edge(MemoryReactorClock(), EdgeConfig(
        node="edge-1", state_dir=str(tmp_path), admin="tcp:7791",
        malloc_trim_interval=interval))


def metrics(node: RouterNode | EdgeNode) -> dict[str, float]:
    site = node.listeners["admin"].factory
    assert isinstance(site, Site)
    request = DummyRequest([b"metrics"])
    body = getChildForRequest(site.resource, request).render(request)
    assert isinstance(body, bytes)
    return {sample.name: sample.value
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples if sample.name.startswith("edgemesh_heap_")}


def test_embedded_nodes_leave_their_hosts_heap_alone(tmp_path: Path) -> None:
    # The library's default: no trimmer, no heap metrics.
    built = build_router(MemoryReactorClock(), RouterConfig(catalog=catalog(), admin="tcp:7790"))
    assert built.heap is None
    assert metrics(built) == {}
    assert edge(tmp_path, 0).heap is None


@glibc
def test_a_router_link_closing_trims_soon() -> None:
    reactor = MemoryReactorClock()
    node = router(TRIM_INTERVAL, reactor)
    assert node.heap is not None
    assert node.heap in list(node)  # a child: started and stopped with the node
    node.startService()
    assert metrics(node) == {"edgemesh_heap_trims_total": 0.0,
                             "edgemesh_heap_released_bytes_total": 0.0}
    link = EnvelopeLink(reactor, node, node="cloud-1", role=Role.router.value, client=False)
    node.link_lost(link, "heartbeat timeout")
    reactor.advance(TRIM_SETTLE)
    assert metrics(node)["edgemesh_heap_trims_total"] == 1.0


@glibc
def test_an_edge_link_closing_trims_soon(tmp_path: Path) -> None:
    node = edge(tmp_path, TRIM_INTERVAL)
    assert node.heap is not None
    node.startService()
    handler = _EdgeLinks(node, SourceKind.hub, None)
    link = EnvelopeLink(node.reactor, handler, node="edge-1", role=Role.edge.value, client=False)
    handler.link_lost(link, "closed")
    node.reactor.advance(TRIM_SETTLE)
    assert node.heap.counters()[0] == 1


def _parse(tap: Any, *argv: str) -> usage.Options:
    options = tap.Options()
    options.parseOptions(list(argv))
    return options  # type: ignore[no-any-return]


def test_option_default_zero_and_refusals(tmp_path: Path) -> None:
    base = ("--insecure", "--node", "edge-1", "--state-dir", str(tmp_path))
    assert _parse(edge_tap, *base)["malloc-trim-interval"] == TRIM_INTERVAL
    for off in ("0", "0.0", "-0"):
        parsed = _parse(edge_tap, *base, "--malloc-trim-interval", off)["malloc-trim-interval"]
        assert parsed == 0 and str(parsed) == "0.0"
    assert _parse(edge_tap, *base, "--malloc-trim-interval", "2.5")["malloc-trim-interval"] == 2.5
    manifest = tmp_path / "catalog.yaml"
    manifest.write_text("apiVersion: v1\nkind: Node\nmetadata: {name: edge-1}\n")
    assert _parse(router_tap, "--insecure", "--catalog", str(manifest),
                  "--malloc-trim-interval", "30")["malloc-trim-interval"] == 30
    for text, why in (("-1", r"0 \(off\) or more"), ("lots", "not a number of seconds"),
                      ("90000", "at most 86400")):
        with pytest.raises(usage.UsageError, match=f"^--malloc-trim-interval: .*{why}"):
            _parse(edge_tap, *base, "--malloc-trim-interval", text)
