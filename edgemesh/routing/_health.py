"""
What the pipeline learns from the exchanges it sees: outlier ejection per endpoint, a
retry budget and the requests in progress per service (the overload limit).

Plain Python with the time passed in: no reactor, no sockets.  Defaults follow the
anchors (Envoy, Linkerd; see docs/hardening.md): 5 consecutive failures eject an
endpoint for 30 s × the times it was ejected (at most 5 min), at most 10 % of a service's
endpoints (but always one); retries may add 20 % to the requests plus 10 per 10 s; 1024
requests in progress per service.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from twisted.logger import Logger

from ..catalog import Endpoint

__all__ = ["OutlierDetector", "Resilience", "RetryBudget", "ServiceState"]

EndpointKey = tuple[str, int]


@dataclass(frozen=True)
class Resilience:
    """The node's resilience settings (options of both roles)."""

    request_timeout: float = 30.0
    """Until the response head (504 after); a service's edgemesh.io/timeout overrides it."""
    stream_idle_timeout: float = 300.0
    """No body byte in either direction for this long: the exchange is cancelled."""
    retries: int = 1
    """Attempts after the first (edgemesh.io/retries overrides it)."""
    retry_budget_ratio: float = 0.2
    retry_budget_min: int = 10
    """Retries allowed per ``retry_budget_window`` whatever the traffic."""
    retry_budget_window: float = 10.0
    max_requests_per_service: int = 1024
    """Exchanges in progress per service on this node; one more is refused: 503 overloaded."""
    consecutive_failures: int = 5
    base_ejection: float = 30.0
    max_ejection: float = 300.0
    max_ejection_percent: int = 10
    drain_timeout: float = 10.0
    """On SIGTERM: how long exchanges in progress may take before the node stops anyway."""
    heartbeat_interval: float = 2.0
    heartbeat_timeout: float = 6.0
    """A link silent this long is closed (its exchanges fail at once)."""
    peer_drain_memory: float = 60.0
    """How long a peer's GOAWAY keeps its endpoints out of choice (unless it reconnects)."""
    max_hops: int = 8
    """Mesh pipelines one exchange may pass; one more is answered 508 loop."""


@dataclass(slots=True)
class _EndpointHealth:
    consecutive: int = 0
    ejections: int = 0
    ejected_until: float = 0.0
    """0: not ejected."""
    released_at: float = 0.0
    """When the last ejection ended (its penalty decays after a quiet max_ejection)."""
    probing: bool = False
    """Back after an ejection: the next result decides (one failure ejects again)."""


