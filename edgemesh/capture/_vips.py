"""
Addresses of services for capture and DNS: the clusterIP, or for a headless service
(no clusterIP; StatefulSets use them) a *virtual IP* from a range the mesh owns.

Allocation, deterministic and stable:

- a service keeps the address it has (across catalog changes and, through a small JSON
  file beside the catalog store, across restarts);
- a new service gets ``home = sha256("namespace/name") mod size`` within the range,
  probing upwards (wrapping) past addresses already taken; new services are placed in
  sorted key order, so the same catalog from an empty state always gives the same result;
- a deleted service's address is released; re-created, it most likely gets the same one
  back (its home), unless another service took it meanwhile.

Each pod of a headless service whose endpoints carry a ``hostname`` (a StatefulSet's
``pod-0``) gets one too, keyed ``namespace/name/hostname``, by the same rules: DNS answers
``pod-0.name...`` with it, and a captured connection to it reaches that pod only.

The range's network and broadcast addresses are never handed out.  When the range is
full, the services left over get no address (logged): they stay reachable by name through
the service bus proxy, not by capture.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from contextlib import suppress

from twisted.logger import Logger

from ..catalog import Catalog, Service, ServicePort
from ..exchange import MeshError, Reason

VIRTUAL_IPS_FILE = "virtual-ips.json"
FILE_FORMAT = "edgemesh.virtual-ips"
MAX_FILE_BYTES = 16 * 1024 * 1024

log = Logger()


def _usable(network: ipaddress.IPv4Network) -> tuple[int, int]:
    """(first usable offset, count) in ``network``."""
    if network.prefixlen >= 31:
        return 0, network.num_addresses
    return 1, network.num_addresses - 2


def home_offset(key: str, network: ipaddress.IPv4Network) -> int:
    """Where ``namespace/name`` starts probing, as an offset into ``network``."""
    first, count = _usable(network)
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return first + int.from_bytes(digest[:8], "big") % count


def assign_virtual_ips(
    keys: Iterable[str],
    network: ipaddress.IPv4Network,
    previous: Mapping[str, ipaddress.IPv4Address] | None = None,
) -> dict[str, ipaddress.IPv4Address]:
    """An address for each key (``namespace/name``), keeping ``previous`` ones that are
    still wanted, inside ``network`` and not shared.  Pure and deterministic."""
    wanted = sorted(set(keys))
    first, count = _usable(network)
    base = int(network.network_address)
    taken: dict[int, str] = {}
    result: dict[str, ipaddress.IPv4Address] = {}
    for key in wanted:
        address = (previous or {}).get(key)
        if address is None or address not in network:
            continue
        offset = int(address) - base
        if not first <= offset < first + count or offset in taken:
            continue
        taken[offset] = key
        result[key] = address
    for key in wanted:
        if key in result:
            continue
        if len(taken) >= count:
            break  # full: the rest get none
        offset = home_offset(key, network)
        while offset in taken:
            offset = first + (offset - first + 1) % count
        taken[offset] = key
        result[key] = ipaddress.IPv4Address(base + offset)
    return result


class VirtualIPs:
    """The virtual IPs of the headless services of the live catalog, recomputed lazily when
    the catalog object changes, persisted in ``path`` (None: memory only)."""

    def __init__(self, network: ipaddress.IPv4Network, path: str | None = None) -> None:
        self.network = network
        self.path = path
        self._catalog: Catalog | None = None
        self._by_key: dict[str, ipaddress.IPv4Address] = self._load()
        self._by_address: dict[ipaddress.IPv4Address, str] = {}
        self.unassigned: list[str] = []

    def _load(self) -> dict[str, ipaddress.IPv4Address]:
        if self.path is None:
            return {}
        try:
            with open(self.path, "rb") as file:
                data = file.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return {}
        except OSError as error:
            log.warn("virtual IPs: cannot read {path}: {error}", path=self.path,
                     error=error.strerror or str(error))
            return {}
        try:
            if len(data) > MAX_FILE_BYTES:
                raise ValueError("too large")
            document = json.loads(data)
            if document.get("format") != FILE_FORMAT:
                raise ValueError("not a virtual-IPs file")
            if document.get("network") != str(self.network):
                log.info("virtual IPs: range changed from {old} to {new}; reassigning",
                         old=document.get("network"), new=str(self.network))
                return {}
            assignments = document["assignments"]
            if not isinstance(assignments, dict):
                raise TypeError("assignments is not a mapping")
            return {str(k): ipaddress.IPv4Address(v) for k, v in assignments.items()}
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            log.warn("virtual IPs: ignoring {path}: {error}", path=self.path, error=str(error))
            return {}

    def _save(self) -> None:
        if self.path is None:
            return
        document = {
            "format": FILE_FORMAT,
            "network": str(self.network),
            "assignments": {k: str(v) for k, v in sorted(self._by_key.items())},
        }
        directory = os.path.dirname(self.path) or "."
        try:
            descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=".vips.", suffix=".tmp")
            try:
                with os.fdopen(descriptor, "w") as file:
                    json.dump(document, file, indent=1)
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(temporary, self.path)
            except BaseException:
                with suppress(OSError):
                    os.unlink(temporary)
                raise
        except OSError as error:
            # Still deterministic from the catalog; only stability across collisions suffers.
            log.warn("virtual IPs: cannot write {path}: {error}", path=self.path,
                     error=error.strerror or str(error))

    def refresh(self, catalog: Catalog) -> None:
        if catalog is self._catalog:
            return
        self._catalog = catalog
        headless = [key for key, s in catalog.services.items() if s.cluster_ip is None]
        headless += sorted({
            f"{key}/{e.hostname}"
            for key, s in catalog.services.items() if s.cluster_ip is None
            for endpoints in s.endpoints.values() for e in endpoints if e.hostname is not None
        })
        assigned = assign_virtual_ips(headless, self.network, self._by_key)
        self.unassigned = sorted(set(headless) - set(assigned))
        if self.unassigned:
            log.warn("virtual IPs: range {network} is full; no address for {count} headless "
                     "service(s), e.g. {first}", network=str(self.network),
                     count=len(self.unassigned), first=self.unassigned[0])
        changed = assigned != self._by_key
        self._by_key = assigned
        self._by_address = {address: key for key, address in assigned.items()}
        if changed:
            self._save()

    def address(self, catalog: Catalog, key: str) -> ipaddress.IPv4Address | None:
        self.refresh(catalog)
        return self._by_key.get(key)

    def service_key(self, catalog: Catalog, address: ipaddress.IPv4Address) -> str | None:
        self.refresh(catalog)
        return self._by_address.get(address)

    def assignments(self, catalog: Catalog) -> dict[str, ipaddress.IPv4Address]:
        self.refresh(catalog)
        return dict(self._by_key)


class ServiceAddresses:
    """Service ⇄ address for the live catalog: what DNS answers and what a captured
    connection's original destination means."""

    def __init__(self, catalog: Callable[[], Catalog], virtual: VirtualIPs | None = None) -> None:
        self._catalog = catalog
        self.virtual = virtual

    @property
    def catalog(self) -> Catalog:
        return self._catalog()

    def address_of(self, service: Service) -> str | None:
        """The clusterIP, else the virtual IP; None for a headless service without one."""
        if service.cluster_ip is not None:
            return service.cluster_ip
        if self.virtual is None:
            return None
        address = self.virtual.address(self.catalog, service.key)
        return None if address is None else str(address)

    def pod_address_of(self, key: str, hostname: str) -> str | None:
        """The virtual IP of pod ``hostname`` of headless service ``key``, if it has one."""
        if self.virtual is None:
            return None
        address = self.virtual.address(self.catalog, f"{key}/{hostname}")
        return None if address is None else str(address)

    def destination(self, host: str, port: int) -> tuple[Service, ServicePort]:
        """The service and port behind ``host:port`` (a clusterIP or a virtual IP).  Raises
        MeshError ``unknown_service`` when neither the catalog nor the range knows it."""
        catalog = self.catalog
        try:
            address = ipaddress.IPv4Address(host)
        except ValueError:
            raise MeshError(
                Reason.bad_request, f"original destination {host!r} is not IPv4") from None
        if self.virtual is not None and address in self.virtual.network:
            key = self.virtual.service_key(catalog, address)
            service = None
            if key is not None:
                namespace, name, hostname = (key.split("/", 2) + [""])[:3]
                service = (catalog.pod_service(f"{namespace}/{name}", hostname) if hostname
                           else catalog.service(key))
            if service is None:
                raise MeshError(Reason.unknown_service,
                                f"no headless service has virtual IP {address}")
            for candidate in service.ports:
                if candidate.port == port and candidate.protocol == "TCP":
                    return service, candidate
            listed = ", ".join(str(p.port) for p in service.ports if p.protocol == "TCP")
            raise MeshError(Reason.unknown_service,
                            f"service {service.key} has no TCP port {port}, only: "
                            f"{listed or 'none'}")
        return catalog.resolve(f"{address}:{port}".encode("ascii"))
