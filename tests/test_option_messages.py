"""A bad option value is refused with a message that names the option and says why, and
--help shows each default as a user would type it (``off``, ``1GiB``), while the parsed
values stay what the code expects (False, 1073741824)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from twisted.python import usage

from edgemesh.roles import edge_tap, router_tap
from edgemesh.roles._options import _NamedCoerce, shown_default

DOCS = Path(__file__).resolve().parent.parent / "docs"
SIZE_REASON = "is not a size (bytes, or with k, m, g: KiB, MiB, GiB)"


def edge_argv(tmp_path: Path, *extra: str) -> list[str]:
    return ["--insecure", "--node", "edge-1", "--state-dir", str(tmp_path), *extra]


def router_argv(tmp_path: Path, *extra: str) -> list[str]:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text('{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "edge-1"}}\n')
    return ["--insecure", "--catalog", str(catalog), *extra]


def refusal(options: usage.Options, argv: list[str]) -> str:
    with pytest.raises(usage.UsageError) as caught:
        options.parseOptions(argv)  # type: ignore[no-untyped-call]
    return str(caught.value)


def load_gen_config() -> ModuleType:
    """docs/gen_config.py as a module (registered: its dataclasses look their module up)."""
    name = "docs_gen_config"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, DOCS / "gen_config.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# -- the reported values --------------------------------------------------------------------

REPORTED = [
    ("--max-body", "lots", f"'lots' {SIZE_REASON}"),
    ("--connect-timeout", "abc", "'abc' is not a number of seconds"),
    ("--retry-budget", "2x", "'2x' is not a number"),
    ("--max-header-bytes", "10q", f"'10q' {SIZE_REASON}"),
    ("--log-format", "xml", "must be 'text' or 'json', not 'xml'"),
    ("--link-tls-io", "tcp", "must be memory or socket, not 'tcp'"),
]


@pytest.mark.parametrize(("option", "value", "reason"), REPORTED)
def test_reported_values_name_the_option_and_say_why(
        tmp_path: Path, option: str, value: str, reason: str) -> None:
    edge = refusal(edge_tap.Options(), edge_argv(tmp_path, option, value))  # type: ignore[no-untyped-call]
    router = refusal(router_tap.Options(),  # type: ignore[no-untyped-call]
                     router_argv(tmp_path, option, value))
    assert edge == router == f"{option}: {reason}"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--access-log", "maybe"], "--access-log: must be 'on' or 'off', not 'maybe'"),
        (["--retries", "x"], "--retries: 'x' is not a whole number"),
        (["--max-headers", "many"], "--max-headers: 'many' is not a whole number"),
        (["--metrics-max-services", "1e3"], "--metrics-max-services: '1e3' is not a whole number"),
        (["--tls-reload-interval", "hourly"],
         "--tls-reload-interval: 'hourly' is not a number of seconds"),
        (["--max-body", ""], f"--max-body: '' {SIZE_REASON}"),
        (["--max-body", "1.5m"], f"--max-body: '1.5m' {SIZE_REASON}"),
        (["--max-body", "0"], "--max-body: must be more than 0 bytes"),
        (["--malloc-mmap-threshold", "33MiB"],
         ("--malloc-mmap-threshold: must be 0 (glibc's default) or from 1 byte to 32MiB "
          "(glibc's largest)")),
    ],
)
def test_other_refusals_name_the_option(tmp_path: Path, argv: list[str], message: str) -> None:
    assert refusal(edge_tap.Options(), edge_argv(tmp_path, *argv)) == message  # type: ignore[no-untyped-call]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--advertise-port", "http"], "--advertise-port: 'http' is not a whole number"),
        (["--lease-duration", "long"], "--lease-duration: 'long' is not a number"),
    ],
)
def test_router_only_refusals_name_the_option(
        tmp_path: Path, argv: list[str], message: str) -> None:
    assert refusal(router_tap.Options(), router_argv(tmp_path, *argv)) == message  # type: ignore[no-untyped-call]


@pytest.mark.parametrize("options_class", [router_tap.Options, edge_tap.Options])
def test_every_coerced_option_names_itself(
        tmp_path: Path, options_class: type[usage.Options]) -> None:
    """Whichever mixin declares it: no option is left with Twisted's anonymous message."""
    names = [name for name, dispatcher in options_class()._dispatch.items()
             if isinstance(dispatcher, usage.CoerceParameter)]
    assert "max-body" in names and "stream-idle-timeout" in names and "link-tls-io" in names
    argv = router_argv if options_class is router_tap.Options else edge_argv
    for name in names:
        options = options_class()
        assert isinstance(options._dispatch[name], _NamedCoerce)
        if options._dispatch[name].coerce is str:
            continue  # a plain text parameter refuses nothing
        message = refusal(options, argv(tmp_path, f"--{name}", "junk?"))
        assert message.startswith(f"--{name}: "), message
        assert "Parameter type enforcement" not in message
        assert "invalid literal" not in message and "could not convert" not in message


