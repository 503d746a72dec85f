"""
List-then-watch for one resource type, as client-go's Reflector does it, on an injected
clock and a KubeAPI.

States and what moves them (``_enter`` is the only place the state changes)::

    idle ──start──► listing ──all pages──► watching ──stream ends──► watching (same rv)
                       │  ▲                  │  ▲
        429/5xx/refused│  │ 410 / ERROR 410  │  │ 429/5xx/refused at watch start,
                       ▼  │ (relist at once) ▼  │ or a broken stream (re-watch from rv)
                     backoff ◄──── other errors, ERROR events (then relist) ──┘

- A list reads every page (``limit``/``continue``) before it hands the items over at
  once: ``Handler.replace`` swaps the whole set, so the consumer can emit deletes for what
  vanished; nothing is replaced by half a list.  A 410 in the middle (the continue token
  expired) restarts the list.
- A watch starts from the list's (or the last event's or bookmark's) resourceVersion,
  asks for bookmarks, and for a random timeout in [min, 2 min] like client-go.  A
  client-side deadline a little after that catches a server that went silent.
- 410 Gone, as the HTTP status or as an ERROR event, relists at once (the first time;
  again within a backoff's reach, it waits).  Other ERROR events relist after a backoff.
- 429, 5xx, refused or lost connections: a jittered exponential backoff, then the same
  step again (a watch resumes from its resourceVersion without a relist).  The consumer's
  cache, and so the edges' catalog, stays as it was meanwhile.
- One backoff spans whole list + watch cycles, as client-go's: a list that succeeds does
  not reset it (RBAC that allows list but not watch would relist every second), only two
  minutes without a backoff do.  Identical warnings are summarised (``RepeatedWarnings``):
  the first, then one per longer delay, then one per ``warn_interval``, each with the count
  since the last.
- ``problem`` is the last failure in words until a watch is up again; ``problem_persistent``
  when it will not pass by itself (401, 403, TLS): the router's /readyz shows them.
"""

from __future__ import annotations

import enum
import random as _random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ._kubeapi import APIError, APIUnreachable, KubeAPI, ListResult, Resource, Watch
from ._warnings import RepeatedWarnings


@dataclass(frozen=True)
class WatchTiming:
    """How long to watch and to back off (client-go's defaults where it has them)."""

    min_watch_timeout: float = 300.0
    """Each watch asks the server to end it after a random time in [min, 2 min]."""
    deadline_grace: float = 30.0
    """Past the timeout it asked for, the client drops a watch the server did not end."""
    backoff_initial: float = 0.8
    backoff_max: float = 30.0
    backoff_factor: float = 2.0
    backoff_jitter: float = 1.0
    """A delay d is stretched to d * (1 + jitter * random())."""
    backoff_reset: float = 120.0
    """More than this since the last backoff began (a list + watch that stayed up) resets
    the backoff to ``backoff_initial``."""
    warn_interval: float = 300.0
    """A failure that repeats unchanged at the longest delay is warned about this often."""
    page_size: int = 500


class State(enum.Enum):
    """Where a Reflector is in its list-then-watch cycle."""

    idle = "idle"
    listing = "listing"
    watching = "watching"
    backoff = "backoff"
    stopped = "stopped"


class Handler(Protocol):
    """What a reflector feeds."""

    def replace(self, resource: Resource, items: list[dict[str, Any]]) -> None:
        """The complete current set (after a list): everything else is gone."""

    def upsert(self, resource: Resource, obj: dict[str, Any]) -> None:
        """ADDED or MODIFIED."""

    def delete(self, resource: Resource, obj: dict[str, Any]) -> None:
        """DELETED (the object as it was last)."""


