"""``edgemesh twistd ...``: twistd with only edgemesh's two plugins.

``twistd edgemesh-edge`` looks its plugin up among every dropin: unpickling Twisted's own
dropin cache imports ``twisted.trial.itrial`` (hence ``unittest``, ``difflib``) and
``twisted.words.iwords`` into the node, 0.7-1.0 MiB of RssAnon it never uses.  This runs the
same ``twistd`` (same options, same ``runApp``) with the plugin list given, so nothing is
scanned; ``twistd edgemesh-edge`` keeps working as before.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from twisted.application import app
from twisted.application.service import IServiceMaker

# ServerOptions: twistd's own for this platform (it re-exports _twistd_unix's or _twistw's).
from twisted.scripts.twistd import ServerOptions, runApp  # type: ignore[attr-defined]


def _edgemesh_plugins(interface: Any, package: Any = None) -> Iterable[Any]:
    if interface is not IServiceMaker:
        return []
    from twisted.plugins.edgemesh_plugins import edgemeshEdge, edgemeshRouter

    return [edgemeshEdge, edgemeshRouter]


class EdgemeshServerOptions(ServerOptions):
    """twistd's options; the subcommands are edgemesh's plugins only."""

    _getPlugins = staticmethod(_edgemesh_plugins)

    def opt_reactor(self, shortName: str) -> None:
        """Which reactor to use (see --help-reactors; "edgemesh" is edgemesh's own)."""
        # twistd finds a reactor by name through the same plugin scan this command avoids;
        # edgemesh's own is installed directly, any other name goes through twistd's lookup.
        if shortName != "edgemesh":
            super().opt_reactor(shortName)  # type: ignore[no-untyped-call]
            return
        from ..transports import install_reactor

        install_reactor()
        self["reactor"] = shortName

    opt_r = opt_reactor


def main(argv: list[str]) -> int:
    """Run ``twistd ARGV`` (e.g. ``-n edgemesh-edge --node edge-1 ...``); returns at exit."""
    # twistd reads sys.argv and names itself by its first two words in usage errors.
    sys.argv = ["edgemesh twistd", *argv]
    app.run(runApp, EdgemeshServerOptions)
    return 0
