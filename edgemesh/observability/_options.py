"""Command-line options of both roles for logs and metrics (a mixin of CommonOptions)."""

from __future__ import annotations

from typing import Any, ClassVar

from twisted.python import usage

from ._exchanges import ObservabilityConfig
from ._logs import use_json_logger

__all__ = ["LOG_FORMATS", "ObservabilityOptions"]

LOG_FORMATS = ("text", "json")


def _log_format(value: str) -> str:
    if value not in LOG_FORMATS:
        raise ValueError(f"must be 'text' or 'json', not {value!r}")
    return value


def _on_off(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("on", "yes", "true", "1"):
        return True
    if lowered in ("off", "no", "false", "0"):
        return False
    raise ValueError(f"must be 'on' or 'off', not {value!r}")


def _services(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a whole number") from None
    if not 1 <= number <= 100_000:
        raise ValueError("must be between 1 and 100000")
    return number


class ObservabilityOptions(usage.Options):
    """The access-log, log-format and metrics options both twistd plugins share."""

    optParameters: ClassVar[list[Any]] = [
        ["log-format", None, "text",
         "Log lines as 'text' (twistd's format) or 'json' (one JSON object per line).",
         _log_format],
        ["access-log", None, False,
         ("on|off: a log event per exchange (service, path, status, duration, bytes, endpoint, "
          "error).  Off by default: costly."), _on_off],
        ["metrics-max-services", None, 1000,
         "Services with a label of their own in /metrics; the others count as 'other'.",
         _services],
    ]

    def parseOptions(self, options: list[str] | None = None) -> None:
        super().parseOptions(options)  # type: ignore[no-untyped-call]
        parent = getattr(self, "parent", None)
        if self["log-format"] == "json" and parent is not None and "logger" in parent:
            # Running under twistd: its logger is chosen before makeService, by name.
            if parent["logger"] is not None:
                raise usage.UsageError("--log-format json and twistd's --logger both choose "
                                       "the log observer: give only one")
            use_json_logger(parent)

    def observability_config(self) -> ObservabilityConfig:
        return ObservabilityConfig(
            access_log=self["access-log"], max_services=self["metrics-max-services"]
        )
