"""The OpenAPI documents ``kubectl`` reads (``/openapi/v2``, ``/openapi/v3``), generated from
the official client's models for the kinds the server serves.

kubectl validates ``apply/create/replace -f`` against the v2 document, which it only accepts
as gnostic's protocol buffer (``application/com.github.proto-openapi.spec.v2@v1.0+protobuf``);
``kubectl explain`` reads v3 (JSON).  The schemas carry types, required fields, descriptions
and ``x-kubernetes-group-version-kind``: enough for validation and explain, no paths.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import types
import typing
from collections.abc import Iterable
from datetime import date, datetime
from typing import Any

import yaml

from ._resources import JSONObject, ResourceType

__all__ = ["PROTOBUF_V2", "openapi_v2", "openapi_v2_protobuf", "openapi_v3", "openapi_v3_index"]

PROTOBUF_V2 = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"
_INFO = {"title": "Kubernetes", "version": "v1.31.0"}
_PACKAGES = {
    "": "core", "apps": "apps", "networking.k8s.io": "networking",
    "rbac.authorization.k8s.io": "rbac", "coordination.k8s.io": "coordination",
    "discovery.k8s.io": "discovery", "authorization.k8s.io": "authorization",
    "authentication.k8s.io": "authentication",
}


# IntOrString fields, which the older models type as "object".
_INT_OR_STRING = frozenset({"target_port", "port", "max_surge", "max_unavailable",
                            "min_available"})


def _model(rtype: ResourceType) -> type | None:
    from kubernetes.client import models

    return getattr(models, rtype.version.capitalize() + rtype.kind, None)


def _definition_name(model: type, top: dict[type, ResourceType]) -> str:
    rtype = top.get(model)
    if rtype is not None:
        return f"io.k8s.api.{_PACKAGES.get(rtype.group, rtype.group)}.{rtype.version}.{rtype.kind}"
    # V1ServicePort -> ServicePort, as kubectl explain shows the real document's names.
    short = re.sub(r"^V\d+(?:alpha\d+|beta\d+)?(?=[A-Z])", "", model.__name__)
    return f"io.k8s.edgemesh.testing.{short}"


def _unwrap(annotation: Any) -> Any:
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


class _Builder:
    def __init__(self, top: dict[type, ResourceType], prefix: str) -> None:
        self.top = top
        self.prefix = prefix
        self.definitions: dict[str, JSONObject] = {}

    def schema(self, annotation: Any) -> JSONObject:
        annotation = _unwrap(annotation)
        origin = typing.get_origin(annotation)
        if origin in (typing.Union, types.UnionType):
            members = [_unwrap(a) for a in typing.get_args(annotation) if a is not type(None)]
            if len(members) == 1:
                return self.schema(members[0])
            if set(members) == {int, str}:
                return {"type": "string", "format": "int-or-string",
                        "x-kubernetes-int-or-string": True}
            return {}
        if origin is list:  # get_origin maps typing.List to list too
            return {"type": "array", "items": self.schema(typing.get_args(annotation)[0])}
        if origin is dict:
            return {"type": "object",
                    "additionalProperties": self.schema(typing.get_args(annotation)[1])}
        if annotation is str:
            return {"type": "string"}
        if annotation is bool:
            return {"type": "boolean"}
        if annotation is int:
            return {"type": "integer", "format": "int64"}
        if annotation is float:
            return {"type": "number", "format": "double"}
        if annotation is datetime:
            return {"type": "string", "format": "date-time"}
        if annotation is date:
            return {"type": "string", "format": "date"}
        if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
            return {"$ref": self.prefix + self.define(annotation)}
        return {"type": "object"}

    def schema_of_name(self, kind: str, attribute: str = "") -> JSONObject:
        """The schema of an older model's type name (``list[V1ServicePort]``...)."""
        from kubernetes.client import models

        if kind.startswith("list[") and kind.endswith("]"):
            return {"type": "array", "items": self.schema_of_name(kind[5:-1])}
        if kind.startswith("dict(") and kind.endswith(")"):
            return {"type": "object",
                    "additionalProperties": self.schema_of_name(kind[5:-1].split(",", 1)[1]
                                                                .strip())}
        simple = {"str": {"type": "string"}, "bool": {"type": "boolean"},
                  "int": {"type": "integer", "format": "int64"},
                  "float": {"type": "number", "format": "double"},
                  "datetime": {"type": "string", "format": "date-time"},
                  "date": {"type": "string", "format": "date"}}
        if kind in simple:
            return dict(simple[kind])
        if kind == "object" and attribute in _INT_OR_STRING:
            return {"type": "string", "format": "int-or-string",
                    "x-kubernetes-int-or-string": True}
        found = getattr(models, kind, None)
        if isinstance(found, type):
            return {"$ref": self.prefix + self.define(found)}
        return {"type": "object"}

    def define(self, model: type) -> str:
        name = _definition_name(model, self.top)
        if name in self.definitions:
            return name
        body: JSONObject = {"type": "object"}
        self.definitions[name] = body
        doc = (model.__doc__ or "").split("Attributes:")[0].strip()
        if doc:
            body["description"] = doc
        properties: JSONObject = {}
        required: list[str] = []
        if hasattr(model, "model_fields"):  # the client's pydantic models (kubernetes >= 33)
            for attribute, info in model.model_fields.items():
                key = info.serialization_alias or attribute
                prop = self.schema(info.annotation)
                if info.description:
                    prop = {**prop, "description": info.description}
                properties[key] = prop
                if info.is_required():
                    required.append(key)
        else:  # the older generated models: type names as strings
            for attribute, kind in getattr(model, "openapi_types", {}).items():
                key = getattr(model, "attribute_map", {}).get(attribute, attribute)
                properties[key] = self.schema_of_name(kind, attribute)
        body["properties"] = properties
        if required:
            body["required"] = required
        rtype = self.top.get(model)
        if rtype is not None:
            body["x-kubernetes-group-version-kind"] = [
                {"group": rtype.group, "version": rtype.version, "kind": rtype.kind}]
        return name


