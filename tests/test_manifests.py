"""examples/kubernetes/: every manifest is a valid object of the official client's models, the
objects agree with each other (selectors, ports, probes, references), the command lines parse
with the taps' own Options, and the router's RBAC is exactly what the code calls.

Validation is strict: a field the model does not know (a typo, a wrong indentation) fails,
where the client's own deserializer would drop it silently; the model classes then check the
required fields.  The RBAC that the code needs is derived from the code (edgemesh/sources:
calls on the KubeAPI and the resources each Reflector watches), not listed here by hand.
"""

from __future__ import annotations

import ast
import configparser
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
import yaml
from kubernetes.utils import parse_quantity

import edgemesh.observability._logs as logs
import edgemesh.sources._kubeapi as kubeapi
from edgemesh.catalog import DEFAULT_HUB_PORT, EDGE_LABEL
from edgemesh.roles import edge_tap, router_tap
from edgemesh.roles._admin import admin_endpoint, admin_site
from edgemesh.roles._twistd import EdgemeshServerOptions
from edgemesh.security._certs import init_ca_dir, issue_into_dir
from edgemesh.sources import KubeAPI, Resource
from edgemesh.sources._options import http_port

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "kubernetes"
SOURCES = ROOT / "edgemesh" / "sources"
KUSTOMIZATION = "kustomization.yaml"
NOT_APPLIED = {"secrets.yaml"}
"""Files that describe objects the operator makes from their own files (not in kustomize)."""

MODELS: dict[tuple[str, str], str] = {
    ("v1", "Namespace"): "V1Namespace",
    ("v1", "ServiceAccount"): "V1ServiceAccount",
    ("v1", "Secret"): "V1Secret",
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("v1", "Service"): "V1Service",
    ("apps/v1", "Deployment"): "V1Deployment",
    ("apps/v1", "DaemonSet"): "V1DaemonSet",
    ("apps/v1", "StatefulSet"): "V1StatefulSet",
    ("policy/v1", "PodDisruptionBudget"): "V1PodDisruptionBudget",
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): "V1ClusterRole",
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): "V1ClusterRoleBinding",
    ("rbac.authorization.k8s.io/v1", "Role"): "V1Role",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "V1RoleBinding",
    ("networking.k8s.io/v1", "NetworkPolicy"): "V1NetworkPolicy",
}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
TAPS: dict[str, type[Any]] = {"edgemesh-router": router_tap.Options,
                              "edgemesh-edge": edge_tap.Options}
LISTENERS = {
    "edgemesh-router": ("tunnel", "http", "admin", "peer-listen"),
    "edgemesh-edge": ("hub", "proxy", "admin", "transparent"),
}
"""Options naming a server endpoint: each must be a declared container port of that name."""
KUBEAPI_VERBS = {"list": "list", "watch": "watch", "get": "get", "create": "create",
                 "replace": "update", "delete": "delete"}
"""KubeAPI method -> the RBAC verb of the request it makes (replace is a PUT: update)."""
FAKE_DOWNWARD = {"spec.nodeName": "edge-1", "status.podIP": "10.0.0.5",
                 "metadata.namespace": "edgemesh", "metadata.name": "edgemesh-router-0"}
"""What the downward API gives in these tests (never contacted: options are only parsed)."""


# -- loading -----------------------------------------------------------------------------


@dataclass
class Doc:
    file: str
    index: int
    obj: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.obj.get("kind"))

    @property
    def name(self) -> str:
        return str((self.obj.get("metadata") or {}).get("name"))

    @property
    def namespace(self) -> str | None:
        return (self.obj.get("metadata") or {}).get("namespace")

    def __str__(self) -> str:
        return f"{self.file}#{self.index} {self.kind}/{self.name}"


def manifest_files() -> list[Path]:
    return sorted(p for p in EXAMPLES.glob("*.yaml") if p.name != KUSTOMIZATION)


def load_docs() -> list[Doc]:
    docs = []
    for path in manifest_files():
        with path.open() as handle:
            for index, obj in enumerate(yaml.safe_load_all(handle)):
                if obj is not None:
                    docs.append(Doc(path.name, index, obj))
    return docs


