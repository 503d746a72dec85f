"""edgemesh.testing's cluster semantics beyond the mesh's kinds (issue 16): namespace
lifecycle, dryRun, server-side apply, Service defaults, Lease concurrency, Tables, OpenAPI,
and HTTPS with client certificates, tokens and RBAC (401/403 in the API's Status shape).
Store-level tests are plain Python; the HTTP ones use a ThreadedKubeApiServer on loopback."""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID

from edgemesh.testing import LEASES, NAMESPACES, SERVICES, ObjectStore, ThreadedKubeApiServer
from edgemesh.testing import StatusError as Status
from edgemesh.testing._auth import Policy, Rule, UserInfo, load_policy
from edgemesh.testing._openapi import openapi_v2_protobuf
from edgemesh.testing._resources import CONFIG_MAPS, RESOURCE_TYPES
from edgemesh.testing._tables import human_duration, wants_table

TIMEOUT = 10.0


class Sink:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def deliver(self, event_type: str, obj: dict[str, Any]) -> None:
        self.events.append((event_type, obj["metadata"]["name"]))


@pytest.fixture
def store() -> ObjectStore:
    clock = iter(range(1_000_000, 2_000_000))
    store = ObjectStore(now=lambda: float(next(clock)), require_namespaces=True)
    store.create(NAMESPACES, {"metadata": {"name": "default"}})
    return store


def _svc(name: str, service_type: str = "ClusterIP", **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "default"},
            "spec": {"type": service_type, "ports": [{"name": "http", "port": 80}], **spec}}


# -- namespaces ---------------------------------------------------------------------------------


def test_namespace_is_required_then_terminating_then_finalized(store: ObjectStore) -> None:
    with pytest.raises(Status) as missing:
        store.create(CONFIG_MAPS, {"metadata": {"name": "c"}}, "shop")
    assert (missing.value.code, missing.value.message) == (404, 'namespaces "shop" not found')
    store.create(NAMESPACES, {"metadata": {"name": "shop"}})
    store.create(CONFIG_MAPS, {"metadata": {"name": "c"}}, "shop")
    sink = Sink()
    store.watch(CONFIG_MAPS, None, sink, resource_version=str(store.resource_version))
    marked = store.delete(NAMESPACES, None, "shop")
    assert marked["status"]["phase"] == "Terminating" and marked["metadata"]["deletionTimestamp"]
    assert store.get(CONFIG_MAPS, "shop", "c")  # content stays until the finalizer runs
    with pytest.raises(Status) as refused:
        store.create(CONFIG_MAPS, {"metadata": {"name": "d"}}, "shop")
    assert refused.value.code == 403 and "because it is being terminated" in refused.value.message
    assert store.terminating_namespaces() == ["shop"]
    assert store.finalize_namespace("shop") is True
    assert sink.events == [("DELETED", "c")]
    with pytest.raises(Status):
        store.get(NAMESPACES, None, "shop")
    with pytest.raises(Status) as kept:
        store.delete(NAMESPACES, None, "default")
    assert kept.value.code == 403 and "may not be deleted" in kept.value.message
    # A fixture may ask for the namespace to be made.
    store.create(CONFIG_MAPS, {"metadata": {"name": "e"}}, "made", ensure_namespace=True)
    assert store.get(NAMESPACES, None, "made")["status"]["phase"] == "Active"


def test_dry_run_changes_no_version_and_sends_no_event(store: ObjectStore) -> None:
    sink = Sink()
    store.watch(SERVICES, None, sink, resource_version=str(store.resource_version))
    version = store.resource_version
    answered = store.create(SERVICES, _svc("web"), dry_run=True)
    assert answered["spec"]["clusterIP"] and "resourceVersion" not in answered["metadata"]
    store.create(SERVICES, _svc("db"))
    before = store.resource_version
    store.patch(SERVICES, "default", "db", {"metadata": {"labels": {"a": "b"}}}, dry_run=True)
    store.delete(SERVICES, "default", "db", dry_run=True)
    assert store.resource_version == before == version + 1
    assert sink.events == [("ADDED", "db")]
    assert not store.get(SERVICES, "default", "db")["metadata"].get("labels")


# -- server-side apply --------------------------------------------------------------------------


