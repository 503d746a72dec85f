"""The admin API: a small JSON web site on its own (loopback by default) listener."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from ..catalog import catalog_to_wire

if TYPE_CHECKING:
    from ._node import MeshNode


class _JSON(Resource):
    isLeaf = True

    def __init__(self, produce: Any) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.produce = produce

    def render_GET(self, request: Request) -> bytes:
        status, body = self.produce()
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(body, indent=1, sort_keys=True, default=str).encode() + b"\n"


def admin_site(node: MeshNode) -> Site:
    root = Resource()

    def healthz() -> tuple[int, object]:
        return (200 if node.serving else 503), {"status": "ok" if node.serving else "starting"}

    def catalog() -> tuple[int, object]:
        return 200, catalog_to_wire(node.catalog)

    def status() -> tuple[int, object]:
        return 200, {**node.status(), "pipeline": node.pipeline.describe()}

    root.putChild(b"healthz", _JSON(healthz))
    root.putChild(b"catalog", _JSON(catalog))
    root.putChild(b"status", _JSON(status))
    edges = getattr(node, "edges_view", None)
    if edges is not None:
        root.putChild(b"edges", _JSON(lambda: (200, edges())))
    site = Site(root, reactor=node.reactor)
    site.noisy = False
    site.log = lambda request: None  # type: ignore[method-assign]
    return site
