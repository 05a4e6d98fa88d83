"""LiteLLM billing: one LiteLLM user per account (max_budget + budget_duration) and one personal
virtual key, through which all of that user's LLM traffic goes, so LiteLLM charges and limits
it. LiteLLM is the authority for budget and spend; we only read and change them.

The virtual key is kept encrypted (Fernet, ENCRYPTION_KEY) in `profiles.billing_key_encrypted`,
decrypted only in memory to route a call, never returned by an endpoint, never logged.
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, date, datetime
from uuid import UUID

import httpx

from app.config import ConfigError, Settings
from app.crypto import DecryptionError, SecretBox
from app.errors import NotFound
from app.platform.db import Conn, Database
from app.providers.billing import (
    BillingAccount,
    Budget,
    DailySpend,
    LLMRoute,
    LocalLedger,
    TokenUsage,
)
from app.providers.builtin.billing import cost_of, parse_duration, period_boundary, price_table
from app.providers.litellm import repository
from app.providers.litellm.client import LiteLLMClient
from app.providers.litellm.errors import LiteLLMBudgetExceeded, LiteLLMRequestError
from app.providers.litellm.schemas import (
    DeleteKeysRequest,
    DeleteUserRequest,
    GenerateKeyRequest,
    NewUserRequest,
    UpdateUserRequest,
    UserInfo,
)

logger = logging.getLogger(__name__)

_MAX_ACTIVITY_PAGES = 10


def key_alias(user_id: UUID) -> str:
    return f"user:{user_id}"


class LiteLLMBilling:
    name = "litellm"
    per_user_llm_key = True  # LiteLLM charges and limits the user's own virtual key
    ledger: LocalLedger | None = None  # the budget lives in LiteLLM

    def __init__(self, settings: Settings, db: Database, http: httpx.AsyncClient) -> None:
        if not settings.litellm_base_url:
            raise ConfigError("LITELLM_BASE_URL is required for BILLING_PROVIDER=litellm")
        master = settings.litellm_master_key
        if master is None or not master.get_secret_value():
            raise ConfigError("LITELLM_MASTER_KEY is required for BILLING_PROVIDER=litellm")
        try:
            parse_duration(settings.user_budget_duration)
        except ValueError as exc:
            raise ConfigError(f"USER_BUDGET_DURATION: {exc}") from exc
        self._settings = settings
        self._db = db
        self.base_url = settings.litellm_base_url
        self.client = LiteLLMClient(
            settings.litellm_base_url,
            master.get_secret_value(),
            http,
            connect_timeout=settings.http_connect_timeout,
            read_deadline=settings.upstream_read_deadline_seconds,
            write_deadline=settings.upstream_write_deadline_seconds,
        )
        self._box = SecretBox(settings.encryption_key)
        self.prices = price_table(settings)

    # -- the key we hold ---------------------------------------------------------------------

    async def _held_key(self, user_id: UUID, conn: Conn | None = None) -> str | None:
        if conn is None:
            async with self._db.acquire() as own:
                ciphertext = await repository.get_key_ciphertext(own, user_id)
        else:
            ciphertext = await repository.get_key_ciphertext(conn, user_id)
        if ciphertext is None:
            return None
        try:
            return self._box.decrypt(ciphertext)
        except DecryptionError:
            # ENCRYPTION_KEY changed: the old key is unusable to us; a new one is made.
            logger.warning("stored billing key for user %s cannot be decrypted", user_id)
            return None

    async def _keep_key(self, conn: Conn, user_id: UUID, key: str) -> None:
        stored = await repository.store_key(conn, user_id, str(user_id), self._box.encrypt(key))
        if not stored:
            raise NotFound("profile not found: cannot keep the billing key")

    async def _generate_key(self, user_id: UUID) -> str:
        alias = key_alias(user_id)
        try:
            generated = await self.client.generate_key(
                GenerateKeyRequest(user_id=str(user_id), key_alias=alias)
            )
        except LiteLLMRequestError as exc:
            # LiteLLM requires unique aliases. A key with ours exists that we do not hold: the
            # answer that carried it was lost (a /user/new or /key/generate that timed out after
            # it happened), or we lost it (profile reset, ENCRYPTION_KEY rotated). Nobody can
            # use it, yet it would stay live and billable: delete it, and make the one key again.
            if exc.status != 400 or "alias" not in exc.upstream_message.lower():
                raise
            await self.client.delete_keys(DeleteKeysRequest(key_aliases=[alias]))
            generated = await self.client.generate_key(
                GenerateKeyRequest(user_id=str(user_id), key_alias=alias)
            )
        return generated.key

    async def _email(self, user_id: UUID) -> str | None:
        async with self._db.acquire() as conn:
            return await repository.profile_email(conn, user_id)

    # -- the port ------------------------------------------------------------------------------

    async def ensure_account(self, user_id: UUID, email: str) -> BillingAccount:
        """Look up first, create only what is missing: safe to run again after any failure.

        Runs of one user are serialized (the provisioning saga and a chat turn's budget check
        can both find the user missing at once; each would send /user/new). The key is stored
        on the lock's connection, the last step, committed when the lock is released."""
        async with self._db.transaction() as conn:
            await repository.lock_account(conn, user_id)
            return await self._ensure_account(conn, user_id, email)

    async def _ensure_account(self, conn: Conn, user_id: UUID, email: str) -> BillingAccount:
        uid = str(user_id)
        key = await self._held_key(user_id, conn)
        if await self.client.user_info(uid) is None:
            # A key we may hold belonged to a user LiteLLM no longer has: replace it with the
            # one /user/new makes together with the user.
            created = await self.client.new_user(
                NewUserRequest(
                    user_id=uid,
                    user_email=email or None,
                    max_budget=self._settings.user_default_budget,
                    budget_duration=self._settings.user_budget_duration,
                    auto_create_key=True,
                    key_alias=key_alias(user_id),
                )
            )
            key = None
            if created.key:
                key = created.key
                await self._keep_key(conn, user_id, key)
        if key is None:
            key = await self._generate_key(user_id)
            await self._keep_key(conn, user_id, key)
        return BillingAccount(provider=self.name, ref=uid, key=key)

    async def _info(self, user_id: UUID) -> UserInfo:
        found = await self.client.user_info(str(user_id))
        if found is None:
            # Provisioning degraded before LiteLLM had the user: create it now, so reading
            # (and using) a budget never depends on registration having fully succeeded.
            await self.ensure_account(user_id, await self._email(user_id) or "")
            found = await self.client.user_info(str(user_id))
        if found is None or found.user_info is None:
            raise LiteLLMRequestError("user missing right after it was created", status=404)
        return found.user_info

    def _budget(self, info: UserInfo) -> Budget:
        duration_text = info.budget_duration or self._settings.user_budget_duration
        # A LiteLLM user without a max_budget has no limit there; ours always get one, and
        # we apply the plan's default rather than treat the account as unlimited.
        max_budget = (
            info.max_budget if info.max_budget is not None else self._settings.user_default_budget
        )
        resets_at = info.budget_reset_at
        if resets_at is not None and resets_at.tzinfo is None:
            resets_at = resets_at.replace(tzinfo=UTC)
        period_start: datetime | None = None
        if resets_at is not None:
            try:
                period_start = period_boundary(resets_at, parse_duration(duration_text), -1)
            except ValueError:
                period_start = None
        return Budget(
            max_budget=float(max_budget),
            spend=float(info.spend or 0.0),
            budget_duration=duration_text,
            period_start=period_start,
            resets_at=resets_at,
        )

    async def get_budget(self, user_id: UUID) -> Budget:
        return self._budget(await self._info(user_id))

    async def set_budget(self, user_id: UUID, max_budget: float) -> Budget:
        if not math.isfinite(max_budget) or max_budget < 0:
            raise ValueError("max_budget must be a finite non-negative number")
        await self._info(user_id)  # the user must exist before an update
        await self.client.update_user(
            UpdateUserRequest(user_id=str(user_id), max_budget=max_budget)
        )
        return await self.get_budget(user_id)

    async def check(self, user_id: UUID) -> Budget:
        budget = await self.get_budget(user_id)
        if budget.remaining <= 0:
            raise LiteLLMBudgetExceeded(
                details={
                    "max_budget": budget.max_budget,
                    "spend": budget.spend,
                    "resets_at": budget.resets_at.isoformat() if budget.resets_at else None,
                }
            )
        return budget

    async def llm_route(self, user_id: UUID) -> LLMRoute:
        key = await self._held_key(user_id)
        if key is None:
            account = await self.ensure_account(user_id, await self._email(user_id) or "")
            key = account.key
        return LLMRoute(base_url=self.base_url, api_key=key, billed_upstream=True)

    def cost_of(self, usage: TokenUsage) -> float:
        return cost_of(self.prices, usage)

    async def record(self, conn: Conn, user_id: UUID, usage: TokenUsage) -> float:
        """LiteLLM already charged the user's key for the call; only report its cost (its own
        figure when it gave one, for our usage_daily rows)."""
        return self.cost_of(usage)

    async def daily_activity(
        self, user_id: UUID, start: date, end: date
    ) -> list[DailySpend] | None:
        by_day: dict[date, DailySpend] = {}
        page = 1
        while True:
            answer = await self.client.daily_activity(str(user_id), start, end, page=page)
            for row in answer.results:
                seen = by_day.get(row.date)
                m = row.metrics
                by_day[row.date] = DailySpend(
                    day=row.date,
                    spend=m.spend + (seen.spend if seen else 0.0),
                    prompt_tokens=m.prompt_tokens + (seen.prompt_tokens if seen else 0),
                    completion_tokens=m.completion_tokens + (seen.completion_tokens if seen else 0),
                    requests=m.api_requests + (seen.requests if seen else 0),
                )
            if not answer.metadata.has_more or page >= _MAX_ACTIVITY_PAGES:
                break
            page += 1
        return [by_day[d] for d in sorted(by_day) if start <= d <= end]

    async def delete_account(self, user_id: UUID) -> None:
        """The user's key (by its alias: we may not hold it, see `_generate_key`), then the
        user, which LiteLLM deletes with any other key of theirs ("delete user and associated
        user keys", its /user/delete description). Each step looks up or tolerates 404, so a
        retry after a lost answer is done, not an error. The key we hold goes with the
        profile (account deletion's data step)."""
        await self.client.delete_keys(DeleteKeysRequest(key_aliases=[key_alias(user_id)]))
        if await self.client.user_info(str(user_id)) is not None:
            await self.client.delete_users(DeleteUserRequest(user_ids=[str(user_id)]))

    async def check_health(self) -> None:
        await self.client.liveliness()