def test_server_side_apply_owns_removes_and_conflicts(store: ObjectStore) -> None:
    applied = {"apiVersion": "v1", "kind": "Service", **_svc("web")}
    applied["metadata"]["labels"] = {"team": "a"}
    created = store.server_side_apply(SERVICES, "default", "web", applied, "alice")
    (entry,) = created["metadata"]["managedFields"]
    assert (entry["manager"], entry["operation"], entry["fieldsType"]) == (
        "alice", "Apply", "FieldsV1")
    assert entry["fieldsV1"]["f:metadata"] == {"f:labels": {"f:team": {}}}
    # Same values from another manager: shared, no conflict.
    store.server_side_apply(SERVICES, "default", "web", applied, "bob")
    changed = json.loads(json.dumps(applied))
    changed["spec"]["type"] = "NodePort"
    del changed["metadata"]["labels"]
    with pytest.raises(Status) as conflict:
        store.server_side_apply(SERVICES, "default", "web", changed, "carol")
    assert conflict.value.code == 409
    assert 'conflict with "alice" using v1: .spec.type' in conflict.value.message
    forced = store.server_side_apply(SERVICES, "default", "web", changed, "carol", force=True)
    assert forced["spec"]["type"] == "NodePort" and forced["spec"]["ports"][0]["nodePort"]
    # Alice drops her label; bob still applies it, so it stays; then bob drops it too.
    without = json.loads(json.dumps(applied))
    del without["metadata"]["labels"]
    without["spec"]["type"] = "NodePort"
    kept = store.server_side_apply(SERVICES, "default", "web", without, "alice")
    assert kept["metadata"]["labels"] == {"team": "a"}
    gone = store.server_side_apply(SERVICES, "default", "web", without, "bob")
    assert "labels" not in gone["metadata"]
    with pytest.raises(Status) as unnamed:
        store.server_side_apply(SERVICES, "default", "web", applied, None)
    assert unnamed.value.code == 422


def test_updates_record_their_manager(store: ObjectStore) -> None:
    store.create(SERVICES, _svc("web"), manager="kubectl-create")
    updated = store.patch(SERVICES, "default", "web", {"metadata": {"labels": {"x": "y"}}},
                          manager="kubectl-label")
    managers = {(m["manager"], m["operation"]): m["fieldsV1"]
                for m in updated["metadata"]["managedFields"]}
    assert managers[("kubectl-label", "Update")] == {"f:metadata": {"f:labels": {"f:x": {}}}}
    assert "f:spec" in managers[("kubectl-create", "Update")]


# -- Service defaults, Leases -------------------------------------------------------------------


def test_node_ports_are_kept_range_checked_and_dropped(store: ObjectStore) -> None:
    first = store.create(SERVICES, _svc("web", "LoadBalancer"))
    port = first["spec"]["ports"][0]["nodePort"]
    assert first["spec"]["allocateLoadBalancerNodePorts"] is True
    replaced = store.update(SERVICES, _svc("web", "LoadBalancer"), "default", "web")
    assert replaced["spec"]["ports"][0]["nodePort"] == port, "an update keeps the node port"
    back = store.update(SERVICES, _svc("web"), "default", "web")
    assert "nodePort" not in back["spec"]["ports"][0]
    assert "externalTrafficPolicy" not in back["spec"]
    outside = _svc("far", "NodePort")
    outside["spec"]["ports"][0]["nodePort"] = 80
    with pytest.raises(Status) as invalid:
        store.create(SERVICES, outside)
    assert invalid.value.code == 422 and "not in the valid range" in invalid.value.message
    affinity = store.create(SERVICES, _svc("sticky", sessionAffinity="ClientIP"))
    assert affinity["spec"]["sessionAffinityConfig"] == {"clientIP": {"timeoutSeconds": 10800}}


def test_lease_updates_are_optimistic(store: ObjectStore) -> None:
    lease = store.create(LEASES, {"metadata": {"name": "leader"},
                                  "spec": {"holderIdentity": "a"}})
    stale = lease["metadata"]["resourceVersion"]
    store.update(LEASES, {"metadata": {"name": "leader", "resourceVersion": stale},
                          "spec": {"holderIdentity": "b"}}, "default")
    with pytest.raises(Status) as conflict:
        store.update(LEASES, {"metadata": {"name": "leader", "resourceVersion": stale},
                              "spec": {"holderIdentity": "c"}}, "default")
    assert conflict.value.code == 409 and conflict.value.reason == "Conflict"
    assert store.get(LEASES, "default", "leader")["spec"]["holderIdentity"] == "b"


# -- Tables, OpenAPI ----------------------------------------------------------------------------


@pytest.mark.parametrize(("seconds", "shown"), [
    (0, "0s"), (119, "119s"), (120, "2m"), (125, "2m5s"), (600, "10m"), (3 * 3600, "3h"),
    (3 * 3600 + 60, "3h1m"), (8 * 3600, "8h"), (49 * 3600, "2d1h"), (10 * 86400, "10d"),
    (3 * 365 * 86400, "3y"),
])
def test_human_duration_is_kubectls(seconds: int, shown: str) -> None:
    assert human_duration(seconds) == shown


