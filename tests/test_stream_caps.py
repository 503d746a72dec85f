"""The per-service cap (``--max-requests-per-service``) counts HTTP exchanges and byte
streams of a service together (issue 12: "the existing per-service cap applies"), and a
pod name (``pod-0.svc``) counts against its service's cap.  Deterministic: Clock only."""

from __future__ import annotations

import pytest
from test_streams import FakeTarget, Side
from twisted.internet.testing import MemoryReactorClock

from edgemesh.catalog import Catalog, Endpoint, Node, Service, ServicePort
from edgemesh.exchange import MeshError, Reason, RequestHead, Role, SourceKind
from edgemesh.routing import Pipeline, Resilience
from edgemesh.testing import RecordingResponder, ScriptedTarget

PORT = ServicePort("tcp-db", 7, 7007)
PODS = (Endpoint("10.0.0.5", 7007, "edge-1", hostname="db-0"),
        Endpoint("10.0.0.6", 7007, "edge-1", hostname="db-1"))


def pipeline(cap: int) -> tuple[Pipeline, ScriptedTarget, FakeTarget]:
    catalog = Catalog([Service("default", "db", None, (PORT,), {"tcp-db": PODS})],
                      [Node("edge-1", True, "127.0.0.1", 7701)], revision=1)
    pipe = Pipeline(Role.edge, "edge-1", catalog, clock=MemoryReactorClock(),
                    settings=Resilience(max_requests_per_service=cap))
    http, streams = ScriptedTarget(), FakeTarget()
    pipe.add_target(http)
    pipe.add_stream_target(streams)
    return pipe, http, streams


def exchange(pipe: Pipeline, authority: bytes = b"db:7") -> None:
    head = RequestHead(b"GET", b"/", authority, (), 0, "10.0.0.9")
    pipe.dispatch(SourceKind.service_bus, head, RecordingResponder())


def stream(pipe: Pipeline, authority: bytes = b"db:7") -> None:
    pipe.dispatch_stream(SourceKind.service_bus, authority, "10.0.0.9", Side())


def overloaded(call: object) -> MeshError:
    assert callable(call)
    with pytest.raises(MeshError) as caught:
        call()
    assert caught.value.reason is Reason.overloaded and caught.value.status == 503
    return caught.value


def test_exchanges_and_streams_share_the_cap() -> None:
    """One exchange in flight and one stream open fill a cap of 2: a third of either kind
    is refused before any target sees it; ending the stream frees its slot."""
    pipe, http, streams = pipeline(2)
    exchange(pipe)
    stream(pipe)
    overloaded(lambda: stream(pipe))
    overloaded(lambda: exchange(pipe))
    assert (len(http.opened), len(streams.opened)) == (1, 1)
    streams.opened[0][2].abort(MeshError(Reason.upstream_lost, "gone"))
    exchange(pipe)
    assert len(http.opened) == 2


def test_pod_names_count_against_their_service() -> None:
    """Streams to db-0.db and db-1.db are streams of service default/db: one cap."""
    pipe, _, streams = pipeline(2)
    stream(pipe, b"db-0.db:7")
    stream(pipe, b"db-1.db:7")
    error = overloaded(lambda: stream(pipe, b"db:7"))
    assert "default/db" in str(error)
    assert [route.endpoint.hostname for route, *_ in streams.opened
            if route.endpoint is not None] == ["db-0", "db-1"]
