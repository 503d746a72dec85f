"""Values refused when the options are parsed, with one line that names the option, rather
than a traceback at start (after other listeners bound), at the first dial, or links that
drop every second: node names, endpoint strings, and settings that are wrong together."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_option_messages import edge_argv, refusal, router_argv
from twisted.python import usage

from edgemesh.roles import edge_tap, router_tap
from edgemesh.roles._options import MIN_HEADER_BYTES
from edgemesh.roles._resilience import MIN_HEARTBEAT_INTERVAL


def edge_refusal(tmp_path: Path, *extra: str) -> str:
    return refusal(edge_tap.Options(), edge_argv(tmp_path, *extra))  # type: ignore[no-untyped-call]


def router_refusal(tmp_path: Path, *extra: str) -> str:
    return refusal(router_tap.Options(), router_argv(tmp_path, *extra))  # type: ignore[no-untyped-call]


def refusal_of(role: str, tmp_path: Path, *extra: str) -> str:
    message = (edge_refusal if role == "edge" else router_refusal)(tmp_path, *extra)
    assert "\n" not in message
    return message


def parsed(role: str, tmp_path: Path, *extra: str) -> usage.Options:
    options: usage.Options
    if role == "edge":
        options = edge_tap.Options()  # type: ignore[no-untyped-call]
        options.parseOptions(edge_argv(tmp_path, *extra))  # type: ignore[no-untyped-call]
    else:
        options = router_tap.Options()  # type: ignore[no-untyped-call]
        options.parseOptions(router_argv(tmp_path, *extra))  # type: ignore[no-untyped-call]
    return options


# -- node names -----------------------------------------------------------------------------


NOT_A_NAME = ("is not a node name (lower-case letters, digits, '-' and '.', as a Kubernetes "
              "node name)")


@pytest.mark.parametrize(
    ("role", "argv", "message"),
    [
        # TLS raised idna's "Empty domain" at the first dial, and the edge never retried.
        ("edge", ["--router-name", ""], "--router-name '': the node name is empty"),
        ("edge", ["--node", ""], "--node '': the node name is empty"),
        ("router", ["--node", ""], "--node '': the node name is empty"),
        ("edge", ["--router-name", "Router_1"],
         f"--router-name 'Router_1': 'Router_1' {NOT_A_NAME}"),
        ("router", ["--node", "-router"], f"--node '-router': '-router' {NOT_A_NAME}"),
        ("edge", ["--router", "=tcp:127.0.0.1:19100"],
         "--router '=tcp:127.0.0.1:19100': the node name is empty"),
        ("edge", ["--router", "Bad=tcp:127.0.0.1:19100"],
         f"--router 'Bad=tcp:127.0.0.1:19100': 'Bad' {NOT_A_NAME}"),
        ("router", ["--peer-router", "B=tcp:10.0.0.2:7702"],
         f"--peer-router 'B=tcp:10.0.0.2:7702': 'B' {NOT_A_NAME}"),
    ],
)
def test_node_names_are_checked_at_start(
        tmp_path: Path, role: str, argv: list[str], message: str) -> None:
    assert refusal_of(role, tmp_path, *argv) == message


def test_edge_without_node_still_says_it_is_required(tmp_path: Path) -> None:
    options = edge_tap.Options()  # type: ignore[no-untyped-call]
    assert refusal(options, ["--insecure", "--state-dir", str(tmp_path)]) == (
        "--node NAME is required")


def test_a_state_dir_that_is_a_file_says_so(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    options = edge_tap.Options()  # type: ignore[no-untyped-call]
    assert refusal(options, ["--insecure", "--node", "edge-1", "--state-dir", str(afile)]) == (
        f"--state-dir {afile}: not a directory")


def test_any_router_name_is_still_accepted(tmp_path: Path) -> None:
    options = parsed("edge", tmp_path, "--router-name", "*", "--router", "tcp:10.0.0.1:7700",
                     "--router", "*=tcp:edgemesh-router-replicas:7700")
    assert options["router-name"] == "*"
    assert options["more_routers"] == ("*=tcp:edgemesh-router-replicas:7700",)


# -- endpoint strings -----------------------------------------------------------------------

LISTENERS = [
    ("edge", "--proxy", "tcp:notaport", "port 'notaport' is not a number"),
    ("edge", "--hub", "tcp:19391:interface=127.0.0.1:backlog=abc",
     "backlog 'abc' is not a number"),
    ("edge", "--admin", "tcp:abc", "port 'abc' is not a number"),  # as used: on 127.0.0.1
    ("edge", "--transparent", "tcp:x", "port 'x' is not a number"),
    ("edge", "--proxy", "tcp:7781:interfce=127.0.0.1", "unknown parameter 'interfce'"),
    ("edge", "--hub", "tcp:1:2:3:4:5", "too many ':'-separated parts"),
    ("router", "--tunnel", "udp:1", "unknown endpoint type 'udp' (e.g. tcp:PORT, unix:PATH)"),
    ("router", "--http", "", "unknown endpoint type '' (e.g. tcp:PORT, unix:PATH)"),
    ("router", "--peer-listen", "tcp:x", "port 'x' is not a number"),
    ("router", "--admin", "tcp:7790:backlog=many", "backlog 'many' is not a number"),
]
DIALS = [
    ("edge", "--router", "foo", "unknown endpoint type 'foo' (e.g. tcp:HOST:PORT)"),
    ("edge", "--router", "tcp:127.0.0.1:notaport", "port 'notaport' is not a number"),
    ("edge", "--router", "router-b=tcp:10.0.0.2:7700:timeout=soon",
     "timeout 'soon' is not a number"),
    ("edge", "--router", "tcp:router", "missing 'port'"),
    ("router", "--peer-router", "router-b=tcp:10.0.0.2", "missing 'port'"),
    ("router", "--peer-advertise", "10.0.0.1:7702",
     "unknown endpoint type '10.0.0.1' (e.g. tcp:HOST:PORT)"),
]


@pytest.mark.parametrize(("role", "option", "value", "reason"), LISTENERS + DIALS)
def test_malformed_endpoint_strings_are_usage_errors(
        tmp_path: Path, role: str, option: str, value: str, reason: str) -> None:
    said = refusal_of(role, tmp_path, option, value)
    # Python 3.13 adds its own hint to an unknown keyword ("Did you mean 'interface'?").
    assert said == f"{option} {value!r}: {reason}" or said.startswith(
        f"{option} {value!r}: {reason}. Did you mean "), said


def test_a_second_router_is_checked_too(tmp_path: Path) -> None:
    message = refusal_of("edge", tmp_path, "--router", "tcp:10.0.0.1:7700",
                         "--router", "tcp:10.0.0.2:x")
    assert message == "--router 'tcp:10.0.0.2:x': port 'x' is not a number"


def test_a_tls_server_endpoint_whose_files_are_missing(tmp_path: Path) -> None:
    """Twisted's ssl: server endpoint reads its key when built: a missing one is named."""
    missing = tmp_path / "missing.pem"
    message = refusal_of("router", tmp_path, "--http", f"ssl:7443:privateKey={missing}")
    value = f"ssl:7443:privateKey={missing}"
    assert message == f"--http {value!r}: {missing}: No such file or directory"