class Backoff:
    """client-go's ExponentialBackoffManager, as its reflector uses it (0.8 s doubling to
    30 s, jitter 1.0, reset after 2 min): client-go tools/cache/reflector.go creates
    ``wait.NewExponentialBackoffManager(800*time.Millisecond, 30*time.Second, 2*time.Minute,
    2.0, 1.0, clock)`` ("If we don't backoff for 2min, assume API server is healthy and we
    reset the backoff"), and apimachinery's getNextBackoff resets when
    ``clock.Now().Sub(lastBackoffStart) > backoffResetDuration``, then sets lastBackoffStart
    to now.  Plain state on a time given to it: no clock of its own."""

    def __init__(self, timing: WatchTiming, random: Callable[[], float]) -> None:
        self.timing = timing
        self.random = random
        self.steps = 0
        """Backoffs since the last reset."""
        self.last_start: float | None = None

    def base(self, now: float) -> float:
        """The un-jittered delay the next ``delay(now)`` would stretch."""
        timing = self.timing
        steps = 0 if self._expired(now) else self.steps
        return min(timing.backoff_max, timing.backoff_initial * timing.backoff_factor ** min(
            steps, 64))

    def delay(self, now: float) -> float:
        base = self.base(now)
        if self._expired(now):
            self.steps = 0
        self.last_start = now
        self.steps += 1
        return base * (1 + self.timing.backoff_jitter * self.random())

    def _expired(self, now: float) -> bool:
        return self.last_start is not None and now - self.last_start > self.timing.backoff_reset


def _resource_version(obj: dict[str, Any]) -> str | None:
    meta = obj.get("metadata")
    version = meta.get("resourceVersion") if isinstance(meta, dict) else None
    return version if isinstance(version, str) and version else None


