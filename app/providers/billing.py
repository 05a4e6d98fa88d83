"""The billing port: a budget per user, checked before and charged after every LLM call."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Protocol
from uuid import UUID

from asyncpg import Record

from app.errors import BudgetExceeded
from app.platform.db import Conn


@dataclass(frozen=True)
class Budget:
    max_budget: float
    spend: float
    budget_duration: str
    period_start: datetime | None
    resets_at: datetime | None
    currency: str = "USD"
    # The worst-case cost of LLM-route calls in flight (built-in ledger only): admission
    # counts it as spent, `spend` and `remaining` do not (they are what was charged).
    reserved: float = 0.0

    @property
    def remaining(self) -> float:
        return max(0.0, round(self.max_budget - self.spend, 10))


@dataclass(frozen=True)
class BillingAccount:
    provider: str
    ref: str  # the billing user id (LiteLLM user_id, or ours)
    # The provider's per-user LLM key, plain, only in memory; stored encrypted or not at all.
    key: str | None = None


@dataclass(frozen=True)
class LLMRoute:
    """Where one user's LLM calls go, and with which key, so that the spend lands on them."""

    base_url: str | None  # None: the built-in model
    api_key: str | None
    billed_upstream: bool  # True: the upstream (LiteLLM) charges the key itself


@dataclass(frozen=True)
class TokenUsage:
    model: str
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    estimated: bool = False  # counted locally because the upstream did not say
    cost: float | None = None  # when the upstream reported it (LiteLLM's response cost)


def estimate_tokens(text: str) -> int:
    """About four characters per token for English BPE vocabularies; good enough to bill by
    when the upstream reports no usage, and always marked as an estimate (`estimated`)."""
    return 0 if not text else max(1, (len(text) + 3) // 4)


@dataclass(frozen=True)
class Reservation:
    """The worst-case cost of one admitted call, held on the user's budget until the call is
    settled (charged its real cost) or released (it failed before producing anything)."""

    id: UUID
    user_id: UUID
    amount: float


@dataclass(frozen=True)
class DailySpend:
    day: date
    spend: float
    prompt_tokens: int
    completion_tokens: int
    requests: int


class LocalLedger(Protocol):
    """A budget kept in our own database (`budgets`), charged on the caller's connection, so
    that the turn's final write needs no connection of its own. The chat's one-statement
    admission and final write also read and charge its row in their own SQL."""

    def cost_of(self, usage: TokenUsage) -> float:
        """What `usage` costs at this ledger's prices."""
        ...

    def budget_if_current(self, row: Record) -> Budget | None:
        """The budget of the user's budget row as a charge just left it (the chat's
        one-statement final write charges in its own SQL and hands the row here), or None
        when the charge landed on a period that has ended: then `charge_current`."""
        ...

    async def charge_current(self, conn: Conn, user_id: UUID, cost: float) -> Budget:
        """Charge `cost` to the user's current period, after a charge found no budget row or
        landed on an ended period; in the caller's transaction."""
        ...

    async def reserve(self, user_id: UUID, worst_case: TokenUsage) -> Reservation:
        """Admit a call only if `worst_case` (its prompt and most completion tokens) fits in
        what is neither spent nor reserved, atomically; raise BudgetExceeded otherwise."""
        ...

    async def settle(self, conn: Conn, reservation: Reservation, usage: TokenUsage) -> float:
        """Release the reservation and charge the call's real cost, in the caller's
        transaction. Returns the cost."""
        ...

    async def release(self, reservation: Reservation) -> None:
        """Give the reservation back uncharged (the call failed before producing anything)."""
        ...


class BillingProvider(Protocol):
    name: str
    # What callers may rely on is declared here, never probed for and never inferred from the
    # provider's name:
    per_user_llm_key: bool
    """True: the LLM calls of the user's agent must carry the user's own key (`llm_route`),
    because the upstream charges that key; provisioning gives the route to the agent and each
    chat turn passes it. False: the route is the same for everyone and the agent needs none."""

    @property
    def ledger(self) -> LocalLedger | None:
        """The budget in our own database when the provider keeps it there (the chat's fast
        admission path and its one-statement charge use it); None when it lives upstream."""
        ...

    async def ensure_account(self, user_id: UUID, email: str) -> BillingAccount:
        """Create the billing user and key once; later calls find and return them."""
        ...

    async def get_budget(self, user_id: UUID) -> Budget: ...

    async def set_budget(self, user_id: UUID, max_budget: float) -> Budget: ...

    async def check(self, user_id: UUID) -> Budget:
        """Raise BudgetExceeded when nothing remains; otherwise the current budget."""
        ...

    async def llm_route(self, user_id: UUID) -> LLMRoute: ...

    def cost_of(self, usage: TokenUsage) -> float:
        """USD for a call, from the upstream's figure or the price table."""
        ...

    async def record(self, conn: Conn, user_id: UUID, usage: TokenUsage) -> float:
        """Charge a finished call inside the caller's transaction. Returns its cost."""
        ...

    async def daily_activity(
        self, user_id: UUID, start: date, end: date
    ) -> list[DailySpend] | None:
        """The provider's own per-day spend, when it keeps one (LiteLLM); None otherwise."""
        ...

    async def delete_account(self, user_id: UUID) -> None:
        """Delete what billing keeps for the user (account deletion): the budget and its
        reservations, the provider's user and keys. Idempotent: what is already gone is done;
        raises UpstreamUnavailable/UpstreamError when the service cannot do it now."""
        ...

    async def check_health(self) -> None: ...


__all__ = [
    "BillingAccount",
    "BillingProvider",
    "Budget",
    "BudgetExceeded",
    "DailySpend",
    "LLMRoute",
    "LocalLedger",
    "Reservation",
    "TokenUsage",
    "estimate_tokens",
]