def test_wants_table() -> None:
    accept = ("application/json;as=Table;v=v1;g=meta.k8s.io,"
              "application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json")
    assert wants_table(accept) == "meta.k8s.io/v1"
    assert wants_table("application/json") is None


def test_openapi_v2_protobuf_is_a_gnostic_document() -> None:
    data = openapi_v2_protobuf(RESOURCE_TYPES)
    assert data[:5] == b"\x0a\x032.0", "field 1 (swagger) is the string 2.0"
    assert b"io.k8s.api.core.v1.Service" in data and b"kind: Lease" in data


# -- HTTPS, tokens, RBAC ------------------------------------------------------------------------

POLICY = Policy([
    Rule(users=frozenset({"viewer"}), verbs=frozenset({"get", "list"}),
         resources=frozenset({"services"}), namespaces=frozenset({"default"})),
    Rule(groups=frozenset({"watchers"}), verbs=frozenset({"watch"})),
])


@pytest.fixture(scope="module")
def secure() -> Iterator[ThreadedKubeApiServer]:
    with ThreadedKubeApiServer(tls=True, bootstrap=True, bookmark_interval=None,
                               tokens={"view": UserInfo("viewer")}, policy=POLICY) as api:
        yield api


def _context(server: ThreadedKubeApiServer, kubeconfig: Path | None = None) -> ssl.SSLContext:
    assert server.server.ca is not None
    context = ssl.create_default_context(cadata=server.server.ca.cert_pem.decode())
    if kubeconfig is not None:
        user = yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]
        cert, key = kubeconfig.with_suffix(".crt"), kubeconfig.with_suffix(".key")
        cert.write_bytes(base64.b64decode(user["client-certificate-data"]))
        key.write_bytes(base64.b64decode(user["client-key-data"]))
        context.load_cert_chain(cert, key)
    return context


def _get(server: ThreadedKubeApiServer, path: str, *, token: str | None = None,
         context: ssl.SSLContext | None = None, method: str = "GET",
         body: Any = None) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(server.server.url + path, method=method,
                                     data=None if body is None else json.dumps(body).encode())
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT,
                                    context=context or _context(server)) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_401_without_or_with_a_wrong_credential(secure: ThreadedKubeApiServer) -> None:
    for token in (None, "wrong"):
        status, body = _get(secure, "/api/v1/services", token=token)
        assert (status, body) == (401, {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "Unauthorized", "reason": "Unauthorized", "code": 401})


def test_403_names_user_verb_resource_and_scope(secure: ThreadedKubeApiServer) -> None:
    assert _get(secure, "/api/v1/namespaces/default/services", token="view")[0] == 200
    status, body = _get(secure, "/api/v1/services", token="view")
    assert status == 403 and body["reason"] == "Forbidden"
    assert body["message"] == ('services is forbidden: User "viewer" cannot list resource '
                               '"services" in API group "" at the cluster scope')
    status, body = _get(secure, "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/"
                        "kubernetes", token="view")
    assert status == 403
    assert body["message"] == (
        'endpointslices.discovery.k8s.io "kubernetes" is forbidden: User "viewer" cannot get '
        'resource "endpointslices" in API group "discovery.k8s.io" in the namespace "default"')
    assert body["details"] == {"name": "kubernetes", "group": "discovery.k8s.io",
                               "kind": "endpointslices"}
    status, body = _get(secure, "/api/v1/namespaces/default/services?watch=true", token="view")
    assert status == 403 and "cannot watch resource" in body["message"]


