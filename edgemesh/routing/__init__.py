"""The routing layer: the node's registry of Sources and Targets, its rules, and the routing decision."""

from ._decide import EDGE_RULES, ROUTER_PEER, ROUTER_RULES, RoundRobin, decide
from ._pipeline import Pipeline, rules_table

__all__ = ["EDGE_RULES", "ROUTER_PEER", "ROUTER_RULES", "Pipeline", "RoundRobin", "decide", "rules_table"]
