"""The API's OpenAPI document: request bodies are validated against the serving version's
generated schema, so the document names them (``Customer``, ``BatchPredictionRequest``) and fills
them in from the version serving now, built once per version.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from churnops.config import Settings
from churnops.serving.watcher import ModelWatcher, ServedModel

CUSTOMER_SCHEMA = "Customer"
BATCH_SCHEMA = "BatchPredictionRequest"
NO_MODEL_SCHEMA = {
    "type": "object",
    "description": "No model is serving yet: the fields appear once a version is promoted.",
}


def request_body(schema: str) -> dict[str, Any]:
    """A route's ``openapi_extra``: a required JSON body described by the named schema."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
        }
    }


class VersionedOpenApi:
    """``app.openapi``: the document with the request fields of the version serving right now,
    kept until the version changes."""

    def __init__(self, app: FastAPI, settings: Settings, watcher: ModelWatcher) -> None:
        self.app = app
        self.settings = settings
        self.watcher = watcher
        self._cache: dict[int | None, dict[str, Any]] = {}

    def __call__(self) -> dict[str, Any]:
        """The OpenAPI document, with the request fields of the version serving right now."""
        served = self.watcher.current
        key = served.version if served else None
        if key not in self._cache:
            self._cache.clear()
            self._cache[key] = self._build(served)
        return self._cache[key]

    def _build(self, served: ServedModel | None) -> dict[str, Any]:
        app, guarded = self.app, self.settings.api_token is not None
        fields = (
            f" Request fields are those of version {served.version}."
            if served
            else " No version is serving yet."
        )
        document = get_openapi(
            title=app.title,
            version=app.version,
            description=(app.description or "") + fields,
            routes=app.routes,
        )
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        if guarded:
            document["components"]["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"}
            }
            document["security"] = [{"bearer": []}]
        if served is None:
            schemas |= {CUSTOMER_SCHEMA: NO_MODEL_SCHEMA, BATCH_SCHEMA: NO_MODEL_SCHEMA}
        else:
            schemas |= served.schema.json_schemas
            if guarded:
                # NB: the docs are open when a token guards the API: no training row in them.
                schemas[CUSTOMER_SCHEMA]["examples"] = [served.schema.placeholder_example()]
        return document