def _top(resources: Iterable[ResourceType]) -> dict[type, ResourceType]:
    found: dict[type, ResourceType] = {}
    for rtype in resources:
        model = _model(rtype)
        if model is not None:
            found[model] = rtype
    return found


@functools.lru_cache(maxsize=8)
def openapi_v2(resources: tuple[ResourceType, ...]) -> JSONObject:
    top = _top(resources)
    builder = _Builder(top, "#/definitions/")
    paths: JSONObject = {}
    for model, rtype in top.items():
        builder.define(model)
        if rtype.virtual:
            continue
        base = "/" + _group_version_path(rtype) + (
            "/namespaces/{namespace}" if rtype.namespaced else "")
        # kubectl (before 1.26) looks for the dryRun parameter of a kind's PATCH operation
        # to allow --dry-run=server.
        paths[f"{base}/{rtype.plural}/{{name}}"] = {"patch": {
            "operationId": f"patch{rtype.kind}",
            "parameters": [{"name": "dryRun", "in": "query", "type": "string",
                            "uniqueItems": True}],
            "x-kubernetes-action": "patch",
            "x-kubernetes-group-version-kind": {
                "group": rtype.group, "version": rtype.version, "kind": rtype.kind},
        }}
    return {"swagger": "2.0", "info": dict(_INFO), "paths": paths,
            "definitions": builder.definitions}


def _group_version_path(rtype: ResourceType) -> str:
    return f"apis/{rtype.group}/{rtype.version}" if rtype.group else f"api/{rtype.version}"


