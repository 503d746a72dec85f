"""``twistd edgemesh-router`` with Kubernetes: the options and what makeService builds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import twisted.internet
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage

from edgemesh.roles import RouterNode, router_tap
from edgemesh.sources import (
    ENDPOINT_SLICES,
    EdgeServiceController,
    KubernetesSource,
    LeaderElector,
    TreqKubeAPI,
)
from edgemesh.sources._options import http_port


@pytest.fixture
def reactor(monkeypatch: pytest.MonkeyPatch) -> Iterator[MemoryReactorClock]:
    fake = MemoryReactorClock()
    monkeypatch.setattr(twisted.internet, "reactor", fake, raising=False)
    yield fake


def options(*argv: str) -> router_tap.Options:
    parsed = router_tap.Options()  # type: ignore[no-untyped-call]
    parsed.parseOptions(["--insecure", *argv])  # type: ignore[no-untyped-call]
    return parsed


def test_kubeconfig_loads_the_configuration(kubeconfig: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_IP", raising=False)
    parsed = options("--kubeconfig", kubeconfig, "--namespace", "shop")
    configuration = parsed["kube_configuration"]
    assert configuration.host == "http://127.0.0.1:6443"
    assert configuration.get_api_key_with_prefix("BearerToken") == "Bearer abc"
    assert parsed["namespace"] == "shop"
    assert parsed["advertise_value"] is None
    assert parsed["catalog_value"].services == {}


def test_pod_ip_is_the_default_advertised_address(kubeconfig: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_IP", "10.244.3.17")
    assert options("--kubeconfig", kubeconfig)["advertise_value"] == "10.244.3.17"
    assert options("--kubeconfig", kubeconfig, "--advertise", "fd00::7")["advertise_value"] \
        == "fd00::7"


@pytest.mark.parametrize(("argv", "message"), [
    ((), r"^--catalog FILE is required \(or --kubeconfig FILE or --in-cluster\)$"),
    (("--catalog", "x.yaml", "--kubeconfig", "KUBECONFIG"),
     ("^--catalog and --kubeconfig exclude each other: the catalog comes from a file or "
      "from the Kubernetes API, not both$")),
    (("--kubeconfig", "KUBECONFIG", "--in-cluster"), "exclude each other"),
    (("--kubeconfig", "/nonexistent"), "no such file"),
    (("--kubeconfig", "KUBECONFIG", "--namespace", "Not_A_Namespace"), "not a namespace"),
    (("--kubeconfig", "KUBECONFIG", "--advertise", "router.local"), "not an IP address"),
    (("--kubeconfig", "KUBECONFIG", "--advertise-port", "70000"), "1-65535"),
    (("--in-cluster",), "--in-cluster"),  # no service account here
    (("--kubeconfig", "KUBECONFIG", "--stream-ports", "30100"), "LOW-HIGH"),
    (("--kubeconfig", "KUBECONFIG", "--stream-ports", "7000-7800"), "--http port 7780"),
    (("--catalog", "x.yaml", "--stream-ports", "30100-30199"), "needs --kubeconfig"),
])
def test_bad_combinations(argv: tuple[str, ...], message: str, kubeconfig: str,
                          tmp_path: Path) -> None:
    (tmp_path / "x.yaml").write_text("")
    argv = tuple(kubeconfig if a == "KUBECONFIG" else str(tmp_path / a) if a == "x.yaml" else a
                 for a in argv)
    with pytest.raises(usage.UsageError, match=message):
        options(*argv)


def test_broken_kubeconfig_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "broken"
    path.write_text("apiVersion: v1\nkind: Config\nclusters: []\n")
    with pytest.raises(usage.UsageError, match="--kubeconfig"):
        options("--kubeconfig", str(path))


def test_make_service_watches_and_controls(kubeconfig: str,
                                           reactor: MemoryReactorClock) -> None:
    parsed = options("--kubeconfig", kubeconfig, "--advertise", "10.244.3.17", "--namespace",
                     "shop", "--http", "tcp:7780:interface=0.0.0.0", "--admin", "tcp:7790")
    router = router_tap.makeService(parsed)
    assert isinstance(router, RouterNode)
    assert router.catalog_pending, "no push before the first list"
    children = list(router)  # type: ignore[call-overload]
    (source,) = [c for c in children if isinstance(c, KubernetesSource)]
    # The controller runs under the Lease election: started only while this replica leads.
    (elector,) = [c for c in children if isinstance(c, LeaderElector)]
    controller = elector.child
    assert isinstance(controller, EdgeServiceController) and controller.parent is None
    assert isinstance(source.api, TreqKubeAPI) and source.api.reactor is reactor
    assert elector.api is source.api
    assert controller.addresses == ["10.244.3.17"] and controller.port == 7780
    assert source.namespace == controller.reflector.namespace == "shop"
    assert router.set_catalog in source.listeners
    assert set(router.status_parts) == {"kubernetes", "controller", "leader"}
    assert router.status()["kubernetes"]["synced"] is False  # type: ignore[index]
    assert router.status()["leader"]["leader"] is False  # type: ignore[index]


def test_leader_election_options(kubeconfig: str, reactor: MemoryReactorClock,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "edgemesh-router-7d9f-x2x")
    monkeypatch.setenv("POD_NAMESPACE", "edgemesh")
    election = options("--kubeconfig", kubeconfig)["election_value"]
    assert (election.name, election.namespace) == ("edgemesh-router", "edgemesh")
    assert election.identity.startswith("edgemesh-router-7d9f-x2x_")
    assert (election.timing.lease_duration, election.timing.renew_deadline,
            election.timing.retry_period) == (15.0, 10.0, 2.0)
    election = options("--kubeconfig", kubeconfig, "--lease-name", "em", "--lease-namespace",
                       "ops", "--leader-identity", "r1", "--lease-duration", "30",
                       "--renew-deadline", "20", "--retry-period", "5")["election_value"]
    assert (election.identity, election.name, election.namespace) == ("r1", "em", "ops")
    assert options("--kubeconfig", kubeconfig, "--no-leader-elect")["election_value"] is None
    router = router_tap.makeService(options("--kubeconfig", kubeconfig, "--advertise",
                                            "10.0.0.1", "--no-leader-elect"))
    assert [c for c in router if isinstance(c, EdgeServiceController)]  # type: ignore[attr-defined]
    with pytest.raises(usage.UsageError, match="renew deadline"):
        options("--kubeconfig", kubeconfig, "--lease-duration", "5", "--renew-deadline", "10")
    with pytest.raises(usage.UsageError, match="--lease-namespace"):
        options("--kubeconfig", kubeconfig, "--lease-namespace", "Bad_NS")


def test_make_service_without_controller(kubeconfig: str, reactor: MemoryReactorClock,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_IP", raising=False)
    router = router_tap.makeService(options("--kubeconfig", kubeconfig))
    assert not [c for c in router if isinstance(c, EdgeServiceController)]  # type: ignore[attr-defined]
    router = router_tap.makeService(options("--kubeconfig", kubeconfig, "--advertise",
                                            "10.0.0.1", "--no-controller"))
    assert not [c for c in router if isinstance(c, EdgeServiceController)]  # type: ignore[attr-defined]


@pytest.mark.parametrize(("description", "port"), [
    ("tcp:7780", 7780), ("tcp:7780:interface=127.0.0.1", 7780), ("tcp:port=8080", 8080),
    ("ssl:443:privateKey=k.pem", 443), (None, None), ("unix:/x", None),
])
def test_http_port(description: str | None, port: int | None) -> None:
    assert http_port(description) == port


def test_the_label_value_is_valid_for_a_real_api_server() -> None:
    # A label value may not hold '/': the API server would refuse the slices and selectors.
    from edgemesh.catalog._model import is_label_value
    from edgemesh.sources import EDGEMESH_MANAGER

    assert is_label_value(EDGEMESH_MANAGER)
    assert ENDPOINT_SLICES.path("shop", "web-edgemesh") == \
        "/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices/web-edgemesh"


# -- proxy-url, and where the configuration came from -------------------------------------------


def kubeconfig_with(kubeconfig: str, cluster: str, name: str = "proxied") -> str:
    """A copy of the ``kubeconfig`` fixture's file whose cluster is ``cluster``."""
    base = Path(kubeconfig)
    path = base.with_name(name)
    path.write_text(base.read_text().replace('{server: "http://127.0.0.1:6443"}', cluster))
    return str(path)


