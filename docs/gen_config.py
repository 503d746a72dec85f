"""Generate docs/configuration.md from the twistd plugins' Options classes.

    PYTHONPATH=. python3 docs/gen_config.py          # rewrite docs/configuration.md
    PYTHONPATH=. python3 docs/gen_config.py --check  # exit 1 if it is out of date

Every option comes from the classes themselves: ``optParameters``, ``optFlags`` and
``opt_*`` methods of each class in an Options class's MRO (the role's own class and the
mixins: common, TLS, Kubernetes, capture...), with the defaults and help texts Twisted
gathers.  An option of a class both roles share is listed once, under "Both roles".
tests/test_docs.py regenerates the text and compares it with the file.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.python import usage

from edgemesh.roles._options import shown_default

DOCS = Path(__file__).resolve().parent
TARGET = DOCS / "configuration.md"
ROLES = (
    ("edgemesh-router", "edgemesh.roles.router_tap", "Router"),
    ("edgemesh-edge", "edgemesh.roles.edge_tap", "Edge"),
)
TWISTD_OPTIONS = (
    ("`--nodaemon`, `-n`", "Stay in the foreground (containers, systemd)."),
    ("`--pidfile=`", "An empty value writes no pid file (a read-only root filesystem)."),
    ("`--logfile=FILE`", "Log there instead of standard output (the default with `-n`)."),
)
"""twistd's own options that a deployment uses: they come before the plugin name."""
VALUE_NAMES = {
    "int": "integer",
    "float": "number",
    "_timeout": "seconds",
    "_interval": "seconds",
    "seconds_or_off": "seconds (0: off)",
    "_size": "bytes (k, m, g: KiB, MiB, GiB)",
    "_head_size": "bytes (k, m, g: KiB, MiB, GiB)",
    "_heartbeat_interval": "positive seconds",
    "_threshold": "bytes (k, m: KiB, MiB; 0: glibc's)",
    "_count": "count",
    "_services": "count",
    "_on_off": "on, off",
    "_log_format": "text, json",
}
"""How a coercer's name reads in the table; others show their own name."""


@dataclass(frozen=True)
class Option:
    name: str
    value: str | None
    """What the value is ("seconds", "text"...); None for a flag."""
    default: str
    help: str
    group: type[usage.Options]


def _value_name(coerce: Callable[[str], Any] | None) -> str:
    if coerce is None:
        return "text"
    name = getattr(coerce, "__name__", type(coerce).__name__)
    return VALUE_NAMES.get(name, name.lstrip("_").replace("_", " "))


def _default(value: object, coerce: Callable[[str], Any] | None) -> str:
    if value is None:
        return "—"
    shown = shown_default(value, coerce)  # as --help shows it
    return str(shown) if isinstance(value, bool) else f"`{shown}`"  # on/off read as flags do


def _classes(options_class: type[usage.Options]) -> list[type[usage.Options]]:
    """The Options classes of the MRO that declare options, most derived first."""
    return [c for c in options_class.__mro__
            if isinstance(c, type) and issubclass(c, usage.Options) and c is not usage.Options]


def options_of(options_class: type[usage.Options]) -> list[Option]:
    """Every option of ``options_class`` (``--help``/``--version`` aside), in declaration
    order within each class, each attributed to the most derived class that declares it."""
    instance = options_class()
    docs: dict[str, str] = instance.docs
    defaults: dict[str, Any] = instance.defaults
    seen: set[str] = set()
    found: list[Option] = []

    def add(name: str, value: str | None, group: type[usage.Options], default: str) -> None:
        if name in seen:
            return
        seen.add(name)
        text = " ".join((docs.get(name) or "").split())
        found.append(Option(name, value, default, text, group))

    for group in _classes(options_class):
        own = vars(group)
        for flag in own.get("optFlags", []):
            add(flag[0], None, group, "off")
        for parameter in own.get("optParameters", []):
            coerce = parameter[4] if len(parameter) > 4 else None
            value = _value_name(coerce)
            add(parameter[0], value, group, _default(defaults.get(parameter[0]), coerce))
        for attribute, method in own.items():
            if not attribute.startswith("opt_") or not callable(method):
                continue
            takes_value = len(inspect.signature(method).parameters) > 1
            name = attribute[4:].replace("_", "-")
            add(name, "text" if takes_value else None, group, "—" if takes_value else "off")
    return [o for o in found if o.name not in ("help", "version")]


