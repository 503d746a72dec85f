"""docs/ stays true to the code: the configuration reference is regenerated and compared,
the diagram is the rendering of its current source, operations.md covers every error reason,
admin page and metric (and names nothing that does not exist), the command lines in the docs
parse, and relative links (anchors included) resolve."""

from __future__ import annotations

import importlib.util
import re
import shlex
import struct
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage

from edgemesh.catalog import Catalog
from edgemesh.exchange import Reason
from edgemesh.observability import MeshCollector
from edgemesh.roles import EdgeConfig, RouterConfig, build_edge, build_router, edge_tap, router_tap
from edgemesh.roles._admin import admin_site

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
OWN_DOCS = ("architecture.md", "running.md", "configuration.md", "operations.md")
"""The pages these tests keep in step (the others have owners and tests of their own)."""


def load_script(name: str) -> ModuleType:
    """A script of docs/ as a module (registered: dataclasses look their module up)."""
    module_name = f"docs_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, DOCS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def read(name: str) -> str:
    return (DOCS / name).read_text()


def table_rows(text: str, heading: str) -> list[list[str]]:
    """The cells of the first table after ``heading`` (a Markdown heading line)."""
    lines = text.splitlines()
    start = lines.index(heading)
    rows: list[list[str]] = []
    for line in lines[start + 1:]:
        if line.startswith("|"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if not all(set(c) <= {"-", ":"} for c in cells):
                rows.append(cells)
        elif rows:
            break
    return rows[1:]  # without the header row


# -- configuration.md ----------------------------------------------------------------------


def test_configuration_reference_is_generated_from_the_current_options() -> None:
    generated = load_script("gen_config").generate()
    assert read("configuration.md") == generated, (
        "docs/configuration.md is out of step with the taps' options: "
        "run `PYTHONPATH=. python3 docs/gen_config.py`"
    )


@pytest.mark.parametrize("options_class", [router_tap.Options, edge_tap.Options])
def test_configuration_reference_lists_every_option(options_class: type[usage.Options]) -> None:
    """Whatever mixin an option comes from, including ``opt_*`` methods."""
    names = {o.rstrip("=") for o in options_class().longOpt} - {"help", "version"}
    row = re.compile(r"^\| `--([a-z0-9-]+)` \|", re.MULTILINE)
    documented = set(row.findall(read("configuration.md")))
    assert names <= documented
    assert "service-cidr" in documented and "in-cluster" in documented


def test_generator_attributes_options_to_their_mixins() -> None:
    gen = load_script("gen_config")
    options = {o.name: o for o in gen.options_of(edge_tap.Options)}
    assert options["capture"].group.__name__ == "CaptureOptions"
    assert options["capture"].value is None and options["capture"].default == "off"
    assert options["node"].group is edge_tap.Options
    assert options["max-body"].default == "`1GiB`"
    assert options["dns-upstream"].value == "text"  # an opt_ method taking a value


# -- architecture.md and its diagram -------------------------------------------------------


def test_architecture_shows_the_diagram_rendered_from_its_current_source() -> None:
    render = load_script("render_diagram")
    assert "](architecture.png)" in read("architecture.md")
    png = (DOCS / "architecture.png").read_bytes()
    chunks = render.chunks(png)
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    width, height = struct.unpack(">II", chunks[0][1][:8])
    assert width >= 800 and height >= 300
    assert render.recorded_digest(png) == render.source_digest(), (
        "docs/architecture.png is not the rendering of docs/architecture.dot: "
        "run `python3 docs/render_diagram.py` (needs Graphviz)"
    )


def test_diagram_digest_round_trip() -> None:
    render = load_script("render_diagram")
    png = (DOCS / "architecture.png").read_bytes()
    stripped = b"".join(
        struct.pack(">I", len(data)) + kind + data + b"CRC!"
        for kind, data in render.chunks(png) if kind != b"tEXt")
    assert render.recorded_digest(render.PNG_SIGNATURE + stripped) is None
    marked = render.with_digest(render.PNG_SIGNATURE + stripped, "ab" * 32)
    assert render.recorded_digest(marked) == "ab" * 32


def test_diagram_source_has_the_pipeline_and_the_four_paths() -> None:
    source = read("architecture.dot")
    for label in ("Source", "resolve", "choose", "Target",
                  "1  local", "2  edge→edge", "3  edge→cloud", "4  cloud→edge"):
        assert label in source


# -- operations.md ------------------------------------------------------------------------


def test_every_error_reason_is_explained_with_its_status() -> None:
    rows = table_rows(read("operations.md"), "## Troubleshooting by error reason")
    documented = {row[0].strip("`"): int(row[1]) for row in rows}
    assert documented == {reason.code: reason.status for reason in Reason}
    assert all(len(row) == 4 and row[2] and row[3] for row in rows)


def _nodes() -> dict[str, Any]:
    router = build_router(MemoryReactorClock(), RouterConfig(catalog=Catalog.empty()))
    edge = build_edge(MemoryReactorClock(),
                      EdgeConfig(node="edge-1", state_dir=tempfile.mkdtemp(prefix="docs-")))
    return {"router": router, "edge": edge}


def test_every_admin_page_is_documented_and_every_documented_page_exists() -> None:
    served = {role: {"/" + name.decode() for name in admin_site(node).resource.children}
              for role, node in _nodes().items()}
    rows = table_rows(read("operations.md"), "## Admin API")
    documented = {row[0].strip("`"): row[1] for row in rows}
    assert set(documented) == served["router"] | served["edge"]
    for path, roles in documented.items():
        expected = "both" if path in served["router"] and path in served["edge"] else (
            "router" if path in served["router"] else "edge")
        assert roles == expected, path


def _families() -> dict[str, str]:
    """Metric families as exposed (counters with ``_total``) -> their type."""
    node = _nodes()["router"]
    collector = MeshCollector(node.observer, lambda: node.catalog, node.edges_view,
                              spliced=lambda: 0,  # as the admin API's (roles/_admin.py)
                              heap=lambda: (0, 0))  # as twistd's (--malloc-trim-interval)
    return {(f.name + "_total" if f.type == "counter" else f.name): f.type
            for f in collector.collect()}


def test_every_metric_is_documented_with_its_type() -> None:
    rows = table_rows(read("operations.md"), "## Metrics")
    documented = {row[0].strip("`"): row[1] for row in rows}
    assert documented == _families()


def test_operations_names_no_metric_that_does_not_exist() -> None:
    families = _families()
    known = set(families) | {name + suffix for name, kind in families.items()
                             if kind == "histogram" for suffix in ("_bucket", "_sum", "_count")}
    mentioned = set(re.findall(r"\bedgemesh_[a-z_]+\b", read("operations.md")))
    assert mentioned - {"edgemesh_peer_", "edgemesh_edge_catalog_"} <= known


# -- command lines in the docs --------------------------------------------------------------


def _code_lines(text: str) -> list[str]:
    """Indented code lines and fenced ones, continuation backslashes joined."""
    lines, fenced, out = text.splitlines(), False, []
    buffer = ""
    for line in lines:
        if line.startswith("```"):
            fenced = not fenced
            continue
        if not (fenced or line.startswith("    ")):
            continue
        buffer += " " + line.strip()
        if buffer.endswith("\\"):
            buffer = buffer[:-1]
            continue
        out.append(buffer.strip())
        buffer = ""
    return out


def _commands(names: tuple[str, ...]) -> list[tuple[str, list[str]]]:
    found = []
    for name in names:
        for line in _code_lines((ROOT / name).read_text()):
            try:
                words = shlex.split(line, comments=True)
            except ValueError:  # shell we do not read (quotes spanning lines...)
                continue
            while words and words[0] in ("for", "do", "sudo"):
                words = words[1:]
            if words[:1] in (["twistd"], ["edgemesh"]):
                found.append((name, words))
    return found


DOC_PAGES = tuple(f"docs/{name}" for name in OWN_DOCS) + ("README.md",)


def test_twistd_command_lines_in_the_docs_use_real_options() -> None:
    taps: dict[str, Any] = {"edgemesh-router": router_tap.Options,
                            "edgemesh-edge": edge_tap.Options}
    twistd_own = {"n", "nodaemon", "pidfile", "logfile", "logger"}
    checked = 0
    for page, words in _commands(DOC_PAGES):
        if words[0] != "twistd":
            continue
        plugin = next((w for w in words if w in taps), None)
        if plugin is None:
            continue
        at = words.index(plugin)
        before = {w.lstrip("-").split("=")[0] for w in words[1:at]}
        assert before <= twistd_own, (page, words)
        known = {o.rstrip("=") for o in taps[plugin]().longOpt}
        bare = [w.strip("[]()") for w in words[at + 1:]]  # synopses: [--x X], (--a | --b)
        used = {w[2:].split("=")[0] for w in bare if w.startswith("--")}
        assert used <= known, (page, sorted(used - known))
        checked += 1
    assert checked >= 4


def test_edgemesh_command_lines_in_the_docs_parse() -> None:
    from edgemesh.capture._cli import _parser as iptables_parser
    from edgemesh.cli._certs import _parser as certs_parser

    parsers = {"certs": certs_parser, "iptables": iptables_parser}
    checked = 0
    for page, words in _commands(DOC_PAGES):
        if words[0] != "edgemesh" or words[1:2] not in (["certs"], ["iptables"]):
            continue
        arguments = [w for w in words[2:] if not w.startswith("[")]  # optional parts
        try:
            parsers[words[1]]().parse_args(arguments)
        except SystemExit:
            pytest.fail(f"{page}: edgemesh {words[1]} {' '.join(arguments)} does not parse")
        checked += 1
    assert checked >= 3


# -- links ---------------------------------------------------------------------------------


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_anchor(line.lstrip("#")) for line in path.read_text().splitlines()
            if line.startswith("#")}


