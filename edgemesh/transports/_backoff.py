"""
The reconnect delays of a link that ClientService keeps up (the edge's tunnel).

ClientService counts failed attempts and starts over at every connection it makes; for a
link that is a TCP (and TLS) connection and a hello.  A router that refuses the edge right
after the hello (its catalog not listed yet, a node it does not know) would then be dialled
again after the first delay each time, forever: ~800 connections a second from 1000 edges.
``ReconnectBackoff`` is a ClientService ``retryPolicy`` that keeps its own count instead:
every disconnect or failed dial counts, and only the role says when the link was really
accepted (``reset``).  A refusal's retry-after hint (GOAWAY) sets a floor on the next delay,
jittered so that the edges a router refused together do not come back together.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from twisted.application.internet import backoffPolicy
from twisted.internet.interfaces import IReactorTime


class ReconnectBackoff:
    """A ClientService ``retryPolicy``: exponential with jitter (Twisted's ``backoffPolicy``:
    ``min(initial * factor**n, maximum) + jitter()``), ``n`` counting every attempt since
    the last ``reset``; never less than a pending retry-after hint (plus up to half of it)."""

    def __init__(
        self,
        initial: float = 0.5,
        maximum: float = 30.0,
        factor: float = 1.5,
        jitter: Callable[[], float] = random.random,
        clock: IReactorTime | None = None,
        stable_after: float = 10.0,
    ) -> None:
        self.jitter = jitter
        self.policy = backoffPolicy(initialDelay=initial, maxDelay=maximum, factor=factor,
                                    jitter=lambda: self.jitter())
        self.failures = 0
        self.hint: float | None = None
        """The last refusal's retry-after, used by the next delay only."""
        self.last_delay: float | None = None
        self.clock = clock
        self.stable_after = stable_after
        self.up_at: float | None = None
        """When the last link finished its hello (``link_up``; needs ``clock``)."""

    def __call__(self, attempt: int) -> float:
        # ``attempt`` is ClientService's count, which a hello-then-refusal resets: ignored.
        up_at, self.up_at = self.up_at, None
        clock = self.clock
        if up_at is not None and clock is not None and clock.seconds() - up_at >= self.stable_after:
            self.reset()  # the link that was just lost had stayed up: accepted
        self.failures += 1
        delay = self.policy(self.failures)
        hint, self.hint = self.hint, None
        if hint is not None:
            delay = max(delay, hint * (1 + 0.5 * self.jitter()))
        self.last_delay = delay
        return delay

    def retry_after(self, seconds: float) -> None:
        """The peer said when to come back (GOAWAY's retry-after)."""
        self.hint = seconds

    def link_up(self) -> None:
        """A link finished its hello: if it stays up ``stable_after`` seconds, its loss
        starts the delays over (for links with no other sign of acceptance, hubs)."""
        if self.clock is not None:
            self.up_at = self.clock.seconds()

    def reset(self) -> None:
        """The link was accepted (or stayed up): the next loss starts from the first delay."""
        self.failures = 0
        self.hint = None
