"""The OpenAPI document as client generators use it (issue 13 item 5)."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path
from typing import Any, get_args

import app as app_package
from app.config import Settings
from app.errors import ERROR_STATUSES, AppError, ErrorCode
from app.main import create_app

APP = create_app(Settings(_env_file=None, environment="test"))  # type: ignore[call-arg]
DOC = APP.openapi()
OPERATIONS = [
    (path, method, op) for path, ops in DOC["paths"].items() for method, op in ops.items()
]
PUBLIC = {"register", "login", "refresh", "live", "ready"}


def _subclasses(cls: type[AppError]) -> set[type[AppError]]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= _subclasses(sub)
    return found


def test_operation_ids_are_the_route_names_and_unique() -> None:
    ids = [op["operationId"] for _, _, op in OPERATIONS]
    assert len(ids) == len(set(ids))
    by_path = {(path, method): op["operationId"] for path, method, op in OPERATIONS}
    assert by_path[("/api/v1/auth/register", "post")] == "register"
    assert by_path[("/api/v1/chat/message", "post")] == "send_message"
    assert by_path[("/api/v1/llm/chat/completions", "post")] == "chat_completions"
    assert all(re.fullmatch(r"[a-z][a-z_]*", i) for i in ids), ids


def test_401_only_where_an_access_token_is_read() -> None:
    for _, _, op in OPERATIONS:
        name = op["operationId"]
        responses = op["responses"]
        if name in {"register", "live", "ready"}:
            assert "401" not in responses, name
        elif name in {"login", "refresh"}:
            # Their own 401 (wrong password, dead refresh token), not the access token's.
            assert "access token" not in responses["401"]["description"], name
        else:
            assert responses["401"]["description"] == ERROR_STATUSES[401].description, name
        assert ("security" in op) == (name not in PUBLIC), name


def test_every_error_code_the_server_sends_is_in_the_enum() -> None:
    for module in pkgutil.walk_packages(app_package.__path__, "app."):
        if "local_model" not in module.name:
            importlib.import_module(module.name)
    codes = set(get_args(ErrorCode))
    classes = _subclasses(AppError) | {AppError}
    assert {c.code for c in classes} <= codes, {c.code for c in classes} - codes
    assert {s.code for s in ERROR_STATUSES.values()} <= codes
    # Codes set per instance: `code="..."` where an AppError is raised.
    source = "\n".join(p.read_text() for p in Path(app_package.__path__[0]).rglob("*.py"))
    # (`agent_stream_incomplete` is an SSE `error` event's code, never an envelope's.)
    per_instance = set(re.findall(r'\bcode="([a-z_]+)"', source)) - {"agent_stream_incomplete"}
    assert per_instance <= codes, per_instance - codes
    body = DOC["components"]["schemas"]["ErrorBody"]["properties"]["code"]
    assert set(body["enum"]) == codes


def _ref(schema: dict[str, Any]) -> str:
    return str(schema["$ref"]).removeprefix("#/components/schemas/")


def test_each_sse_event_has_a_named_schema_the_streams_reference() -> None:
    components = DOC["components"]["schemas"]
    for path in ("/api/v1/chat/message", "/api/v1/chat/turns/{turn_id}/events"):
        op = next(iter(DOC["paths"][path].values()))
        stream = op["responses"]["200"]["content"]["text/event-stream"]["schema"]
        events = {
            b["properties"]["event"]["const"]: _ref(b["properties"]["data"]["contentSchema"])
            for b in stream["oneOf"]
        }
        assert events == {
            "turn": "TurnEventOut",
            "delta": "DeltaEventOut",
            "tool": "ToolEventOut",
            "message": "MessageEventOut",
            "usage": "UsageEventOut",
            "done": "DoneEventOut",
            "error": "StreamErrorEventOut",
        }
        assert all(name in components for name in events.values())


def test_llm_route_has_request_and_response_schemas() -> None:
    op = DOC["paths"]["/api/v1/llm/chat/completions"]["post"]
    body = op["requestBody"]["content"]["application/json"]["schema"]
    assert _ref(body) == "ChatCompletionIn"
    components = DOC["components"]["schemas"]
    messages = components["ChatCompletionIn"]["properties"]["messages"]
    assert _ref(messages["items"]) == "ChatMessageIn"
    answer = op["responses"]["200"]["content"]
    assert _ref(answer["application/json"]["schema"]) == "ChatCompletionOut"
    done, chunk = answer["text/event-stream"]["schema"]["properties"]["data"]["anyOf"]
    assert done == {"const": "[DONE]"}
    assert {_ref(s) for s in chunk["contentSchema"]["anyOf"]} == {
        "ChatCompletionChunkOut",
        "ChatCompletionStreamErrorOut",
    }
    assert "choices" in components["ChatCompletionChunkOut"]["required"]
