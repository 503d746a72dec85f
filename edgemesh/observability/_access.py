"""
The access log: one ``twisted.logger`` event per exchange, in the ``edgemesh.access``
namespace, with structured fields (the JSON log format writes them as they are).

Never logged: request or response bodies, header fields (``Authorization``, cookies),
the query string of the request target (tokens travel there too).  The target's path
is cut at ``MAX_URI`` characters and its control characters escaped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.logger import Logger

if TYPE_CHECKING:
    from ..exchange import Reason, RequestHead, SourceKind
    from ..routing import Route
    from ._exchanges import ExchangeStats

__all__ = ["ACCESS_FORMAT", "ACCESS_NAMESPACE", "MAX_URI", "AccessLog", "safe_uri"]

ACCESS_NAMESPACE = "edgemesh.access"
ACCESS_FORMAT = (
    "{method} {service} {uri} {status} {duration:.4f}s {path} in={bytes_in} out={bytes_out} "
    "endpoint={endpoint} error={error} client={client}"
)
MAX_URI = 256

_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)}


def safe_uri(path: bytes) -> str:
    """The request target's path for a log line: no query, bounded, one line."""
    path = path.split(b"?", 1)[0]
    text = path[:MAX_URI].decode("ascii", "backslashreplace")
    if not text.isprintable():
        text = text.translate(_ESCAPES)
    return text + ("..." if len(path) > MAX_URI else "")


_log = Logger(namespace=ACCESS_NAMESPACE)


class AccessLog:
    """Emits the access log event of finished exchanges."""

    def __init__(self, log: Logger = _log) -> None:
        self.log = log

    def exchange(
        self,
        *,
        head: RequestHead,
        source: SourceKind,
        route: Route | None,
        stats: ExchangeStats,
        status: int,
        duration: float,
        received: int,
        sent: int,
        error: Reason | None,
        aborted: bool,
    ) -> None:
        endpoint = route.endpoint if route is not None else None
        self.log.info(
            ACCESS_FORMAT,
            method=head.method.decode("ascii", "backslashreplace"),
            uri=safe_uri(head.path),
            service=stats.service,
            path=stats.path,
            source=source.value,
            target=route.target.value if route is not None else None,
            status=status or None,
            duration=duration,
            bytes_in=received,
            bytes_out=sent,
            endpoint=endpoint.address if endpoint is not None else None,
            peer=route.peer if route is not None else None,
            error=error.code if error is not None else ("aborted" if aborted else None),
            client=head.client or None,
        )
