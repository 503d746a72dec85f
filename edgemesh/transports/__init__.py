"""The transports layer: HTTP/1.1 front and upstream pool, envelope links (tunnel and hubs)."""

from ._backoff import ReconnectBackoff
from ._front import FrontLimits, HTTPFrontFactory
from ._io import DEFAULT_BACKLOG, with_backlog
from ._links import EnvelopeLink, InboundExchange, LinkHandler, OutboundExchange, ready_or_lost
from ._peers import HubDialer, LinkTarget
from ._upstream import HTTPUpstreamTarget

__all__ = [
    "DEFAULT_BACKLOG",
    "EnvelopeLink",
    "FrontLimits",
    "HTTPFrontFactory",
    "HTTPUpstreamTarget",
    "HubDialer",
    "InboundExchange",
    "LinkHandler",
    "LinkTarget",
    "OutboundExchange",
    "ReconnectBackoff",
    "ready_or_lost",
    "with_backlog",
]
