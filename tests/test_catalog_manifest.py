"""Manifests: Kubernetes objects (YAML/JSON files or dicts) to a Catalog, and their validation."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgemesh.catalog import (
    DEFAULT_HUB_PORT,
    Catalog,
    Endpoint,
    ManifestError,
    ServicePort,
    catalog_from_objects,
    load_manifest,
    parse_service,
)

DEMO = Path(__file__).resolve().parent.parent / "examples" / "demo-catalog.yaml"

Obj = dict[str, Any]


def node(name: str, edge: bool = False, **extra: Any) -> Obj:
    labels = {"node-role.kubernetes.io/edge": ""} if edge else {}
    obj: Obj = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}}
    obj.update(extra)
    return obj


def service(name: str, namespace: str = "default", **spec: Any) -> Obj:
    spec.setdefault("ports", [{"name": "http", "port": 80, "targetPort": 8080}])
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def endpoint(ip: str, node: str | None = None, **extra: Any) -> Obj:
    entry: Obj = {"addresses": [ip]}
    if node is not None:
        entry["nodeName"] = node
    entry.update(extra)
    return entry


def slice_(name: str, service_name: str, port: int, *endpoints: Obj, **extra: Any) -> Obj:
    obj: Obj = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": service_name},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": list(endpoints),
    }
    obj.update(extra)
    return obj


def pod(
    name: str,
    ip: str | None = "10.1.0.1",
    node: str = "edge-1",
    labels: dict[str, str] | None = None,
    phase: str = "Running",
    ready: str | None = "True",
    ports: list[Obj] | None = None,
    namespace: str = "default",
) -> Obj:
    status: Obj = {"phase": phase}
    if ip is not None:
        status["podIP"] = ip
    if ready is not None:
        status["conditions"] = [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Ready", "status": ready},
        ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {"app": "web"}},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "app", "ports": ports or []}],
        },
        "status": status,
    }


def _error(objects: list[Any]) -> str:
    with pytest.raises(ManifestError) as caught:
        catalog_from_objects(objects)
    assert isinstance(caught.value, ValueError)
    return str(caught.value)


# -- the demo -------------------------------------------------------------------------


def test_demo_catalog_loads() -> None:
    catalog = load_manifest(str(DEMO))
    assert set(catalog.nodes) == {"cloud-1", "edge-1", "edge-2"}
    assert not catalog.is_edge("cloud-1")
    assert catalog.is_edge("edge-1") and catalog.is_edge("edge-2")
    assert catalog.nodes["edge-1"].hub_address == "127.0.0.1:17701"
    assert catalog.nodes["edge-2"].hub_address == "127.0.0.1:17702"
    expected = {
        "hello-edge1": [("127.0.0.1", 18001, "edge-1")],
        "hello-edge2": [("127.0.0.1", 18002, "edge-2")],
        "hello-cloud": [("127.0.0.1", 18003, "cloud-1")],
        "hello-multi": [("127.0.0.1", 18004, "edge-1"), ("127.0.0.1", 18005, "edge-2")],
        "echo": [("127.0.0.1", 18006, "edge-2")],
    }
    assert set(catalog.services) == {f"default/{name}" for name in expected}
    (echo_port,) = catalog.services["default/echo"].ports
    assert echo_port.kind.value == "stream"  # named tcp-echo: a byte stream
    for name, wanted in expected.items():
        found, port = catalog.resolve(name.encode())
        assert found.name == name
        assert [(e.host, e.port, e.node) for e in found.ready_endpoints(port)] == wanted
    cloud, port = catalog.resolve(b"127.0.0.1:18003")
    assert (cloud.name, cloud.cluster_ip, port.port) == ("hello-cloud", "127.0.0.1", 18003)
    for found in catalog.services.values():
        for listed in found.endpoints.values():
            for e in listed:
                assert 17000 <= e.port < 19000
                assert e.pod is not None and e.pod.startswith("default/")


# -- file formats ---------------------------------------------------------------------


OBJECTS = [node("edge-1", edge=True), service("web", clusterIP="10.96.0.1")]


def _expected() -> Catalog:
    return catalog_from_objects(OBJECTS)


def test_yaml_multi_document_with_empty_documents(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("---\n" + yaml.safe_dump_all(OBJECTS) + "---\n# nothing\n")
    assert load_manifest(str(path)) == _expected()


def test_yaml_list(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": OBJECTS}))
    assert load_manifest(str(path)) == _expected()


@pytest.mark.parametrize(
    "document",
    [
        OBJECTS,
        {"apiVersion": "v1", "kind": "List", "items": OBJECTS},
    ],
)
def test_json(tmp_path: Path, document: object) -> None:
    path = tmp_path / "m.json"
    path.write_text(json.dumps(document))
    assert load_manifest(str(path)) == _expected()


def test_json_single_object(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text(json.dumps(service("web")))
    assert set(load_manifest(str(path)).services) == {"default/web"}


def test_revision_is_passed_on(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump_all(OBJECTS))
    assert load_manifest(str(path), revision=7).revision == 7


@pytest.mark.parametrize("kind", ["ConfigMap", "Endpoints", "EndpointSliceList",
                                  "ServiceAccount", "PodTemplate", "Namespace"])
def test_other_kinds_are_ignored(kind: str) -> None:
    catalog = catalog_from_objects(
        [{"apiVersion": "v1", "kind": kind, "metadata": {"name": "x"}, "data": 5}]
    )
    assert catalog == Catalog.empty()


@pytest.mark.parametrize(("kind", "meant"), [
    ("Servce", "Service"), ("service", "Service"), ("EndpointSlices", "EndpointSlice"),
    ("endpointslice", "EndpointSlice"), ("Nodes", "Node"),
])
def test_a_misspelt_kind_is_refused_not_left_out(kind: str, meant: str) -> None:
    """Left out, the object's service would answer 404 with no word of why."""
    with pytest.raises(ManifestError) as caught:
        catalog_from_objects([{"apiVersion": "v1", "kind": "Deployment"},
                              {"apiVersion": "v1", "kind": kind, "metadata": {"name": "x"}}])
    assert str(caught.value) == f"object #2: kind: {kind!r} is not a kind (did you mean {meant}?)"


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("bad.yaml", "kind: Service\n  metadata: [\n", "not valid YAML"),
        ("bad.json", '{"kind": "Service",', "not valid JSON"),
        ("bad.yaml", b"kind: \xff\xfe\n", "not UTF-8"),
        ("list.yaml", "kind: List\nitems: 3\n", "List: items: must be a list"),
        ("scalar.yaml", "just text\n", "object #1: must be a mapping, got str"),
        ("nokind.yaml", "metadata: {name: x}\n", "object #1: kind: required"),
    ],
)
def test_unreadable_files(tmp_path: Path, name: str, content: str | bytes, problem: str) -> None:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(ManifestError) as caught:
        load_manifest(str(path))
    message = str(caught.value)
    assert message.startswith(str(path))
    assert problem in message
    assert "\n" not in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="cannot read"):
        load_manifest(str(tmp_path / "absent.yaml"))