def _group_title(group: type[usage.Options], role_title: str) -> str:
    if group.__name__ == "Options":
        return f"{role_title} only"
    title = group.__name__.removesuffix("Options") or group.__name__
    return f"{title} (`{group.__module__}.{group.__qualname__}`)"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _table(options: list[Option]) -> list[str]:
    lines = ["| option | value | default | meaning |", "|---|---|---|---|"]
    for option in options:
        value = "flag" if option.value is None else option.value
        lines.append(f"| `--{option.name}` | {value} | {option.default} | {_cell(option.help)} |")
    return lines


def generate() -> str:
    roles = []
    for tapname, module_name, title in ROLES:
        module = importlib.import_module(module_name)
        roles.append((tapname, title, module.Options, options_of(module.Options)))
    shared = set.intersection(*(set(_classes(options)) for _, _, options, _ in roles))

    out = [
        "# Configuration reference",
        "",
        "<!-- Generated by docs/gen_config.py from the twistd plugins' Options: do not edit.",
        "     Regenerate with `PYTHONPATH=. python3 docs/gen_config.py`; tests/test_docs.py",
        "     fails while this file is out of step with the code. -->",
        "",
        "Both roles are `twistd` plugins. twistd's own options come first, then the plugin's:",
        "",
        "    twistd --nodaemon --pidfile= edgemesh-router [OPTIONS]",
        "    twistd --nodaemon --pidfile= edgemesh-edge [OPTIONS]",
        "",
        "`twistd edgemesh-router --help` prints the same list. Options take their value as",
        "`--name=value` or `--name value`. Listeners and the router's address are Twisted",
        "endpoint strings: `tcp:7700` (every interface), `tcp:7790:interface=127.0.0.1`,",
        "and for clients `tcp:HOST:PORT`. A bad value stops the process at start with a",
        "message naming the option.",
        "",
        "Every listener (`--tunnel`, `--http`, `--hub`, `--proxy`, `--admin`, `--transparent`, DNS",
        "over TCP) has a listen queue of 4096 connections unless its endpoint string names one:",
        "`tcp:7700:backlog=1024` (Twisted's own default is 50, too few for thousands of edges",
        "reconnecting together; the kernel caps it at `net.core.somaxconn`).",
        "",
        "twistd's own options that a deployment uses:",
        "",
        "| option | meaning |",
        "|---|---|",
        *(f"| {name} | {text} |" for name, text in TWISTD_OPTIONS),
        "",
        "Contents: [Both roles](#both-roles) ·",
        " · ".join(f"[`twistd {tapname}`](#twistd-{tapname})" for tapname, *_ in roles),
        "",
        "## Both roles",
        "",
    ]
    for group in _classes(roles[0][2]):
        if group in shared:
            options = [o for o in roles[0][3] if o.group is group]
            if options:
                out += [f"### {_group_title(group, '')}", "", *_table(options), ""]
    for tapname, title, options_class, options in roles:
        synopsis = " ".join(str(options_class.synopsis).split())
        out += [
            f"## `twistd {tapname}`",
            "",
            " ".join(str(options_class.longdesc).split()),
            "",
            f"    twistd -n {tapname} {synopsis}",
            "",
        ]
        for group in _classes(options_class):
            own = [o for o in options if o.group is group]
            if group not in shared and own:
                out += [f"### {_group_title(group, title)}", "", *_table(own), ""]
    return "\n".join(out).rstrip("\n") + "\n"


def main(argv: list[str]) -> int:
    text = generate()
    if argv[1:] == ["--check"]:
        if TARGET.read_text() != text:
            print(f"{TARGET} is out of date: run `PYTHONPATH=. python3 docs/gen_config.py`")
            return 1
        return 0
    TARGET.write_text(text)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
