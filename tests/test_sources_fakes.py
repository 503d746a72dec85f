"""A scripted KubeAPI for the sources' unit tests (no tests here): every call is recorded and
answered by the test (fire the Deferred, send watch events, end or fail the watch)."""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred

from edgemesh.sources import APIError, ListResult, Resource
from edgemesh.sources._kubeapi import EventHandler


@dataclass
class FakeWatch:
    resource: Resource
    namespace: str | None
    resource_version: str
    timeout_seconds: int
    label_selector: str | None
    on_event: EventHandler
    done: Deferred[None] = field(default_factory=Deferred)
    started: Deferred[None] = field(default_factory=Deferred)
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True

    def accept(self) -> None:
        """The server answered 200: the stream is open."""
        self.started.callback(None)

    def send(self, kind: str, obj: dict[str, Any]) -> None:
        assert not self.cancelled, "event into a cancelled watch"
        self.on_event(kind, obj)

    def end(self) -> None:
        self.done.callback(None)

    def fail(self, error: Exception) -> None:
        self.done.errback(error)


@dataclass
class FakeList:
    resource: Resource
    namespace: str | None
    label_selector: str | None
    limit: int | None
    continue_token: str | None
    result: Deferred[ListResult]
    cancelled: bool = False

    def answer(self, items: list[dict[str, Any]], version: str, token: str | None = None) -> None:
        self.result.callback(ListResult(items, version, token))

    def fail(self, error: Exception) -> None:
        self.result.errback(error)


class FakeAPI:
    def __init__(self) -> None:
        self.lists: list[FakeList] = []
        self.watches: list[FakeWatch] = []
        self.writes: list[tuple[str, Resource, str | None, str | None, Any,
                                Deferred[Any]]] = []

    def list(self, resource: Resource, namespace: str | None = None, *,
             label_selector: str | None = None, limit: int | None = None,
             continue_token: str | None = None) -> Deferred[ListResult]:
        pending = FakeList(resource, namespace, label_selector, limit, continue_token,
                           Deferred(lambda d: setattr(pending, "cancelled", True)))
        self.lists.append(pending)
        return pending.result

    def watch(self, resource: Resource, namespace: str | None, *, resource_version: str,
              timeout_seconds: int, on_event: EventHandler,
              label_selector: str | None = None) -> FakeWatch:
        watch = FakeWatch(resource, namespace, resource_version, timeout_seconds,
                          label_selector, on_event)
        self.watches.append(watch)
        return watch

    def _write(self, verb: str, resource: Resource, namespace: str | None, name: str | None,
               body: Any) -> Deferred[Any]:
        result: Deferred[Any] = Deferred()
        self.writes.append((verb, resource, namespace, name, body, result))
        return result

    def get(self, resource: Resource, namespace: str | None, name: str) -> Deferred[Any]:
        return self._write("get", resource, namespace, name, None)

    def create(self, resource: Resource, namespace: str | None,
               body: Mapping[str, Any]) -> Deferred[Any]:
        return self._write("create", resource, namespace, None, body)

    def replace(self, resource: Resource, namespace: str | None, name: str,
                body: Mapping[str, Any]) -> Deferred[Any]:
        return self._write("replace", resource, namespace, name, body)

    def delete(self, resource: Resource, namespace: str | None, name: str,
               resource_version: str | None = None) -> Deferred[None]:
        return self._write("delete", resource, namespace, name, resource_version)

    # -- helpers for tests ----------------------------------------------------------------

    def open_lists(self, resource: Resource | None = None) -> builtins.list[FakeList]:
        return [p for p in self.lists if not p.result.called and not p.cancelled
                and (resource is None or p.resource is resource)]

    def open_watches(self, resource: Resource | None = None) -> builtins.list[FakeWatch]:
        return [w for w in self.watches if not w.cancelled and not w.done.called
                and (resource is None or w.resource is resource)]

    def last_list(self, resource: Resource | None = None) -> FakeList:
        (pending,) = self.open_lists(resource)
        return pending

    def last_watch(self, resource: Resource | None = None) -> FakeWatch:
        (watch,) = self.open_watches(resource)
        return watch


def gone(message: str = "too old resource version") -> APIError:
    return APIError(410, "Expired", message)


def status(code: int, reason: str = "Expired") -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
            "reason": reason, "message": "too old resource version: 1 (5)"}