def test_error_in_file_names_file_object_and_field(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    bad = service("web", ports=[{"name": "a", "port": 80}, {"name": "b", "port": "x"}])
    path.write_text(yaml.safe_dump_all([node("edge-1"), bad]))
    with pytest.raises(ManifestError) as caught:
        load_manifest(str(path))
    assert str(caught.value) == (
        f"{path}: Service default/web: spec.ports[1].port: must be an integer 1-65535, got 'x'"
    )
    assert caught.value.field == "spec.ports[1].port"


# -- nodes ----------------------------------------------------------------------------


def test_node_hub_address_from_internal_ip() -> None:
    obj = node(
        "edge-3",
        edge=True,
        status={"addresses": [
            {"type": "Hostname", "address": "edge-3"},
            {"type": "InternalIP", "address": "192.168.1.3"},
            {"type": "InternalIP", "address": "192.168.1.4"},
        ]},
    )
    obj["metadata"]["labels"]["topology.kubernetes.io/zone"] = "zone-a"
    found = catalog_from_objects([obj]).nodes["edge-3"]
    assert found.edge
    assert (found.hub_host, found.hub_port) == ("192.168.1.3", DEFAULT_HUB_PORT)
    assert found.zone == "zone-a"


def test_node_without_address_has_no_hub() -> None:
    found = catalog_from_objects([node("cloud-1")]).nodes["cloud-1"]
    assert not found.edge
    assert found.hub_address is None


@pytest.mark.parametrize(
    ("annotation", "host", "port"),
    [
        ("10.0.0.5:17701", "10.0.0.5", 17701),
        ("[fd00::5]:7701", "fd00::5", 7701),
        ("Edge-1.Example.org:443", "edge-1.example.org", 443),
    ],
)
def test_node_hub_annotation(annotation: str, host: str, port: int) -> None:
    obj = node("edge-1", edge=True, status={"addresses": [
        {"type": "InternalIP", "address": "192.168.1.3"}]})
    obj["metadata"]["annotations"] = {"edgemesh.io/hub-address": annotation}
    found = catalog_from_objects([obj]).nodes["edge-1"]
    assert (found.hub_host, found.hub_port) == (host, port)


@pytest.mark.parametrize(
    "annotation",
    ["10.0.0.5", "10.0.0.5:", "10.0.0.5:0", "10.0.0.5:70000", ":80", "fd00::5:80", "[fd00::5]",
     "[zz]:80", "host name:80", "10.0.0.5:+80", "300.0.0.1:80", "[fd00::5]80"],
)
def test_node_bad_hub_annotation(annotation: str) -> None:
    obj = node("edge-1", edge=True)
    obj["metadata"]["annotations"] = {"edgemesh.io/hub-address": annotation}
    message = _error([obj])
    assert message.startswith(
        "Node edge-1: metadata.annotations[edgemesh.io/hub-address]: must be host:port"
    )


# -- validation: each message names the object and the field -------------------------


@pytest.mark.parametrize(
    ("objects", "expected"),
    [
        ([service("web", ports=[{"name": "http", "port": 0}])],
         "Service default/web: spec.ports[0].port: must be an integer 1-65535, got 0"),
        ([service("web", ports=[{"name": "http", "port": 65536}])],
         "Service default/web: spec.ports[0].port: must be an integer 1-65535, got 65536"),
        ([service("web", ports=[{"name": "http", "port": True}])],
         "Service default/web: spec.ports[0].port: must be an integer 1-65535, got True"),
        ([service("web", ports=[{"name": "http", "port": 80.0}])],
         "Service default/web: spec.ports[0].port: must be an integer 1-65535, got 80.0"),
        ([service("web", ports=[{"name": "http", "port": 80, "targetPort": "8080"}])],
         "Service default/web: spec.ports[0].targetPort: must be a port number or an IANA"),
        ([service("web", ports=[{"name": "http", "port": 80, "targetPort": 0}])],
         "Service default/web: spec.ports[0].targetPort: must be an integer 1-65535"),
        ([service("web", ports=[{"name": "http", "port": 80, "protocol": "HTTP"}])],
         "Service default/web: spec.ports[0].protocol: must be one of TCP, UDP, SCTP"),
        ([service("web", ports=[{"name": "HTTP", "port": 80}])],
         "Service default/web: spec.ports[0].name: 'HTTP' is not a valid port name"),
        ([service("web", ports=[{"port": 80}, {"name": "b", "port": 81}])],
         "Service default/web: spec.ports[0].name: required when a service has several ports"),
        ([service("web", ports=[{"name": "a", "port": 80}, {"name": "a", "port": 81}])],
         "Service default/web: spec.ports[1].name: duplicate port name 'a'"),
        ([service("web", ports=[{"name": "a", "port": 80}, {"name": "b", "port": 80}])],
         "Service default/web: spec.ports[1].port: duplicate port 80/TCP"),
        ([service("web", ports={"name": "http"})],
         "Service default/web: spec.ports: must be a list, got dict"),
        ([service("web", ports=["http"])],
         "Service default/web: spec.ports[0]: must be a mapping, got str"),
        ([service("web", clusterIP="10.96.0.300")],
         "Service default/web: spec.clusterIP: not an IP address: '10.96.0.300'"),
        ([service("web", clusterIP=10)],
         "Service default/web: spec.clusterIP: must be a string, got 10"),
        ([service("web", sessionAffinity="Cookie")],
         "Service default/web: spec.sessionAffinity: must be None or ClientIP, got 'Cookie'"),
        ([service("web", selector={"app": True})],
         "Service default/web: spec.selector[app]: must be a string, got True"),
        ([service("web", selector={"app": "a b"})],
         "Service default/web: spec.selector[app]: not a valid label value: 'a b'"),
        ([service("Web")],
         "Service (unnamed): metadata.name: 'Web' is not a valid name (DNS-1035 label"),
        ([service("1web")],
         "Service (unnamed): metadata.name: '1web' is not a valid name"),
        ([service("web", namespace="Prod")],
         "Service web: metadata.namespace: 'Prod' is not a valid name"),
        ([{"kind": "Service", "metadata": {"name": "web"}}],
         "Service default/web: spec: required"),
        ([{"kind": "Service", "spec": {}}], "Service (unnamed): metadata: required"),
        ([{"kind": "Service", "metadata": {}, "spec": {}}],
         "Service (unnamed): metadata.name: required"),
        ([service("web"), service("web")], "Service default/web: defined twice"),
        ([service("a", clusterIP="10.0.0.1"), service("b", clusterIP="10.0.0.1")],
         "Service default/b: spec.clusterIP: 10.0.0.1 is already used by Service default/a"),
        ([node("edge-1"), node("edge-1")], "Node edge-1: defined twice"),
        ([node("Edge_1")], "Node (unnamed): metadata.name: 'Edge_1' is not a valid name"),
        ([node("edge-1", status={"addresses": [{"type": "InternalIP", "address": "x"}]})],
         "Node edge-1: status.addresses[0].address: not an IP address: 'x'"),
        ([node("edge-1", metadata={"name": "edge-1", "labels": {"zone": 3}})],
         "Node edge-1: metadata.labels[zone]: must be a string, got 3"),
        ([node("edge-1", metadata={"name": "edge-1", "labels": {"a b": "x"}})],
         "Node edge-1: metadata.labels: 'a b' is not a valid key"),
        ([node("edge-1", metadata={"name": "edge-1", "annotations": {"x": ["y"]}})],
         "Node edge-1: metadata.annotations[x]: must be a string, got ['y']"),
        ([slice_("s", "web", 80, endpoint("10.0.0.1"), addressType="IPv7")],
         "EndpointSlice default/s: addressType: must be IPv4, IPv6 or FQDN, got 'IPv7'"),
        ([slice_("s", "web", 80, endpoint("fd00::1"))],
         "EndpointSlice default/s: endpoints[0].addresses[0]: not an IPv4 address: 'fd00::1'"),
        ([slice_("s", "web", 80, {"addresses": []})],
         "EndpointSlice default/s: endpoints[0].addresses: must list at least one address"),
        ([slice_("s", "web", 80, endpoint("10.0.0.1", conditions={"ready": "yes"}))],
         "EndpointSlice default/s: endpoints[0].conditions.ready: must be true or false"),
        ([slice_("s", "web", 80, endpoint("10.0.0.1", node="Edge 1"))],
         "EndpointSlice default/s: endpoints[0].nodeName: 'Edge 1' is not a valid name"),
        ([slice_("s", "web", 70000, endpoint("10.0.0.1"))],
         "EndpointSlice default/s: ports[0].port: must be an integer 1-65535, got 70000"),
        ([slice_("s", "web", 80, apiVersion="discovery.k8s.io/v1beta1")],
         "EndpointSlice default/s: apiVersion: must be discovery.k8s.io/v1"),
        ([slice_("s", "web", 80, metadata={"name": "s"})],
         "EndpointSlice default/s: metadata.labels: kubernetes.io/service-name is required"),
        ([pod("p", ip="10.1.0.999")], "Pod default/p: status.podIP: not an IP address"),
        ([pod("p", ports=[{"name": "http", "containerPort": 0}])],
         "Pod default/p: spec.containers[0].ports[0].containerPort: must be an integer"),
        ([pod("p", ports=[{"name": "a-very-long-port-name", "containerPort": 80}])],
         "Pod default/p: spec.containers[0].ports[0].name: 'a-very-long-port-name' is not"),
        ([pod("p", ports=[{"name": "http", "containerPort": 80},
                          {"name": "http", "containerPort": 81}])],
         "Pod default/p: spec.containers[0].ports[1].name: duplicate port name 'http'"),
        ([pod("p", ready="Yes")],
         "Pod default/p: status.conditions[1].status: must be True, False or Unknown"),
        (["Service"], "object #1: must be a mapping, got str"),
        ([node("edge-1"), {"kind": 3}], "object #2: kind: must be a string, got 3"),
    ],
)
def test_malformed_objects(objects: list[Any], expected: str) -> None:
    message = _error(objects)
    assert message.startswith(expected), message
    assert "\n" not in message


def test_invalid_objects_can_be_skipped_and_reported() -> None:
    reported: list[ManifestError] = []
    catalog = catalog_from_objects(
        [
            service("good"),
            service("bad", ports=[{"port": "x"}]),
            service("good"),
            node("edge-1"),
        ],
        on_invalid=reported.append,
    )
    assert set(catalog.services) == {"default/good"}
    assert set(catalog.nodes) == {"edge-1"}
    assert [e.what for e in reported] == ["Service default/bad", "Service default/good"]


# -- services -------------------------------------------------------------------------


@pytest.mark.parametrize("cluster_ip", [None, "", "None"])
def test_headless_services(cluster_ip: str | None) -> None:
    obj = service("db")
    if cluster_ip is not None:
        obj["spec"]["clusterIP"] = cluster_ip
    assert catalog_from_objects([obj]).services["default/db"].cluster_ip is None


def test_service_fields() -> None:
    obj = service(
        "web",
        namespace="prod",
        clusterIP="FD00:0::1",
        sessionAffinity="ClientIP",
        ports=[
            {"name": "http", "port": 80, "targetPort": "web"},
            {"name": "dns", "port": 53, "protocol": "UDP"},
        ],
    )
    obj["metadata"]["annotations"] = {"edgemesh.io/lb": "random"}
    found = catalog_from_objects([obj]).services["prod/web"]
    assert found.cluster_ip == "fd00::1"
    assert found.session_affinity == "ClientIP"
    assert found.annotations == {"edgemesh.io/lb": "random"}
    assert found.ports == (
        ServicePort("http", 80, "web", "TCP"),
        ServicePort("dns", 53, 53, "UDP"),
    )


def test_parse_service_keeps_the_selector() -> None:
    parsed = parse_service(service("web", selector={"app": "web"}))
    assert parsed.selector == {"app": "web"}
    assert parsed.service.endpoints == {}


# -- EndpointSlices -------------------------------------------------------------------


def test_slices_are_merged_and_conditions_read() -> None:
    catalog = catalog_from_objects([
        node("edge-1", edge=True, metadata={
            "name": "edge-1", "labels": {"topology.kubernetes.io/zone": "z1"}}),
        service("web"),
        slice_("web-b", "web", 8080,
               endpoint("10.0.0.3", "edge-1", conditions={"ready": False}),
               endpoint("10.0.0.4", "edge-2", zone="z2",
                        conditions={"ready": False, "serving": True, "terminating": True})),
        slice_("web-a", "web", 8080,
               endpoint("10.0.0.1", "edge-1",
                        targetRef={"kind": "Pod", "name": "web-0", "namespace": "default"}),
               endpoint("10.0.0.2")),
        # During a rebalance the same endpoint may sit in two slices.
        slice_("web-c", "web", 8080, endpoint("10.0.0.1", "edge-1")),
    ])
    web = catalog.services["default/web"]
    assert web.endpoints["http"] == (
        Endpoint("10.0.0.1", 8080, "edge-1", zone="z1", pod="default/web-0"),
        Endpoint("10.0.0.2", 8080, None),
        Endpoint("10.0.0.3", 8080, "edge-1", ready=False, zone="z1"),
        Endpoint("10.0.0.4", 8080, "edge-2", ready=False, terminating=True, zone="z2"),
    )
    assert [e.host for e in web.ready_endpoints(web.ports[0])] == ["10.0.0.1", "10.0.0.2"]


def test_ipv4_and_ipv6_slices_merge_and_fqdn_is_ignored() -> None:
    v6 = slice_("web-v6", "web", 8080, endpoint("FD00::0001"), addressType="IPv6")
    fqdn = slice_("web-fqdn", "web", 8080, endpoint("db.example.org"), addressType="FQDN")
    catalog = catalog_from_objects(
        [service("web"), slice_("web-v4", "web", 8080, endpoint("10.0.0.1")), v6, fqdn]
    )
    hosts = [e.host for e in catalog.services["default/web"].endpoints["http"]]
    assert hosts == ["10.0.0.1", "fd00::1"]


def test_slice_ports_are_joined_by_name() -> None:
    two_ports = service("web", ports=[{"name": "http", "port": 80}, {"name": "admin", "port": 9}])
    piece = slice_("web-a", "web", 8080, endpoint("10.0.0.1"))
    piece["ports"] = [
        {"name": "http", "port": 8080},
        {"name": "admin", "port": 9090},
        {"name": "other", "port": 1234},
        {"name": "all"},  # no number: "all ports", nothing to dial
    ]
    web = catalog_from_objects([two_ports, piece]).services["default/web"]
    assert set(web.endpoints) == {"http", "admin"}
    assert web.endpoints["admin"][0].port == 9090


def test_unnamed_single_port() -> None:
    obj = service("web", ports=[{"port": 80, "targetPort": 8080}])
    piece = slice_("web-a", "web", 8080, endpoint("10.0.0.1"))
    piece["ports"] = [{"port": 8080}]
    web = catalog_from_objects([obj, piece]).services["default/web"]
    assert web.ports[0].name == ""
    assert web.endpoints[""][0].port == 8080


def test_slice_of_an_unknown_service_is_ignored() -> None:
    catalog = catalog_from_objects([slice_("x-a", "x", 80, endpoint("10.0.0.1"))])
    assert catalog.services == {}


def test_slice_in_another_namespace_does_not_join() -> None:
    piece = slice_("web-a", "web", 8080, endpoint("10.0.0.1"))
    piece["metadata"]["namespace"] = "other"
    catalog = catalog_from_objects([service("web"), piece])
    assert catalog.services["default/web"].endpoints == {}


# -- the Pod shorthand ----------------------------------------------------------------


def test_pods_give_endpoints_to_a_selector_without_slices() -> None:
    catalog = catalog_from_objects([
        node("edge-1", edge=True, metadata={
            "name": "edge-1", "labels": {"topology.kubernetes.io/zone": "z1"}}),
        service("web", selector={"app": "web"},
                ports=[{"name": "http", "port": 80, "targetPort": "web"},
                       {"name": "raw", "port": 81, "targetPort": 9000},
                       {"name": "same", "port": 82}]),
        pod("web-1", ip="10.1.0.2", node="edge-2",
            ports=[{"name": "web", "containerPort": 8081}]),
        pod("web-0", ip="10.1.0.1", ports=[{"name": "web", "containerPort": 8080}]),
        pod("web-noport", ip="10.1.0.3"),
        pod("web-udp", ip="10.1.0.4",
            ports=[{"name": "web", "containerPort": 8080, "protocol": "UDP"}]),
        pod("pending", ip=None, phase="Pending", ready=None),
        pod("starting", ip="10.1.0.5", ready="False"),
        pod("unknown", ip="10.1.0.6", ready=None),
        pod("succeeded", ip="10.1.0.7", phase="Succeeded", ready="False"),
        pod("failed-but-ready", ip="10.1.0.8", phase="Failed"),
        pod("no-ip", ip=None),
        pod("other-app", ip="10.1.0.9", labels={"app": "other"}),
        pod("other-ns", ip="10.1.0.10", namespace="prod"),
    ])
    web = catalog.services["default/web"]
    assert web.endpoints["http"] == (
        Endpoint("10.1.0.1", 8080, "edge-1", zone="z1", pod="default/web-0"),
        Endpoint("10.1.0.2", 8081, "edge-2", pod="default/web-1"),
    )
    assert [(e.host, e.port) for e in web.endpoints["raw"]] == [
        ("10.1.0.1", 9000), ("10.1.0.2", 9000), ("10.1.0.3", 9000), ("10.1.0.4", 9000)]
    assert [e.port for e in web.endpoints["same"]] == [82, 82, 82, 82]


def test_terminating_pod_is_not_an_endpoint() -> None:
    deleting = pod("web-0")
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    catalog = catalog_from_objects([service("web", selector={"app": "web"}), deleting])
    assert catalog.services["default/web"].endpoints == {}


def test_slices_win_over_pods() -> None:
    catalog = catalog_from_objects([
        service("web", selector={"app": "web"}),
        pod("web-0", ip="10.1.0.1"),
        slice_("web-a", "web", 8080, endpoint("10.0.0.1")),
    ])
    assert [e.host for e in catalog.services["default/web"].endpoints["http"]] == ["10.0.0.1"]


def test_no_selector_no_endpoints() -> None:
    catalog = catalog_from_objects(
        [service("web"), service("empty", selector={}), pod("web-0", labels={})]
    )
    assert catalog.services["default/web"].endpoints == {}
    assert catalog.services["default/empty"].endpoints == {}


def test_input_objects_are_not_modified() -> None:
    objects = [service("web", selector={"app": "web"}), pod("web-0"), node("edge-1")]
    before = copy.deepcopy(objects)
    catalog_from_objects(objects)
    assert objects == before


# -- topology fields (issue 14) ----------------------------------------------------------


def test_topology_fields_of_services_slices_and_nodes() -> None:
    catalog = catalog_from_objects([
        node("edge-1", edge=True, metadata={"name": "edge-1", "labels": {
            "node-role.kubernetes.io/edge": "", "topology.kubernetes.io/zone": "z1",
            "edgemesh.io/pool": "site-a"}}),
        node("edge-2", edge=True, metadata={"name": "edge-2", "labels": {
            "apps.openyurt.io/nodepool": "yurt-b"}}),
        node("edge-3", edge=True, metadata={"name": "edge-3", "labels": {
            "edgemesh.io/pool": "mine", "apps.openyurt.io/nodepool": "theirs"}}),
        node("cloud-1"),
        service("web", trafficDistribution="PreferSameZone", internalTrafficPolicy="Local",
                sessionAffinity="ClientIP",
                sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}}),
        slice_("web-1", "web", 8080,
               endpoint("10.1.0.1", "edge-1", zone="z1",
                        hints={"forZones": [{"name": "z1"}, {"name": "z2"}, {"name": "z1"}],
                               "forNodes": [{"name": "edge-1"}]},
                        conditions={"ready": False, "serving": True, "terminating": True}),
               endpoint("10.1.0.2", "edge-2")),
    ])
    assert catalog.nodes["edge-1"].pool == "site-a" and catalog.nodes["edge-1"].zone == "z1"
    assert catalog.nodes["edge-2"].pool == "yurt-b"
    assert catalog.nodes["edge-3"].pool == "mine"  # edgemesh.io/pool wins over the alias
    assert catalog.nodes["cloud-1"].pool is None
    web = catalog.service("default/web")
    assert web is not None
    assert (web.traffic_distribution, web.internal_traffic_policy) == ("PreferSameZone", "Local")
    assert (web.session_affinity, web.affinity_timeout) == ("ClientIP", 60)
    first, second = web.endpoints["http"]
    assert first.for_zones == ("z1", "z2") and first.for_nodes == ("edge-1",)
    assert (first.ready, first.serving, first.terminating) == (False, True, True)
    assert second.for_zones == () and second.for_nodes == ()
    assert (second.ready, second.serving, second.terminating) == (True, True, False)


