"""Command-line options shared by the two twistd plugins (``twistd edgemesh-router|edge``)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any, ClassVar

from twisted.internet.interfaces import IHostnameResolver, IReactorPluggableNameResolver
from twisted.python import usage
from zope.interface import implementer

from ..catalog import Catalog, is_dns1123_subdomain
from ..observability import ObservabilityOptions
from ..security import ANY_PEER, TLSOptions
from ..transports import FrontLimits, with_backlog
from ..wire import Limits
from ._heap import DEFAULT_MMAP_THRESHOLD, MAX_MMAP_THRESHOLD, TRIM_INTERVAL
from ._resilience import ResilienceOptions, positive_seconds, seconds_or_off

_MAX_WINDOW = (1 << 31) - 1
"""The largest window a hello may carry (wire/_connection.py)."""

_SIZE_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_SIZE_SHAPE = "a size (bytes, or with k, m, g: KiB, MiB, GiB)"


def _size_bytes(value: str) -> int:
    """``value`` in bytes, any sign (the callers choose the range)."""
    text = value.strip().lower().removesuffix("ib").removesuffix("b")
    factor = _SIZE_UNITS.get(text[-1:], 1)
    try:
        number = int(text[:-1] if text[-1:] in _SIZE_UNITS else text)
    except ValueError:
        raise ValueError(f"{value!r} is not {_SIZE_SHAPE}") from None
    return number * factor


def _size(value: str) -> int:
    number = _size_bytes(value)
    if number <= 0:
        raise ValueError("must be more than 0 bytes")
    return number


MIN_HEADER_BYTES = 1 << 10
"""The smallest --max-header-bytes: a request line and a few header fields (a browser's head
is 0.5-2 KiB); below it every request would be answered 431."""


def _head_size(value: str) -> int:
    number = _size(value)
    if number < MIN_HEADER_BYTES:
        raise ValueError("must be at least 1KiB (a request line and its header fields)")
    return number


def _threshold(value: str) -> int:
    if value.strip() == "0":
        return 0
    number = _size_bytes(value)
    if not 0 < number <= MAX_MMAP_THRESHOLD:
        raise ValueError("must be 0 (glibc's default) or from 1 byte to 32MiB (glibc's largest)")
    return number


def _count(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a whole number") from None
    if not 0 < number <= 100_000:
        raise ValueError("must be between 1 and 100000")
    return number


def _reason(error: ValueError, value: str) -> str:
    """Why a coercer refused ``value``; Python's own int()/float() texts made readable
    (Kubernetes' int and float options, ResilienceOptions' counts and ratio)."""
    text = str(error)
    if text.startswith("invalid literal for int()"):
        return f"{value!r} is not a whole number"
    if text.startswith("could not convert string to float"):
        return f"{value!r} is not a number"
    return text


class _NamedCoerce(usage.CoerceParameter):
    """Twisted's coercing dispatcher, whose refusals name the option: Twisted's own says
    "Parameter type enforcement failed: ..." and leaves the user to guess which one."""

    def dispatch(self, parameterName: str, value: str | None) -> None:
        if value is None:
            raise usage.UsageError(f"--{parameterName}: needs a value")
        try:
            coerced = self.coerce(value)
        except ValueError as error:
            raise usage.UsageError(f"--{parameterName}: {_reason(error, value)}") from None
        self.options.opts[parameterName] = coerced


def check_node_name(option: str, name: str, typed: str | None = None, *,
                    any_name: bool = False) -> None:
    """Refuse a node name no catalog nor certificate can carry (a DNS-1123 subdomain, as
    ``edgemesh certs issue`` wants): TLS would only fail at the first dial (an empty name is
    an IDNA error) and never retry.  ``typed``: the option's whole value, when ``name`` is a
    part of it; ``any_name``: ``*`` (any router certificate of the CA) is accepted."""
    shown = name if typed is None else typed
    if any_name and name == ANY_PEER:
        return
    if not name:
        raise usage.UsageError(f"{option} {shown!r}: the node name is empty")
    if not is_dns1123_subdomain(name):
        raise usage.UsageError(
            f"{option} {shown!r}: {name!r} is not a node name (lower-case letters, digits, "
            "'-' and '.', as a Kubernetes node name)")


@implementer(IReactorPluggableNameResolver)
class _Unbound:
    """The reactor endpoint strings are parsed with to check them: Twisted's parsers only keep
    it (nothing is bound nor dialled); a HostnameEndpoint asks it for its resolver."""

    nameResolver: IHostnameResolver | None = None

    def installNameResolver(self, resolver: IHostnameResolver) -> IHostnameResolver:
        raise NotImplementedError("never runs: endpoints are only built here")


_UNBOUND = _Unbound()
_NOT_A_NUMBER = re.compile(r"invalid literal for int\(\) with base 10: (.*)")
_UNKNOWN_TYPE = re.compile(r"Unknown endpoint type: (.*)")
_UNKNOWN_KEY = re.compile(r".* got an unexpected keyword argument (.*)")
_MISSING = re.compile(r".* missing \d+ required positional arguments?: (.*)")
_TOO_MANY = re.compile(r".* positional arguments? but \d+ (?:was|were) given")


def _endpoint_reason(description: str, error: Exception, example: str) -> str:
    """Why Twisted could not build ``description``'s endpoint, in the user's words rather
    than those of the parser's Python call."""
    text = str(error)
    if isinstance(error, OSError):  # ssl: reads its certificate and key when built
        return f"{error.filename or description}: {error.strerror or text}"
    if match := _NOT_A_NUMBER.fullmatch(text):
        fields = (part.partition("=") for part in description.split(":")[1:])
        name = next((key for key, equals, value in fields
                     if equals and repr(value) == match[1]), "port")
        return f"{name} {match[1]} is not a number"
    if match := _UNKNOWN_TYPE.fullmatch(text):
        return f"unknown endpoint type {match[1]} (e.g. {example})"
    if match := _UNKNOWN_KEY.fullmatch(text):
        return f"unknown parameter {match[1]}"
    if match := _MISSING.fullmatch(text):
        return f"missing {match[1]}"
    if _TOO_MANY.fullmatch(text):
        return "too many ':'-separated parts"
    if isinstance(error, (IndexError, KeyError)) and description.startswith("systemd:"):
        return "systemd passed no such socket (LISTEN_FDS)"
    return f"not an endpoint string ({text or type(error).__name__})"


