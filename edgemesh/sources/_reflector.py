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

from ._kubeapi import APIError, KubeAPI, ListResult, Resource, Watch


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
    backoff_reset: float = 60.0
    """A watch that lived this long resets the backoff."""
    page_size: int = 500


class State(enum.Enum):
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
        self.failures = 0
        """Consecutive failures, for the backoff."""
        self.counts = {"lists": 0, "watches": 0, "relists_gone": 0, "backoffs": 0,
                       "events": 0, "bookmarks": 0}
        self.on_synced: Callable[[], None] | None = None
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
        self.failures = 0
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
        self._backoff(f"list failed: {_describe(reason)}", self._list, error)

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
                self._backoff(f"watch error event: {error}", self._list, error)
            return
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
        self.failures = 0
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
        if lived >= self.timing.backoff_reset:
            self.failures = 0
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
                self._backoff(f"watch refused: {error}", self._list, error)
                return
        if self.clock.seconds() - self._watch_started >= self.timing.backoff_reset:
            self.failures = 0
        self._backoff(f"watch failed: {_describe(reason)}", self._start_watch, error)

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

    def _backoff(self, why: str, then: Callable[[], None], error: object) -> None:
        self._enter(State.backoff)
        if self.state is State.stopped:
            return
        timing = self.timing
        base = min(timing.backoff_max,
                   timing.backoff_initial * timing.backoff_factor ** min(self.failures, 30))
        delay = base * (1 + timing.backoff_jitter * self.random())
        if isinstance(error, APIError) and error.retry_after is not None:
            delay = max(delay, min(error.retry_after, timing.backoff_max))
        self.failures += 1
        self.counts["backoffs"] += 1
        log = self.log.warn if self.failures <= 3 or self.failures % 20 == 0 else self.log.debug
        log("{name}: {why}; retrying in {delay:.1f}s", name=self.name, why=why, delay=delay)

        def resume() -> None:
            self._timer = None
            then()

        self._timer = self.clock.callLater(delay, resume)


def _describe(reason: Failure) -> str:
    error = reason.value
    # twisted.web.client wraps causes in lists of Failures (ResponseFailed...).
    causes = getattr(error, "reasons", None)
    if isinstance(causes, list) and causes and isinstance(causes[0], Failure):
        error = causes[0].value
    text = str(error) or type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."