DOCS = load_docs()


def find(kind: str, name: str | None = None) -> list[Doc]:
    return [d for d in DOCS if d.kind == kind and (name is None or d.name == name)]


def one(kind: str, name: str, namespace: str | None = None) -> Doc:
    found = [d for d in find(kind, name) if namespace is None or d.namespace == namespace]
    assert len(found) == 1, f"expected one {kind}/{name} in {namespace}, found {len(found)}"
    return found[0]


def workloads() -> list[Doc]:
    return find("Deployment") + find("StatefulSet") + find("DaemonSet")


def pod_spec(doc: Doc) -> dict[str, Any]:
    spec: dict[str, Any] = doc.obj["spec"]["template"]["spec"]
    return spec


def containers(doc: Doc, *, init: bool = True) -> list[dict[str, Any]]:
    spec = pod_spec(doc)
    return list(spec.get("containers") or []) + (list(spec.get("initContainers") or [])
                                                 if init else [])


def twistd_containers() -> Iterator[tuple[Doc, dict[str, Any]]]:
    for doc in workloads():
        for container in containers(doc, init=False):
            if container.get("command") == ["edgemesh", "twistd"]:
                yield doc, container


def tap_arguments(container: dict[str, Any]) -> tuple[str, dict[str, str | bool]]:
    """The plugin name and its options (``--name=value``, ``--flag``) of a twistd container."""
    args: list[str] = container["args"]
    plugin = next(a for a in args if not a.startswith("-"))
    options: dict[str, str | bool] = {}
    for arg in args[args.index(plugin) + 1:]:
        assert arg.startswith("--"), f"{plugin}: write options as --name=value, not {arg!r}"
        name, equals, value = arg[2:].partition("=")
        options[name] = value if equals else True
    return plugin, options


def endpoint_port(description: str) -> int:
    port = http_port(description)
    assert port is not None, f"no port in the endpoint string {description!r}"
    return port


def endpoint_interface(description: str) -> str | None:
    """The interface= of an endpoint string (escaped colons of IPv6 addresses undone)."""
    for part in re.split(r"(?<!\\):", description):
        if part.startswith("interface="):
            return part[len("interface="):].replace("\\:", ":")
    return None


# -- strict validation against the client's models ---------------------------------------

_PRIMITIVES: dict[str, tuple[type, ...]] = {
    "str": (str,), "int": (int,), "float": (int, float), "bool": (bool,), "bytes": (str,),
    "datetime": (str,), "date": (str,),
}


def strict_errors(data: Any, type_name: str, where: str) -> list[str]:
    """Where ``data`` does not fit ``type_name`` (an openapi type of the client's models):
    unknown fields, wrong JSON types.  (The deserializer ignores the former, coerces the latter.)"""
    list_of = re.fullmatch(r"(?:List\[|list\[)(.*)\]", type_name)
    if list_of:
        if not isinstance(data, list):
            return [f"{where}: expected a list, got {type(data).__name__}"]
        return [e for i, item in enumerate(data)
                for e in strict_errors(item, list_of.group(1), f"{where}[{i}]")]
    dict_of = re.fullmatch(r"(?:Dict\[|dict\()[^,]*, (.*)[\])]", type_name)
    if dict_of:
        if not isinstance(data, dict):
            return [f"{where}: expected a mapping, got {type(data).__name__}"]
        return [e for key, value in data.items()
                for e in strict_errors(value, dict_of.group(1), f"{where}.{key}")]
    if type_name == "object":
        return []
    if type_name in _PRIMITIVES:
        expected = _PRIMITIVES[type_name]
        if isinstance(data, bool) and bool not in expected:
            return [f"{where}: expected {type_name}, got a boolean"]
        if not isinstance(data, expected):
            return [f"{where}: expected {type_name}, got {type(data).__name__} {data!r}"]
        return []
    model = getattr(kubernetes.client, type_name)
    if not isinstance(data, dict):
        return [f"{where}: expected a {type_name} mapping, got {type(data).__name__}"]
    fields = {json_name: attribute for attribute, json_name in model.attribute_map.items()}
    errors = []
    for key, value in data.items():
        if key not in fields:
            errors.append(f"{where}: unknown field {key!r} for {type_name}")
        elif value is not None:
            errors += strict_errors(value, model.openapi_types[fields[key]], f"{where}.{key}")
    return errors


