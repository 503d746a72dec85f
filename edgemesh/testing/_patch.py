"""The three patch formats the API server accepts: JSON merge, JSON (RFC 6902) and strategic merge.

Strategic merge is approximated: lists of objects whose elements carry a known merge key
(``ports`` by ``port``/``containerPort``, ``containers`` by ``name``, ``conditions`` by ``type``,
...) are merged element by element, ``$patch: delete|replace`` directives are honoured, other
``$``-directives are ignored and every other list is replaced whole, like an atomic list.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = [
    "JSON_PATCH",
    "MERGE_PATCH",
    "STRATEGIC_MERGE_PATCH",
    "PatchError",
    "apply_json_patch",
    "apply_merge_patch",
    "apply_strategic_merge_patch",
]

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"

# Field name -> merge keys to try, in order (the first one present in the elements wins).
_MERGE_KEYS: dict[str, tuple[str, ...]] = {
    "ports": ("port", "containerPort"),
    "containers": ("name",),
    "initContainers": ("name",),
    "ephemeralContainers": ("name",),
    "volumes": ("name",),
    "env": ("name",),
    "volumeMounts": ("mountPath",),
    "imagePullSecrets": ("name",),
    "conditions": ("type",),
    "addresses": ("type",),
    "ownerReferences": ("uid",),
}


class PatchError(ValueError):
    """A patch that cannot be applied (the server answers 422, or 400 for a malformed patch)."""


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch; returns a new value, never mutates its arguments."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result: dict[str, Any] = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result


def _merge_key_for(field: str, original: list[Any], patch: list[Any]) -> str | None:
    candidates = _MERGE_KEYS.get(field)
    if not candidates:
        return None
    elements = [e for e in original + patch if isinstance(e, dict)]
    if not elements or len(elements) != len(original) + len(patch):
        return None
    for key in candidates:
        if any(key in element for element in elements):
            return key
    return None


def _strategic_list(field: str, original: Any, patch: list[Any]) -> list[Any]:
    if not isinstance(original, list):
        original = []
    merge_key = _merge_key_for(field, original, patch)
    if merge_key is None:
        return [
            _strip_directives(copy.deepcopy(e)) for e in patch if not _is_directive_element(e)
        ]
    result: list[Any] = copy.deepcopy(original)
    for element in patch:
        if element.get("$patch") == "replace":
            replaced: list[Any] = [
                _strip_directives(copy.deepcopy(e))
                for e in patch
                if not _is_directive_element(e)
            ]
            return replaced
    for element in patch:
        key_value = element.get(merge_key)
        index = next(
            (i for i, have in enumerate(result) if have.get(merge_key) == key_value), None
        )
        if element.get("$patch") == "delete":
            if index is not None:
                del result[index]
            continue
        if index is None:
            result.append(_strip_directives(copy.deepcopy(element)))
        else:
            result[index] = _strategic_object(result[index], element)
    return result


def _is_directive_element(element: Any) -> bool:
    return isinstance(element, dict) and "$patch" in element and len(element) == 1


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_directives(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return value


def _strategic_object(original: Any, patch: dict[str, Any]) -> Any:
    directive = patch.get("$patch")
    if directive == "delete":
        return None
    if directive == "replace":
        return _strip_directives(copy.deepcopy(patch))
    result: dict[str, Any] = copy.deepcopy(original) if isinstance(original, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            merged = _strategic_object(result.get(key), value)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list):
            result[key] = _strategic_list(key, result.get(key), value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def apply_strategic_merge_patch(target: dict[str, Any], patch: Any) -> dict[str, Any]:
    """Strategic merge patch (approximated, see the module docstring)."""
    if not isinstance(patch, dict):
        raise PatchError("a strategic merge patch must be a JSON object")
    merged = _strategic_object(target, patch)
    if not isinstance(merged, dict):
        raise PatchError("a strategic merge patch cannot delete the whole object")
    return merged


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"invalid JSON pointer {path!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _parent(document: Any, parts: list[str]) -> Any:
    node = document
    for part in parts[:-1]:
        if isinstance(node, dict):
            if part not in node:
                raise PatchError(f"path component {part!r} not found")
            node = node[part]
        elif isinstance(node, list):
            node = node[_index(node, part, allow_end=False)]
        else:
            raise PatchError(f"cannot descend into {part!r}")
    return node


def _index(array: list[Any], part: str, *, allow_end: bool) -> int:
    if part == "-" and allow_end:
        return len(array)
    if not part.isdigit() or (part.startswith("0") and part != "0"):
        raise PatchError(f"invalid array index {part!r}")
    index = int(part)
    limit = len(array) if allow_end else len(array) - 1
    if index > limit:
        raise PatchError(f"array index {index} out of range")
    return index


def _get(document: Any, parts: list[str]) -> Any:
    if not parts:
        return document
    parent = _parent(document, parts)
    last = parts[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"path {'/'.join(parts)!r} not found")
        return parent[last]
    if isinstance(parent, list):
        return parent[_index(parent, last, allow_end=False)]
    raise PatchError("cannot address into a scalar")


def _remove(document: Any, parts: list[str]) -> Any:
    if not parts:
        raise PatchError("cannot remove the whole document")
    parent = _parent(document, parts)
    last = parts[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"path {'/'.join(parts)!r} not found")
        return parent.pop(last)
    if isinstance(parent, list):
        return parent.pop(_index(parent, last, allow_end=False))
    raise PatchError("cannot remove from a scalar")


def _add(document: Any, parts: list[str], value: Any) -> Any:
    if not parts:
        return value
    parent = _parent(document, parts)
    last = parts[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, allow_end=True), value)
    else:
        raise PatchError("cannot add into a scalar")
    return document


def apply_json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902 JSON patch; returns a new document."""
    if not isinstance(operations, list):
        raise PatchError("a JSON patch must be a list of operations")
    document = copy.deepcopy(target)
    for operation in operations:
        if not isinstance(operation, dict) or not isinstance(operation.get("path"), str):
            raise PatchError(f"invalid JSON patch operation {operation!r}")
        op = operation.get("op")
        parts = _pointer(operation["path"])
        if op in ("add", "replace", "test") and "value" not in operation:
            raise PatchError(f"operation {op!r} needs a value")
        if op == "add":
            document = _add(document, parts, copy.deepcopy(operation["value"]))
        elif op == "remove":
            _remove(document, parts)
        elif op == "replace":
            _get(document, parts)
            if not parts:
                document = copy.deepcopy(operation["value"])
            else:
                _remove(document, parts)
                document = _add(document, parts, copy.deepcopy(operation["value"]))
        elif op in ("move", "copy"):
            source = operation.get("from")
            if not isinstance(source, str):
                raise PatchError(f"operation {op!r} needs 'from'")
            from_parts = _pointer(source)
            if op == "move":
                value = _remove(document, from_parts)
            else:
                value = copy.deepcopy(_get(document, from_parts))
            document = _add(document, parts, value)
        elif op == "test":
            if _get(document, parts) != operation["value"]:
                raise PatchError(f"test operation failed at {operation['path']!r}")
        else:
            raise PatchError(f"unknown JSON patch operation {op!r}")
    return document
