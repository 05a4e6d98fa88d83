"""Billing a Letta agent's LLM calls to the user's own LiteLLM virtual key.

With `BILLING_PROVIDER=litellm` every user has a LiteLLM virtual key with its own budget, and
the spend must land on that key. Letta 0.16.8 offers two places an agent's model can come from:

1. its `llm_config` (`model_endpoint`, `model_endpoint_type`, ...): there is no API-key field in
   `LLMConfig`, so Letta would call the endpoint with the server-wide key of the provider it
   resolves, and every user's spend would land on one key;
2. a **BYOK provider** (`POST /v1/providers/` with `ProviderCreate{name, provider_type,
   api_key, base_url}`; `PATCH /v1/providers/{id}` to replace the key; `PATCH
   /v1/providers/{id}/refresh` to sync its model list), whose models get the handles
   `<provider name>/<model id>`.

We use (2): one provider per user, named `agentmem-user-<user id>`, of type `openai` (LiteLLM
speaks the OpenAI API), holding the user's virtual key with `base_url` = LiteLLM. The agent's
`model` is the handle `agentmem-user-<user id>/<model>`, so each LLM call Letta makes for that
agent carries the user's key and LiteLLM charges and enforces that user's budget. The key lives
in Letta's provider table (Letta stores it encrypted as `api_key_enc`) and is never logged or
returned by us. A changed key (rotation) is pushed with `PATCH` when we notice it: we remember a
fingerprint of the key per provider in memory, so the check costs nothing on later turns.

Embeddings for archival memory still use the server-wide embedding handle (`LETTA_EMBEDDING`):
they are small, and BYOK embedding models are not listed reliably for OpenAI-compatible
providers.
"""

from __future__ import annotations

import hashlib
from typing import Any
from uuid import UUID

from letta_client import AsyncLetta

from app.config import Settings
from app.errors import UpstreamError
from app.providers.billing import LLMRoute
from app.providers.letta.errors import once, with_retries

PROVIDER_PREFIX = "agentmem-user-"


def routes_to_user_key(llm: LLMRoute | None) -> bool:
    return bool(llm and llm.billed_upstream and llm.base_url and llm.api_key)


def _fingerprint(llm: LLMRoute) -> str:
    raw = f"{llm.base_url}\n{llm.api_key}".encode()
    return hashlib.sha256(raw).hexdigest()


class UserProviders:
    """The per-user BYOK providers in Letta, created or updated idempotently."""

    def __init__(self, client: AsyncLetta, settings: Settings) -> None:
        self._client = client
        self._settings = settings
        self._synced: dict[str, str] = {}  # provider name -> key fingerprint pushed

    @staticmethod
    def provider_name(user_id: UUID) -> str:
        return f"{PROVIDER_PREFIX}{user_id}"

    def model_id(self) -> str:
        if self._settings.letta_litellm_model:
            return self._settings.letta_litellm_model
        # "openai/gpt-4o-mini" -> "gpt-4o-mini": the id LiteLLM serves under.
        return self._settings.letta_model.split("/", 1)[-1]

    def model_handle(self, user_id: UUID) -> str:
        return f"{self.provider_name(user_id)}/{self.model_id()}"

    async def find(self, user_id: UUID) -> dict[str, Any] | None:
        name = self.provider_name(user_id)
        found = await with_retries(
            lambda: self._client.get(
                "/v1/providers/", cast_to=object, options={"params": {"name": name}}
            ),
            attempts=self._settings.letta_max_retries,
            backoff=self._settings.letta_retry_backoff_seconds,
        )
        if not isinstance(found, list):
            raise UpstreamError("unexpected provider list from the agent service")
        for item in found:
            if isinstance(item, dict) and item.get("name") == name and item.get("id"):
                return item
        return None

    async def ensure(self, user_id: UUID, llm: LLMRoute) -> str:
        """Make the user's provider hold their current key; return the agent's model handle."""
        name = self.provider_name(user_id)
        fingerprint = _fingerprint(llm)
        if self._synced.get(name) == fingerprint:
            return self.model_handle(user_id)
        existing = await self.find(user_id)
        if existing is None:
            created = await once(
                self._client.post(
                    "/v1/providers/",
                    cast_to=object,
                    body={
                        "name": name,
                        "provider_type": "openai",
                        "api_key": llm.api_key,
                        "base_url": llm.base_url,
                    },
                )
            )
            provider_id = created.get("id") if isinstance(created, dict) else None
            if not isinstance(provider_id, str):
                raise UpstreamError("the agent service did not return the provider's id")
            # Sync the provider's model list so the handle resolves when the agent is created.
            await once(self._client.patch(f"/v1/providers/{provider_id}/refresh", cast_to=object))
        else:
            await once(
                self._client.patch(
                    f"/v1/providers/{existing['id']}",
                    cast_to=object,
                    body={"api_key": llm.api_key, "base_url": llm.base_url},
                )
            )
        self._synced[name] = fingerprint
        return self.model_handle(user_id)

    async def remove(self, user_id: UUID) -> None:
        existing = await self.find(user_id)
        self._synced.pop(self.provider_name(user_id), None)
        if existing is not None:
            await once(self._client.delete(f"/v1/providers/{existing['id']}", cast_to=object))
