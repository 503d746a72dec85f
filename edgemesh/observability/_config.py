"""A node's effective configuration as JSON, for the admin API's ``/config``.

Only settings and file paths: key material never is a setting (TLS keys are paths), and
anything that looks like it (bytes, PEM text) is replaced by ``"<redacted>"`` all the same.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
from collections.abc import Mapping

from ..catalog import Catalog

__all__ = ["REDACTED", "config_to_json"]

REDACTED = "<redacted>"
_MAX_DEPTH = 8


def config_to_json(value: object, depth: int = 0) -> object:
    """``value`` (a RouterConfig, an EdgeConfig, or any part of one) as JSON values."""
    if depth > _MAX_DEPTH:
        return "..."
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return REDACTED if "-----BEGIN" in value else value
    if isinstance(value, bytes | bytearray | memoryview):
        return REDACTED
    if isinstance(value, enum.Enum):
        return config_to_json(value.value, depth + 1)
    if isinstance(value, Catalog):
        # Its content is /catalog; here only what it is.
        return {
            "revision": value.revision, "services": len(value.services), "nodes": len(value.nodes)}
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network
                  | ipaddress.IPv4Address | ipaddress.IPv6Address):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, object] = {}
        for field in dataclasses.fields(value):
            item = getattr(value, field.name)
            if callable(item) and not dataclasses.is_dataclass(item):
                continue  # hooks (e.g. how capture reads a socket's destination)
            out[field.name] = config_to_json(item, depth + 1)
        return out
    if isinstance(value, Mapping):
        return {str(k): config_to_json(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [config_to_json(v, depth + 1) for v in value]
        return sorted(items, key=str) if isinstance(value, set | frozenset) else items
    return str(value)