def deserialize(obj: dict[str, Any], model_name: str) -> Any:
    """The client's own deserializer: its model classes reject missing required fields."""
    client = kubernetes.client.ApiClient()
    return client._ApiClient__deserialize(obj, model_name)  # type: ignore[attr-defined]


@pytest.mark.parametrize("doc", DOCS, ids=str)
def test_every_object_fits_the_clients_model(doc: Doc) -> None:
    key = (doc.obj.get("apiVersion"), doc.obj.get("kind"))
    assert key in MODELS, f"{doc}: unexpected apiVersion/kind {key}"
    assert strict_errors(doc.obj, MODELS[key], str(doc)) == []
    model = deserialize(doc.obj, MODELS[key])
    assert type(model).__name__ == MODELS[key]
    assert model.metadata.name, f"{doc}: no metadata.name"
    if doc.kind in CLUSTER_SCOPED:
        assert model.metadata.namespace is None, f"{doc}: cluster-scoped, but has a namespace"
    else:
        assert model.metadata.namespace == namespace_name(), f"{doc}: not in the namespace"
    labels = model.metadata.labels or {}
    assert labels.get("app.kubernetes.io/name") == "edgemesh", f"{doc}: no name label"


def test_strict_validation_catches_what_the_client_ignores() -> None:
    """The checker itself: an unknown field, a misplaced one, a wrong type, a missing name."""
    workload = dict(one("StatefulSet", "edgemesh-router").obj)
    spec = {**workload["spec"], "replica": 2}
    errors = strict_errors({**workload, "spec": spec}, "V1StatefulSet", "d")
    assert errors == ["d.spec: unknown field 'replica' for V1StatefulSetSpec"]
    container = {"name": "x", "image": "y", "ports": [{"containerPort": "7700"}]}
    assert strict_errors(container, "V1Container", "c") == [
        "c.ports[0].containerPort: expected int, got str '7700'"]
    with pytest.raises(ValueError, match="name"):
        deserialize({"image": "y"}, "V1Container")


def namespace_name() -> str:
    namespaces = find("Namespace")
    assert len(namespaces) == 1
    return namespaces[0].name


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((EXAMPLES / KUSTOMIZATION).read_text())
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed))
    assert sorted(listed) == sorted(p.name for p in manifest_files() if p.name not in NOT_APPLIED)


def test_names_are_unique_per_kind_and_namespace() -> None:
    keys = [(d.kind, d.namespace, d.name) for d in DOCS]
    assert len(keys) == len(set(keys))


def test_the_expected_objects_are_there() -> None:
    kinds = {d.kind for d in DOCS}
    for kind in ("Namespace", "ServiceAccount", "StatefulSet", "DaemonSet", "Service", "Secret",
                 "PodDisruptionBudget"):
        assert kind in kinds
    assert {plugin for _, c in twistd_containers() for plugin in [tap_arguments(c)[0]]} == set(TAPS)


# -- consistency between objects ---------------------------------------------------------


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


@pytest.mark.parametrize("doc", workloads(), ids=str)
def test_workload_selector_matches_its_template(doc: Doc) -> None:
    selector = doc.obj["spec"]["selector"]
    assert set(selector) == {"matchLabels"}
    assert labels_match(selector["matchLabels"], doc.obj["spec"]["template"]["metadata"]["labels"])


def container_port(doc: Doc, reference: int | str) -> dict[str, Any] | None:
    for container in containers(doc, init=False):
        for port in container.get("ports") or []:
            if reference in (port["containerPort"], port.get("name")):
                return dict(port)
    return None


