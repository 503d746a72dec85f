"""The router's Kubernetes options (a mixin for its twistd Options) and the wiring they drive."""

from __future__ import annotations

import os
from typing import Any, ClassVar

from twisted.python import usage

from ..catalog import is_dns1123_label, is_dns1123_subdomain


class KubernetesOptions(usage.Options):
    """``--kubeconfig PATH`` | ``--in-cluster``, ``--namespace NS``, and the controller's
    ``--advertise IP`` / ``--advertise-port PORT``."""

    optFlags: ClassVar[list[Any]] = [
        ["in-cluster", None, ("Watch the API server of the cluster this pod runs in "
                              "(service account token and CA).")],
        ["no-controller", None, ("Do not write the EndpointSlices that send cloud traffic for "
                                 "edge services to this router.")],
        ["no-leader-elect", None, ("Run the controller without a Lease (one router only: with "
                                   "several, each would write the EndpointSlices).")],
    ]
    optParameters: ClassVar[list[Any]] = [
        ["kubeconfig", None, None, "Watch the API server of this kubeconfig file."],
        ["kube-context", None, None, "The kubeconfig context (default: its current one)."],
        ["service-account-dir", None, None, (
            "With --in-cluster: read the service account's token and ca.crt from this "
            "directory (default: /var/run/secrets/kubernetes.io/serviceaccount).")],
        ["namespace", None, None, ("Watch Services and EndpointSlices of this namespace only "
                                   "(default: all namespaces).")],
        ["advertise", None, None, ("The IP address cloud traffic reaches this router at "
                                   "(default: $POD_IP, from the downward API).")],
        ["advertise-port", None, None, "The port for it (default: the --http port).", int],
        ["lease-name", None, "edgemesh-router", ("The Lease (coordination.k8s.io/v1) the router "
                                                 "replicas elect the controller's leader with.")],
        ["lease-namespace", None, None, ("Its namespace (default: $POD_NAMESPACE, else the "
                                         "in-cluster service account's, else 'default').")],
        ["leader-identity", None, None, ("This replica's name in the Lease (default: $POD_NAME, "
                                         "else the host name, with a random suffix).")],
        # 2.2: 1 + _election.JITTER_FACTOR (not imported: an options parse loads no client).
        ["lease-duration", None, 15.0, ("Seconds a Lease holds without renewal; a new leader "
                                        "takes over within this plus 2.2 × --retry-period (a "
                                        "candidate's jittered wait)."), float],
        ["renew-deadline", None, 10.0, ("Seconds a leader keeps trying to renew before it stops "
                                        "leading (less than --lease-duration)."), float],
        ["retry-period", None, 2.0, "Seconds between tries to acquire or renew.", float],
        ["stream-ports", None, None, (
            "LOW-HIGH: give every stream port of an edge service a router port from this "
            "range, written into its EndpointSlice, so that cloud apps reach it by clusterIP "
            "with any protocol; every replica listens on them (default: none, stream ports "
            "are reached by CONNECT only).")],
        ["stream-interface", None, None, ("Where the --stream-ports listen (default: the "
                                          "--http interface, else all).")],
    ]

    def kubernetes_requested(self) -> bool:
        return bool(self["kubeconfig"] or self["in-cluster"])

    def check_kubernetes(self) -> None:
        """Validate the options and load the client configuration (fail at start, not later)."""
        if self["kubeconfig"] and self["in-cluster"]:
            raise usage.UsageError("--kubeconfig and --in-cluster exclude each other")
        if self["namespace"] is not None and not is_dns1123_label(self["namespace"]):
            raise usage.UsageError(f"--namespace {self['namespace']!r}: not a namespace name")
        if not self.kubernetes_requested():
            if self["stream-ports"]:
                raise usage.UsageError("--stream-ports needs --kubeconfig or --in-cluster "
                                       "(the ports are written into EndpointSlices)")
            return
        if self["kubeconfig"] and not os.path.isfile(self["kubeconfig"]):
            raise usage.UsageError(f"--kubeconfig {self['kubeconfig']}: no such file")
        from ._kubeapi import describe_origin, load_configuration, proxy_of

        where = "--in-cluster" if self["in-cluster"] else f"--kubeconfig {self['kubeconfig']}"
        try:
            account = self["service-account-dir"]
            self["kube_configuration"] = load_configuration(
                self["kubeconfig"], self["in-cluster"], self["kube-context"],
                **({"service_account_dir": account} if account else {}))
        except Exception as error:  # noqa: BLE001 - the client raises many kinds
            raise usage.UsageError(f"{where}: {error}") from None
        try:
            proxy_of(self["kube_configuration"])
        except ValueError as error:
            raise usage.UsageError(f"{where}: {error}") from None
        self["kube_origin"] = describe_origin(self["kubeconfig"], self["in-cluster"],
                                              self["kube-context"])
        advertise = self["advertise"] if self["advertise"] is not None else os.environ.get(
            "POD_IP", "")
        self["advertise_value"] = advertise or None
        if advertise:
            import ipaddress

            try:
                ipaddress.ip_address(advertise)
            except ValueError:
                raise usage.UsageError(f"--advertise {advertise!r}: not an IP address") from None
        port = self["advertise-port"]
        if port is not None and not 1 <= port <= 65535:
            raise usage.UsageError("--advertise-port: must be 1-65535")
        self["election_value"] = None if self["no-leader-elect"] else self.election()
        self["stream_ports_value"] = None
        if self["stream-ports"]:
            from ._streamports import parse_port_range

            try:
                self["stream_ports_value"] = parse_port_range(self["stream-ports"])
            except ValueError as error:
                raise usage.UsageError(f"--stream-ports {error}") from None

    def election(self) -> Any:
        """The Lease election's identity, place and timing, from the options."""
        from ._election import ElectionTiming, LeaseElection

        try:
            timing = ElectionTiming(self["lease-duration"], self["renew-deadline"],
                                    self["retry-period"])
        except ValueError as error:
            raise usage.UsageError(f"--lease-duration/--renew-deadline/--retry-period: "
                                   f"{error}") from None
        namespace = self["lease-namespace"] or os.environ.get("POD_NAMESPACE") or \
            service_account_namespace() or "default"
        if not is_dns1123_label(namespace):
            raise usage.UsageError(f"--lease-namespace {namespace!r}: not a namespace name")
        if not is_dns1123_subdomain(self["lease-name"]):
            raise usage.UsageError(f"--lease-name {self['lease-name']!r}: not an object name")
        identity = self["leader-identity"] or default_identity()
        return LeaseElection(identity, self["lease-name"], namespace, timing)


SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def service_account_namespace() -> str | None:
    try:
        with open(SERVICE_ACCOUNT_NAMESPACE, encoding="utf-8") as file:
            return file.read().strip() or None
    except OSError:
        return None


def default_identity() -> str:
    """client-go's default: the host (the pod's name in a Deployment) and a random suffix,
    so that a restarted replica never mistakes its predecessor's Lease for its own."""
    import secrets
    import socket

    host = os.environ.get("POD_NAME") or socket.gethostname() or "router"
    return f"{host}_{secrets.token_hex(4)}"


def http_port(description: str | None) -> int | None:
    """The port of a server endpoint string such as ``tcp:7780:interface=127.0.0.1``."""
    if not description:
        return None
    for part in description.split(":")[1:]:
        if part.isdigit():
            return int(part)
        if part.startswith("port="):
            return int(part[5:]) if part[5:].isdigit() else None
    return None