# -- range messages say what is accepted ----------------------------------------------------


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--stream-idle-timeout", "must be more than 0 and at most 86400 seconds"),
        ("--drain-timeout", "must be more than 0 and at most 86400 seconds"),
        ("--heartbeat-interval", "must be at least 0.1 and at most 86400 seconds"),
        ("--connect-timeout", "must be more than 0 and at most 86400 seconds"),
        ("--request-timeout", "must be more than 0 and at most 86400 seconds"),
        ("--tls-handshake-timeout", "must be more than 0 and at most 3600 seconds"),
    ],
)
def test_zero_refused_is_not_called_in_range(tmp_path: Path, option: str, message: str) -> None:
    text = refusal(edge_tap.Options(), edge_argv(tmp_path, option, "0"))  # type: ignore[no-untyped-call]
    assert text == f"{option}: {message}"
    assert "between 0" not in text


def test_zero_accepted_where_the_message_says_so(tmp_path: Path) -> None:
    options: Any = edge_tap.Options()  # type: ignore[no-untyped-call]
    options.parseOptions(edge_argv(tmp_path, "--tls-reload-interval", "0"))
    assert options["tls-reload-interval"] == 0.0
    text = refusal(edge_tap.Options(), edge_argv(tmp_path, "--tls-reload-interval", "-1"))  # type: ignore[no-untyped-call]
    assert text == ("--tls-reload-interval: must be between 0 (no periodic check) and 86400 "
                    "seconds")


# -- accepted values stay accepted, parsed the same -----------------------------------------


def test_accepted_values_parse_as_before(tmp_path: Path) -> None:
    options: Any = edge_tap.Options()  # type: ignore[no-untyped-call]
    options.parseOptions(edge_argv(
        tmp_path, "--max-body", "512KiB", "--max-header-bytes", "2m", "--connect-timeout", "2.5",
        "--stream-idle-timeout", "86400", "--retry-budget", "20%", "--access-log", "on",
        "--log-format", "text", "--link-tls-io", "socket", "--malloc-mmap-threshold", "0",
        "--retries", "10", "--max-headers", "1"))
    assert options["max-body"] == 512 << 10
    assert options["max-header-bytes"] == 2 << 20
    assert options["connect-timeout"] == 2.5
    assert options["stream-idle-timeout"] == 86400.0
    assert options["retry-budget"] == pytest.approx(0.2)
    assert options["access-log"] is True
    assert options["link-tls-io"] == "socket"
    assert options["malloc-mmap-threshold"] == 0
    assert (options["retries"], options["max-headers"]) == (10, 1)


# -- --help shows defaults as typed ---------------------------------------------------------


def help_text(options_class: type[usage.Options]) -> str:
    return " ".join(str(options_class()).split())  # the columns' line breaks undone


def test_edge_help_shows_on_off_and_sizes() -> None:
    text = help_text(edge_tap.Options)
    assert re.search(r"--access-log= .*?\[default: off\]", text)
    assert re.search(r"--max-body= .*?\[default: 1GiB\]", text)
    assert re.search(r"--max-header-bytes= .*?\[default: 60KiB\]", text)
    assert re.search(r"--connect-timeout= .*?\[default: 5\]", text)
    assert re.search(r"--malloc-mmap-threshold= .*?\[default: 256KiB\]", text)
    assert "False" not in text and "1073741824" not in text and "5.0]" not in text
    assert "262144" not in text


def test_the_threshold_shown_parses_back(tmp_path: Path) -> None:
    options: Any = edge_tap.Options()  # type: ignore[no-untyped-call]
    options.parseOptions(edge_argv(tmp_path, "--malloc-mmap-threshold", "256KiB"))
    assert options["malloc-mmap-threshold"] == options.defaults["malloc-mmap-threshold"]


def test_router_help_shows_whole_seconds() -> None:
    text = help_text(router_tap.Options)
    assert re.search(r"--lease-duration= .*?\[default: 15\]", text)
    assert re.search(r"--access-log= .*?\[default: off\]", text)


@pytest.mark.parametrize("options_class", [router_tap.Options, edge_tap.Options])
def test_help_defaults_match_the_configuration_reference(
        options_class: type[usage.Options]) -> None:
    """--help and docs/configuration.md show every default the same way."""
    gen = load_gen_config()
    documented = {o.name: o.default.strip("`") for o in gen.options_of(options_class)}
    options = options_class()
    for name, dispatcher in options._dispatch.items():
        if not isinstance(dispatcher, usage.CoerceParameter):
            continue
        default = options.defaults[name]
        shown = shown_default(default, dispatcher.coerce)
        assert str(shown if shown is not None else "—") == documented[name], name


def test_help_leaves_the_parsed_values_alone(tmp_path: Path) -> None:
    options: Any = edge_tap.Options()  # type: ignore[no-untyped-call]
    str(options)
    assert options.defaults["access-log"] is False
    assert options.defaults["max-body"] == 1 << 30
    options.parseOptions(edge_argv(tmp_path))
    assert options["access-log"] is False
    assert options["max-body"] == 1 << 30
    assert options["connect-timeout"] == 5.0
