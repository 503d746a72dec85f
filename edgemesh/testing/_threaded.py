"""Run a KubeApiServer on a private reactor in a background thread.

For tests that drive the server with a blocking client (the official ``kubernetes`` client):
the server gets its own reactor instance (never the global one, never installed), running in
a daemon thread; every control call is marshalled into that thread and waited for, with a
timeout, so a test can never hang on it.
"""

from __future__ import annotations

import builtins
import os
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure

from ._apiserver import ExpiredForm, KubeApiServer
from ._resources import JSONObject, ResourceType

__all__ = ["ThreadedKubeApiServer"]

# How long a control call may take before the caller gets TimeoutError.
DEFAULT_CALL_TIMEOUT = 10.0


def _private_reactor() -> Any:
    """A fresh reactor instance that is not installed as the global reactor."""
    try:
        from twisted.internet.epollreactor import EPollReactor
    except ImportError:  # pragma: no cover -- not Linux
        from twisted.internet.selectreactor import SelectReactor

        return SelectReactor()
    return EPollReactor()


class ThreadedKubeApiServer:
    """A :class:`KubeApiServer` on its own reactor thread, with a blocking control API.

    Use it as a context manager (or call :meth:`start` / :meth:`stop`)::

        with ThreadedKubeApiServer(token="t") as api:
            api.write_kubeconfig(path)
            api.create(make_service("web"))

    The keyword arguments are those of :class:`KubeApiServer` (minus the reactor).
    """

    def __init__(self, *, call_timeout: float = DEFAULT_CALL_TIMEOUT,
                 **server_options: Any) -> None:
        self.call_timeout = call_timeout
        self.reactor: Any = _private_reactor()
        self.server = KubeApiServer(self.reactor, **server_options)
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> ThreadedKubeApiServer:
        if self._thread is not None:
            raise RuntimeError("already started")
        self._thread = threading.Thread(
            target=self.reactor.run,
            kwargs={"installSignalHandlers": False},
            name="edgemesh-test-apiserver",
            daemon=True,
        )
        self._thread.start()
        self.call(self.server.start)
        return self

    def stop(self) -> None:
        thread = self._thread
        if thread is None:
            return
        try:
            if thread.is_alive():
                self.call(self.server.stop)
        finally:
            self._thread = None
            if thread.is_alive():
                self.reactor.callFromThread(self.reactor.stop)
                thread.join(self.call_timeout)

    def __enter__(self) -> ThreadedKubeApiServer:  # noqa: PYI034 -- py3.10 has no Self
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run `function` in the reactor thread and return its result (waiting on Deferreds).

        Raises what it raised (e.g. StatusError), or TimeoutError after `call_timeout`.
        """
        return self._call(self.call_timeout, function, *args, **kwargs)

    def _call(self, timeout: float, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self._thread is None or not self._thread.is_alive():
            raise RuntimeError("the API server thread is not running")
        done = threading.Event()
        outcome: dict[str, Any] = {}

        def succeeded(value: object) -> None:
            outcome["value"] = value
            done.set()

        def failed(failure: Failure) -> None:
            outcome["failure"] = failure
            done.set()

        def run() -> None:
            result: Deferred[Any] = maybeDeferred(function, *args, **kwargs)
            result.addCallbacks(succeeded, failed)

        self.reactor.callFromThread(run)
        if not done.wait(timeout):
            raise TimeoutError(f"{function!r} did not finish within {timeout} s")
        if "failure" in outcome:
            failure: Failure = outcome["failure"]
            failure.raiseException()
        return outcome["value"]

    # -- facts (read without marshalling: immutable once started) --------------------------

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def token(self) -> str | None:
        return self.server.token

    def write_kubeconfig(
        self, path: str | os.PathLike[str], *, namespace: str | None = None, **options: Any
    ) -> str:
        """:meth:`KubeApiServer.write_kubeconfig` (user, groups, token, ca_pem, context)."""
        return self.server.write_kubeconfig(path, namespace=namespace, **options)

    # -- the KubeApiServer control API, marshalled -----------------------------------------

    @property
    def resource_version(self) -> int:
        version: int = self.call(lambda: self.server.resource_version)
        return version

    def create(self, obj: JSONObject, *, keep_status: bool = True) -> JSONObject:
        return self._json(self.server.create, obj, keep_status=keep_status)

    def apply(self, obj: JSONObject) -> JSONObject:
        return self._json(self.server.apply, obj)

    def replace(self, obj: JSONObject, *, keep_status: bool = True) -> JSONObject:
        return self._json(self.server.replace, obj, keep_status=keep_status)

    def patch(self, resource: str | ResourceType, name: str, patch: Any,
              **options: Any) -> JSONObject:
        return self._json(self.server.patch, resource, name, patch, **options)

    def get(self, resource: str | ResourceType, name: str, *,
            namespace: str = "default") -> JSONObject:
        return self._json(self.server.get, resource, name, namespace=namespace)

    def delete(self, resource: str | ResourceType, name: str, *,
               namespace: str = "default") -> JSONObject:
        return self._json(self.server.delete, resource, name, namespace=namespace)

    def list(self, resource: str | ResourceType, *,
             namespace: str | None = None) -> list[JSONObject]:
        items: list[JSONObject] = self.call(self.server.list, resource, namespace=namespace)
        return items

    def _json(self, function: Callable[..., JSONObject], *args: Any, **kwargs: Any) -> JSONObject:
        result: JSONObject = self.call(function, *args, **kwargs)
        return result

    def restart(self, down_for: float = 0.2, *, compact: bool = False) -> None:
        """Drop all connections, refuse for `down_for` s, come back on the same port (blocks)."""
        self.call(self.server.restart, down_for, compact=compact)

    def drop_connections(self) -> None:
        self.call(self.server.drop_connections)

    def compact(self, resource_version: int | None = None) -> None:
        self.call(self.server.compact, resource_version)

    def set_history_size(self, size: int) -> None:
        self.call(self.server.set_history_size, size)

    def set_history_seconds(self, seconds: float | None) -> None:
        self.call(self.server.set_history_seconds, seconds)

    def fail_next(self, count: int = 1, status: int = 500, **options: Any) -> None:
        self.call(self.server.fail_next, count, status, **options)

    def clear_faults(self) -> None:
        self.call(self.server.clear_faults)

    def set_expired_form(self, form: ExpiredForm) -> None:
        self.call(self.server.set_expired_form, form)

    def set_expired_reason(self, reason: str) -> None:
        self.call(self.server.set_expired_reason, reason)

    def set_bookmark_interval(self, seconds: float | None) -> None:
        self.call(self.server.set_bookmark_interval, seconds)

    def send_bookmarks(self) -> int:
        sent: int = self.call(self.server.send_bookmarks)
        return sent

    def close_watches(self, resource: str | ResourceType | None = None) -> int:
        ended: int = self.call(self.server.close_watches, resource)
        return ended

    def expire_watches(self, resource: str | ResourceType | None = None) -> int:
        ended: int = self.call(self.server.expire_watches, resource)
        return ended

    def watch_count(self, resource: str | ResourceType | None = None) -> int:
        count: int = self.call(self.server.watch_count, resource)
        return count

    def request_log(self) -> builtins.list[tuple[str, str]]:
        """(method, uri) of the latest requests, oldest first."""
        log: builtins.list[tuple[str, str]] = self.call(lambda: list(self.server.request_log))
        return log

    def wait_for_watches(
        self, count: int = 1, resource: str | ResourceType | None = None, timeout: float = 5.0
    ) -> None:
        """Block until at least `count` watches (of `resource`) are open; TimeoutError after
        `timeout` seconds."""

        def waiting() -> Deferred[None]:
            return self.server.wait_for_watches(count, resource).addTimeout(timeout, self.reactor)

        try:
            self._call(timeout + 1.0, waiting)
        except defer.TimeoutError:
            raise TimeoutError(f"fewer than {count} watches open after {timeout} s") from None
