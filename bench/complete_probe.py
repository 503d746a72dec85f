"""
How a target finds a responder's optional ``complete`` (issue 17): the old
``getattr(responder, "complete", None)`` probe against ``COMPLETERS[type(responder)]``,
each with the call that follows, for a class that declares ICompletingResponder and one
that does not.  Plain timeit, no reactor:

    python bench/complete_probe.py
"""

from __future__ import annotations

import sys
import timeit

from zope.interface import implementer

from edgemesh.exchange import COMPLETERS, ICompletingResponder, IResponder

NUMBER = 500_000


@implementer(ICompletingResponder)
class Whole:
    def complete(self, head: object, body: bytes) -> None:
        pass


@implementer(IResponder)
class Parts:
    pass


STATEMENTS = {
    "getattr probe": "c = getattr(r, 'complete', None)\nif c is not None: c(None, b'')",
    "COMPLETERS": "c = COMPLETERS[type(r)]\nif c is not None: c(r, None, b'')",
}


def main() -> None:
    print(sys.version.split()[0])
    for name, stmt in STATEMENTS.items():
        for label, responder in (("declares complete", Whole()), ("lacks it", Parts())):
            namespace = {"r": responder, "COMPLETERS": COMPLETERS}
            best = min(timeit.repeat(stmt, globals=namespace, number=NUMBER, repeat=7))
            print(f"{name:14s} {label:18s} {best / NUMBER * 1e9:6.1f} ns")


if __name__ == "__main__":
    main()
