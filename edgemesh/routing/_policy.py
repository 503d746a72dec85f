"""
Per-service traffic policy, read from Service annotations (the balancers that apply it
are in ``_balance``).

Annotations (invalid values are reported and the default is used; never an error)::

    edgemesh.io/lb-policy   round-robin (default) | random | least-request | consistent-hash
    edgemesh.io/hash-key    header:NAME | source-ip (default)     for consistent-hash
    edgemesh.io/timeout     request timeout until the response head: 5s, 250ms, 1m, 1.5
    edgemesh.io/retries     attempts after the first (0-10; default: the node's, 1)

``spec.sessionAffinity: ClientIP`` hashes the client address without a load bound (a
client stays on its pod while that pod is usable), and remembers each client's endpoint
for ``sessionAffinityConfig.clientIP.timeoutSeconds`` after its last exchange (it stays
there even when new endpoints would move its hash).  An explicit
``edgemesh.io/lb-policy: consistent-hash`` overrides it (no memory).  Which endpoints are
candidates, in which tiers, is the topology's business (``_topology``).

Plain Python: endpoints, heads and loads in, an endpoint out.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from twisted.logger import Logger

from ..catalog import DEFAULT_AFFINITY_TIMEOUT, Catalog, Service
from . import _topology

__all__ = [
    "HASH_KEY_ANNOTATION",
    "LB_POLICY_ANNOTATION",
    "RETRIES_ANNOTATION",
    "TIMEOUT_ANNOTATION",
    "LBPolicy",
    "PolicyBook",
    "ServicePolicy",
    "parse_duration",
    "parse_policy",
]

LB_POLICY_ANNOTATION: Final = "edgemesh.io/lb-policy"
HASH_KEY_ANNOTATION: Final = "edgemesh.io/hash-key"
TIMEOUT_ANNOTATION: Final = "edgemesh.io/timeout"
RETRIES_ANNOTATION: Final = "edgemesh.io/retries"

MAX_RETRIES: Final = 10
MAX_TIMEOUT: Final = 86400.0
EndpointKey = tuple[str, int]
"""(host, port): how health, load and retries name an endpoint."""


class LBPolicy(enum.Enum):
    """How a service's endpoint is picked within the allowed tier (``edgemesh.io/lb-policy``)."""

    round_robin = "round-robin"
    random = "random"
    least_request = "least-request"
    """Power of two choices: the less busy of two random endpoints."""
    consistent_hash = "consistent-hash"


@dataclass(frozen=True, slots=True)
class ServicePolicy:
    """A service's traffic policy from its annotations: balancing, hash key, timeout, retries."""

    lb: LBPolicy = LBPolicy.round_robin
    hash_header: bytes | None = None
    """consistent-hash: the lower-case header name whose value is the key; None: the
    client's address."""
    bounded_load: bool = True
    """consistent-hash: spill a hot key over (False for sessionAffinity: ClientIP)."""
    timeout: float | None = None
    """Request timeout until the response head; None: the node's default."""
    retries: int | None = None
    """Attempts after the first; None: the node's default."""
    problems: tuple[str, ...] = ()
    """Invalid annotation values, one line each (the defaults were used instead)."""
    tracks_load: bool = False
    """The balancer reads the endpoints' requests in progress (least-request, bounded
    consistent hash); set by ``parse_policy``."""
    affinity: float | None = None
    """sessionAffinity ClientIP: seconds a client's endpoint is remembered after its last
    exchange (None: no memory)."""

    @property
    def hashed(self) -> bool:
        return self.lb is LBPolicy.consistent_hash


DEFAULT_POLICY: Final = ServicePolicy()

_DURATION = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ms|s|m|h)?")
_UNITS: Final = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,64}")


