"""
JSON-lines logs: a ``twisted.logger`` observer that writes each event as one JSON object
per line (``time``, ``level``, ``namespace``, ``message``, then the event's own fields),
and the hooks that make twistd use it.

With twistd, the log observer is chosen before the plugin's ``makeService`` runs, by the
``--logger`` option (a zero-argument factory, given by name).  ``--log-format json`` (an
option of both roles) sets that option for the user; ``twistd --logger
edgemesh.observability.json_logger edgemesh-edge ...`` does the same by hand.  Either way
the lines go where twistd's text lines would: ``--logfile PATH`` (rotated by size as twistd
does), else standard output with ``--nodaemon``, else ``twistd.log``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import IO, Any

from twisted.logger import ILogObserver, LogEvent, formatEvent
from twisted.python.failure import Failure
from twisted.python.logfile import LogFile
from zope.interface import implementer

__all__ = ["MAX_FIELD", "JSONLinesObserver", "json_log_line", "json_logger", "twistd_log_file"]

MAX_FIELD = 4096
"""Longest string value written for one field (the rest is cut, with '...')."""
MAX_TRACEBACK = 16384

_TOP = ("time", "level", "namespace", "message", "traceback")
_LEGACY = frozenset({"message", "format", "isError", "system", "time", "why", "failure", "printed"})
"""Keys of twisted.python.log events: their content is in the formatted message already."""


_encode = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), default=str).encode


def _bounded(text: str, limit: int = MAX_FIELD) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _value(value: object) -> object:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return _bounded(value)
    if isinstance(value, bytes):
        return _bounded(value[:MAX_FIELD].decode("ascii", "backslashreplace"))
    return _bounded(str(value))


class _Clock:
    """ISO 8601 UTC timestamps, the seconds part formatted once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def format(self, when: float) -> str:
        second = int(when)
        if second != self._second:
            self._second = second
            self._prefix = datetime.fromtimestamp(second, timezone.utc).strftime(
                "%Y-%m-%dT%H:%M:%S")
        return f"{self._prefix}.{int((when - second) * 1000):03d}Z"


def _message(event: LogEvent) -> str:
    """The event's formatted text.  ``str.format_map`` for the plain formats (several times
    faster than twisted's formatter); twisted's ``formatEvent`` for the rest: its call syntax
    (``{f()}``), missing fields, legacy events."""
    text = event.get("log_format")
    if isinstance(text, str):
        try:
            return text.format_map(event)
        except Exception:  # noqa: BLE001, S110 -- any problem: twisted's formatter says it better
            pass
    return formatEvent(event)


def json_log_line(event: LogEvent, clock: _Clock | None = None) -> str:
    """One event as one JSON object on one line (with its newline)."""
    when = event.get("log_time")
    level = event.get("log_level")
    record: dict[str, object] = {
        "time": (clock or _Clock()).format(when if isinstance(when, float | int) else time.time()),
        "level": getattr(level, "name", "info"),
        "namespace": event.get("log_namespace", "log_legacy"),
        "message": _bounded(_message(event)),
    }
    failure = event.get("log_failure")
    if isinstance(failure, Failure):
        record["traceback"] = _bounded(failure.getTraceback(), MAX_TRACEBACK)
    legacy = "log_legacy" in event or "isError" in event
    for key, value in event.items():
        if key[:4] == "log_" or key in _TOP or (legacy and key in _LEGACY):
            continue
        kind = type(value)
        if kind is str:
            record[key] = value if len(value) <= MAX_FIELD else value[:MAX_FIELD] + "..."
        elif kind is int or kind is float or kind is bool or value is None:
            record[key] = value
        else:
            record[key] = _value(value)
    return _encode(record) + "\n"


@implementer(ILogObserver)
class JSONLinesObserver:
    """Writes every event to ``stream`` as a JSON line, flushing after each."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self._clock = _Clock()

    def __call__(self, event: LogEvent) -> None:
        try:
            line = json_log_line(event, self._clock)
        except Exception as error:  # noqa: BLE001 -- a bad event must not silence the log
            line = json.dumps({"level": "error", "message": f"unloggable event: {error!r}"}) + "\n"
        self.stream.write(line)
        flush = getattr(self.stream, "flush", None)
        if flush is not None:
            flush()


def twistd_log_file(options: Mapping[str, Any]) -> IO[str]:
    """Where twistd would write its text log, for its (parsed) ``options``."""
    name = options.get("logfile") or ""
    if name == "-" or (not name and options.get("nodaemon")):
        return sys.stdout
    return LogFile.fromFullPath(name or "twistd.log")  # type: ignore[no-any-return]


_twistd_options: Mapping[str, Any] | None = None
"""twistd's options, when ``--log-format json`` chose ``json_logger`` for it."""


def json_logger() -> ILogObserver:
    """The log observer factory for twistd's ``--logger`` option."""
    stream = twistd_log_file(_twistd_options) if _twistd_options is not None else sys.stdout
    return JSONLinesObserver(stream)


def use_json_logger(twistd_options: Any) -> None:
    """Make twistd (whose ``ServerOptions`` are ``twistd_options``, still being parsed)
    start with ``json_logger``."""
    global _twistd_options
    twistd_options["logger"] = f"{__name__.rsplit('.', 1)[0]}.json_logger"
    _twistd_options = twistd_options

