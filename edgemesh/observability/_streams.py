"""
Byte streams in the metrics and the access log (issue 12): what the pipeline's stream
guards report when a stream opens and when it is over.  Plain counters, read at scrape
time, by the same bounded (service, path) labels as exchanges.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import TYPE_CHECKING

from twisted.logger import Logger

from ._access import ACCESS_NAMESPACE

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from ..routing import StreamGuard
    from ._exchanges import MeshObserver

DURATION_BUCKETS: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 60.0, 600.0, 3600.0)
"""Streams last from a request's time to hours: coarser buckets than exchanges'."""
_LE = [repr(bound) for bound in DURATION_BUCKETS] + ["+Inf"]

ACCESS_STREAM_FORMAT = (
    "STREAM {service} {duration:.4f}s {path} up={bytes_up} down={bytes_down} "
    "endpoint={endpoint} result={result} client={client}"
)
_access = Logger(namespace=ACCESS_NAMESPACE)


class StreamStats:
    """The byte-stream counters of one (service, path)."""

    __slots__ = ("active", "bytes_down", "bytes_up", "counts", "duration_sum", "opened", "results")

    def __init__(self) -> None:
        self.opened = 0
        self.active = 0
        self.results: dict[str, int] = {}
        """Finished streams by result: ``ok``, ``aborted`` (the client went away), or the
        mesh's reason (``upstream-refused``, ``upstream-timeout`` for the idle timeout...)."""
        self.bytes_up = 0
        self.bytes_down = 0
        self.counts = [0] * (len(DURATION_BUCKETS) + 1)
        self.duration_sum = 0.0


def result_of(guard: StreamGuard) -> str:
    error = guard.error
    if error is None:
        return "ok"
    if guard.aborted_by == "source":
        return "aborted"
    return error.reason.code


class StreamObserver:
    """Counts the byte streams of one node and writes their access log lines."""

    def __init__(self, observer: MeshObserver) -> None:
        self.observer = observer
        self.tables: dict[tuple[str, str], StreamStats] = {}

    def _stats(self, guard: StreamGuard) -> StreamStats:
        observer = self.observer
        route = guard.route
        service = route.service
        label = service.key
        if label not in observer.services:
            if len(observer.services) >= observer.config.max_services:
                from ._exchanges import OTHER_SERVICE

                label = OTHER_SERVICE
            else:
                observer.services.add(label)
        path = observer.path_of(guard.source_kind, route.target)
        stats = self.tables.get((label, path))
        if stats is None:
            stats = self.tables[label, path] = StreamStats()
        return stats

    def opened(self, guard: StreamGuard) -> None:
        stats = self._stats(guard)
        stats.opened += 1
        stats.active += 1

    def closed(self, guard: StreamGuard) -> None:
        stats = self._stats(guard)
        stats.active -= 1
        result = result_of(guard)
        stats.results[result] = stats.results.get(result, 0) + 1
        stats.bytes_up += guard.bytes_up
        stats.bytes_down += guard.bytes_down
        duration = max(0.0, guard.duration)
        stats.counts[bisect_left(DURATION_BUCKETS, duration)] += 1
        stats.duration_sum += duration
        if result not in ("ok", "aborted"):
            errors = self.observer.errors
            errors[result] = errors.get(result, 0) + 1
        if self.observer.access_log is not None:
            endpoint = guard.route.endpoint
            _access.info(
                ACCESS_STREAM_FORMAT,
                service=guard.service_key,
                path=self.observer.path_of(guard.source_kind, guard.route.target),
                source=guard.source_kind.value,
                target=guard.route.target.value,
                duration=duration,
                bytes_up=guard.bytes_up,
                bytes_down=guard.bytes_down,
                endpoint=endpoint.address if endpoint is not None else None,
                peer=guard.route.peer,
                result=result,
                detail=guard.error.detail if guard.error is not None else None,
                client=guard.client or None,
            )

    def collect(self) -> Iterator[Metric]:
        # On first use: an edge without --admin never imports prometheus_client (~1 MiB).
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        labels = ["service", "path"]
        opened = CounterMetricFamily(
            "edgemesh_byte_streams_opened", "Byte streams opened (CONNECT, capture, Upgrade, "
            "from a peer), by service and path.", labels=labels)
        closed = CounterMetricFamily(
            "edgemesh_byte_streams_closed", "Byte streams over, by result: ok (both ways "
            "closed), aborted (the client went away), or the mesh's reason.",
            labels=[*labels, "result"])
        active = GaugeMetricFamily("edgemesh_byte_streams_active", "Byte streams open.",
                                   labels=labels)
        moved = CounterMetricFamily(
            "edgemesh_byte_stream_bytes", "Bytes carried by byte streams, by direction: up "
            "(from the client) or down (to the client).", labels=[*labels, "direction"])
        duration = HistogramMetricFamily(
            "edgemesh_byte_stream_duration_seconds", "From routing to the end of the stream.",
            labels=labels)
        for (service, path), stats in sorted(self.tables.items()):
            key = [service, path]
            opened.add_metric(key, stats.opened)
            active.add_metric(key, stats.active)
            for result, count in sorted(stats.results.items()):
                closed.add_metric([*key, result], count)
            moved.add_metric([*key, "up"], stats.bytes_up)
            moved.add_metric([*key, "down"], stats.bytes_down)
            cumulative = 0
            buckets = []
            for le, count in zip(_LE, stats.counts, strict=True):
                cumulative += count
                buckets.append((le, cumulative))
            duration.add_metric(key, buckets, stats.duration_sum)
        yield from (opened, closed, active, moved, duration)