def parse_duration(text: str) -> float:
    """``5s``, ``250ms``, ``1m``, ``1h``, ``1.5`` (seconds) → seconds; ValueError otherwise."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not a duration: {text[:40]!r} (e.g. 5s, 250ms, 1m)")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not 0 < seconds <= MAX_TIMEOUT:
        raise ValueError(f"{text[:40]!r} must be more than 0 and at most {MAX_TIMEOUT:g}s")
    return seconds


def _shown(value: str) -> str:
    return repr(value[:60]) + ("..." if len(value) > 60 else "")


def parse_policy(
    annotations: Mapping[str, str],
    session_affinity: str = "None",
    affinity_timeout: float = DEFAULT_AFFINITY_TIMEOUT,
    traffic_distribution: str | None = None,
) -> ServicePolicy:
    """A service's policy from its annotations and fields; problems are collected, never
    raised."""
    problems: list[str] = []
    if (traffic_distribution is not None
            and traffic_distribution not in _topology.KNOWN_DISTRIBUTIONS):
        problems.append(f"spec.trafficDistribution: unknown value {_shown(traffic_distribution)}"
                        " (PreferSameNode, PreferSameZone or PreferClose): no preference")
    lb = LBPolicy.round_robin
    raw_lb = annotations.get(LB_POLICY_ANNOTATION)
    if raw_lb is not None:
        try:
            lb = LBPolicy(raw_lb.strip())
        except ValueError:
            names = ", ".join(p.value for p in LBPolicy)
            problems.append(
                f"{LB_POLICY_ANNOTATION}: unknown policy {_shown(raw_lb)} (one of {names})"
            )

    hash_header: bytes | None = None
    raw_key = annotations.get(HASH_KEY_ANNOTATION)
    if raw_key is not None:
        key = raw_key.strip()
        if key == "source-ip":
            pass
        elif key.startswith("header:") and _HEADER_NAME.fullmatch(key[7:].strip()):
            hash_header = key[7:].strip().lower().encode("ascii")
        else:
            problems.append(
                f"{HASH_KEY_ANNOTATION}: {_shown(raw_key)} is neither header:NAME nor source-ip"
            )
        if lb is not LBPolicy.consistent_hash:
            hash_header = None
            problems.append(f"{HASH_KEY_ANNOTATION} has no effect unless {LB_POLICY_ANNOTATION} "
                            "is consistent-hash")

    bounded = True
    affinity: float | None = None
    if session_affinity == "ClientIP" and lb is not LBPolicy.consistent_hash:
        if raw_lb is not None and lb is not LBPolicy.round_robin:
            problems.append(f"{LB_POLICY_ANNOTATION}: {lb.value} ignored: "
                            "spec.sessionAffinity is ClientIP")
        lb, hash_header, bounded = LBPolicy.consistent_hash, None, False
        affinity = float(affinity_timeout)

    timeout: float | None = None
    raw_timeout = annotations.get(TIMEOUT_ANNOTATION)
    if raw_timeout is not None:
        try:
            timeout = parse_duration(raw_timeout)
        except ValueError as error:
            problems.append(f"{TIMEOUT_ANNOTATION}: {error}")

    retries: int | None = None
    raw_retries = annotations.get(RETRIES_ANNOTATION)
    if raw_retries is not None:
        text = raw_retries.strip()
        if text.isascii() and text.isdigit() and len(text) <= 3 and int(text) <= MAX_RETRIES:
            retries = int(text)
        else:
            problems.append(f"{RETRIES_ANNOTATION}: {_shown(raw_retries)} is not a number "
                            f"from 0 to {MAX_RETRIES}")

    if not problems and lb is LBPolicy.round_robin and timeout is None and retries is None:
        return DEFAULT_POLICY
    tracks_load = lb is LBPolicy.least_request or (lb is LBPolicy.consistent_hash and bounded)
    return ServicePolicy(lb, hash_header, bounded, timeout, retries, tuple(problems), tracks_load,
                         affinity)


_POLICY_PREFIX = "edgemesh.io/"


class PolicyBook:
    """Every service's policy for the current catalog, parsed once when the catalog is
    swapped in (so that problems show in the admin API before any request)."""

    log = Logger()

    def __init__(self) -> None:
        self._policies: dict[str, tuple[Service, ServicePolicy]] = {}
        self._by_id: dict[int, tuple[Service, ServicePolicy]] = {}
        self._reported: dict[str, tuple[str, ...]] = {}

    def scan(self, catalog: Catalog) -> None:
        policies: dict[str, tuple[Service, ServicePolicy]] = {}
        by_id: dict[int, tuple[Service, ServicePolicy]] = {}
        reported: dict[str, tuple[str, ...]] = {}
        for key, service in catalog.services.items():
            policy = self._parse(service)
            if policy is not DEFAULT_POLICY:
                policies[key] = by_id[id(service)] = (service, policy)
            if policy.problems:
                if self._reported.get(key) != policy.problems:
                    for problem in policy.problems:
                        self.log.warn("service {service}: {problem}; using the default",
                                      service=key, problem=problem)
                reported[key] = policy.problems
        self._policies = policies
        self._by_id = by_id
        self._reported = reported

    @staticmethod
    def _parse(service: Service) -> ServicePolicy:
        annotations = service.annotations
        if service.session_affinity == "None" and service.traffic_distribution is None and not any(
            name.startswith(_POLICY_PREFIX) for name in annotations
        ):
            return DEFAULT_POLICY
        return parse_policy(annotations, service.session_affinity, service.affinity_timeout,
                            service.traffic_distribution)

    def get(self, service: Service) -> ServicePolicy:
        """Hot path: one lookup.  A service object of another catalog (a retry that
        outlived a catalog swap) is parsed on the spot."""
        found = self._by_id.get(id(service))  # the entry holds the service: ids stay unique
        if found is not None and found[0] is service:
            return found[1]
        if (service.session_affinity == "None" and not service.annotations
                and service.traffic_distribution is None):
            return DEFAULT_POLICY
        return self._parse(service)

    def problems(self) -> dict[str, list[str]]:
        return {key: list(problems) for key, problems in sorted(self._reported.items())}

    def describe(self) -> dict[str, dict[str, object]]:
        return {
            key: {
                "lb": policy.lb.value,
                "hash_key": (
                    None if not policy.hashed
                    else "source-ip" if policy.hash_header is None
                    else "header:" + policy.hash_header.decode("ascii")
                ),
                "bounded_load": policy.hashed and policy.bounded_load,
                "timeout": policy.timeout,
                "retries": policy.retries,
                # Only for ClientIP affinity: the other entries keep their shape.
                **({} if policy.affinity is None else {"affinity_timeout": policy.affinity}),
            }
            for key, (_, policy) in sorted(self._policies.items())
        }