@pytest.mark.parametrize(
    ("role", "argv"),
    [
        ("edge", ["--router", "tcp:10.0.0.1:7700", "--router", "router-b=tcp:10.0.0.2:7700",
                  "--router", "*=tcp:edgemesh-router-replicas:7700:timeout=3",
                  "--router", "tls:router.example:7700", "--router", "unix:/run/router.sock",
                  "--router", "tcp:host=10.0.0.3:port=7700"]),
        ("edge", ["--proxy", "tcp:7781:interface=127.0.0.1", "--hub", "tcp6:7701:interface=\\:\\:1",
                  "--admin", "7791", "--transparent", "unix:/run/edgemesh.sock"]),
        ("edge", ["--admin", "unix:/run/edgemesh/admin.sock", "--capture",
                  "--transparent", "tcp:15001", "--hub", "tcp:7701:backlog=128"]),
        ("router", ["--tunnel", "tcp:7700", "--http", "tcp:7780:interface=0.0.0.0",
                    "--admin", "tcp:7790:interface=0.0.0.0", "--peer-listen", "tcp:7702",
                    "--peer-router", "router-b=tcp:10.0.0.2:7702",
                    "--peer-advertise", "tcp:10.0.0.1:7702", "--node", "edgemesh-router-0"]),
    ],
)
def test_every_form_in_use_still_parses(tmp_path: Path, role: str, argv: list[str]) -> None:
    parsed(role, tmp_path, *argv)


def test_checking_an_endpoint_binds_nothing(tmp_path: Path) -> None:
    """The endpoint is only built: the same port can be given to two options' checks and
    to a listener of this test."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        parsed("edge", tmp_path, "--proxy", f"tcp:{port}:interface=127.0.0.1",
               "--hub", f"tcp:{port}:interface=127.0.0.1")


# -- settings wrong together, and floors ----------------------------------------------------


@pytest.mark.parametrize("role", ["edge", "router"])
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--heartbeat-interval", "2", "--heartbeat-timeout", "1"],
         "--heartbeat-timeout 1: must be more than --heartbeat-interval (2)"),
        (["--heartbeat-timeout", "2"],
         "--heartbeat-timeout 2: must be more than --heartbeat-interval (2)"),
        (["--heartbeat-interval", "10"],
         "--heartbeat-timeout 6: must be more than --heartbeat-interval (10)"),
        (["--ejection-time", "100", "--max-ejection-time", "10"],
         "--ejection-time 100: must not be more than --max-ejection-time (10)"),
        (["--ejection-time", "301"],
         "--ejection-time 301: must not be more than --max-ejection-time (300)"),
        (["--heartbeat-interval", "0.001"],
         (f"--heartbeat-interval: must be at least {MIN_HEARTBEAT_INTERVAL:g} and at most "
          "86400 seconds")),
        (["--max-header-bytes", "10"],
         "--max-header-bytes: must be at least 1KiB (a request line and its header fields)"),
        (["--max-header-bytes", "1023"],
         "--max-header-bytes: must be at least 1KiB (a request line and its header fields)"),
    ],
)
def test_settings_that_cannot_work_are_refused(
        tmp_path: Path, role: str, argv: list[str], message: str) -> None:
    assert refusal_of(role, tmp_path, *argv) == message


def test_the_floors_themselves_are_accepted(tmp_path: Path) -> None:
    options = parsed("router", tmp_path, "--heartbeat-interval", "0.1",
                     "--heartbeat-timeout", "0.3", "--ejection-time", "5",
                     "--max-ejection-time", "5", "--max-header-bytes", "1KiB")
    settings = options.resilience()  # type: ignore[attr-defined]
    assert (settings.heartbeat_interval, settings.heartbeat_timeout) == (0.1, 0.3)
    assert settings.base_ejection == settings.max_ejection == 5.0
    assert options.front_limits().max_header_bytes == MIN_HEADER_BYTES  # type: ignore[attr-defined]
