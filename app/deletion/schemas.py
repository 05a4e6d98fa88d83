"""Request and response bodies of DELETE /user."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from app.platform.text import PlainText

DeletionStep = Literal["agent", "billing", "identity", "data"]


class AccountDeletionIn(BaseModel):
    # Not checked against the password rules: any wrong value is just a wrong password.
    password: PlainText | None = Field(
        None,
        max_length=1024,
        description="The account's password. Needed unless the access token comes from a "
        "sign-in made within ACCOUNT_DELETION_FRESH_SECONDS.",
    )


class AccountDeletionOut(BaseModel):
    status: Literal["pending", "deleted"] = Field(
        description="deleted: nothing of the account is left. pending: the account is "
        "disabled and some steps wait on an outside service; they are retried until done."
    )
    requested_at: datetime
    completed_at: datetime | None
    pending_steps: list[DeletionStep] = Field(
        description="What is still to delete: the agent (with its memory), the billing "
        "account (budget, LiteLLM user and key), the identity (sign-in, sessions), the data "
        "kept here (profile, conversations, turns, usage)."
    )