@pytest.mark.parametrize("doc", find("Service"), ids=str)
def test_service_selects_one_workload_and_targets_its_ports(doc: Doc) -> None:
    selector = doc.obj["spec"]["selector"]
    selected = [w for w in workloads()
                if w.namespace == doc.namespace
                and labels_match(selector, w.obj["spec"]["template"]["metadata"]["labels"])]
    assert len(selected) == 1, f"{doc} selects {[str(w) for w in selected]}"
    for port in doc.obj["spec"]["ports"]:
        target = container_port(selected[0], port.get("targetPort", port["port"]))
        assert target is not None, f"{doc}: targetPort {port.get('targetPort')} not declared"
        assert target.get("protocol", "TCP") == port.get("protocol", "TCP")


@pytest.mark.parametrize("doc", find("NetworkPolicy"), ids=str)
def test_network_policy_ports_are_declared(doc: Doc) -> None:
    selector = doc.obj["spec"]["podSelector"]["matchLabels"]
    selected = [w for w in workloads()
                if labels_match(selector, w.obj["spec"]["template"]["metadata"]["labels"])]
    assert len(selected) == 1
    for rule in doc.obj["spec"]["ingress"]:
        for port in rule["ports"]:
            assert container_port(selected[0], port["port"]) is not None, port


@pytest.mark.parametrize(("doc", "container"), list(twistd_containers()),
                         ids=lambda x: str(x) if isinstance(x, Doc) else x["name"])
def test_listeners_are_declared_ports(doc: Doc, container: dict[str, Any]) -> None:
    """Each listener option's port is the container port of the same name, and on the host
    network the host port too."""
    plugin, options = tap_arguments(container)
    host_network = bool(pod_spec(doc).get("hostNetwork"))
    declared = {p["name"]: p for p in container["ports"]}
    for option in LISTENERS[plugin]:
        assert option in options, f"{doc}: {plugin} without --{option}"
        port = declared.get(option)
        assert port is not None, f"{doc}: no container port named {option!r}"
        assert port["containerPort"] == endpoint_port(str(options[option]))
        if host_network:
            assert port.get("hostPort") == port["containerPort"], port
    assert set(declared) == set(LISTENERS[plugin]), "a declared port that nothing listens on"


@pytest.mark.parametrize(("doc", "container"), list(twistd_containers()),
                         ids=lambda x: str(x) if isinstance(x, Doc) else x["name"])
def test_probes_reach_the_admin_listener(doc: Doc, container: dict[str, Any]) -> None:
    """The probes' port is the admin listener's, and the kubelet can reach the address it
    binds (as the node binds it: loopback unless an interface is given)."""
    _, options = tap_arguments(container)
    admin = admin_endpoint(str(options["admin"]))
    interface = endpoint_interface(admin)
    host_network = bool(pod_spec(doc).get("hostNetwork"))
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        action = container[probe]["httpGet"]
        assert action["path"] == path
        port = container_port(doc, action["port"])
        assert port is not None and port["containerPort"] == endpoint_port(admin)
        if interface in ("0.0.0.0", "::"):
            assert "host" not in action  # the kubelet probes the pod's IP
        else:
            # Only a host-network pod's loopback is the kubelet's loopback.
            assert host_network and interface == action.get("host") == "127.0.0.1"


def test_admin_endpoint_binds_loopback_unless_told() -> None:
    """What the probe test relies on."""
    assert endpoint_interface(admin_endpoint("tcp:7790")) == "127.0.0.1"
    assert endpoint_interface(admin_endpoint("tcp:7790:interface=0.0.0.0")) == "0.0.0.0"
    assert endpoint_interface(admin_endpoint("tcp6:7790")) == "::1"


def test_probe_paths_are_served_by_the_admin_api() -> None:
    from twisted.internet.testing import MemoryReactorClock

    from edgemesh.catalog import Catalog
    from edgemesh.roles import RouterConfig, build_router

    node = build_router(MemoryReactorClock(), RouterConfig(catalog=Catalog.empty()))
    served = set(admin_site(node).resource.children)
    paths = {container[p]["httpGet"]["path"] for _, container in twistd_containers()
             for p in ("readinessProbe", "livenessProbe")}
    assert paths == {"/readyz", "/healthz"}
    assert {path.strip("/").encode() for path in paths} <= served


