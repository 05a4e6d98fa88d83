"""The OpenAPI document is what the server does (issue 12 item 13).

Schemathesis generates requests for every operation from the app's own OpenAPI document, valid
and invalid (positive and negative modes, with its examples, coverage and fuzzing phases),
sends them to the app as a registered user, and checks each answer: never a 5xx, a status the
operation documents, a content type it documents, and a body that matches the documented
schema (for the SSE routes: each event). Fixed seed and deterministic generation: the same
requests every run, bounded by `max-examples` per operation.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import jsonschema_rs
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.deserialization import _parse_sse_events
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.config import Settings
from app.main import create_app
from tests.support.scripted_llm import ScriptedLLM, Text
from tests.support.users import mint_token


def sse_data_conformance(ctx: Any, response: Any, case: Any) -> bool | None:
    """Each SSE event's `data:` JSON matches the `contentSchema` its event documents (a JSON
    Schema validator only annotates `contentSchema`, so response_schema_conformance checks the
    event's frame but not this)."""
    if not response.headers.get("content-type", [""])[0].startswith("text/event-stream"):
        return None
    documented = DOCUMENT["paths"][case.operation.path][case.operation.method.lower()]
    stream = documented["responses"][str(response.status_code)]["content"]["text/event-stream"]
    branches = stream["schema"].get("oneOf", [stream["schema"]])
    for event in _parse_sse_events(response.content):
        for branch in branches:
            properties = branch["properties"]
            if properties.get("event", {}).get("const", event["event"]) != event["event"]:
                continue
            # A branch for one literal `data:` (the AI SDK stream's `[DONE]`).
            if properties["data"].get("const", event["data"]) != event["data"]:
                continue
            content_schema = properties["data"].get("contentSchema")
            # The OpenAI-style stream's end marker is not JSON (documented as such).
            if content_schema is not None and event["data"] != "[DONE]":
                errors = [
                    e.message
                    # The event's schema is a $ref into the document's components.
                    for e in jsonschema_rs.validator_for(
                        {**content_schema, "components": DOCUMENT["components"]}
                    ).iter_errors(json.loads(event["data"]))
                ]
                assert not errors, (event, errors)
            break
        else:
            raise AssertionError(f"undocumented SSE event {event}")
    return True


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    sse_data_conformance,
]

CONFIG = """
seed = 20261130

[generation]
mode = "all"
max-examples = 100
deterministic = true
database = "none"

[phases.stateful]
enabled = false
"""


# Built at import, as schemathesis collects one test per operation from the document. The
# lifespan starts at the first request of each test, after `run` has given the app the test
# database's settings (the document does not depend on them).
APP = create_app(Settings(_env_file=None, environment="test", log_level="ERROR"))  # type: ignore[call-arg]
DOCUMENT = APP.openapi()
schema = schemathesis.openapi.from_dict(DOCUMENT, config=schemathesis.Config.from_str(CONFIG))
schema.app = APP


class Run:
    """The user whose token every request of a test carries."""

    def __init__(self, settings: Settings, user_id: uuid.UUID, email: str) -> None:
        self.settings = settings
        self.user_id = user_id
        self.email = email
        self.token = mint_token(settings, user_id, email)


@pytest.fixture
def run(database_url: str, _scripted_llm_server: ScriptedLLM) -> Iterator[Run]:
    _scripted_llm_server.reset()
    _scripted_llm_server.default = Text("a scripted reply")
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        environment="test",
        database_url=database_url,
        log_level="ERROR",  # 4xx by the thousand: no access log lines
        llm_base_url=_scripted_llm_server.base_url,
        llm_model="scripted-model",
        # Rate limits would answer most requests with 429 and hide what is behind them.
        rate_limit="1000000/minute",
        auth_rate_limit="1000000/minute",
    )
    APP.state.settings = settings
    # The app's lifespan runs on schemathesis's own event loop (its ASGI client starts it), so
    # the account is made through that client too: a real registration, provisioning included.
    try:
        with asgi.get_client(APP) as client:
            email = "conformance@example.com"
            response = client.post(
                "/api/v1/auth/register", json={"email": email, "password": "conformance secret"}
            )
            assert response.status_code == 201, response.text
            user_id = uuid.UUID(response.json()["user"]["id"])
        yield Run(settings, user_id, email)
    finally:
        asgi.shutdown_lifespans()
        _scripted_llm_server.reset()


@schema.parametrize()
# `run` is made once per operation on purpose (a fresh app and user), not once per example.
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_the_server_does_what_its_openapi_document_says(case: Any, run: Run) -> None:
    # Logout ends the session of the token it is given: each call gets a token of its own.
    token = run.token
    if case.operation.path == "/api/v1/auth/logout":
        token = mint_token(run.settings, run.user_id, run.email)
    case.call_and_validate(headers={"Authorization": f"Bearer {token}"}, checks=CHECKS)
