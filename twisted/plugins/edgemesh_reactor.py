"""``twistd --reactor edgemesh``: edgemesh's epoll reactor (edgemesh.transports._reactor).

A file of its own beside edgemesh_plugins.py; like it, this module only names things.
"""

from twisted.application.reactors import Reactor

edgemeshReactor = Reactor(
    "edgemesh",
    "edgemesh.transports._reactor",
    "epoll, dispatching reads without Twisted's log-context layers (Linux)",
)