def test_references_between_objects_exist() -> None:
    namespace = namespace_name()
    for doc in workloads():
        spec = pod_spec(doc)
        one("ServiceAccount", spec["serviceAccountName"], namespace)
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        for volume in volumes.values():
            if "secret" in volume:
                one("Secret", volume["secret"]["secretName"], namespace)
            if "configMap" in volume:
                one("ConfigMap", volume["configMap"]["name"], namespace)
        for container in containers(doc):
            for mount in container.get("volumeMounts") or []:
                assert mount["name"] in volumes, f"{doc}: no volume {mount['name']}"
            for variable in container.get("env") or []:
                source = variable.get("valueFrom") or {}
                if "configMapKeyRef" in source:
                    ref = source["configMapKeyRef"]
                    assert ref["key"] in one("ConfigMap", ref["name"], namespace).obj["data"]
                if "secretKeyRef" in source:
                    ref = source["secretKeyRef"]
                    secret = one("Secret", ref["name"], namespace).obj
                    assert ref["key"] in {**secret.get("data", {}), **secret.get("stringData", {})}
    for doc in find("RoleBinding") + find("ClusterRoleBinding"):
        ref = doc.obj["roleRef"]
        one(ref["kind"], ref["name"], None if ref["kind"] == "ClusterRole" else doc.namespace)
        for subject in doc.obj["subjects"]:
            assert subject["kind"] == "ServiceAccount"
            one("ServiceAccount", subject["name"], subject["namespace"])


