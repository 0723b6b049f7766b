"""What the OpenAPI document (/openapi.json, /docs) cannot learn from the handlers' signatures.

The generation routes read their bodies with `read_json` + `validate` (size and depth limits, orjson, no
FastAPI parsing on the hot path), so FastAPI sees no body; `request_body` describes it from the same protocol
model. The security schemes say how callers authenticate (`gateway.auth`).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

# Schemas of the bodies described by `request_body`, added to components/schemas when the document is built.
_SCHEMAS: dict[str, Any] = {}

SECURITY_SCHEMES: dict[str, Any] = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "an `sk-` key, or MXN_ADMIN_KEY for /admin"},
    "api-key": {"type": "apiKey", "in": "header", "name": "api-key", "description": "an `sk-` key"},
    "x-api-key": {"type": "apiKey", "in": "header", "name": "x-api-key", "description": "an `sk-` key (Anthropic's)"},
    "console": {"type": "apiKey", "in": "cookie", "name": "mxn_session", "description": "the console's login"},
}

# openapi_extra of the routes that need no credentials.
PUBLIC: dict[str, Any] = {"security": []}


def request_body(
    model: type[BaseModel], media_type: str = "application/json", require: tuple[str, ...] = ()
) -> dict[str, Any]:
    """openapi_extra describing a body the handler reads itself, as `model` validates it.

    `require` names fields that this route needs though the model leaves them optional (`model` on /v1).
    """
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    _SCHEMAS.update(schema.pop("$defs", {}))
    _SCHEMAS[model.__name__] = schema
    ref: dict[str, Any] = {"$ref": f"#/components/schemas/{model.__name__}"}
    if require:
        ref = {"allOf": [ref, {"required": list(require)}]}
    return {"requestBody": {"required": True, "content": {media_type: {"schema": ref}}}}


def document(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document for `app`, completed with the bodies and security schemes above; built once."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    doc = FastAPI.openapi(app)
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name, schema in _SCHEMAS.items():
        # A model that FastAPI also documents (CatalogFile's parts are /admin bodies) keeps FastAPI's rendering.
        schemas.setdefault(name, schema)
    components["securitySchemes"] = SECURITY_SCHEMES
    doc["security"] = [{name: []} for name in SECURITY_SCHEMES]
    return doc
