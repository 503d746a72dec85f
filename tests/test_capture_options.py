"""``twistd edgemesh-edge`` capture/DNS options and ``edgemesh iptables``: parsing, the
configs they build, errors; the CLI on an in-memory nat table (no root needed)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path

import pytest
import twisted.internet
from capturekit import FakeNat, UDPMemoryReactor
from twisted.python import usage

from edgemesh.capture import (
    DEFAULT_TRANSPARENT,
    CaptureRules,
    Exclusion,
    Iptables,
    expected,
)
from edgemesh.capture._cli import main as iptables_main
from edgemesh.cli import main as edgemesh_main
from edgemesh.dns import DNSConfig
from edgemesh.roles import EdgeNode, edge_tap


@pytest.fixture
def reactor(monkeypatch: pytest.MonkeyPatch) -> Iterator[UDPMemoryReactor]:
    fake = UDPMemoryReactor()
    monkeypatch.setattr(twisted.internet, "reactor", fake, raising=False)
    yield fake


def edge_options(tmp_path: Path, *argv: str) -> edge_tap.Options:
    options = edge_tap.Options()  # type: ignore[no-untyped-call]
    base = ["--node", "edge-1", "--state-dir", str(tmp_path / "state")]
    if "insecure" in dict.keys(options):
        base.append("--insecure")  # plaintext links: these tests are about capture
    options.parseOptions([*base, *argv])  # type: ignore[no-untyped-call]
    return options


def test_no_capture_no_dns_by_default(tmp_path: Path) -> None:
    options = edge_options(tmp_path)
    assert options["capture_value"] is None
    assert options["dns_value"] is None


def test_capture_with_defaults(tmp_path: Path) -> None:
    options = edge_options(tmp_path, "--capture", "--router", "tcp:10.0.0.1:7700",
                           "--hub", "tcp:7801")
    capture = options["capture_value"]
    assert capture.transparent == DEFAULT_TRANSPARENT
    assert capture.iptables == "iptables"
    assert capture.rules == CaptureRules(
        port=15001,
        service_cidrs=(ipaddress.IPv4Network("10.96.0.0/12"),),
        virtual_cidr=ipaddress.IPv4Network("240.240.0.0/16"),
        mesh_ports=(7700, 7701, 7801),
    )


def test_capture_with_everything(tmp_path: Path) -> None:
    options = edge_options(
        tmp_path, "--capture", "--transparent", "tcp:16001", "--service-cidr", "10.43.0.0/16",
        "--service-cidr", "10.44.0.0/16", "--virtual-cidr", "none", "--capture-exclude",
        "10.43.0.10:53", "--capture-exclude", ":22", "--iptables", "iptables-legacy",
        "--dns", "169.254.96.16", "--dns-upstream", "10.0.0.2", "--dns-upstream", "10.0.0.3:5353",
    )
    capture = options["capture_value"]
    assert capture.transparent == "tcp:16001"
    assert capture.iptables == "iptables-legacy"
    assert capture.virtual_cidr is None
    rules = capture.rules
    assert rules.port == 16001
    assert rules.service_cidrs == (ipaddress.IPv4Network("10.43.0.0/16"),
                                   ipaddress.IPv4Network("10.44.0.0/16"))
    assert rules.virtual_cidr is None
    assert rules.exclude == (Exclusion.parse("10.43.0.10:53"), Exclusion(None, 22))
    assert options["dns_value"] == DNSConfig(
        address="169.254.96.16", port=53, upstreams=(("10.0.0.2", 53), ("10.0.0.3", 5353)))


def test_transparent_alone_is_the_listener_without_rules(tmp_path: Path) -> None:
    capture = edge_options(tmp_path, "--transparent", "tcp:15001:interface=0.0.0.0")[
        "capture_value"]
    assert capture.transparent == "tcp:15001:interface=0.0.0.0"
    assert capture.rules is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--service-cidr", "10.96.0.0/12"], "--service-cidr needs --capture"),
        (["--dns-upstream", "10.0.0.2"], "--dns-upstream needs --dns"),
        (["--capture", "--service-cidr", "10.96.0.0/33"], "not an IPv4 CIDR"),
        (["--capture", "--capture-exclude", "nonsense"], "exclusion 'nonsense'"),
        (["--capture", "--transparent", "unix:/x.sock"], "fixed port"),
        (["--capture", "--transparent", "tcp:0"], "fixed port"),
        (["--capture", "--iptables", "nft"], "--iptables"),
        (["--capture", "--virtual-cidr", "fd00::/64"], "--virtual-cidr"),
        (["--dns", "localhost"], "not an IP address"),
        (["--dns", "127.0.0.1:99999"], "port"),
        (["--dns", "127.0.0.1", "--dns-upstream", "8.8.8.8:x"], "port"),
    ],
)
def test_option_errors(tmp_path: Path, argv: list[str], message: str) -> None:
    with pytest.raises(usage.UsageError, match=message):
        edge_options(tmp_path, *argv)


def test_make_service_wires_capture_and_dns(tmp_path: Path, reactor: UDPMemoryReactor) -> None:
    options = edge_options(tmp_path, "--transparent", "tcp:15001:interface=127.0.0.1",
                           "--dns", "127.0.0.1:1053", "--proxy", "tcp:7781", "--hub", "tcp:7701")
    node = edge_tap.makeService(options)
    assert isinstance(node, EdgeNode)
    assert "transparent" in node.listeners
    node.privilegedStartService()
    node.startService()
    assert [(port, interface) for port, _, interface, _ in reactor.udp] == [(1053, "127.0.0.1")]
    assert any(port == 1053 for port, *_ in reactor.tcpServers), "DNS over TCP too"
    assert any(port == 15001 for port, *_ in reactor.tcpServers)
    node.stopService()
    assert reactor.udp[0][3].stopped


# -- edgemesh iptables --------------------------------------------------------------------------


def test_cli_dry_run_prints_the_script(capsys: pytest.CaptureFixture[str]) -> None:
    assert edgemesh_main(["iptables", "install", "--dry-run", "--port", "16001",
                          "--exclude", ":22", "--no-prerouting"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("*nat\n:EDGEMESH-OUTPUT - [0:0]\n")
    assert "-A EDGEMESH-OUTPUT -p tcp -m tcp --dport 22 -j RETURN\n" in out
    assert "-A EDGEMESH-OUTPUT -d 10.96.0.0/12 -p tcp -j REDIRECT --to-ports 16001\n" in out
    assert "PREROUTING" not in out
    assert out.endswith("COMMIT\n")


def test_cli_install_show_remove(capsys: pytest.CaptureFixture[str]) -> None:
    nat = FakeNat()
    tables = Iptables(run=nat)
    argv = ["install", "--service-cidr", "10.43.0.0/16", "--virtual-cidr", "none"]
    assert iptables_main(argv, tables) == 0
    assert capsys.readouterr().out.startswith("installed:\n  -A OUTPUT -j EDGEMESH-OUTPUT\n")
    assert iptables_main(argv, tables) == 0
    assert capsys.readouterr().out.startswith("installed:\n")  # the same again: not a repair
    rules = CaptureRules(service_cidrs=(ipaddress.IPv4Network("10.43.0.0/16"),),
                         virtual_cidr=None, mesh_ports=(7700, 7701))
    assert iptables_main(["show"], tables) == 0
    assert capsys.readouterr().out.splitlines() == expected(rules)
    assert iptables_main(["remove"], tables) == 0
    assert capsys.readouterr().out == f"removed {len(expected(rules))} rule(s)\n"
    assert iptables_main(["remove"], tables) == 0
    assert capsys.readouterr().out == "nothing to remove\n"
    assert iptables_main(["show"], tables) == 0
    shown = capsys.readouterr()
    assert shown.out == "" and "no edgemesh capture rules" in shown.err


def test_cli_errors_are_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    nat = FakeNat()
    nat.fail_restore = "iptables-restore: Permission denied (you must be root)"
    assert iptables_main(["install"], Iptables(run=nat)) == 1
    assert capsys.readouterr().err.startswith("edgemesh iptables: iptables-restore --noflush: ")
    assert iptables_main(["install", "--exclude", "x"], Iptables(run=FakeNat())) == 1
    assert "exclusion 'x'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        iptables_main(["flush"])
