"""Command-line options shared by the two twistd plugins (``twistd edgemesh-router|edge``)."""

from __future__ import annotations

import os
from typing import Any, ClassVar

from twisted.python import usage

from ..catalog import Catalog
from ..observability import ObservabilityOptions
from ..security import TLSOptions
from ..transports import FrontLimits
from ..wire import Limits
from ._heap import DEFAULT_MMAP_THRESHOLD, MAX_MMAP_THRESHOLD
from ._resilience import ResilienceOptions

_MAX_WINDOW = (1 << 31) - 1
"""The largest window a hello may carry (wire/_connection.py)."""


def _seconds(value: str) -> float:
    number = float(value)
    if not 0 < number <= 86400:
        raise ValueError("must be between 0 and 86400 seconds")
    return number


def _size(value: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = value.strip().lower().removesuffix("ib").removesuffix("b")
    factor = units.get(text[-1:], 1)
    number = int(text[:-1] if text[-1:] in units else text)
    if number <= 0:
        raise ValueError("must be positive")
    return number * factor


def _threshold(value: str) -> int:
    if value.strip() == "0":
        return 0
    number = _size(value)
    if number > MAX_MMAP_THRESHOLD:
        raise ValueError("must be at most 32MiB (glibc's largest)")
    return number


def _count(value: str) -> int:
    number = int(value)
    if not 0 < number <= 100_000:
        raise ValueError("must be between 1 and 100000")
    return number


class CommonOptions(TLSOptions, ObservabilityOptions, ResilienceOptions):
    """Options of both roles; the TLS ones (--ca/--cert/--key/--tls-dir/--insecure) come from
    TLSOptions, --log-format/--access-log/--metrics-max-services from ObservabilityOptions."""

    optParameters: ClassVar[list[Any]] = [
        ["admin", None, None,
         "Admin API listener (endpoint string; a bare tcp:PORT listens on 127.0.0.1)."],
        ["connect-timeout", None, 5.0,
         "Seconds to connect to a pod, a ClusterIP or a peer.", _seconds],
        ["request-timeout", None, 30.0,
         "Seconds to wait for a response head after the end of the request body (then 504).",
         _seconds],
        ["header-timeout", None, 10.0,
         "Seconds a client may take to send a request head.", _seconds],
        ["client-idle-timeout", None, 60.0,
         "Seconds a client's keep-alive connection may stay idle between requests (then closed).",
         _seconds],
        ["pool-idle-timeout", None, 60.0,
         "Seconds a pooled connection to a pod or ClusterIP may stay idle (then closed).",
         _seconds],
        ["max-body", None, _size("1GiB"), "Largest request body accepted (then 413).", _size],
        ["max-headers", None, 100, "Most header fields in a request head (then 431).", _count],
        ["max-header-bytes", None, _size("60KiB"), "Largest request head (then 431).", _size],
        ["initial-window", None, Limits.initial_window,
         ("Body bytes a stream on a link to this node may send before it is granted more "
          "credit; every stream keeps this much however busy the link is."), _size],
        ["max-window", None, Limits.max_window,
         ("The most credit one stream on a link may hold when the receive budget allows "
          "(one large transfer on an idle link)."), _size],
        ["receive-budget", None, Limits.receive_budget,
         ("Credit beyond --initial-window that all streams of one link may hold together: "
          "what a link's peer can make this node buffer is this plus --initial-window per "
          "stream."), _size],
        ["malloc-mmap-threshold", None, DEFAULT_MMAP_THRESHOLD,
         ("Memory blocks of this size or more get their own mapping, returned to the system "
          "when freed (glibc's M_MMAP_THRESHOLD, fixed); 0: glibc's default, which rises "
          "with the blocks freed and lets large reads fragment the heap."), _threshold],
    ]

    optFlags: ClassVar[list[Any]] = [
        ["no-splice", None,
         ("Copy response bodies through the process on their way from a pod to a "
          "plaintext link, and from such a link to a client, instead of moving them "
          "between the sockets with splice(2)."),],
    ]

    def load_catalog(self, path: str) -> Catalog:
        if not os.path.isfile(path):
            raise usage.UsageError(f"--catalog {path}: no such file")
        from ..catalog import ManifestError, load_manifest  # a --catalog file only

        try:
            return load_manifest(path)
        except ManifestError as error:
            raise usage.UsageError(f"--catalog: {error}") from None

    def wire_limits(self) -> Limits:
        """The links' receive windows (--initial-window, --max-window, --receive-budget)."""
        initial, top = self["initial-window"], self["max-window"]
        if initial > _MAX_WINDOW or top > _MAX_WINDOW:
            raise usage.UsageError("--initial-window and --max-window: at most 2GiB - 1")
        if top < initial:
            raise usage.UsageError("--max-window must not be below --initial-window")
        return Limits(initial_window=initial, max_window=top,
                      receive_budget=self["receive-budget"])

    def front_limits(self) -> FrontLimits:
        return FrontLimits(
            max_body_bytes=self["max-body"],
            header_timeout=self["header-timeout"],
            idle_timeout=self["client-idle-timeout"],
            max_header_count=self["max-headers"],
            max_header_bytes=self["max-header-bytes"],
        )