def env_values(container: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the kubelet would make it (downward API faked)."""
    namespace = namespace_name()
    values = {}
    for variable in container.get("env") or []:
        source = variable.get("valueFrom")
        if source is None:
            values[variable["name"]] = variable["value"]
        elif "fieldRef" in source:
            values[variable["name"]] = FAKE_DOWNWARD[source["fieldRef"]["fieldPath"]]
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            values[variable["name"]] = one("ConfigMap", ref["name"], namespace).obj["data"][
                ref["key"]]
        else:
            raise AssertionError(f"unexpected env source {source}")
    return values


@pytest.mark.parametrize(("doc", "container"), list(twistd_containers()),
                         ids=lambda x: str(x) if isinstance(x, Doc) else x["name"])
def test_command_line_variables_are_defined(doc: Doc, container: dict[str, Any]) -> None:
    """The kubelet leaves an undefined $(NAME) as it is: every one must be defined."""
    defined = env_values(container)
    used = {m for arg in container["args"] for m in re.findall(r"\$\((\w+)\)", arg)}
    assert used <= set(defined), f"{doc}: undefined {sorted(used - set(defined))}"


def test_containers_have_requests_and_limits() -> None:
    for doc in workloads():
        for container in containers(doc):
            resources = container["resources"]
            for what in ("cpu", "memory"):
                quantity: Any = parse_quantity
                request, limit = (quantity(resources[k][what]) for k in ("requests", "limits"))
                assert 0 < request <= limit, f"{doc} {container['name']} {what}"


def test_one_image_tagged_with_the_package_version() -> None:
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    version = setup["metadata"]["version"]
    images = {c["image"] for doc in workloads() for c in containers(doc)}
    assert len(images) == 1
    assert images.pop().endswith(f"/edgemesh:{version}")


def test_router_replicas_in_the_cloud() -> None:
    """Three replicas (docs/ha.md), rolled one at a time, two kept through disruptions, each
    with a certificate of its own name, router links and a headless Service for the edges."""
    router = one("StatefulSet", "edgemesh-router")
    spec = router.obj["spec"]
    replicas = spec["replicas"]
    assert replicas == 3 and spec["updateStrategy"]["type"] == "RollingUpdate"
    terms = pod_spec(router)["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert {"key": EDGE_LABEL, "operator": "DoesNotExist"} in terms[0]["matchExpressions"]
    assert "--insecure" not in str(router.obj)
    (container,) = [c for _, c in twistd_containers() if tap_arguments(c)[0] == "edgemesh-router"]
    _, options = tap_arguments(container)
    assert options["node"] == "$(POD_NAME)" and "no-leader-elect" not in options
    assert "no-peer-discovery" not in options and "peer-listen" in options
    assert float(str(options["drain-timeout"])) < pod_spec(router)[
        "terminationGracePeriodSeconds"], "the drain ends before the kubelet's SIGKILL"
    # Each replica (pod NAME-ORDINAL) finds its own certificate in the Secret.
    (volume,) = [v for v in pod_spec(router)["volumes"] if "secret" in v]
    secret = one("Secret", volume["secret"]["secretName"], router.namespace).obj["stringData"]
    for ordinal in range(replicas):
        assert {f"{router.name}-{ordinal}.pem", f"{router.name}-{ordinal}.key"} <= set(secret)
    # The governing Service is headless and selects the replicas.
    headless = one("Service", spec["serviceName"], router.namespace).obj["spec"]
    assert headless["clusterIP"] == "None"
    assert labels_match(headless["selector"], spec["template"]["metadata"]["labels"])
    (budget,) = find("PodDisruptionBudget")
    assert labels_match(budget.obj["spec"]["selector"]["matchLabels"],
                        spec["template"]["metadata"]["labels"])
    assert 0 < budget.obj["spec"]["minAvailable"] < replicas
    # Edges take any of the replicas' certificates.
    assert one("ConfigMap", "edgemesh-edge", router.namespace).obj["data"]["router"].startswith(
        "*=")


def test_edge_daemonset_runs_on_edge_nodes_with_what_capture_needs() -> None:
    (edge,) = find("DaemonSet")
    spec = pod_spec(edge)
    assert EDGE_LABEL in spec["nodeSelector"]
    assert any(t["key"] == EDGE_LABEL and t["operator"] == "Exists" for t in spec["tolerations"])
    assert spec["hostNetwork"] is True
    assert spec["automountServiceAccountToken"] is False
    (container,) = [c for _, c in twistd_containers() if tap_arguments(c)[0] == "edgemesh-edge"]
    _, options = tap_arguments(container)
    assert "NET_ADMIN" in container["securityContext"]["capabilities"]["add"]
    assert options["capture"] is True
    # Other edges dial this node's hub at its InternalIP and the default hub port.
    assert endpoint_port(str(options["hub"])) == DEFAULT_HUB_PORT
    # The state directory survives the pod: a hostPath volume.
    volumes = {v["name"]: v for v in spec["volumes"]}
    (state,) = [m for m in container["volumeMounts"] if m["mountPath"] == options["state-dir"]]
    assert "hostPath" in volumes[state["name"]]
    # The DNS server's address is the one the init container puts on the dummy device.
    address = str(options["dns"]).rsplit(":", 1)[0]
    (init,) = spec["initContainers"]
    assert f"ip addr replace {address}/32" in init["args"][0]


# -- the command lines parse with the taps' Options --------------------------------------


class _Certificates:
    """Real PEM files for whatever name a manifest asks for (a test CA)."""

    def __init__(self, root: Path, router_name: str) -> None:
        self.ca = root / "ca"
        init_ca_dir(str(self.ca))
        self.root = root
        self.router_name = router_name

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.name == "ca.pem":
            shutil.copy(self.ca / "ca.pem", path)
            return
        name, extension = os.path.splitext(path.name)
        assert extension in (".pem", ".key"), path
        issued = self.root / "issued" / name
        if not issued.exists():
            issue_into_dir(str(self.ca), name, router=name == self.router_name, out=str(issued))
        shutil.copy(issued / path.name, path)


def materialize(doc: Doc, container: dict[str, Any], root: Path) -> list[str]:
    """The container's twistd argv with $(NAME) expanded and every volume mount moved under
    ``root``: Secret volumes filled with the Secret's keys (and nothing else), host paths with
    the TLS files the arguments name there (the node provisions those)."""
    env = env_values(container)
    argv = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in container["args"]]
    plugin, options = tap_arguments(container)
    node = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], str(options.get("node", "router")))
    certificates = _Certificates(root / "test-ca",
                                 node if plugin == "edgemesh-router" else "router")
    volumes = {v["name"]: v for v in pod_spec(doc)["volumes"]}
    mounts = sorted(container["volumeMounts"], key=lambda m: -len(m["mountPath"]))
    local_of = {m["mountPath"]: root / "mounts" / m["name"] for m in mounts}

    def moved(arg: str) -> str:
        name, equals, value = arg.partition("=")
        for path, local in local_of.items():  # the longest mount path first
            if value == path or value.startswith(path + "/"):
                return f"{name}{equals}{local}{value[len(path):]}"
        return arg

    argv = [moved(a) for a in argv]
    for mount in mounts:
        local = local_of[mount["mountPath"]]
        local.mkdir(parents=True)
        volume = volumes[mount["name"]]
        if "secret" in volume:
            secret = one("Secret", volume["secret"]["secretName"], doc.namespace).obj
            for key in {**secret.get("data", {}), **secret.get("stringData", {})}:
                certificates.write(local / key)
        elif "hostPath" in volume:
            for arg in argv:
                value = arg.partition("=")[2]
                if value.startswith(f"{local}/") and value.endswith((".pem", ".key")):
                    certificates.write(Path(value))
    return argv


@pytest.mark.parametrize(("doc", "container"), list(twistd_containers()),
                         ids=lambda x: str(x) if isinstance(x, Doc) else x["name"])
def test_command_line_parses_with_the_taps_options(
    doc: Doc, container: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """twistd's own options and the plugin's, parsed the way twistd parses them (postOptions
    included: TLS files checked, capture rules built), with the container's environment."""
    for name, value in env_values(container).items():
        monkeypatch.setenv(name, value)
    loaded: list[tuple[Any, ...]] = []

    def load_configuration(*args: Any) -> Any:
        loaded.append(args)
        return kubernetes.client.Configuration()

    monkeypatch.setattr(kubeapi, "load_configuration", load_configuration)
    # --log-format json tells twistd's options which logger to use, and remembers them.
    monkeypatch.setattr(logs, "_twistd_options", getattr(logs, "_twistd_options", None))
    argv = materialize(doc, container, tmp_path)
    config = EdgemeshServerOptions()
    config.parseOptions(argv)
    assert config["nodaemon"] and config["pidfile"] == ""
    if "--log-format=json" in argv:
        assert config["logger"] is logs.json_logger
    options = config.subOptions
    assert isinstance(options, TAPS[str(config.subCommand)])
    assert options["tls_value"] is not None, "links between nodes must be TLS"
    if config.subCommand == "edgemesh-router":
        assert loaded == [(None, True, None)]  # --in-cluster
        assert options["advertise_value"] == FAKE_DOWNWARD["status.podIP"]
    else:
        capture, dns = options["capture_value"], options["dns_value"]
        assert capture is not None and capture.rules is not None
        assert dns is not None and dns.upstreams


# -- RBAC: exactly what the code calls ----------------------------------------------------


def _resource_named(name: str) -> Resource:
    resource = getattr(kubeapi, name, None)
    assert isinstance(resource, Resource), f"{name} is not a Resource of edgemesh.sources"
    return resource


def _api_group(resource: Resource) -> str:
    return resource.api_version.rpartition("/")[0]


def required_permissions() -> set[tuple[str, str, str, bool]]:
    """(apiGroup, resource, verb, namespaced) for every API call edgemesh/sources can make:
    ``….api.METHOD(RESOURCE, …)`` calls, and list + watch (whatever the Reflector calls on
    its own resource) for each ``Reflector(clock, api, RESOURCE, …)``."""
    methods = {n for n in vars(KubeAPI) if not n.startswith("_")}
    assert methods == set(KUBEAPI_VERBS), "a KubeAPI method without an RBAC verb here"
    reflected: list[str] = []
    direct: list[tuple[str, str]] = []
    reflector_methods: set[str] = set()
    for path in sorted(SOURCES.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            function = node.func
            if isinstance(function, ast.Name) and function.id == "Reflector":
                argument = node.args[2]
                assert isinstance(argument, ast.Name), ast.unparse(node)
                reflected.append(argument.id)
            elif (isinstance(function, ast.Attribute) and function.attr in KUBEAPI_VERBS
                  and isinstance(function.value, ast.Attribute) and function.value.attr == "api"):
                first = node.args[0]
                if ast.unparse(first) == "self.resource" and path.name == "_reflector.py":
                    reflector_methods.add(function.attr)
                else:
                    assert isinstance(first, ast.Name), f"{path.name}: {ast.unparse(node)}"
                    direct.append((first.id, function.attr))
    assert reflected and direct and reflector_methods == {"list", "watch"}
    calls = direct + [(name, method) for name in reflected for method in reflector_methods]
    needed = set()
    for name, method in calls:
        resource = _resource_named(name)
        needed.add((_api_group(resource), resource.plural, KUBEAPI_VERBS[method],
                    resource.namespaced))
    return needed


def test_required_permissions_are_derived_from_the_code() -> None:
    needed = {(g, r, v) for g, r, v, _ in required_permissions()}
    # What the watch and the controller do today; the derivation must at least see these.
    assert {("", "nodes", "list"), ("", "nodes", "watch"), ("", "services", "watch"),
            ("discovery.k8s.io", "endpointslices", "create")} <= needed
    assert ("", "nodes", "create") not in needed


def granted(service_account: str, namespace: str) -> set[tuple[str, str, str, str | None]]:
    """(apiGroup, resource, verb, scope) the bindings give a ServiceAccount; scope None is
    cluster-wide, else the namespace of a RoleBinding."""
    grants = set()
    for binding in find("ClusterRoleBinding") + find("RoleBinding"):
        subjects = binding.obj.get("subjects") or []
        if not any(s.get("kind") == "ServiceAccount" and s["name"] == service_account
                   and s.get("namespace") == namespace for s in subjects):
            continue
        ref = binding.obj["roleRef"]
        role = one(ref["kind"], ref["name"],
                   None if ref["kind"] == "ClusterRole" else binding.namespace)
        scope = None if binding.kind == "ClusterRoleBinding" else binding.namespace
        for rule in role.obj["rules"]:
            assert "resourceNames" not in rule and "nonResourceURLs" not in rule, rule
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        grants.add((group, resource, verb, scope))
    return grants


def router_service_account() -> tuple[str, str]:
    router = one("StatefulSet", "edgemesh-router")
    return pod_spec(router)["serviceAccountName"], str(router.namespace)


def router_watch_namespace() -> str | None:
    (container,) = [c for _, c in twistd_containers() if tap_arguments(c)[0] == "edgemesh-router"]
    value = tap_arguments(container)[1].get("namespace")
    return None if value is None else str(value)


def test_rbac_covers_every_call_the_router_makes() -> None:
    account, own_namespace = router_service_account()
    grants = granted(account, own_namespace)
    watched = router_watch_namespace()
    missing = []
    for group, resource, verb, namespaced in sorted(required_permissions()):
        scopes = {None} if not namespaced or watched is None else {None, watched}
        if resource == "leases":  # the election's Lease is in the router's own namespace
            scopes = {None, own_namespace}
        if not any((group, resource, verb, scope) in grants for scope in scopes):
            missing.append(f"{group or 'core'}/{resource} {verb}")
    assert missing == []


def test_rbac_grants_nothing_more() -> None:
    """Least privilege: no wildcard, and no (group, resource, verb) the code does not use,
    except ``get`` on what the router may ``list`` anyway (it reveals nothing more)."""
    needed = {(g, r, v) for g, r, v, _ in required_permissions()}
    grants = granted(*router_service_account())
    extra = sorted({(g, r, v) for g, r, v, _ in grants} - needed
                   - {(g, r, "get") for g, r, v in needed if v == "list"})
    assert extra == []
    assert not any("*" in (g, r, v) for g, r, v, _ in grants)


def test_edges_have_no_api_access() -> None:
    (edge,) = find("DaemonSet")
    account = pod_spec(edge)["serviceAccountName"]
    assert granted(account, str(edge.namespace)) == set()
    assert one("ServiceAccount", account).obj["automountServiceAccountToken"] is False
