"""
The Prometheus side: a custom Collector that reads a node's plain counters at scrape
time (nothing on the hot path touches prometheus_client), and the exposition of a
registry for ``GET /metrics``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

from ..catalog import Catalog
from ._exchanges import DURATION_BUCKETS, MeshObserver

__all__ = ["MeshCollector", "exposition", "node_registry"]

_LE = [repr(bound) for bound in DURATION_BUCKETS] + ["+Inf"]  # as prometheus_client writes them
_CLASSES = ["aborted"] + [f"{i}xx" for i in range(1, 10)]


class MeshCollector(Collector):
    """The metric families of one node, built from ``observer``'s counters, the current
    catalog and, on a router, the edges' view (``RouterNode.edges_view``)."""

    def __init__(
        self,
        observer: MeshObserver,
        catalog: Callable[[], Catalog],
        edges: Callable[[], Sequence[Mapping[str, object]]] | None = None,
        replicas: Callable[[], Mapping[str, object]] | None = None,
        spliced: Callable[[], int] | None = None,
        heap: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        self.observer = observer
        self.catalog = catalog
        self.edges = edges
        self.replicas = replicas
        """Router replicas: ``roles/_admin.replica_view`` (leader, router links, forwards)."""
        self.spliced = spliced
        """Body bytes the process moved between sockets by splice (transports.spliced_bytes)."""
        self.heap = heap
        """(trims, bytes released) of the C heap's trimmer (roles/_heap.HeapTrimmer)."""

    def describe(self) -> list[Metric]:
        return []  # families vary with the traffic: nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        observer = self.observer
        info = GaugeMetricFamily(
            "edgemesh_info", "This node: its role and name (always 1).", labels=["role", "node"]
        )
        info.add_metric([observer.role.value, observer.node], 1)
        yield info
        yield from self._exchanges()
        errors = CounterMetricFamily(
            "edgemesh_errors",
            "Exchanges the mesh failed or refused, by X-Edgemesh-Error reason.",
            labels=["reason"],
        )
        for code, count in sorted(observer.errors.items()):
            errors.add_metric([code], count)
        yield errors
        if self.spliced is not None:
            yield CounterMetricFamily(
                "edgemesh_spliced_bytes",
                "Response body bytes this process moved from pod sockets to plaintext links, "
                "and from such links to clients, by splice(2), never copied through it "
                "(--no-splice: none).",
                value=self.spliced(),
            )
        if self.heap is not None:
            trims, released = self.heap()
            yield CounterMetricFamily(
                "edgemesh_heap_trims",
                "Times this process gave the C heap's free pages back to the system "
                "(malloc_trim; --malloc-trim-interval).", value=trims)
            yield CounterMetricFamily(
                "edgemesh_heap_released_bytes",
                "Resident anonymous memory those trims gave back.", value=released)
        yield from observer.streams.collect()
        yield from self._peers()
        yield from self._catalog()
        yield from self._replicas()

    def _replicas(self) -> Iterator[Metric]:
        if self.replicas is None:
            return
        view = self.replicas()
        routers = view.get("routers")
        if not isinstance(routers, Mapping):
            return
        yield GaugeMetricFamily(
            "edgemesh_router_links", "Links up to other router replicas.",
            value=_number(routers.get("peers")),
        )
        forwarded = CounterMetricFamily(
            "edgemesh_router_forwarded_exchanges",
            "Exchanges forwarded between router replicas ('out': sent to the replica holding "
            "the edge's tunnel; 'in': received for an edge of this replica).",
            labels=["direction"],
        )
        forwarded.add_metric(["out"], _number(routers.get("forwarded_out")))
        forwarded.add_metric(["in"], _number(routers.get("forwarded_in")))
        yield forwarded
        elsewhere = GaugeMetricFamily(
            "edgemesh_router_peer_edges", "Edges whose tunnel is on another replica, by replica.",
            labels=["replica"],
        )
        counts = routers.get("edges_elsewhere")
        if isinstance(counts, Mapping):
            for replica, count in sorted(counts.items()):
                elsewhere.add_metric([str(replica)], _number(count))
        yield elsewhere
        pushes = CounterMetricFamily(
            "edgemesh_router_catalog_pushes",
            "Catalog pushes sent to edges, by kind ('rebase': the first push on a tunnel was a "
            "delta from the catalog the edge held, not a snapshot).",
            labels=["kind"],
        )
        kinds = routers.get("catalog_pushes")
        if isinstance(kinds, Mapping):
            for kind, count in sorted(kinds.items()):
                pushes.add_metric([str(kind)], _number(count))
        yield pushes
        leader = view.get("leader")
        if leader is not None:
            yield GaugeMetricFamily("edgemesh_router_leader",
                                    "1 while this replica holds the controller's Lease.",
                                    value=1 if leader else 0)
            yield CounterMetricFamily("edgemesh_router_leader_transitions",
                                      "Times this replica started or stopped leading.",
                                      value=_number(view.get("leader_transitions")))

    def _exchanges(self) -> Iterator[Metric]:
        labels = ["service", "path"]
        requests = CounterMetricFamily(
            "edgemesh_requests",
            "Finished exchanges by service, path and status class ('aborted': the client or "
            "peer gave up before a response head).",
            labels=["service", "path", "code_class"],
        )
        duration = HistogramMetricFamily(
            "edgemesh_request_duration_seconds",
            "From routing to the end of the response (or its failure).",
            labels=labels,
        )
        bytes_in = CounterMetricFamily(
            "edgemesh_request_bytes", "Request body bytes received from sources.", labels=labels
        )
        bytes_out = CounterMetricFamily(
            "edgemesh_response_bytes", "Response body bytes sent to sources.", labels=labels
        )
        active = GaugeMetricFamily(
            "edgemesh_active_streams", "Exchanges in flight.", labels=labels
        )
        for (service, path), stats in sorted(self.observer.tables.items()):
            key = [service, path]
            for index, count in enumerate(stats.codes):
                if count:
                    requests.add_metric([service, path, _CLASSES[index]], count)
            cumulative = 0
            buckets = []
            for le, count in zip(_LE, stats.counts, strict=True):
                cumulative += count
                buckets.append((le, cumulative))
            duration.add_metric(key, buckets, stats.duration_sum)
            bytes_in.add_metric(key, stats.bytes_in)
            bytes_out.add_metric(key, stats.bytes_out)
            active.add_metric(key, stats.active)
        yield from (requests, duration, bytes_in, bytes_out, active)

    def _peers(self) -> Iterator[Metric]:
        labels = ["peer", "link"]
        up = GaugeMetricFamily(
            "edgemesh_peer_up", "1 while the link to the peer is connected.", labels=labels
        )
        reconnects = CounterMetricFamily(
            "edgemesh_peer_reconnects", "Connections to the peer after the first.", labels=labels
        )
        rtt = GaugeMetricFamily(
            "edgemesh_peer_rtt_seconds", "Round-trip time of the last heartbeat.", labels=labels
        )
        streams = GaugeMetricFamily(
            "edgemesh_peer_streams", "Exchanges open on the link.", labels=labels
        )
        for (peer, kind), state in sorted(self.observer.peers.items()):
            key = [peer, kind]
            connected = state.connected
            up.add_metric(key, 1 if connected else 0)
            reconnects.add_metric(key, state.reconnects)
            if connected:
                streams.add_metric(key, len(state.link.exchanges))
                if state.link.rtt is not None:
                    rtt.add_metric(key, state.link.rtt)
        yield from (up, reconnects, rtt, streams)

    def _catalog(self) -> Iterator[Metric]:
        catalog = self.catalog()
        yield GaugeMetricFamily(
            "edgemesh_catalog_revision", "Revision of the catalog in use.", value=catalog.revision
        )
        yield GaugeMetricFamily(
            "edgemesh_catalog_services", "Services in the catalog.", value=len(catalog.services)
        )
        yield GaugeMetricFamily(
            "edgemesh_catalog_nodes", "Nodes in the catalog.", value=len(catalog.nodes)
        )
        pipeline = self.observer.pipeline
        yield GaugeMetricFamily(
            "edgemesh_catalog_refused_endpoints",
            "Endpoints of the catalog refused as this node's own listeners (routing loops).",
            value=0 if pipeline is None else pipeline.refused_count,
        )
        if self.edges is None:
            return
        acked = GaugeMetricFamily(
            "edgemesh_edge_catalog_acked_revision",
            "Highest catalog revision a connected edge stored and acknowledged.",
            labels=["edge"],
        )
        lag = GaugeMetricFamily(
            "edgemesh_edge_catalog_lag_revisions",
            "How far a connected edge's acknowledged revision is behind the router's "
            "(Kubernetes revisions are microseconds of wall-clock time).",
            labels=["edge"],
        )
        for row in self.edges():
            edge = str(row["node"])
            revision = row.get("acked_revision")
            if isinstance(revision, int):
                acked.add_metric([edge], revision)
            behind = row.get("lag")
            if isinstance(behind, int):
                lag.add_metric([edge], behind)
        yield from (acked, lag)


def _number(value: object) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def node_registry(collector: Collector, process: bool = True) -> CollectorRegistry:
    """A registry of its own for one node (several nodes may share a process), with the
    process and platform collectors when ``process``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    if process:
        from prometheus_client import GCCollector, PlatformCollector, ProcessCollector

        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
    return registry


def exposition(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """The registry in the format ``accept`` asks for (Prometheus text, or OpenMetrics):
    (body, content type)."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type