@functools.lru_cache(maxsize=64)
def openapi_v3(resources: tuple[ResourceType, ...], path: str) -> JSONObject | None:
    """The v3 document of one group-version (``api/v1``, ``apis/apps/v1``), or None."""
    top = {m: r for m, r in _top(resources).items() if _group_version_path(r) == path}
    if not top:
        return None
    builder = _Builder(_top(resources), "#/components/schemas/")
    paths: JSONObject = {}
    for model, rtype in top.items():
        ref = {"$ref": "#/components/schemas/" + builder.define(model)}
        gvk = {"group": rtype.group, "version": rtype.version, "kind": rtype.kind}
        base = "/" + path + ("/namespaces/{namespace}" if rtype.namespaced else "")
        # kubectl explain finds a resource's kind from its GET operation.
        for suffix, action in (("", "list"), ("/{name}", "get")):
            if action not in rtype.verbs and action == "get" and rtype.virtual:
                continue
            paths[f"{base}/{rtype.plural}{suffix}"] = {"get": {
                "operationId": f"{action}{rtype.kind}",
                "responses": {"200": {"description": "OK", "content": {
                    "application/json": {"schema": ref}}}},
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk,
            }}
    return {"openapi": "3.0.0", "info": dict(_INFO), "paths": paths,
            "components": {"schemas": builder.definitions}}


def openapi_v3_index(resources: tuple[ResourceType, ...]) -> JSONObject:
    paths: JSONObject = {}
    for rtype in resources:
        path = _group_version_path(rtype)
        if path in paths or _model(rtype) is None:
            continue
        document = openapi_v3(resources, path)
        digest = hashlib.sha512(json.dumps(document, sort_keys=True).encode()).hexdigest()
        paths[path] = {"serverRelativeURL": f"/openapi/v3/{path}?hash={digest[:64].upper()}"}
    return {"paths": paths}


# -- gnostic's OpenAPIv2.proto, the fields this document uses ---------------------------------

def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes | str) -> bytes:
    data = payload.encode() if isinstance(payload, str) else payload
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _yaml_any(value: Any) -> bytes:
    # Any { string yaml = 2; }
    return _field(2, yaml.safe_dump(value, default_flow_style=False))


def _schema_pb(schema: JSONObject) -> bytes:
    out = bytearray()
    if "$ref" in schema:
        out += _field(1, schema["$ref"])
    if "format" in schema:
        out += _field(2, schema["format"])
    if "description" in schema:
        out += _field(4, schema["description"])
    for name in schema.get("required", ()):
        out += _field(19, name)
    if "additionalProperties" in schema:
        out += _field(21, _field(1, _schema_pb(schema["additionalProperties"])))
    if "type" in schema:
        out += _field(22, _field(1, schema["type"]))
    if "items" in schema:
        out += _field(23, _field(1, _schema_pb(schema["items"])))
    if "properties" in schema:
        named = b"".join(
            _field(1, _field(1, key) + _field(2, _schema_pb(value)))
            for key, value in schema["properties"].items()
        )
        out += _field(25, named)
    for key, value in schema.items():
        if key.startswith("x-"):
            out += _field(31, _field(1, key) + _field(2, _yaml_any(value)))
    return bytes(out)


@functools.lru_cache(maxsize=8)
def openapi_v2_protobuf(resources: tuple[ResourceType, ...]) -> bytes:
    document = openapi_v2(resources)
    info = _field(1, _INFO["title"]) + _field(2, _INFO["version"])
    definitions = b"".join(
        _field(1, _field(1, name) + _field(2, _schema_pb(schema)))
        for name, schema in document["definitions"].items()
    )
    paths = b"".join(
        _field(2, _field(1, path) + _field(2, _path_item_pb(item)))
        for path, item in document["paths"].items()
    )
    return _field(1, "2.0") + _field(2, info) + _field(8, paths) + _field(9, definitions)


def _path_item_pb(item: JSONObject) -> bytes:
    # PathItem { Operation patch = 8; }, Operation { operation_id = 5; repeated
    # ParametersItem parameters = 8; repeated NamedAny vendor_extension = 13; }
    operation = item["patch"]
    body = bytearray(_field(5, operation["operationId"]))
    for parameter in operation["parameters"]:
        # ParametersItem.parameter(1) -> Parameter.non_body_parameter(2) ->
        # NonBodyParameter.query_parameter_sub_schema(3) {in = 2; name = 4; type = 6}
        query = _field(2, parameter["in"]) + _field(4, parameter["name"]) + _field(
            6, parameter["type"])
        body += _field(8, _field(1, _field(2, _field(3, query))))
    for key, value in operation.items():
        if key.startswith("x-"):
            body += _field(13, _field(1, key) + _field(2, _yaml_any(value)))
    return _field(8, bytes(body))
