"""Field ownership for managedFields and server-side apply (a useful subset of
structured-merge-diff).

A field is a path of map keys; a list (and an empty map) is one leaf, as an atomic list is
for the real server.  Each manager owns a set of paths; ``fieldsV1`` is that set written the
way the API server writes it (``{"f:spec": {"f:type": {}}}``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = [
    "Path",
    "changed_paths",
    "from_fields_v1",
    "get_path",
    "leaf_paths",
    "remove_path",
    "set_path",
    "to_fields_v1",
]

Path = tuple[str, ...]

# Identity and server-owned metadata no manager owns (as in the real managedFields).
_UNOWNED_METADATA = frozenset({
    "name", "namespace", "uid", "resourceVersion", "creationTimestamp", "generation",
    "managedFields", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink",
})
_UNOWNED_TOP = frozenset({"apiVersion", "kind", "status"})


def _walk(value: Any, prefix: Path) -> Iterator[Path]:
    if isinstance(value, dict) and value:
        for key, child in value.items():
            if not prefix and key in _UNOWNED_TOP:
                continue
            if prefix == ("metadata",) and key in _UNOWNED_METADATA:
                continue
            yield from _walk(child, (*prefix, str(key)))
    elif prefix and prefix != ("metadata",):
        yield prefix


def leaf_paths(obj: Any) -> set[Path]:
    """Every owned leaf of an object."""
    return set(_walk(obj, ()))


_MISSING = object()


def get_path(obj: Any, path: Path) -> Any:
    """The value at `path`, or a private sentinel when absent."""
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return _MISSING
        obj = obj[key]
    return obj


def set_path(obj: dict[str, Any], path: Path, value: Any) -> None:
    for key in path[:-1]:
        child = obj.get(key)
        if not isinstance(child, dict):
            child = obj[key] = {}
        obj = child
    obj[path[-1]] = copy.deepcopy(value)


def remove_path(obj: dict[str, Any], path: Path) -> None:
    """Remove a leaf, and the maps it leaves empty."""
    trail: list[tuple[dict[str, Any], str]] = []
    current: Any = obj
    for key in path:
        if not isinstance(current, dict) or key not in current:
            return
        trail.append((current, key))
        current = current[key]
    parent, key = trail.pop()
    del parent[key]
    while trail:
        parent, key = trail.pop()
        if parent[key] == {} and len(trail) >= 1:
            del parent[key]
        else:
            break


def changed_paths(old: Any, new: Any) -> set[Path]:
    """The leaves of `new` whose value differs from (or is absent in) `old`."""
    return {path for path in leaf_paths(new) if get_path(old, path) != get_path(new, path)}


def to_fields_v1(paths: Iterable[Path]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path in sorted(paths):
        node = tree
        for key in path:
            node = node.setdefault(f"f:{key}", {})
    return tree


def from_fields_v1(tree: Any, prefix: Path = ()) -> set[Path]:
    """The leaves of a fieldsV1 tree (`k:`/`v:` list members count as their list)."""
    paths: set[Path] = set()
    if not isinstance(tree, dict):
        return paths
    for key, child in tree.items():
        if key == ".":
            continue
        if key.startswith("f:"):
            path = (*prefix, key[2:])
            inner = from_fields_v1(child, path) if isinstance(child, dict) else set()
            if inner and not any(k.startswith(("k:", "v:", "i:")) for k in child):
                paths |= inner
            else:
                paths.add(path)
    return paths