@pytest.mark.parametrize("page", DOC_PAGES)
def test_relative_links_resolve(page: str) -> None:
    path = ROOT / page
    text = path.read_text()
    if page == "README.md":
        text = text.split("## Documentation", 1)[1].split("\n## ", 1)[0]
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links
    for link in links:
        if re.match(r"[a-z]+:", link):
            continue
        target, _, anchor = link.partition("#")
        resolved = (path.parent / target).resolve() if target else path
        assert resolved.exists(), f"{page}: {link}"
        if anchor:
            assert resolved.suffix == ".md" and anchor in _anchors(resolved), f"{page}: {link}"


def test_readme_links_every_page_of_docs() -> None:
    section = (ROOT / "README.md").read_text().split("## Documentation", 1)[1].split("\n## ")[0]
    linked = set(re.findall(r"\]\(docs/([\w.-]+\.md)\)", section))
    assert linked == {p.name for p in DOCS.glob("*.md")}


def test_readme_layout_names_every_package() -> None:
    """A newcomer reads the architecture off the README's layout: every package of edgemesh/
    is in it, and it names none that is gone."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## Layout", 1)[1].split("\n## ")[0]
    listed = set(re.findall(r"^ {6}(\w+)/ ", block, re.MULTILINE))
    packages = {p.parent.name for p in (ROOT / "edgemesh").glob("*/__init__.py")}
    assert listed == packages