class OutlierDetector:
    """Consecutive failures (connect errors, resets, timeouts, 5xx) eject an endpoint for a
    penalty that grows with each ejection.  After the penalty the endpoint is chosen
    again as a probe: a success restores it, a failure ejects it for longer."""

    log = Logger()

    def __init__(
        self,
        settings: Resilience,
        max_endpoints: int = 65536,
        changed: Callable[[], None] | None = None,
    ) -> None:
        self.threshold = max(1, settings.consecutive_failures)
        self.base = settings.base_ejection
        self.maximum = settings.max_ejection
        self.percent = settings.max_ejection_percent
        self.max_endpoints = max_endpoints
        self._states: dict[EndpointKey, _EndpointHealth] = {}
        self.known = self._states
        """Endpoints with a recent failure (empty: nothing to tell on success)."""
        self.ejected = 0
        """Endpoints ejected now (may count expired ones until they are looked at)."""
        self.changed = changed
        """Told each time ``ejected`` changes (the pipeline keeps its filtering flag)."""
        self.ejections_total = 0

    def success(self, key: EndpointKey) -> None:
        state = self._states.get(key)
        if state is None:
            return  # the common case: never failed
        if state.ejected_until:
            return  # a late answer from before the ejection
        if state.probing:
            state.probing = False
            self.log.info("endpoint {endpoint} answered again: restored", endpoint=_shown(key))
        state.consecutive = 0
        if not state.ejections:
            del self._states[key]

    def failure(self, key: EndpointKey, now: float, peers: Sequence[Endpoint]) -> bool:
        """Count a failure of ``key`` (one of ``peers``, the ready endpoints of its service
        port); True when it was ejected now."""
        states = self._states
        state = states.get(key)
        if state is None:
            if len(states) >= self.max_endpoints:
                self._forget_healthy()
            state = states[key] = _EndpointHealth()
        if state.ejected_until:
            return False
        state.consecutive += 1
        if state.consecutive < self.threshold and not state.probing:
            return False
        # At most percent % of the service's endpoints (at least one of two or more), so
        # that a service-wide problem does not empty it.
        count = len(peers)
        allowed = min(max(1, count * self.percent // 100), count - 1)
        ejected_peers = sum(1 for e in peers if self.is_ejected((e.host, e.port), now))
        if ejected_peers >= allowed:
            return False
        if state.released_at and now - state.released_at > self.maximum:
            state.ejections = 0  # quiet long enough: the penalty starts over
        state.ejections += 1
        penalty = min(self.base * state.ejections, self.maximum)
        state.ejected_until = now + penalty
        state.probing = False
        state.consecutive = 0
        self.ejected += 1
        self.ejections_total += 1
        if self.changed is not None:
            self.changed()
        self.log.warn(
            "endpoint {endpoint} ejected for {penalty:g}s after {why}",
            endpoint=_shown(key),
            penalty=penalty,
            why="a failed probe" if state.ejections > 1 else f"{self.threshold} failures in a row",
        )
        return True

    def is_ejected(self, key: EndpointKey, now: float) -> bool:
        state = self._states.get(key)
        if state is None or not state.ejected_until:
            return False
        if state.ejected_until > now:
            return True
        self._release(state, now)
        return False

    def _release(self, state: _EndpointHealth, now: float) -> None:
        state.ejected_until = 0.0
        state.released_at = now
        state.probing = True
        self.ejected -= 1
        if self.changed is not None:
            self.changed()

    def sweep(self, now: float) -> None:
        """Release the endpoints whose penalty is over (also those no longer chosen)."""
        if not self.ejected:
            return
        for state in self._states.values():
            if state.ejected_until and state.ejected_until <= now:
                self._release(state, now)

    def _forget_healthy(self) -> None:
        for key in [k for k, s in self._states.items() if not s.ejected_until]:
            del self._states[key]

    def describe(self, now: float) -> list[dict[str, object]]:
        self.sweep(now)
        return [
            {
                "endpoint": _shown(key),
                "ejected_for": round(state.ejected_until - now, 3) if state.ejected_until else 0,
                "ejections": state.ejections,
                "consecutive_failures": state.consecutive,
                "probing": state.probing,
            }
            for key, state in sorted(self._states.items())
        ]


def _shown(key: EndpointKey) -> str:
    host, port = key
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class RetryBudget:
    """Retries may add ``ratio`` × requests plus ``minimum`` per window (a sliding window
    estimated from the current and the previous one: two counters, no list)."""

    __slots__ = (
        "minimum",
        "previous",
        "previous_retries",
        "ratio",
        "requests",
        "retries",
        "start",
        "window",
    )

    def __init__(self, ratio: float, minimum: int, window: float) -> None:
        self.ratio = ratio
        self.minimum = minimum
        self.window = window
        self.start = 0.0
        self.requests = 0
        self.retries = 0
        self.previous = 0
        self.previous_retries = 0

    def _roll(self, now: float) -> float:
        """The weight of the previous window (its part still inside the sliding one)."""
        elapsed = now - self.start
        window = self.window
        if elapsed >= window:
            if elapsed >= 2 * window:
                self.previous = self.previous_retries = 0
            else:
                self.previous, self.previous_retries = self.requests, self.retries
            self.requests = self.retries = 0
            self.start = now - (elapsed % window)
            elapsed = now - self.start
        return 1.0 - elapsed / window

    def request(self, now: float) -> None:
        if now - self.start >= self.window:
            self._roll(now)
        self.requests += 1

    def try_retry(self, now: float) -> bool:
        weight = self._roll(now)
        requests = self.requests + self.previous * weight
        retries = self.retries + self.previous_retries * weight
        if retries + 1 > self.minimum + self.ratio * requests:
            return False
        self.retries += 1
        return True


class ServiceState:
    """What the pipeline keeps per service: requests in progress, the retry budget and
    counters for the admin API."""

    __slots__ = ("active", "budget", "overloaded", "requests", "retries", "retries_denied",
                 "timeouts")

    def __init__(self, settings: Resilience) -> None:
        self.active = 0
        self.budget = RetryBudget(settings.retry_budget_ratio, settings.retry_budget_min,
                                  settings.retry_budget_window)
        self.requests = 0
        self.retries = 0
        self.retries_denied = 0
        self.overloaded = 0
        self.timeouts = 0

    def describe(self) -> dict[str, int]:
        return {
            "active": self.active,
            "requests": self.requests,
            "retries": self.retries,
            "retries_denied": self.retries_denied,
            "overloaded": self.overloaded,
            "timeouts": self.timeouts,
        }


INFINITY: Final = math.inf