def check_endpoint(option: str, value: str, *, server: bool, used: str | None = None) -> None:
    """Refuse an endpoint string Twisted cannot build, naming the option: at start, rather
    than a traceback when twistd binds it (after the other listeners took their ports) or at
    the first dial.  The endpoint is only built.  ``used``: the string the role really
    listens on or dials, when it differs from ``value`` (--admin's loopback)."""
    from twisted.internet.endpoints import clientFromString, serverFromString

    description = value if used is None else used
    # A listener binds with_backlog's string: checked after the one typed, whose faults
    # are the user's own words.
    for text in (description, with_backlog(description)) if server else (description,):
        try:
            if server:
                serverFromString(_UNBOUND, text)
            else:
                clientFromString(_UNBOUND, text)
        except AttributeError:
            return  # a plugin's endpoint that needs a real reactor to be built: left to start
        except (ValueError, KeyError, TypeError, IndexError, OSError) as error:
            example = "tcp:PORT, unix:PATH" if server else "tcp:HOST:PORT"
            raise usage.UsageError(
                f"{option} {value!r}: {_endpoint_reason(text, error, example)}") from None


def shown_default(value: object, coerce: Callable[[str], Any] | None) -> object:
    """A parameter's default as a user would type it (--help, and docs/gen_config.py):
    on/off, sizes in KiB/MiB/GiB, whole seconds without ".0"."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if coerce in (_size, _head_size, _threshold) and isinstance(value, int) and value > 0:
        for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
            if value % size == 0:
                return f"{value // size}{unit}"
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class CommonOptions(TLSOptions, ObservabilityOptions, ResilienceOptions):
    """Options of both roles; the TLS ones (--ca/--cert/--key/--tls-dir/--insecure) come from
    TLSOptions, --log-format/--access-log/--metrics-max-services from ObservabilityOptions."""

    optParameters: ClassVar[list[Any]] = [
        ["admin", None, None,
         "Admin API listener (endpoint string; a bare tcp:PORT listens on 127.0.0.1)."],
        ["connect-timeout", None, 5.0,
         "Seconds to connect to a pod, a ClusterIP or a peer.", positive_seconds],
        ["request-timeout", None, 30.0,
         "Seconds to wait for a response head after the end of the request body (then 504).",
         positive_seconds],
        ["header-timeout", None, 10.0,
         "Seconds a client may take to send a request head (the admin API's too).",
         positive_seconds],
        ["client-idle-timeout", None, 60.0,
         "Seconds a client's keep-alive connection may stay idle between requests (then closed).",
         positive_seconds],
        ["pool-idle-timeout", None, 60.0,
         "Seconds a pooled connection to a pod or ClusterIP may stay idle (then closed).",
         positive_seconds],
        ["max-body", None, _size("1GiB"), "Largest request body accepted (then 413).", _size],
        ["max-headers", None, 100, "Most header fields in a request head (then 431).", _count],
        ["max-header-bytes", None, _size("60KiB"),
         "Largest request head (then 431; at least 1KiB).", _head_size],
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
        ["malloc-trim-interval", None, TRIM_INTERVAL,
         ("Seconds between two returns of the heap's free pages to the system (glibc's "
          "malloc_trim), with one more a few seconds after a link closes; 0: never."),
         seconds_or_off],
    ]

    optFlags: ClassVar[list[Any]] = [
        ["no-splice", None,
         ("Copy response bodies through the process on their way from a pod to a "
          "plaintext link, and from such a link to a client, instead of moving them "
          "between the sockets with splice(2)."),],
    ]

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        # Every parameter of the role, mixins included: refusals name the option.
        for name, dispatcher in self._dispatch.items():
            if isinstance(dispatcher, usage.CoerceParameter):
                self._dispatch[name] = _NamedCoerce(self, dispatcher.coerce)  # type: ignore[no-untyped-call]

    def getUsage(self, width: int | None = None) -> str:
        """--help, with each default as the user would type it (not Python's repr)."""
        typed = self.defaults
        self.defaults = {
            name: shown_default(value, getattr(self._dispatch.get(name), "coerce", None))
            for name, value in typed.items()
        }
        try:
            return super().getUsage(width)
        finally:
            self.defaults = typed  # the parsed values and docs/gen_config.py read these

    def check_listeners(self, *names: str) -> None:
        """--admin and the role's other listener options (``names``): each a server endpoint
        string Twisted can build."""
        for name in ("admin", *names):
            value = self[name]
            if value is None:
                continue
            used = None
            if name == "admin":
                from ._admin import admin_endpoint  # the admin API's modules: with --admin only

                used = admin_endpoint(value)
            check_endpoint(f"--{name}", value, server=True, used=used)

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
