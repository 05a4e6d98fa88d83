"""Billing a Letta agent's LLM calls to the user's own LiteLLM virtual key.

With `BILLING_PROVIDER=litellm` every user has a LiteLLM virtual key with its own budget;
LiteLLM charges each call to the key it arrives with and refuses it once that key's user is
over budget (docs/letta-live.md cites LiteLLM's documentation). So the design goal is simple:
every LLM call Letta makes for a user's agent must carry that user's key, and no other.

What Letta 0.16.8 does (read in its source and checked live, docs/letta-live.md):
- an agent's `llm_config` has no API-key field; at call time Letta takes the key from the
  **BYOK provider named by `llm_config.provider_name`** when `provider_category` is `byok`
  (`LLMClientBase.get_byok_overrides_async`), otherwise from its server-wide environment;
- the endpoint is `llm_config.model_endpoint`, not the provider's base URL;
- a `model` *handle* is resolved through Letta's model table, where an `openai` provider whose
  base URL is not OpenAI's registers its models as `openai-proxy/<model>`, whatever the
  provider is called. Several users' providers thus collide on one handle, and an agent
  created by handle gets whichever provider Letta finds first: one user's key would pay for
  everyone. A handle is therefore never used on this path.

So each user gets one BYOK provider, `agentmem-user-<user id>` (type `openai`, base URL =
LiteLLM as Letta reaches it, key = the user's virtual key; Letta stores it encrypted), and
their agent is created with an explicit `llm_config` naming that provider. The agent stays
bound to it for good: a turn sends no write to Letta. A rotated key is pushed to the
provider (`PATCH /v1/providers/{id}`) when provisioning runs, never per turn.

Embeddings (archival memory) use the server-wide `LETTA_EMBEDDING` handle: Letta 0.16.8's
embedding client reads only its environment's key (no BYOK lookup), so they cannot be billed
per user; they are small, and docs/letta-live.md says so.
"""

from __future__ import annotations

import hashlib
from typing import Any
from uuid import UUID

from letta_client import AsyncLetta

from app.config import Settings
from app.errors import UpstreamError
from app.providers.billing import LLMRoute
from app.providers.letta.errors import Deadlines, once, with_retries

PROVIDER_PREFIX = "agentmem-user-"


def routes_to_user_key(llm: LLMRoute | None) -> bool:
    return bool(llm and llm.billed_upstream and llm.base_url and llm.api_key)


def _fingerprint(base_url: str, api_key: str) -> str:
    return hashlib.sha256(f"{base_url}\n{api_key}".encode()).hexdigest()


def provider_name(user_id: UUID) -> str:
    return f"{PROVIDER_PREFIX}{user_id}"


def _get(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


class UserProviders:
    """The per-user BYOK providers in Letta, and the `llm_config` that binds an agent to one."""

    def __init__(self, client: AsyncLetta, settings: Settings, deadlines: Deadlines) -> None:
        self._client = client
        self._settings = settings
        self._deadlines = deadlines
        self._synced: dict[str, str] = {}  # provider name -> fingerprint of the key pushed

    def model_id(self) -> str:
        """The model id LiteLLM serves (and price tables know)."""
        if self._settings.letta_litellm_model:
            return self._settings.letta_litellm_model
        # "openai-proxy/gpt-4o-mini" -> "gpt-4o-mini"
        return self._settings.letta_model.split("/", 1)[-1]

    def endpoint(self, llm: LLMRoute) -> str:
        """LiteLLM's URL as the Letta server reaches it (it may sit on another network)."""
        url = self._settings.letta_litellm_base_url or llm.base_url
        assert url is not None  # routes_to_user_key checked it
        return url

    def llm_config(self, user_id: UUID, llm: LLMRoute) -> dict[str, Any]:
        name = provider_name(user_id)
        model = self.model_id()
        return {
            "model": model,
            "model_endpoint_type": "openai",  # LiteLLM speaks the OpenAI API
            "model_endpoint": self.endpoint(llm),
            "context_window": self._settings.letta_context_window,
            "handle": f"{name}/{model}",
            "provider_name": name,
            "provider_category": "byok",
        }

    def is_bound(self, agent_llm_config: Any, user_id: UUID, llm: LLMRoute) -> bool:
        """Whether an agent's llm_config already sends its calls through the user's provider."""
        wanted = self.llm_config(user_id, llm)
        return all(
            _get(agent_llm_config, key) == wanted[key]
            for key in ("model", "model_endpoint", "provider_name", "provider_category")
        )

    async def find(self, user_id: UUID) -> dict[str, Any] | None:
        name = provider_name(user_id)
        found = await with_retries(
            lambda: self._client.get(
                "/v1/providers/", cast_to=object, options={"params": {"name": name}}
            ),
            attempts=self._settings.letta_max_retries,
            backoff=self._settings.letta_retry_backoff_seconds,
            deadline=self._deadlines.read,
        )
        if not isinstance(found, list):
            raise UpstreamError("unexpected provider list from the agent service")
        for item in found:
            if isinstance(item, dict) and item.get("name") == name and item.get("id"):
                return item
        return None

    async def ensure(self, user_id: UUID, llm: LLMRoute) -> None:
        """Make the user's provider exist and hold their current key (called when the agent
        is provisioned, never per turn)."""
        name = provider_name(user_id)
        assert llm.api_key is not None  # routes_to_user_key checked it
        base_url = self.endpoint(llm)
        fingerprint = _fingerprint(base_url, llm.api_key)
        if self._synced.get(name) == fingerprint:
            return
        existing = await self.find(user_id)
        body = {"api_key": llm.api_key, "base_url": base_url}
        if existing is None:
            # No model refresh: our agents never resolve a handle (see the module docstring).
            created = await once(
                self._client.post(
                    "/v1/providers/",
                    cast_to=object,
                    body={"name": name, "provider_type": "openai", **body},
                ),
                deadline=self._deadlines.write,
            )
            if not isinstance(_get(created, "id"), str):
                raise UpstreamError("the agent service did not return the provider's id")
        else:
            await once(
                self._client.patch(f"/v1/providers/{existing['id']}", cast_to=object, body=body),
                deadline=self._deadlines.write,
            )
        self._synced[name] = fingerprint

    async def remove(self, user_id: UUID) -> None:
        existing = await self.find(user_id)
        self._synced.pop(provider_name(user_id), None)
        if existing is not None:
            await once(
                self._client.delete(f"/v1/providers/{existing['id']}", cast_to=object),
                deadline=self._deadlines.write,
            )
