"""
The router's stream-port listeners (issue 12, ``--stream-ports``): every replica, leader
or not, watches the managed EndpointSlices and listens on each router port they name for
a stream port of an edge service (sources/_streamports.py); a port no longer named is
closed.  A connection on such a port is a byte stream to that service port from its
first byte, opened through the pipeline exactly as a CONNECT to the router would be.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.interfaces import IAddress
from twisted.logger import Logger

from ..exchange import (
    IByteStream,
    IRequestBody,
    IResponder,
    IStreamSource,
    MeshError,
    Reason,
    RequestHead,
    SourceKind,
)
from ..transports import FrontLimits, HookedFrontFactory, HookedFrontProtocol

if TYPE_CHECKING:
    from ..routing import Listening
    from ..sources import KubeAPI, PortKey, PortRange
    from ._node import Listener
    from ._router import RouterNode

__all__ = ["StreamPortListeners", "stream_endpoint"]

log = Logger(namespace="edgemesh.roles.streamports")


def stream_endpoint(port: int, interface: str | None) -> str:
    """The server endpoint string of one stream port (``interface``: None, all)."""
    if not interface:
        return f"tcp:{port}"
    return f"tcp:{port}:interface=" + interface.replace(":", "\\:")


def interface_of(description: str | None) -> str | None:
    """The ``interface=`` of a server endpoint string (the router's ``--http``)."""
    if not description:
        return None
    parts = description.replace("\\:", "\0").split(":")
    for part in parts[1:]:
        if part.startswith("interface="):
            return part[len("interface="):].replace("\0", ":") or None
    return None


OpenResolved = Callable[[SourceKind, str, int, "tuple[str, int] | None", str, IStreamSource],
                        IByteStream]
"""``Pipeline.dispatch_stream_resolved``."""


class _StreamPortHook:
    """One connection on a stream port: a byte stream to the port's service port."""

    def __init__(self, listeners: StreamPortListeners, port: int) -> None:
        self.listeners = listeners
        self.port = port

    def connected(self, front: HookedFrontProtocol) -> None:
        client = front.client_address
        front.become_stream(lambda source: self.listeners.open(self.port, client, source))

    def first_bytes(self, front: HookedFrontProtocol, data: bytes) -> bool:
        return True

    def dispatch(
        self, source: SourceKind, head: RequestHead, responder: IResponder
    ) -> IRequestBody:
        raise MeshError(Reason.forbidden_route, "a stream port carries byte streams only")

    def open_connect(self, authority: bytes, client: str, source: IStreamSource) -> IByteStream:
        raise MeshError(Reason.forbidden_route, "a stream port carries byte streams only")

    def upgrades_as_streams(self) -> bool:
        return False

    def open_upgrade(self, authority: bytes, client: str, source: IStreamSource) -> IByteStream:
        raise MeshError(Reason.forbidden_route, "a stream port carries byte streams only")


class _Slices:
    """The Reflector's handler: the managed slices, by key."""

    def __init__(self, changed: Callable[[], None]) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.changed = changed

    @staticmethod
    def _key(obj: dict[str, Any]) -> str | None:
        meta = obj.get("metadata")
        if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
            return None
        return f"{meta.get('namespace') or 'default'}/{meta['name']}"

    def replace(self, resource: Any, items: list[dict[str, Any]]) -> None:
        self.objects = {k: o for o in items if (k := self._key(o)) is not None}
        self.changed()

    def upsert(self, resource: Any, obj: dict[str, Any]) -> None:
        key = self._key(obj)
        if key is not None:
            self.objects[key] = obj
            self.changed()

    def delete(self, resource: Any, obj: dict[str, Any]) -> None:
        key = self._key(obj)
        if key is not None and self.objects.pop(key, None) is not None:
            self.changed()


class StreamPortListeners(Service):
    """Listens on the router ports the managed slices name for stream ports."""

    def __init__(
        self,
        router: RouterNode,
        api: KubeAPI,
        ports: PortRange,
        interface: str | None,
        namespace: str | None = None,
        limits: FrontLimits | None = None,
    ) -> None:
        from ..sources import EDGEMESH_MANAGER, ENDPOINT_SLICES, MANAGED_BY_LABEL, Reflector

        self.router = router
        self.reactor = router.reactor
        self.ports = ports
        self.interface = interface
        self.limits = limits or FrontLimits()
        self.slices = _Slices(self.refresh)
        self.reflector = Reflector(self.reactor, api, ENDPOINT_SLICES, self.slices,
                                   namespace=namespace,
                                   label_selector=f"{MANAGED_BY_LABEL}={EDGEMESH_MANAGER}")
        self.named: dict[int, PortKey] = {}
        self.listening: dict[int, Listener] = {}
        self.failed: set[int] = set()
        """Named ports that could not be bound (busy): tried again at the next change."""
        # A catalog endpoint at one of these ports of this host would loop through it.
        router.more_listening.append(self.bound)

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self.reflector.start()

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        self.reflector.stop()
        for port in sorted(self.listening):
            self._close(port)
        self.router.listening_changed()

    def refresh(self) -> None:
        """Listen on what the slices name now, close what they no longer name."""
        from ..sources import named_stream_ports

        self.named = named_stream_ports(self.slices.objects.values(), self.ports)
        if not self.running:
            return
        before = set(self.listening)
        for port in sorted(set(self.listening) - set(self.named)):
            self._close(port)
        self.failed &= set(self.named)
        for port in sorted(set(self.named) - set(self.listening)):
            self._open(port)
        if set(self.listening) != before:
            self.router.listening_changed()

    def _open(self, port: int) -> None:
        from ._node import Listener

        description = stream_endpoint(port, self.interface)
        factory = HookedFrontFactory(self.reactor, SourceKind.router,
                                     lambda addr: self._hook(port, addr), self.limits)
        factory.rejected = self.router.observer.rejected
        listener = Listener(self.reactor, SourceKind.router, description, factory)
        try:
            listener.startService()
        except Exception as error:  # noqa: BLE001 -- a busy port costs that port only
            self.failed.add(port)
            log.error("stream port {port} ({key}): cannot listen: {error}", port=port,
                      key="/".join(self.named[port]), error=str(error))
            return
        self.failed.discard(port)
        self.listening[port] = listener
        log.info("stream port {port} listening for {key}", port=port,
                 key="/".join(self.named[port]))

    def _close(self, port: int) -> None:
        listener = self.listening.pop(port)
        listener.stopService()
        log.info("stream port {port} closed: no managed EndpointSlice names it", port=port)

    def bound(self) -> list[Listening]:
        """The sockets of the stream ports listening now (``stream-port-N``)."""
        return [entry for port, listener in sorted(self.listening.items())
                if (entry := listener.listening(f"stream-port-{port}")) is not None]

    def _hook(self, port: int, addr: IAddress | None) -> _StreamPortHook:
        return _StreamPortHook(self, port)

    def open(self, port: int, client: str, source: IStreamSource) -> IByteStream:
        """A connection on ``port``: a byte stream to the service port it stands for."""
        key = self.named.get(port)
        if key is None:
            raise MeshError(Reason.unknown_service, f"router port {port} names no service")
        namespace, name, port_name = key
        pipeline = self.router.pipeline
        service = pipeline.catalog.services.get(f"{namespace}/{name}")
        number = next((p.port for p in service.ports if p.name == port_name
                       and p.protocol == "TCP"), None) if service is not None else None
        if number is None:
            raise MeshError(Reason.unknown_service,
                            f"no port {port_name!r} of service {namespace}/{name}")
        return pipeline.dispatch_stream_resolved(SourceKind.router, f"{namespace}/{name}",
                                                 number, None, client, source)

    def status(self) -> dict[str, object]:
        return {"named": len(self.named), "listening": sorted(self.listening),
                "failed": sorted(self.failed)}
