"""
SO_ORIGINAL_DST: where a REDIRECTed connection was going before netfilter rewrote it.

``getsockopt(SOL_IP, SO_ORIGINAL_DST, 16)`` on the accepted socket returns a
``struct sockaddr_in``: ``sin_family`` (2 bytes, host byte order), ``sin_port`` (2 bytes,
network order), ``sin_addr`` (4 bytes), 8 bytes of padding.  The parsing is a pure function
so that it is tested without a kernel.  IPv4 only (IPv6 would be IP6T_SO_ORIGINAL_DST on
SOL_IPV6 with a sockaddr_in6; the capture rules are IPv4 only as well).
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from typing import Any

SO_ORIGINAL_DST = 80
"""From <linux/netfilter_ipv4.h>."""
SOL_IP = getattr(socket, "SOL_IP", 0)
SOCKADDR_IN_SIZE = 16
AF_INET = 2
"""Linux's AF_INET (``socket.AF_INET`` is the same number on Linux)."""


def parse_sockaddr_in(raw: bytes, byteorder: str = sys.byteorder) -> tuple[str, int]:
    """(``"a.b.c.d"``, port) from a ``struct sockaddr_in``; ValueError if it is not one."""
    if len(raw) < 8:
        raise ValueError(f"sockaddr_in needs at least 8 bytes, got {len(raw)}")
    family = int.from_bytes(raw[0:2], byteorder)  # type: ignore[arg-type]
    if family != AF_INET:
        raise ValueError(f"not an IPv4 address (address family {family})")
    port = int.from_bytes(raw[2:4], "big")
    if port == 0:
        raise ValueError("port 0")
    return str(ipaddress.IPv4Address(raw[4:8])), port


def original_destination(sock: Any) -> tuple[str, int] | None:
    """The original destination of an accepted TCP socket, or None when the kernel has
    none (not REDIRECTed and not tracked, conntrack missing, an IPv6 socket)."""
    try:
        raw = sock.getsockopt(SOL_IP, SO_ORIGINAL_DST, SOCKADDR_IN_SIZE)
    except (OSError, AttributeError):
        return None
    try:
        return parse_sockaddr_in(raw)
    except ValueError:
        return None