def test_topology_defaults() -> None:
    web = catalog_from_objects([service("web")]).service("default/web")
    assert web is not None
    assert web.traffic_distribution is None and web.internal_traffic_policy == "Cluster"
    assert web.affinity_timeout == 10800


def test_an_unknown_traffic_distribution_is_kept_not_refused() -> None:
    """A newer API server may add values: the Service stays usable (no preference)."""
    web = catalog_from_objects([service("web", trafficDistribution="PreferSameRack")]
                               ).service("default/web")
    assert web is not None and web.traffic_distribution == "PreferSameRack"


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({"internalTrafficPolicy": "Nearby"},
         "spec.internalTrafficPolicy: must be Cluster or Local"),
        ({"internalTrafficPolicy": 1}, "spec.internalTrafficPolicy: must be a string"),
        ({"trafficDistribution": "Prefer Close"}, "spec.trafficDistribution: must be"),
        ({"trafficDistribution": ["PreferClose"]}, "spec.trafficDistribution: must be a string"),
        ({"sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}}},
         "timeoutSeconds: must be an integer 1-86400"),
        ({"sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 86401}}},
         "timeoutSeconds: must be an integer 1-86400"),
        ({"sessionAffinityConfig": {"clientIP": {"timeoutSeconds": "60"}}},
         "timeoutSeconds: must be an integer 1-86400"),
        ({"sessionAffinityConfig": {"clientIP": []}}, "clientIP: must be a mapping"),
    ],
)
def test_bad_topology_fields_of_a_service(spec: Obj, problem: str) -> None:
    assert problem in _error([service("web", **spec)])


@pytest.mark.parametrize(
    ("hints", "problem"),
    [
        ({"forZones": {"name": "z1"}}, "hints.forZones: must be a list"),
        ({"forZones": [{"zone": "z1"}]}, "hints.forZones[0].name: required"),
        ({"forZones": [{"name": ""}]}, "hints.forZones[0].name: '' is not valid"),
        ({"forNodes": [{"name": "Edge 1"}]}, "hints.forNodes[0].name: 'Edge 1' is not valid"),
        ({"forNodes": ["edge-1"]}, "hints.forNodes[0]: must be a mapping"),
        ([], "endpoints[0].hints: must be a mapping"),
    ],
)
def test_bad_hints(hints: object, problem: str) -> None:
    objects = [service("web"), slice_("web-1", "web", 8080, endpoint("10.1.0.1", hints=hints))]
    assert problem in _error(objects)
