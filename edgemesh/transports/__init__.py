"""The transports layer: HTTP/1.1 front and upstream pool, envelope links (tunnel and hubs)."""

from typing import TYPE_CHECKING

from ._backoff import ReconnectBackoff
from ._front import FrontLimits, HTTPFrontFactory
from ._halves import InboundExchange, OutboundExchange
from ._hooks import FrontHook, HookedFrontFactory, HookedFrontProtocol
from ._io import (
    DEFAULT_BACKLOG,
    REFCOUNT_SEES_VIEWS,
    gathered_writes,
    give_pooled,
    reads_as_twisted,
    spliced_bytes,
    take_pooled,
    with_backlog,
    write_all_now,
    write_now,
)
from ._links import EnvelopeLink, LinkHandler, ready_or_lost
from ._linkstreams import LinkStreamTarget
from ._peers import HubDialer, LinkTarget
from ._streams import StreamingFrontFactory, StreamingFrontProtocol, TCPStreamTarget
from ._upstream import HTTPUpstreamTarget

if TYPE_CHECKING:
    from ._reactor import EdgemeshReactor

__all__ = [
    "DEFAULT_BACKLOG",
    "REFCOUNT_SEES_VIEWS",
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
    "gathered_writes",
    "give_pooled",
    "install_reactor",
    "reads_as_twisted",
    "ready_or_lost",
    "spliced_bytes",
    "take_pooled",
    "with_backlog",
    "write_all_now",
    "write_now",
]


def install_reactor() -> "EdgemeshReactor":
    """Install edgemesh's epoll reactor (what ``twistd --reactor edgemesh`` chooses) as
    Twisted's global reactor; call it before anything imports ``twisted.internet.reactor``.
    Imported here only when called: a process on another reactor never loads it."""
    from ._reactor import install

    return install()
