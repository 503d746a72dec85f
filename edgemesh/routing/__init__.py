"""The routing layer: the node's registry of Sources and Targets, its rules, the routing
decision, per-service traffic policy and resilience (timeouts, retries, outlier ejection,
overload limits, drain)."""

from typing import TYPE_CHECKING

from .._lazy import lazy_names
from ._balance import Balancer, RoundRobin
from ._decide import EDGE_RULES, REPLICA_RULES, ROUTER_PEER, ROUTER_RULES, Route, decide
from ._guard import IDEMPOTENT_METHODS, REPLAY_LIMIT, GuardedBody, GuardedExchange
from ._health import OutlierDetector, Resilience, RetryBudget, ServiceState
from ._loops import (
    DEFAULT_MAX_HOPS,
    Listening,
    OwnEndpoint,
    OwnListeners,
    check_hops,
    own_endpoints,
)
from ._pipeline import PeerPaths, Pipeline, rules_table
from ._policy import (
    HASH_KEY_ANNOTATION,
    LB_POLICY_ANNOTATION,
    RETRIES_ANNOTATION,
    TIMEOUT_ANNOTATION,
    LBPolicy,
    PolicyBook,
    ServicePolicy,
    parse_duration,
    parse_policy,
)
from ._streams import StreamGuard
from ._topology import candidates as topology_candidates
from ._topology import hint_mode
from ._topology import tiers as topology_tiers

if TYPE_CHECKING:
    from ._homes import EdgeHomes

# Where each edge is homed among router replicas: a router's business only.
__getattr__ = lazy_names(__name__, {"._homes": ("EdgeHomes",)}, globals())

__all__ = [
    "DEFAULT_MAX_HOPS",
    "EDGE_RULES",
    "HASH_KEY_ANNOTATION",
    "IDEMPOTENT_METHODS",
    "LB_POLICY_ANNOTATION",
    "REPLAY_LIMIT",
    "REPLICA_RULES",
    "RETRIES_ANNOTATION",
    "ROUTER_PEER",
    "ROUTER_RULES",
    "TIMEOUT_ANNOTATION",
    "Balancer",
    "EdgeHomes",
    "GuardedBody",
    "GuardedExchange",
    "LBPolicy",
    "Listening",
    "OutlierDetector",
    "OwnEndpoint",
    "OwnListeners",
    "PeerPaths",
    "Pipeline",
    "PolicyBook",
    "Resilience",
    "RetryBudget",
    "RoundRobin",
    "Route",
    "ServicePolicy",
    "ServiceState",
    "StreamGuard",
    "check_hops",
    "decide",
    "hint_mode",
    "own_endpoints",
    "parse_duration",
    "parse_policy",
    "rules_table",
    "topology_candidates",
    "topology_tiers",
]
