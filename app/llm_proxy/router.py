"""`POST /llm/chat/completions`: an OpenAI-compatible endpoint billed to the caller."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, StreamingResponse

from app.auth.deps import CurrentUser
from app.deps import LLMProxyDep
from app.errors import BODY_ERROR_STATUSES, error_responses
from app.llm_proxy.schemas import (
    ChatCompletionChunkOut,
    ChatCompletionIn,
    ChatCompletionOut,
    ChatCompletionStreamErrorOut,
)
from app.openapi import component_ref
from app.ratelimit import RATE_LIMITED_RESPONSE, user_rate_limit

router = APIRouter(prefix="/llm", tags=["llm"])

_ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A `chat.completion` object, or with `stream: true` a `text/event-stream` "
        "of `data: {chat.completion.chunk}` lines ending with `data: [DONE]` (or, when the "
        "upstream fails mid-way, ending with one `data: {error}` line and no `[DONE]`)",
        "content": {
            "application/json": {"schema": component_ref(ChatCompletionOut)},
            # OpenAPI 3.1: the schema of a `text/event-stream` describes one event; its data
            # is JSON text whose shape is `contentSchema` (except the final `[DONE]`).
            "text/event-stream": {
                "schema": {
                    "type": "object",
                    "title": "chat.completion.chunk event",
                    "required": ["data"],
                    "properties": {
                        "data": {
                            "type": "string",
                            "description": "A `chat.completion.chunk` (or an `{error}` object) "
                            "as JSON; the last event's data is `[DONE]`",
                            "anyOf": [
                                # The end marker, not JSON (first: it is tried first).
                                {"const": "[DONE]"},
                                {
                                    "contentMediaType": "application/json",
                                    "contentSchema": {
                                        "anyOf": [
                                            component_ref(ChatCompletionChunkOut),
                                            component_ref(ChatCompletionStreamErrorOut),
                                        ]
                                    },
                                },
                            ],
                        }
                    },
                }
            },
        },
    },
    **error_responses(*BODY_ERROR_STATUSES, 402, 502, 503),
    **RATE_LIMITED_RESPONSE,
}


@router.post(
    "/chat/completions",
    summary="OpenAI-compatible chat completions, billed to the caller's budget",
    responses=_ANSWERS,
    response_model=None,
    dependencies=[Depends(user_rate_limit)],
)
async def chat_completions(
    request_body: ChatCompletionIn,
    user: CurrentUser,
    proxy: LLMProxyDep,
) -> JSONResponse | StreamingResponse:
    body = request_body.upstream_body()
    if request_body.stream:
        stream = await proxy.open_stream(user.sub, body)
        return StreamingResponse(
            stream,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )
    return JSONResponse(await proxy.complete(user.sub, body))
