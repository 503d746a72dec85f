"""
Observability: what a node counts (metrics), says (logs) and shows (admin views).

- ``MeshObserver``: per-node counters of exchanges (by service and path) and links, fed
  by the pipeline's one instrumentation point; plain ints on the hot path.
- ``MeshCollector`` / ``node_registry`` / ``exposition``: Prometheus metrics at scrape time.
- ``AccessLog``: one structured ``edgemesh.access`` event per exchange (optional).
- ``JSONLinesObserver`` / ``json_logger``: JSON-lines logs (``--log-format json``).
- ``ObservabilityOptions`` / ``ObservabilityConfig``: the options of both roles.
- ``config_to_json``: a node's effective configuration, without secrets.
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_names
from ._access import ACCESS_FORMAT, ACCESS_NAMESPACE, AccessLog, safe_uri
from ._config import REDACTED, config_to_json
from ._exchanges import (
    DURATION_BUCKETS,
    OTHER_SERVICE,
    UNKNOWN_SERVICE,
    ExchangeStats,
    MeshObserver,
    ObservabilityConfig,
    ObservedExchange,
    PeerState,
    Readiness,
    exchange_path,
)
from ._logs import MAX_FIELD, JSONLinesObserver, json_log_line, json_logger, twistd_log_file
from ._options import LOG_FORMATS, ObservabilityOptions

if TYPE_CHECKING:
    from ._collector import MeshCollector, exposition, node_registry

# prometheus_client (~1.1 MiB of RssAnon) is imported by the first scrape's admin API only.
__getattr__ = lazy_names(__name__, {
    "._collector": ("MeshCollector", "exposition", "node_registry"),
}, globals())

__all__ = [
    "ACCESS_FORMAT",
    "ACCESS_NAMESPACE",
    "DURATION_BUCKETS",
    "LOG_FORMATS",
    "MAX_FIELD",
    "OTHER_SERVICE",
    "REDACTED",
    "UNKNOWN_SERVICE",
    "AccessLog",
    "ExchangeStats",
    "JSONLinesObserver",
    "MeshCollector",
    "MeshObserver",
    "ObservabilityConfig",
    "ObservabilityOptions",
    "ObservedExchange",
    "PeerState",
    "Readiness",
    "config_to_json",
    "exchange_path",
    "exposition",
    "json_log_line",
    "json_logger",
    "node_registry",
    "safe_uri",
    "twistd_log_file",
]