@pytest.mark.parametrize("proxy", ["socks5://127.0.0.1:1080", "https://127.0.0.1:3128"])
def test_a_proxy_it_cannot_use_is_refused_at_start(kubeconfig: str, proxy: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    path = kubeconfig_with(
        kubeconfig, f'{{server: "https://127.0.0.1:6443", proxy-url: "{proxy}"}}')
    with pytest.raises(usage.UsageError, match=r"proxy-url .*only http:// proxies"):
        options("--kubeconfig", path)


def test_an_http_proxy_is_taken_and_no_proxy_respected(kubeconfig: str,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       reactor: MemoryReactorClock) -> None:
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    path = kubeconfig_with(kubeconfig, '{server: "https://10.1.2.3:6443", '
                                     'proxy-url: "http://u:p@127.0.0.1:3128"}')
    parsed = options("--kubeconfig", path)
    api = TreqKubeAPI(reactor, parsed["kube_configuration"], origin="x")
    assert api.proxy == "http://u:p@127.0.0.1:3128"
    configuration = parsed["kube_configuration"]
    configuration.no_proxy = "10.0.0.0/8"
    assert TreqKubeAPI(reactor, configuration).proxy is None


def test_origin_names_the_kubeconfig_context_and_ca(kubeconfig: str, tmp_path: Path) -> None:
    path = kubeconfig_with(kubeconfig, '{server: "https://127.0.0.1:6443", '
                                     'certificate-authority: "ca.crt"}')
    (tmp_path / "ca.crt").write_text("")
    from edgemesh.sources._kubeapi import describe_origin

    assert describe_origin(path, False, None) == (
        f"kubeconfig {path}, context 'test'", f"CA file {tmp_path / 'ca.crt'}")
    assert describe_origin(str(tmp_path / "missing"), False, None)[1] is None


def test_the_router_gets_a_kubernetes_readiness_gate(kubeconfig: str,
                                                     reactor: MemoryReactorClock) -> None:
    router = router_tap.makeService(options("--kubeconfig", kubeconfig, "--no-controller"))
    assert isinstance(router, RouterNode)
    ready, why = router.observer.readiness.gates["kubernetes"]
    assert not ready and why == "not listed yet: nodes, services, endpointslices"


def test_an_environment_proxy_is_used_but_never_for_loopback(
        kubeconfig: str, monkeypatch: pytest.MonkeyPatch, reactor: MemoryReactorClock) -> None:
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    remote = kubeconfig_with(kubeconfig, '{server: "https://10.1.2.3:6443"}')
    assert TreqKubeAPI(reactor, options("--kubeconfig", remote)["kube_configuration"]).proxy \
        == "http://127.0.0.1:3128"
    local = kubeconfig_with(kubeconfig, '{server: "https://127.0.0.1:6443"}', "local")
    assert TreqKubeAPI(reactor, options("--kubeconfig", local)["kube_configuration"]).proxy \
        is None
    monkeypatch.setenv("HTTPS_PROXY", "socks5://127.0.0.1:1080")
    with pytest.raises(usage.UsageError, match=r"\$HTTPS_PROXY/\$HTTP_PROXY socks5://"):
        options("--kubeconfig", remote)


def test_stream_ports_listen_on_every_replica(kubeconfig: str,
                                              reactor: MemoryReactorClock) -> None:
    from edgemesh.roles._streamports import StreamPortListeners

    router = router_tap.makeService(options(
        "--kubeconfig", kubeconfig, "--advertise", "10.244.3.17", "--stream-ports",
        "30100-30199", "--http", "tcp:7780:interface=10.244.3.17"))
    children = list(router)  # type: ignore[call-overload]
    (listeners,) = [c for c in children if isinstance(c, StreamPortListeners)]
    (elector,) = [c for c in children if isinstance(c, LeaderElector)]
    assert elector.child.stream_ports == listeners.ports == (30100, 30199)
    assert listeners.interface == "10.244.3.17", "the --http interface"
    assert "stream_ports" in router.status_parts
    router = router_tap.makeService(options(
        "--kubeconfig", kubeconfig, "--advertise", "10.244.3.17", "--no-leader-elect",
        "--stream-ports", "30100-30199", "--stream-interface", "0.0.0.0"))
    children = list(router)  # type: ignore[call-overload]
    (listeners,) = [c for c in children if isinstance(c, StreamPortListeners)]
    assert listeners.interface == "0.0.0.0"
    router = router_tap.makeService(options("--kubeconfig", kubeconfig, "--advertise",
                                            "10.244.3.17"))
    children = list(router)  # type: ignore[call-overload]
    assert not [c for c in children if isinstance(c, StreamPortListeners)]
