"""twistd plugins for edgemesh: ``twistd edgemesh-router`` and ``twistd edgemesh-edge``.

Only names live here; the Options and makeService of each role are in edgemesh.roles.
There is deliberately no twisted/plugins/__init__.py: twistd would skip every plugin.
"""

from twisted.application.service import ServiceMaker

edgemeshRouter = ServiceMaker(
    "edgemesh-router",
    "edgemesh.roles.router_tap",
    "edgemesh router: the cloud side, tunnels to every edge node",
    "edgemesh-router",
)
edgemeshEdge = ServiceMaker(
    "edgemesh-edge",
    "edgemesh.roles.edge_tap",
    "edgemesh edge: the node agent, proxies pods' traffic across the mesh",
    "edgemesh-edge",
)
