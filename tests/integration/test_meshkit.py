"""The integration tests' own kit (meshkit.py): what it promises the tests that use it."""

from __future__ import annotations

import meshkit
import pytest
from meshkit import PORT_CEILING, PORT_FLOOR, free_ports


def test_a_second_call_does_not_hand_out_the_first_calls_ports(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two calls that start their search at the same port (a topology's ports, then a test's
    own) get distinct ports, though the first call's are free until their listeners start."""
    monkeypatch.setattr(meshkit.random, "randrange", lambda floor, ceiling: 25000)
    first = free_ports(5)
    second = free_ports(5)
    assert not set(first) & set(second)
    assert all(PORT_FLOOR <= port < PORT_CEILING for port in first + second)


def test_it_remembers_a_bounded_number_of_ports() -> None:
    for _ in range(meshkit._RECENT // 50 + 5):
        free_ports(60)
    assert len(meshkit._handed_out) <= meshkit._RECENT
