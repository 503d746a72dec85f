"""
Warnings about a failure that keeps coming back, summarised (sans-IO: the caller gives the
time).  The reflector, the leader election and the replica discovery retry every few seconds
while the API server is away: without this each would warn every time, for as long as the
outage lasts.

The rule: the first failure is warned; the same text again only when the retry delay grew,
else once per ``interval``, with the count since the last warning; the repeats in between go
to debug.  A different text is warned at once, and so is the first failure after a success
(``reset``).
"""

from __future__ import annotations

from twisted.internet.defer import TimeoutError
from twisted.logger import Logger

WARN_INTERVAL = 300.0
"""How often a failure that repeats unchanged is warned about (seconds)."""

TEXT_LIMIT = 1000
"""Error texts kept in API output (``last_error`` on /status).  Log lines carry them whole:
the API errors name the kubeconfig, the context and what to check at their end."""


def error_text(error: BaseException | None) -> str:
    """An API call's failure in words, whole: the API errors end with the kubeconfig, the
    context and what to check."""
    if isinstance(error, TimeoutError):
        return "timed out"
    return str(error) or type(error).__name__


def bounded(text: str, limit: int = TEXT_LIMIT) -> str:
    """``text`` cut to ``limit`` characters (with "..." when cut)."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


class RepeatedWarnings:
    """Decides, for each failure, whether it is warned about or logged at debug, and logs it
    on ``log``."""

    def __init__(self, log: Logger, interval: float = WARN_INTERVAL) -> None:
        self.log = log
        self.interval = interval
        self.failures = 0
        """Failures since the last ``reset``."""
        self._warned: tuple[str, float, float] | None = None
        """(text, delay, when) of the last warning; ``_unwarned`` repeats since."""
        self._unwarned = 0

    def failed(self, text: str, now: float, log_format: str, *, base_delay: float = 0.0,
               **fields: object) -> bool:
        """Log the failure ``text`` at ``now`` with ``log_format`` and ``fields``: as a
        warning (True) or at debug (False).  ``base_delay`` is the retry delay before jitter:
        a longer one than at the last warning is warned about.  A summarised warning gets
        " ({again})" appended, with ``again`` and ``count`` (repeats since the last)."""
        self.failures += 1
        last = self._warned
        if last is not None and last[0] == text:
            self._unwarned += 1
            if base_delay <= last[1] and now - last[2] < self.interval:
                self.log.debug(log_format, **fields)
                return False
            again = (f"{self._unwarned} times since the last warning" if self._unwarned > 1
                     else "again")
            self.log.warn(log_format + " ({again})", again=again, count=self._unwarned,
                          **fields)
        else:
            self.log.warn(log_format, **fields)
        self._warned = (text, base_delay, now)
        self._unwarned = 0
        return True

    def reset(self) -> int:
        """It worked (or a new episode begins): the next failure is new.  Returns how many
        failures there were since the last reset."""
        failures, self.failures = self.failures, 0
        self._warned = None
        self._unwarned = 0
        return failures