def test_client_certificates_carry_user_and_groups(secure: ThreadedKubeApiServer,
                                                   tmp_path: Path) -> None:
    kubeconfig = Path(secure.write_kubeconfig(tmp_path / "watcher.yaml", user="w",
                                              groups=["watchers"]))
    cert = base64.b64decode(yaml.safe_load(kubeconfig.read_text())["users"][0]["user"][
        "client-certificate-data"])
    subject = x509.load_pem_x509_certificate(cert).subject
    assert subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "w"
    context = _context(secure, kubeconfig)
    status, review = _get(secure, "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                          context=context, method="POST", body={})
    assert status == 201
    assert review["status"]["userInfo"] == {"username": "w",
                                            "groups": ["watchers", "system:authenticated"]}
    for verb, allowed in (("watch", True), ("list", False)):
        status, review = _get(
            secure, "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", context=context,
            method="POST", body={"spec": {"resourceAttributes": {
                "verb": verb, "resource": "services", "namespace": "default"}}})
        assert (status, review["status"]["allowed"]) == (201, allowed)
    admin = Path(secure.write_kubeconfig(tmp_path / "admin.yaml"))
    assert _get(secure, "/api/v1/nodes", context=_context(secure, admin))[0] == 200


def test_token_kubeconfig_has_no_certificate(secure: ThreadedKubeApiServer,
                                             tmp_path: Path) -> None:
    config = yaml.safe_load(Path(secure.write_kubeconfig(tmp_path / "k", token="view"))
                            .read_text())
    assert config["users"][0]["user"] == {"token": "view"}
    assert config["clusters"][0]["cluster"]["server"].startswith("https://127.0.0.1:")
    assert "certificate-authority-data" in config["clusters"][0]["cluster"]


def test_policy_files_are_checked(tmp_path: Path) -> None:
    good = tmp_path / "policy.yaml"
    good.write_text("rules:\n  - users: [a]\n    verbs: [list]\n    resources: [services]\n")
    policy = load_policy(str(good))
    assert policy.allows(UserInfo("a"), "list", "services")
    assert not policy.allows(UserInfo("a"), "watch", "services")
    assert policy.allows(UserInfo("root", ("system:masters",)), "delete", "nodes")
    with pytest.raises(ValueError, match="unknown rule keys"):
        load_policy({"rules": [{"user": ["a"]}]})


def test_command_line_tls_server(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    process = subprocess.Popen(
        [sys.executable, "-m", "edgemesh.testing", "--tls", "--kubeconfig", str(kubeconfig),
         "--pki-dir", str(tmp_path / "pki")],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("serving https://127.0.0.1:")
        url = line.split()[1]
        assert sorted(p.name for p in (tmp_path / "pki").iterdir()) == [
            "ca.crt", "client.crt", "client.key"]
        # Both hold the admin's private key: only the owner may read them.
        assert (tmp_path / "pki" / "client.key").stat().st_mode & 0o777 == 0o600
        assert kubeconfig.stat().st_mode & 0o777 == 0o600
        assert "client-key-data" in kubeconfig.read_text()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["kubeconfig", "pki"]
        context = ssl.create_default_context(cafile=str(tmp_path / "pki" / "ca.crt"))
        context.load_cert_chain(tmp_path / "pki" / "client.crt", tmp_path / "pki" / "client.key")
        with urllib.request.urlopen(url + "/api/v1/namespaces", timeout=TIMEOUT,
                                    context=context) as response:
            names = [n["metadata"]["name"] for n in json.loads(response.read())["items"]]
        assert names == ["default", "kube-node-lease", "kube-public", "kube-system"]
    finally:
        process.terminate()
        process.wait(TIMEOUT)


def test_command_line_help_names_the_files_it_writes() -> None:
    help_text = subprocess.run(
        [sys.executable, "-m", "edgemesh.testing", "--help"], capture_output=True, text=True,
        cwd=Path(__file__).resolve().parent.parent, timeout=TIMEOUT, check=True).stdout
    # The option's own entry (the usage line names it first), its lines joined.
    entry = help_text.rsplit("--pki-dir DIR", 1)[1].split("--policy", 1)[0]
    pki_help = " ".join(entry.split())
    assert "client.crt/client.key" in pki_help, pki_help
    assert "admin.crt" not in help_text


def test_openapi_from_older_client_models() -> None:
    """kubernetes < 33 generates plain classes with type names as strings (setup.cfg allows
    kubernetes >= 29): the same schemas come out."""
    from edgemesh.testing._openapi import _Builder

    class V1Thing:
        openapi_types: ClassVar[dict[str, str]] = {
            "ports": "list[V1ServicePort]", "labels": "dict(str, str)",
            "target_port": "object", "count": "int"}
        attribute_map: ClassVar[dict[str, str]] = {
            "ports": "ports", "labels": "labels", "target_port": "targetPort", "count": "count"}

    builder = _Builder({}, "#/definitions/")
    properties = builder.definitions[builder.define(V1Thing)]["properties"]
    assert properties["ports"] == {
        "type": "array", "items": {"$ref": "#/definitions/io.k8s.edgemesh.testing.ServicePort"}}
    assert properties["labels"] == {"type": "object", "additionalProperties": {"type": "string"}}
    assert properties["targetPort"]["format"] == "int-or-string"
    assert properties["count"]["type"] == "integer"


def test_watch_as_table_for_kubectl_get_w() -> None:
    with ThreadedKubeApiServer(bootstrap=True, bookmark_interval=None) as api:
        api.create({"apiVersion": "v1", "kind": "Service", **_svc("web")})
        request = urllib.request.Request(
            api.server.url + "/api/v1/namespaces/default/services?watch=true&timeoutSeconds=1",
            headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"})
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            events = [json.loads(line) for line in response.read().splitlines() if line]
        cells = {e["object"]["rows"][0]["cells"][0] for e in events}
        assert {e["object"]["kind"] for e in events} == {"Table"}
        assert cells == {"kubernetes", "web"}
