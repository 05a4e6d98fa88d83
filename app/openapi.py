"""The OpenAPI document as client generators need it (openapi-typescript, @hey-api/openapi-ts).

- operationIds are the route functions' names (`register`, `send_message`), not FastAPI's
  `register_api_v1_auth_register_post`: they become the generated clients' method names.
- 401 is documented exactly on the routes that read the caller's access token (found from
  each route's dependencies, so a new route is right without anyone remembering it); the
  public routes (register, login, refresh, health) do not list it. Login and refresh list
  their own 401 (wrong credentials, a dead refresh token), which they do answer.
- Schemas that the routes do not reach through a response model (each SSE event's data, the
  LLM route's streamed chunk) are added to `components/schemas`, so generators emit a named
  type for each, and the stream responses reference them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from app.auth.deps import current_claims, deleting_claims
from app.errors import error_responses

REF_TEMPLATE = "#/components/schemas/{model}"


def operation_id(route: APIRoute) -> str:
    """The app's `generate_unique_id_function`: the route function's name."""
    return route.name


def _reads_token(dependant: Dependant) -> bool:
    return any(
        dep.call in (current_claims, deleting_claims) or _reads_token(dep)
        for dep in dependant.dependencies
    )


def document_auth_errors(router: APIRouter) -> None:
    """Add the access token's 401 to every route of `router` that verifies one. Called before
    the router is included (FastAPI copies its routes' responses then)."""
    unauthorized = error_responses(401)[401]
    for route in router.routes:
        if isinstance(route, APIRoute) and _reads_token(route.dependant):
            route.responses.setdefault(401, unauthorized)


def component_ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF_TEMPLATE.format(model=model.__name__)}


def install_openapi(app: FastAPI, extra_models: Callable[[], Iterable[type[BaseModel]]]) -> None:
    """The document FastAPI builds, plus `extra_models()` as named components (for the SSE
    event schemas that reference them). Built once, on first request, like FastAPI's own."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = get_openapi(
            title=app.title,
            version=app.version,
            openapi_version=app.openapi_version,
            description=app.description,
            routes=app.routes,
        )
        components = document.setdefault("components", {}).setdefault("schemas", {})
        _, top = models_json_schema(
            [(model, "serialization") for model in extra_models()], ref_template=REF_TEMPLATE
        )
        for name, schema in top.get("$defs", {}).items():
            components.setdefault(name, schema)
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]
