"""The API server's validation of the objects edgemesh writes (a useful subset).

A controller tested against this server should be refused what kube-apiserver refuses:
Services (name, ports) and EndpointSlices (addressType, endpoints, ports) are checked the way
k8s.io/kubernetes/pkg/apis/{core,discovery}/validation check them, for the common fields.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from ._resources import ENDPOINT_SLICES, SERVICES, JSONObject, ResourceType, StatusError

__all__ = ["validate"]

_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_PROTOCOLS = ("TCP", "UDP", "SCTP")
_ADDRESS_TYPES = ("IPv4", "IPv6", "FQDN")
MAX_SLICE_ENDPOINTS = 1000
MAX_SLICE_PORTS = 100
MAX_ENDPOINT_ADDRESSES = 100


def _port_number(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535


def _validate_service(name: str, body: JSONObject) -> list[str]:
    problems: list[str] = []
    if len(name) > 63 or not _DNS1035_LABEL.match(name):
        problems.append(
            f'metadata.name: Invalid value: "{name}": a DNS-1035 label must consist of lower '
            "case alphanumeric characters or '-', start with an alphabetic character, and end "
            "with an alphanumeric character"
        )
    spec = body.get("spec")
    if not isinstance(spec, dict):
        return [*problems, "spec: Required value"]
    service_type = spec.get("type", "ClusterIP")
    if service_type not in ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"):
        problems.append(f'spec.type: Unsupported value: "{service_type}"')
    ports = spec.get("ports") or []
    headless = spec.get("clusterIP") == "None"
    if not ports and service_type != "ExternalName" and not headless:
        problems.append("spec.ports: Required value")
    seen_names: set[str] = set()
    seen_ports: set[tuple[Any, Any]] = set()
    for index, port in enumerate(ports if isinstance(ports, list) else []):
        where = f"spec.ports[{index}]"
        if not isinstance(port, dict):
            problems.append(f"{where}: Invalid value: must be an object")
            continue
        port_name = port.get("name", "")
        if len(ports) > 1 and not port_name:
            problems.append(f"{where}.name: Required value")
        if port_name:
            if not isinstance(port_name, str) or not _DNS1123_LABEL.match(port_name):
                problems.append(f'{where}.name: Invalid value: "{port_name}"')
            elif port_name in seen_names:
                problems.append(f'{where}.name: Duplicate value: "{port_name}"')
            seen_names.add(str(port_name))
        if not _port_number(port.get("port")):
            problems.append(f"{where}.port: Invalid value: {port.get('port')!r}: must be "
                            "between 1 and 65535, inclusive")
        protocol = port.get("protocol", "TCP")
        if protocol not in _PROTOCOLS:
            problems.append(f'{where}.protocol: Unsupported value: "{protocol}"')
        key = (port.get("port"), protocol)
        if key in seen_ports:
            problems.append(f"{where}: Duplicate value: {{port: {key[0]}, protocol: {key[1]}}}")
        seen_ports.add(key)
        target = port.get("targetPort")
        if target is not None and not (_port_number(target) or isinstance(target, str)):
            problems.append(f"{where}.targetPort: Invalid value: {target!r}")
    return problems


def _validate_address(address_type: str, address: Any) -> bool:
    if not isinstance(address, str):
        return False
    if address_type == "FQDN":
        return bool(address) and len(address) <= 253
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return False
    return parsed.version == (4 if address_type == "IPv4" else 6)


def _validate_endpoint_slice(body: JSONObject, old: JSONObject | None) -> list[str]:
    problems: list[str] = []
    address_type = body.get("addressType")
    if address_type not in _ADDRESS_TYPES:
        problems.append(f'addressType: Unsupported value: "{address_type}": supported values: '
                        '"FQDN", "IPv4", "IPv6"')
    elif old is not None and old.get("addressType") != address_type:
        problems.append("addressType: Invalid value: field is immutable")
    endpoints = body.get("endpoints") or []
    if not isinstance(endpoints, list):
        return [*problems, "endpoints: Invalid value: must be a list"]
    if len(endpoints) > MAX_SLICE_ENDPOINTS:
        problems.append(f"endpoints: Too many: {len(endpoints)}: must have at most "
                        f"{MAX_SLICE_ENDPOINTS} items")
    for index, endpoint in enumerate(endpoints):
        where = f"endpoints[{index}]"
        if not isinstance(endpoint, dict):
            problems.append(f"{where}: Invalid value: must be an object")
            continue
        addresses = endpoint.get("addresses")
        if not isinstance(addresses, list) or not addresses:
            problems.append(f"{where}.addresses: Required value: must contain at least 1 address")
            continue
        if len(addresses) > MAX_ENDPOINT_ADDRESSES:
            problems.append(f"{where}.addresses: Too many: {len(addresses)}")
        for address_index, address in enumerate(addresses):
            if isinstance(address_type, str) and not _validate_address(address_type, address):
                problems.append(f'{where}.addresses[{address_index}]: Invalid value: "{address}": '
                                f"must be a valid {address_type} address")
        conditions = endpoint.get("conditions", {})
        if not isinstance(conditions, dict) or not all(
            value is None or isinstance(value, bool) for value in conditions.values()
        ):
            problems.append(f"{where}.conditions: Invalid value: must map to booleans")
    ports = body.get("ports") or []
    if not isinstance(ports, list):
        return [*problems, "ports: Invalid value: must be a list"]
    if len(ports) > MAX_SLICE_PORTS:
        problems.append(f"ports: Too many: {len(ports)}: must have at most {MAX_SLICE_PORTS} items")
    seen: set[Any] = set()
    for index, port in enumerate(ports):
        where = f"ports[{index}]"
        if not isinstance(port, dict):
            problems.append(f"{where}: Invalid value: must be an object")
            continue
        port_name = port.get("name", "")
        if port_name and (not isinstance(port_name, str) or not _DNS1123_LABEL.match(port_name)):
            problems.append(f'{where}.name: Invalid value: "{port_name}"')
        if port_name in seen:
            problems.append(f'{where}.name: Duplicate value: "{port_name}"')
        seen.add(port_name)
        if port.get("port") is not None and not _port_number(port.get("port")):
            problems.append(f"{where}.port: Invalid value: {port.get('port')!r}")
        if port.get("protocol", "TCP") not in _PROTOCOLS:
            problems.append(f'{where}.protocol: Unsupported value: "{port.get("protocol")}"')
    return problems


def validate(rtype: ResourceType, body: JSONObject, old: JSONObject | None) -> None:
    """Raise 422 Invalid (all problems in one message, as the server does) if `body` is bad."""
    name = str(body.get("metadata", {}).get("name", ""))
    if rtype == SERVICES:
        problems = _validate_service(name, body)
    elif rtype == ENDPOINT_SLICES:
        problems = _validate_endpoint_slice(body, old)
    else:
        return
    if problems:
        message = problems[0] if len(problems) == 1 else "[" + ", ".join(problems) + "]"
        raise StatusError.invalid(rtype, name, message)
