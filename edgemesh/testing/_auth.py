"""Authentication and a simple RBAC for the test API server.

Users come from client certificates (CN = user, O = groups) or bearer tokens; a policy (YAML)
says who may do which verb on which resource.  Refusals are the API's Status: 401
Unauthorized, or 403 Forbidden with kube-apiserver's message shape
(``services is forbidden: User "x" cannot list resource "services" in API group "" at the
cluster scope``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from ._resources import ResourceType, StatusError

__all__ = ["ADMIN_GROUP", "Policy", "Rule", "UserInfo", "forbidden", "load_policy"]

# Like kube-apiserver's system:masters: a member may do anything, whatever the policy says.
ADMIN_GROUP = "system:masters"
AUTHENTICATED = "system:authenticated"


@dataclass(frozen=True)
class UserInfo:
    """An authenticated user of the test API server: name and groups."""

    name: str
    groups: tuple[str, ...] = ()

    def all_groups(self) -> tuple[str, ...]:
        return (*self.groups, AUTHENTICATED)


@dataclass(frozen=True)
class Rule:
    """Who (users/groups) may do `verbs` on `resources` (plural, or ``group/plural``) in
    `namespaces`; ``*`` matches anything."""

    users: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    verbs: frozenset[str] = frozenset({"*"})
    resources: frozenset[str] = frozenset({"*"})
    namespaces: frozenset[str] = frozenset({"*"})

    def applies_to(self, user: UserInfo) -> bool:
        return user.name in self.users or "*" in self.users or bool(
            self.groups & set(user.all_groups()))

    def allows(self, user: UserInfo, verb: str, resource: str, group: str,
               namespace: str | None) -> bool:
        if not self.applies_to(user):
            return False
        if "*" not in self.verbs and verb not in self.verbs:
            return False
        names = {resource, f"{group}/{resource}" if group else resource}
        if "*" not in self.resources and not names & self.resources:
            return False
        if "*" in self.namespaces:
            return True
        return namespace is not None and namespace in self.namespaces


@dataclass
class Policy:
    """The test API server's RBAC: who may do which verb on which resource (from a YAML)."""

    rules: list[Rule] = field(default_factory=list)

    def allows(self, user: UserInfo, verb: str, resource: str, group: str = "",
               namespace: str | None = None) -> bool:
        if ADMIN_GROUP in user.groups:
            return True
        return any(rule.allows(user, verb, resource, group, namespace) for rule in self.rules)


def _strings(value: Any, default: Iterable[str] = ()) -> frozenset[str]:
    if value is None:
        return frozenset(default)
    if isinstance(value, str):
        return frozenset({value})
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return frozenset(value)
    raise ValueError(f"expected a string or a list of strings, not {value!r}")


def load_policy(source: str | Mapping[str, Any]) -> Policy:
    """A policy from a YAML file path or an already-parsed mapping::

        rules:
          - users: [router]            # and/or groups: [...]
            verbs: [get, list, watch]  # default: all
            resources: [services, discovery.k8s.io/endpointslices]  # default: all
            namespaces: ["*"]          # default: all (cluster scope included)
    """
    if isinstance(source, str):
        with open(source, encoding="utf-8") as handle:
            data = yaml.safe_load(handle) or {}
    else:
        data = source
    if not isinstance(data, Mapping) or not isinstance(data.get("rules", []), list):
        # ValueError: the CLI reports every bad policy as one
        raise ValueError("a policy is a mapping with a list of rules")  # noqa: TRY004
    rules = []
    for entry in data.get("rules", []):
        if not isinstance(entry, Mapping):
            raise ValueError(f"a rule is a mapping, not {entry!r}")  # noqa: TRY004 - as above
        unknown = set(entry) - {"users", "groups", "verbs", "resources", "namespaces"}
        if unknown:
            raise ValueError(f"unknown rule keys: {sorted(unknown)}")
        rules.append(Rule(
            users=_strings(entry.get("users")), groups=_strings(entry.get("groups")),
            verbs=_strings(entry.get("verbs"), {"*"}),
            resources=_strings(entry.get("resources"), {"*"}),
            namespaces=_strings(entry.get("namespaces"), {"*"}),
        ))
    return Policy(rules)


def forbidden(user: UserInfo, verb: str, rtype: ResourceType, namespace: str | None,
              name: str | None, subresource: str | None = None) -> StatusError:
    """kube-apiserver's 403 for an RBAC denial."""
    resource = rtype.plural
    qualified = f"{resource}.{rtype.group}" if rtype.group else resource
    shown = f'{qualified} "{name}"' if name else qualified
    what = f"{resource}/{subresource}" if subresource else resource
    scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
    details: dict[str, Any] = {"kind": resource}
    if name:
        details["name"] = name
    if rtype.group:
        details["group"] = rtype.group
    return StatusError(
        403,
        f'{shown} is forbidden: User "{user.name}" cannot {verb} resource "{what}" in API '
        f'group "{rtype.group}" {scope}',
        "Forbidden", details,
    )