class Reflector:
    """Keeps a Handler in step with one resource type (optionally one namespace)."""

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        api: KubeAPI,
        resource: Resource,
        handler: Handler,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        timing: WatchTiming | None = None,
        random: Callable[[], float] = _random.random,
    ) -> None:
        self.clock = clock
        self.api = api
        self.resource = resource
        self.handler = handler
        self.namespace = namespace
        self.label_selector = label_selector
        self.timing = timing or WatchTiming()
        self.random = random
        self.state = State.idle
        self.resource_version: str | None = None
        self.synced = False
        """A list has completed at least once."""
        self.backoff = Backoff(self.timing, random)
        self.counts = {"lists": 0, "watches": 0, "relists_gone": 0, "backoffs": 0,
                       "events": 0, "bookmarks": 0}
        self.on_synced: Callable[[], None] | None = None
        self.problem_of: tuple[str, str] | None = None
        """The last failure, until a watch is up again: (what failed, why in words), e.g.
        ``("watch services", "403 Forbidden: ...")``."""
        self.problem_persistent = False
        """The problem will not pass without a change of configuration (401, 403, TLS)."""
        self.on_problem: Callable[[], None] | None = None
        """Called when ``problem`` changes."""
        self.warnings = RepeatedWarnings(self.log, self.timing.warn_interval)
        self._timer: IDelayedCall | None = None
        self._pending: Deferred[Any] | None = None
        self._watch: Watch | None = None
        self._watch_started = 0.0
        self._watch_events = 0
        self._last_gone = -1e18

    # -- control -----------------------------------------------------------------------

    def start(self) -> None:
        if self.state is State.idle:
            self._list()

    def stop(self) -> None:
        self._enter(State.stopped)

    @property
    def problem(self) -> str | None:
        """The last failure in words (``"watch services: 403 Forbidden..."``), until a watch
        is up again."""
        return None if self.problem_of is None else ": ".join(self.problem_of)

    @property
    def failures(self) -> int:
        """Backoffs since the backoff was last reset."""
        return self.backoff.steps

    @property
    def name(self) -> str:
        scope = f" in {self.namespace}" if self.namespace else ""
        return f"{self.resource.plural}{scope}"

    def _enter(self, state: State) -> None:
        """Leave whatever was running (timer, request, watch), then be in ``state``."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        pending, self._pending = self._pending, None
        if pending is not None and not pending.called:
            pending.cancel()
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.cancel()
        if self.state is not State.stopped:
            self.state = state

    # -- listing -----------------------------------------------------------------------

    def _list(self) -> None:
        self._enter(State.listing)
        if self.state is State.stopped:
            return
        self.counts["lists"] += 1
        self._page([], None)

    def _page(self, items: list[dict[str, Any]], token: str | None) -> None:
        request = self.api.list(self.resource, self.namespace, label_selector=self.label_selector,
                                limit=self.timing.page_size, continue_token=token)
        self._pending = request
        request.addCallbacks(self._paged, self._list_failed, callbackArgs=(request, items),
                             errbackArgs=(request,))

    def _paged(self, result: ListResult, request: Deferred[Any],
               items: list[dict[str, Any]]) -> None:
        if self._pending is not request:
            return
        items.extend(result.items)
        if result.continue_token:
            self._page(items, result.continue_token)
            return
        self._pending = None
        self.resource_version = result.resource_version
        self.handler.replace(self.resource, items)
        first = not self.synced
        self.synced = True
        self.log.debug("{name}: listed {count} at {version}", name=self.name,
                       count=len(items), version=result.resource_version)
        if first and self.on_synced is not None:
            self.on_synced()
        self._start_watch()

    def _list_failed(self, reason: Failure, request: Deferred[Any]) -> None:
        if self._pending is not request:
            return  # cancelled by _enter
        self._pending = None
        error = reason.value
        if isinstance(error, APIError) and error.gone:
            # The continue token expired mid-list: start the list over.
            self.log.info("{name}: list continuation expired, listing again", name=self.name)
            self._gone_then(self._list)
            return
        self._backoff(f"list failed: {_describe(reason)}", self._list, error, "list")

    # -- watching ----------------------------------------------------------------------

    def _start_watch(self) -> None:
        self._enter(State.watching)
        if self.state is State.stopped:
            return
        assert self.resource_version is not None
        timing = self.timing
        timeout = int(timing.min_watch_timeout * (1 + self.random()))
        self.counts["watches"] += 1
        self._watch_started = self.clock.seconds()
        self._watch_events = 0
        watch = self.api.watch(self.resource, self.namespace,
                               resource_version=self.resource_version, timeout_seconds=timeout,
                               on_event=self._event, label_selector=self.label_selector)
        self._watch = watch
        self._timer = self.clock.callLater(timeout + timing.deadline_grace, self._overdue, watch)
        watch.done.addCallbacks(self._watch_ended, self._watch_failed, callbackArgs=(watch,),
                                errbackArgs=(watch,))
        started: Deferred[None] | None = getattr(watch, "started", None)
        if started is not None:
            started.addCallback(lambda _: self._watch_up(watch))

    def _watch_up(self, watch: Watch) -> None:
        """The server accepted the watch: whatever failed before works again."""
        if self._watch is watch:
            self._set_problem(None)

    def _overdue(self, watch: Watch) -> None:
        self._timer = None
        if self._watch is watch:
            self.log.info("{name}: watch outlived its timeout, starting anew", name=self.name)
            self._start_watch()

    def _event(self, kind: str, obj: dict[str, Any]) -> None:
        if self.state is not State.watching:
            return
        if kind == "ERROR":
            error = APIError.from_status(obj)
            if error.gone:
                self.log.info("{name}: watch expired (410 at {version}), listing again",
                              name=self.name, version=self.resource_version)
                self._gone_then(self._list)
            else:
                self._backoff(f"watch error event: {error}", self._list, error, "watch")
            return
        self._set_problem(None)
        version = _resource_version(obj)
        if kind == "BOOKMARK":
            self.counts["bookmarks"] += 1
            if version is not None:
                self.resource_version = version
            return
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            self.log.warn("{name}: ignoring a watch event of type {kind!r}", name=self.name,
                          kind=kind[:40])
            return
        self.counts["events"] += 1
        self._watch_events += 1
        if kind == "DELETED":
            self.handler.delete(self.resource, obj)
        else:
            self.handler.upsert(self.resource, obj)
        if version is not None:
            self.resource_version = version

    def _watch_ended(self, _: None, watch: Watch) -> None:
        if self._watch is not watch:
            return
        self._watch = None
        lived = self.clock.seconds() - self._watch_started
        if lived < 1.0 and not self._watch_events:
            # Ended as soon as it started with nothing in it: do not spin.
            self._backoff("watch ended at once", self._start_watch, None)
            return
        self._start_watch()

    def _watch_failed(self, reason: Failure, watch: Watch) -> None:
        if self._watch is not watch:
            return
        self._watch = None
        error = reason.value
        if isinstance(error, APIError):
            if error.gone:
                self.log.info("{name}: watch from {version} is gone (410), listing again",
                              name=self.name, version=self.resource_version)
                self._gone_then(self._list)
                return
            if not error.transient or error.status == 504:
                # 400, 403, 504 "too large resource version", or a stream we could not
                # read (an event that is not JSON, or too large: status 0): resuming from
                # the same version would meet the same thing, a list does not.
                self._backoff(f"watch refused: {error}", self._list, error, "watch")
                return
        self._backoff(f"watch failed: {_describe(reason)}", self._start_watch, error, "watch")

    # -- waiting -----------------------------------------------------------------------

    def _gone_then(self, step: Callable[[], None]) -> None:
        """Relist now, unless the last 410 was recent (then after a backoff)."""
        self.counts["relists_gone"] += 1
        now = self.clock.seconds()
        recent = now - self._last_gone < self.timing.backoff_initial
        self._last_gone = now
        if recent:
            self._backoff("410 again", step, None)
        else:
            step()

    def _backoff(self, why: str, then: Callable[[], None], error: object,
                 verb: str | None = None) -> None:
        self._enter(State.backoff)
        if self.state is State.stopped:
            return
        timing = self.timing
        now = self.clock.seconds()
        base = self.backoff.base(now)
        delay = self.backoff.delay(now)
        if isinstance(error, APIError) and error.retry_after is not None:
            delay = max(delay, min(error.retry_after, timing.backoff_max))
        self.counts["backoffs"] += 1
        if error is not None and verb is not None:
            self._set_problem((f"{verb} {self.name}", _text(error)),
                              bool(getattr(error, "persistent", False)))
        self._warn(why, base, delay, now, fresh=self.backoff.steps == 1)

        def resume() -> None:
            self._timer = None
            then()

        self._timer = self.clock.callLater(delay, resume)

    def _warn(self, why: str, base: float, delay: float, now: float, fresh: bool) -> None:
        """Warn about a new failure (or the first since the backoff reset); summarise one
        that repeats (``RepeatedWarnings``)."""
        if fresh:
            self.warnings.reset()
        self.warnings.failed(why, now, "{name}: {why}; retrying in {delay:.1f}s",
                             base_delay=base, name=self.name, why=why, delay=delay)

    def _set_problem(self, problem: tuple[str, str] | None, persistent: bool = False) -> None:
        if (problem, persistent) == (self.problem_of, self.problem_persistent):
            return
        self.problem_of = problem
        self.problem_persistent = persistent
        if self.on_problem is not None:
            self.on_problem()


def _describe(reason: Failure) -> str:
    return _text(reason.value)


def _text(error: object) -> str:
    # twisted.web.client wraps causes in lists of Failures (ResponseFailed...).
    causes = getattr(error, "reasons", None)
    if isinstance(causes, list) and causes and isinstance(causes[0], Failure):
        error = causes[0].value
    text = str(error) or type(error).__name__
    # TreqKubeAPI's texts name the server, the CA and what to check: keep them whole.
    limit = 200 if not isinstance(error, (APIError, APIUnreachable)) else 1000
    return text if len(text) <= limit else text[:limit - 3] + "..."
