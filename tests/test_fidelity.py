"""One suite, two backends: the same checks against edgemesh.testing's API server and, when
``EDGEMESH_TEST_KUBECONFIG`` names a real cluster's kubeconfig, against that cluster.

What a faithful API server does that the control-plane tests rely on (issue 16): the system
namespaces and default/kubernetes, 404 for a missing namespace, namespace deletion through
Terminating, Service and EndpointSlice defaults, dryRun=All, server-side apply with
managedFields and conflicts, Lease optimistic concurrency, SelfSubjectAccessReview, Table
output, OpenAPI documents, generic kinds.  The ``kubectl`` half runs when ``kubectl`` is
installed (.ci/run installs Debian's).  Every test works in a namespace of its own and
deletes it; against a real cluster the kubeconfig's user must be allowed to do all this.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from edgemesh.testing import ThreadedKubeApiServer

TIMEOUT = 10.0
KUBECTL = shutil.which("kubectl")
REPO = Path(__file__).resolve().parent.parent
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"


@dataclass
class Backend:
    name: str
    kubeconfig: Path
    api: client.ApiClient
    fake: ThreadedKubeApiServer | None

    @property
    def v1(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    def raw(self, method: str, path: str, *, accept: str = "application/json",
            body: Any = None, content_type: str = "application/json") -> tuple[int, bytes]:
        headers = {"Accept": accept}
        if body is not None:
            headers["Content-Type"] = content_type
        method, url, headers, payload, post = self.api.param_serialize(
            method, path, header_params=headers, body=body, auth_settings=["BearerToken"])
        try:
            response = self.api.call_api(method, url, headers, payload, post,
                                         _request_timeout=TIMEOUT)
        except ApiException as error:
            return error.status, (error.body or "").encode()
        response.read()
        return response.status, response.data

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        assert KUBECTL is not None
        done = subprocess.run(
            [KUBECTL, "--kubeconfig", str(self.kubeconfig), "--request-timeout=10s", *args],
            capture_output=True, text=True, timeout=60, cwd=REPO, check=False)
        if check:
            assert done.returncode == 0, done.stderr
        return done


@pytest.fixture(scope="module", params=["fake", "cluster"])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Backend]:
    if request.param == "cluster":
        kubeconfig = os.environ.get("EDGEMESH_TEST_KUBECONFIG")
        if not kubeconfig:
            pytest.skip("EDGEMESH_TEST_KUBECONFIG names no real cluster's kubeconfig")
        api = config.new_client_from_config(config_file=kubeconfig)
        yield Backend("cluster", Path(kubeconfig), api, None)
        return
    with ThreadedKubeApiServer(bootstrap=True, bookmark_interval=None) as fake:
        path = tmp_path_factory.mktemp("fidelity") / "kubeconfig"
        fake.write_kubeconfig(path)
        api = config.new_client_from_config(config_file=str(path))
        yield Backend("fake", path, api, fake)


def _until(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _gone(read: Callable[[], Any]) -> bool:
    try:
        read()
    except ApiException as error:
        return error.status == 404
    return False


@pytest.fixture
def namespace(backend: Backend) -> Iterator[str]:
    name = f"fidelity-{uuid.uuid4().hex[:8]}"
    backend.v1.create_namespace({"metadata": {"name": name}}, _request_timeout=TIMEOUT)
    yield name
    try:
        backend.v1.delete_namespace(name, _request_timeout=TIMEOUT)
    except ApiException as error:
        assert error.status == 404


def _service(name: str, service_type: str = "ClusterIP", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"type": service_type, "selector": {"app": name},
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080}], **spec}}


# -- a new cluster ------------------------------------------------------------------------------


def test_system_namespaces_and_the_kubernetes_service(backend: Backend) -> None:
    names = {n.metadata.name for n in backend.v1.list_namespace(_request_timeout=TIMEOUT).items}
    assert {"default", "kube-system", "kube-public", "kube-node-lease"} <= names
    service = backend.v1.read_namespaced_service("kubernetes", "default", _request_timeout=TIMEOUT)
    assert [(p.name, p.port) for p in service.spec.ports] == [("https", 443)]
    slices = client.DiscoveryV1Api(backend.api).list_namespaced_endpoint_slice(
        "default", label_selector="kubernetes.io/service-name=kubernetes",
        _request_timeout=TIMEOUT).items
    assert slices and slices[0].endpoints and slices[0].ports[0].name == "https"


def test_creating_in_a_missing_namespace_is_404(backend: Backend) -> None:
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    with pytest.raises(ApiException) as raised:
        backend.v1.create_namespaced_config_map(
            missing, {"metadata": {"name": "x"}}, _request_timeout=TIMEOUT)
    assert raised.value.status == 404
    status = json.loads(raised.value.body)
    assert status["message"] == f'namespaces "{missing}" not found'
    assert status["details"] == {"name": missing, "kind": "namespaces"}


def test_namespace_deletion_terminates_then_removes_content(backend: Backend) -> None:
    name = f"fidelity-{uuid.uuid4().hex[:8]}"
    backend.v1.create_namespace({"metadata": {"name": name}}, _request_timeout=TIMEOUT)
    backend.v1.create_namespaced_config_map(name, {"metadata": {"name": "kept"}},
                                            _request_timeout=TIMEOUT)
    backend.v1.delete_namespace(name, _request_timeout=TIMEOUT)
    try:
        phase = backend.v1.read_namespace(name, _request_timeout=TIMEOUT).status.phase
        assert phase == "Terminating"
    except ApiException as error:
        assert error.status == 404  # a fast real namespace controller was done already
    _until("the namespace to go", lambda: _gone(
        lambda: backend.v1.read_namespace(name, _request_timeout=TIMEOUT)))
    assert _gone(lambda: backend.v1.read_namespaced_config_map("kept", name,
                                                               _request_timeout=TIMEOUT))


# -- defaults -----------------------------------------------------------------------------------


def test_service_defaults(backend: Backend, namespace: str) -> None:
    created = backend.v1.create_namespaced_service(
        namespace, _service("lb", "LoadBalancer"), _request_timeout=TIMEOUT).spec
    assert created.cluster_ip and created.cluster_ips == [created.cluster_ip]
    assert 30000 <= created.ports[0].node_port <= 32767
    assert created.ports[0].protocol == "TCP"
    assert created.external_traffic_policy == "Cluster"
    assert created.internal_traffic_policy == "Cluster"
    assert created.session_affinity == "None"
    assert created.ip_family_policy == "SingleStack" and created.ip_families
    assert created.allocate_load_balancer_node_ports is True
    plain = backend.v1.create_namespaced_service(
        namespace, _service("plain"), _request_timeout=TIMEOUT).spec
    assert plain.ports[0].node_port is None and plain.external_traffic_policy is None
    assert plain.ports[0].target_port == 8080 and plain.internal_traffic_policy == "Cluster"
    # A requested node port that is taken: 422 Invalid.
    taken = created.ports[0].node_port
    clash = _service("clash", "NodePort")
    clash["spec"]["ports"][0]["nodePort"] = taken
    with pytest.raises(ApiException) as raised:
        backend.v1.create_namespaced_service(namespace, clash, _request_timeout=TIMEOUT)
    assert raised.value.status == 422
    assert "provided port is already allocated" in json.loads(raised.value.body)["message"]


def test_endpoint_slice_port_defaults(backend: Backend, namespace: str) -> None:
    created = client.DiscoveryV1Api(backend.api).create_namespaced_endpoint_slice(namespace, {
        "metadata": {"name": "s"}, "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.0.0.1"]}], "ports": [{"port": 80}],
    }, _request_timeout=TIMEOUT)
    assert (created.ports[0].protocol, created.ports[0].name) == ("TCP", "")


# -- writes -------------------------------------------------------------------------------------


def test_dry_run_stores_nothing(backend: Backend, namespace: str) -> None:
    answered = backend.v1.create_namespaced_service(
        namespace, _service("dry"), dry_run="All", _request_timeout=TIMEOUT)
    assert answered.metadata.name == "dry" and answered.spec.cluster_ip
    assert _gone(lambda: backend.v1.read_namespaced_service("dry", namespace,
                                                            _request_timeout=TIMEOUT))
    backend.v1.create_namespaced_service(namespace, _service("wet"), _request_timeout=TIMEOUT)
    patched = backend.v1.patch_namespaced_service(
        "wet", namespace, {"metadata": {"labels": {"dry": "yes"}}}, dry_run="All",
        _request_timeout=TIMEOUT)
    assert patched.metadata.labels == {"dry": "yes"}
    stored = backend.v1.read_namespaced_service("wet", namespace, _request_timeout=TIMEOUT)
    assert not stored.metadata.labels
    backend.v1.delete_namespaced_service("wet", namespace, dry_run="All",
                                         _request_timeout=TIMEOUT)
    backend.v1.read_namespaced_service("wet", namespace, _request_timeout=TIMEOUT)


def test_server_side_apply(backend: Backend, namespace: str) -> None:
    path = f"/api/v1/namespaces/{namespace}/services/web"
    applied = _service("web")
    status, body = backend.raw("PATCH", path + "?fieldManager=alice", body=applied,
                               content_type="application/apply-patch+yaml")
    assert status == 201, body
    managed = json.loads(body)["metadata"]["managedFields"]
    assert [(m["manager"], m["operation"]) for m in managed] == [("alice", "Apply")]
    assert "f:selector" in managed[0]["fieldsV1"]["f:spec"]
    # Another manager changing alice's field: a conflict, unless forced.
    other = _service("web")
    other["spec"]["selector"] = {"app": "other"}
    status, body = backend.raw("PATCH", path + "?fieldManager=bob", body=other,
                               content_type="application/apply-patch+yaml")
    assert status == 409, body
    assert json.loads(body)["reason"] == "Conflict"
    status, body = backend.raw("PATCH", path + "?fieldManager=bob&force=true", body=other,
                               content_type="application/apply-patch+yaml")
    assert status == 200, body
    assert json.loads(body)["spec"]["selector"] == {"app": "other"}
    # Alice agrees with bob's value (co-owned, no conflict), adds a label, then drops it.
    labelled = {**other, "metadata": {"name": "web", "labels": {"team": "a"}}}
    status, body = backend.raw("PATCH", path + "?fieldManager=alice", body=labelled,
                               content_type="application/apply-patch+yaml")
    assert status == 200, body
    assert json.loads(body)["metadata"]["labels"] == {"team": "a"}
    status, body = backend.raw("PATCH", path + "?fieldManager=alice", body=other,
                               content_type="application/apply-patch+yaml")
    assert status == 200, body
    assert "team" not in (json.loads(body)["metadata"].get("labels") or {})


def test_lease_optimistic_concurrency_and_watch(backend: Backend, namespace: str) -> None:
    leases = client.CoordinationV1Api(backend.api)
    first = leases.create_namespaced_lease(namespace, {
        "metadata": {"name": "router"}, "spec": {"holderIdentity": "a",
                                                 "leaseDurationSeconds": 15}},
        _request_timeout=TIMEOUT)
    won = leases.replace_namespaced_lease("router", namespace, {
        "metadata": {"name": "router", "resourceVersion": first.metadata.resource_version},
        "spec": {"holderIdentity": "b", "leaseDurationSeconds": 15}}, _request_timeout=TIMEOUT)
    assert won.metadata.resource_version != first.metadata.resource_version
    with pytest.raises(ApiException) as raised:
        leases.replace_namespaced_lease("router", namespace, {
            "metadata": {"name": "router", "resourceVersion": first.metadata.resource_version},
            "spec": {"holderIdentity": "c"}}, _request_timeout=TIMEOUT)
    assert raised.value.status == 409
    assert json.loads(raised.value.body)["reason"] == "Conflict"
    path = (f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases?watch=true"
            f"&resourceVersion={first.metadata.resource_version}&timeoutSeconds=1")
    status, body = backend.raw("GET", path)
    assert status == 200
    events = [json.loads(line) for line in body.splitlines() if line.strip()]
    assert [(e["type"], e["object"]["spec"]["holderIdentity"]) for e in events] == [
        ("MODIFIED", "b")]


def test_generic_kinds_are_served(backend: Backend, namespace: str) -> None:
    rbac = client.RbacAuthorizationV1Api(backend.api)
    apps = client.AppsV1Api(backend.api)
    backend.v1.create_namespaced_service_account(namespace, {"metadata": {"name": "sa"}},
                                                 _request_timeout=TIMEOUT)
    rbac.create_namespaced_role(namespace, {"metadata": {"name": "r"}, "rules": [
        {"apiGroups": [""], "resources": ["services"], "verbs": ["get"]}]},
        _request_timeout=TIMEOUT)
    deployment = apps.create_namespaced_deployment(namespace, {
        "metadata": {"name": "d"}, "spec": {
            "selector": {"matchLabels": {"app": "d"}},
            "template": {"metadata": {"labels": {"app": "d"}},
                         "spec": {"containers": [{"name": "c", "image": "example.invalid/x"}]}}}},
        _request_timeout=TIMEOUT)
    assert deployment.metadata.generation == 1
    listed = apps.list_namespaced_deployment(namespace, _request_timeout=TIMEOUT)
    assert [d.metadata.name for d in listed.items] == ["d"]
    assert int(listed.metadata.resource_version) >= int(deployment.metadata.resource_version)
    assert [r.metadata.name for r in rbac.list_namespaced_role(
        namespace, _request_timeout=TIMEOUT).items] == ["r"]


def test_self_subject_access_review(backend: Backend) -> None:
    status, body = backend.raw("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                               body={"apiVersion": "authorization.k8s.io/v1",
                                     "kind": "SelfSubjectAccessReview",
                                     "spec": {"resourceAttributes": {
                                         "verb": "list", "resource": "services"}}})
    assert status == 201, body
    assert json.loads(body)["status"]["allowed"] is True


# -- reads for kubectl --------------------------------------------------------------------------


def test_table_output(backend: Backend, namespace: str) -> None:
    backend.v1.create_namespaced_service(namespace, _service("web", "NodePort"),
                                         _request_timeout=TIMEOUT)
    status, body = backend.raw("GET", f"/api/v1/namespaces/{namespace}/services", accept=TABLE)
    assert status == 200
    table = json.loads(body)
    assert table["kind"] == "Table"
    assert [c["name"] for c in table["columnDefinitions"]] == [
        "Name", "Type", "Cluster-IP", "External-IP", "Port(s)", "Age", "Selector"]
    cells = table["rows"][0]["cells"]
    assert cells[:2] == ["web", "NodePort"] and cells[3] == "<none>"
    assert cells[4].startswith("80:") and cells[4].endswith("/TCP")
    assert table["rows"][0]["object"]["kind"] == "PartialObjectMetadata"
    status, body = backend.raw(
        "GET", f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices", accept=TABLE)
    assert [c["name"] for c in json.loads(body)["columnDefinitions"]] == [
        "Name", "AddressType", "Ports", "Endpoints", "Age"]
    status, body = backend.raw("GET", "/api/v1/nodes", accept=TABLE)
    assert [c["name"] for c in json.loads(body)["columnDefinitions"]][:5] == [
        "Name", "Status", "Roles", "Age", "Version"]


def test_openapi_documents(backend: Backend) -> None:
    status, body = backend.raw("GET", "/openapi/v3")
    assert status == 200
    paths = json.loads(body)["paths"]
    assert "api/v1" in paths and "apis/coordination.k8s.io/v1" in paths
    status, body = backend.raw("GET", paths["api/v1"]["serverRelativeURL"])
    schemas = json.loads(body)["components"]["schemas"]
    kinds = {gvk["kind"] for schema in schemas.values()
             for gvk in schema.get("x-kubernetes-group-version-kind", [])}
    assert {"Service", "Namespace", "ConfigMap"} <= kinds
    status, body = backend.raw(
        "GET", "/openapi/v2",
        accept="application/com.github.proto-openapi.spec.v2@v1.0+protobuf")
    assert status == 200 and b"x-kubernetes-group-version-kind" in body


# -- kubectl ------------------------------------------------------------------------------------

needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")


@needs_kubectl
def test_kubectl_get_prints_the_server_columns(backend: Backend, namespace: str) -> None:
    backend.v1.create_namespaced_service(namespace, _service("web", "LoadBalancer"),
                                         _request_timeout=TIMEOUT)
    header = backend.kubectl("get", "svc", "-n", namespace).stdout.splitlines()[0].split()
    assert header == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    header = backend.kubectl("get", "endpointslices", "-n", "default").stdout.splitlines()[0]
    assert header.split() == ["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"]


@needs_kubectl
def test_kubectl_validates_dry_runs_and_applies(backend: Backend, namespace: str,
                                                 tmp_path: Path) -> None:
    manifest = tmp_path / "svc.yaml"
    manifest.write_text(json.dumps(_service("web")))
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps({**_service("bad"), "spec": {"portz": [{"port": 80}]}}))
    refused = backend.kubectl("apply", "-n", namespace, "-f", str(bad), check=False)
    assert refused.returncode != 0 and "portz" in refused.stderr
    backend.kubectl("create", "-n", namespace, "--dry-run=server", "-f", str(manifest))
    assert backend.kubectl("get", "svc", "web", "-n", namespace, check=False).returncode != 0
    backend.kubectl("apply", "--server-side", "-n", namespace, "-f", str(manifest))
    shown = backend.kubectl("get", "svc", "web", "-n", namespace, "-o", "json",
                            "--show-managed-fields", check=False)
    if "unknown flag" in shown.stderr:  # kubectl < 1.21 always shows them
        shown = backend.kubectl("get", "svc", "web", "-n", namespace, "-o", "json")
    stored = json.loads(shown.stdout)
    assert ("kubectl", "Apply") in {(m["manager"], m["operation"])
                                    for m in stored["metadata"]["managedFields"]}
    assert backend.kubectl("auth", "can-i", "list", "services").stdout.strip() == "yes"
    assert "ports" in backend.kubectl("explain", "service.spec.ports").stdout


@needs_kubectl
def test_kubectl_apply_k_examples(backend: Backend) -> None:
    if backend.fake is None:
        pytest.skip("applies examples/kubernetes: only into the fake, never a real cluster")
    done = backend.kubectl("apply", "-k", "examples/kubernetes")
    for created in ("namespace/edgemesh", "serviceaccount/edgemesh-router",
                    "clusterrole.rbac.authorization.k8s.io/edgemesh-router",
                    "configmap/edgemesh-edge", "statefulset.apps/edgemesh-router",
                    "poddisruptionbudget.policy/edgemesh-router",
                    "daemonset.apps/edgemesh-edge",
                    "networkpolicy.networking.k8s.io/edgemesh-router"):
        assert created in done.stdout
    again = backend.kubectl("apply", "-k", "examples/kubernetes")
    assert "created" not in again.stdout
    backend.kubectl("delete", "namespace", "edgemesh")
    assert backend.kubectl("get", "ns", "edgemesh", check=False).returncode != 0
