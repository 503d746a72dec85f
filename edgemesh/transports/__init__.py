"""The transports layer: HTTP/1.1 front and upstream pool, envelope links (tunnel and hubs)."""

from ._backoff import ReconnectBackoff
from ._front import FrontLimits, HTTPFrontFactory
from ._halves import InboundExchange, OutboundExchange
from ._hooks import FrontHook, HookedFrontFactory, HookedFrontProtocol
from ._io import DEFAULT_BACKLOG, with_backlog
from ._links import EnvelopeLink, LinkHandler, ready_or_lost
from ._linkstreams import LinkStreamTarget
from ._peers import HubDialer, LinkTarget
from ._streams import StreamingFrontFactory, StreamingFrontProtocol, TCPStreamTarget
from ._upstream import HTTPUpstreamTarget

__all__ = [
    "DEFAULT_BACKLOG",
    "EnvelopeLink",
    "FrontHook",
    "FrontLimits",
    "HTTPFrontFactory",
    "HTTPUpstreamTarget",
    "HookedFrontFactory",
    "HookedFrontProtocol",
    "HubDialer",
    "InboundExchange",
    "LinkHandler",
    "LinkStreamTarget",
    "LinkTarget",
    "OutboundExchange",
    "ReconnectBackoff",
    "StreamingFrontFactory",
    "StreamingFrontProtocol",
    "TCPStreamTarget",
    "ready_or_lost",
    "with_backlog",
]
