"""Label and field selectors, parsed the way the Kubernetes API server parses them.

Label selectors: ``a=b``, ``a==b``, ``a!=b``, ``a``, ``!a``, ``a in (x,y)``, ``a notin (x,y)``,
``a>1``, ``a<1``, joined by commas (all must hold).  Field selectors: ``path=value``,
``path==value``, ``path!=value`` over a small per-resource set of supported field paths.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "FieldSelector",
    "LabelSelector",
    "SelectorError",
    "parse_field_selector",
    "parse_label_selector",
]

# The longest selector string we agree to parse: a selector is a query parameter, not a document.
MAX_SELECTOR_LENGTH = 4096

_KEY = re.compile(
    r"^([a-z0-9A-Z]([-a-z0-9A-Z.]*[a-z0-9A-Z])?/)?[a-z0-9A-Z]([-_.a-z0-9A-Z]*[a-z0-9A-Z])?$")
_VALUE = re.compile(r"^([a-z0-9A-Z]([-_.a-z0-9A-Z]*[a-z0-9A-Z])?)?$")


class SelectorError(ValueError):
    """A selector string that the API server would reject with 400 BadRequest."""


@dataclass(frozen=True)
class _Requirement:
    key: str
    operator: str  # "=", "!=", "in", "notin", "exists", "!", "gt", "lt"
    values: frozenset[str]

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.operator in ("=", "in"):
            return present and value in self.values
        if self.operator in ("!=", "notin"):
            return not present or value not in self.values
        if self.operator == "exists":
            return present
        if self.operator == "!":
            return not present
        # gt / lt: both sides must be integers, as in k8s.io/apimachinery/pkg/labels.
        if value is None:
            return False
        try:
            have = int(value)
        except ValueError:
            return False
        (bound_text,) = self.values
        bound = int(bound_text)
        return have > bound if self.operator == "gt" else have < bound


@dataclass(frozen=True)
class LabelSelector:
    """A parsed label selector; the empty selector matches everything."""

    requirements: tuple[_Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        have = labels or {}
        return all(requirement.matches(have) for requirement in self.requirements)


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside ``( )``."""
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise SelectorError(f"unbalanced parenthesis in {text!r}")
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth != 0:
        raise SelectorError(f"unbalanced parenthesis in {text!r}")
    parts.append("".join(current))
    return parts


def _check_key(key: str, whole: str) -> str:
    if not _KEY.match(key) or len(key) > 316:
        raise SelectorError(f"unable to parse requirement: invalid label key {key!r} in {whole!r}")
    return key


def _check_value(value: str, whole: str) -> str:
    if not _VALUE.match(value) or len(value) > 63:
        raise SelectorError(
            f"unable to parse requirement: invalid label value {value!r} in {whole!r}"
        )
    return value


_SET_FORM = re.compile(r"^\s*(?P<key>[^\s!=<>()]+)\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)\s*$")
_BINARY_FORM = re.compile(
    r"^\s*(?P<key>[^\s!=<>()]+)\s*(?P<op>==|!=|=|>|<)\s*(?P<value>[^\s]*)\s*$")
_EXISTS_FORM = re.compile(r"^\s*(?P<neg>!?)\s*(?P<key>[^\s!=<>(),]+)\s*$")


def parse_label_selector(text: str | None) -> LabelSelector:
    """Parse a ``labelSelector`` query value; raise :class:`SelectorError` when it is invalid."""
    if text is None or not text.strip():
        return LabelSelector()
    if len(text) > MAX_SELECTOR_LENGTH:
        raise SelectorError("label selector too long")
    requirements: list[_Requirement] = []
    for part in _split_top_level(text):
        if not part.strip():
            raise SelectorError(f"unable to parse requirement: empty requirement in {text!r}")
        match = _SET_FORM.match(part)
        if match:
            key = _check_key(match["key"], text)
            values = [v.strip() for v in match["values"].split(",")]
            if match["op"] == "in" and values == [""]:
                raise SelectorError(f"for 'in' operator, values set can't be empty in {text!r}")
            for value in values:
                _check_value(value, text)
            requirements.append(_Requirement(key, match["op"], frozenset(values)))
            continue
        match = _BINARY_FORM.match(part)
        if match:
            key = _check_key(match["key"], text)
            value = _check_value(match["value"], text)
            op = match["op"]
            if op in (">", "<"):
                try:
                    int(value)
                except ValueError:
                    raise SelectorError(
                        f"for 'Gt', 'Lt' operators, the value must be an integer in {text!r}"
                    ) from None
                requirements.append(
                    _Requirement(key, "gt" if op == ">" else "lt", frozenset([value]))
                )
            else:
                requirements.append(
                    _Requirement(key, "!=" if op == "!=" else "=", frozenset([value]))
                )
            continue
        match = _EXISTS_FORM.match(part)
        if match:
            key = _check_key(match["key"], text)
            requirements.append(
                _Requirement(key, "!" if match["neg"] else "exists", frozenset())
            )
            continue
        raise SelectorError(f"unable to parse requirement: {part.strip()!r} in {text!r}")
    return LabelSelector(tuple(requirements))


@dataclass(frozen=True)
class _FieldRequirement:
    path: str
    equal: bool
    value: str


def _field_value(obj: Mapping[str, Any], path: str) -> str:
    node: Any = obj
    for step in path.split("."):
        if not isinstance(node, Mapping):
            return ""
        node = node.get(step)
    if node is None:
        return ""
    if isinstance(node, bool):
        return "true" if node else "false"
    return str(node)


@dataclass(frozen=True)
class FieldSelector:
    """A parsed field selector; the empty selector matches everything."""

    requirements: tuple[_FieldRequirement, ...] = ()

    def matches(self, obj: Mapping[str, Any]) -> bool:
        for requirement in self.requirements:
            equal = _field_value(obj, requirement.path) == requirement.value
            if equal != requirement.equal:
                return False
        return True


_FIELD_FORM = re.compile(r"^\s*(?P<path>[A-Za-z0-9_.]+)\s*(?P<op>==|!=|=)\s*(?P<value>.*?)\s*$")


def parse_field_selector(text: str | None, supported: frozenset[str]) -> FieldSelector:
    """Parse a ``fieldSelector`` query value against the field paths a resource supports."""
    if text is None or not text.strip():
        return FieldSelector()
    if len(text) > MAX_SELECTOR_LENGTH:
        raise SelectorError("field selector too long")
    requirements: list[_FieldRequirement] = []
    for part in text.split(","):
        match = _FIELD_FORM.match(part)
        if not match:
            raise SelectorError(f"invalid selector: {text!r}; can't understand {part!r}")
        path = match["path"]
        if path not in supported:
            raise SelectorError(f'field label not supported: {path}')
        requirements.append(_FieldRequirement(path, match["op"] != "!=", match["value"]))
    return FieldSelector(tuple(requirements))
