"""The LiteLLM provider's SQL: the user's virtual key, encrypted, on their profile row."""

from __future__ import annotations

from uuid import UUID

from app.platform.db import Conn


async def get_key_ciphertext(conn: Conn, user_id: UUID) -> str | None:
    value = await conn.fetchval("select billing_key_encrypted from profiles where id = $1", user_id)
    return str(value) if value is not None else None


async def store_key(conn: Conn, user_id: UUID, billing_ref: str, ciphertext: str) -> bool:
    """Keep the encrypted key on the profile. False when the profile row does not exist."""
    status = await conn.execute(
        """
        update profiles
        set billing_provider = 'litellm', billing_ref = $2, billing_key_encrypted = $3,
            updated_at = now()
        where id = $1
        """,
        user_id,
        billing_ref,
        ciphertext,
    )
    return str(status).endswith(" 1")


async def profile_email(conn: Conn, user_id: UUID) -> str | None:
    value = await conn.fetchval("select email from profiles where id = $1", user_id)
    return str(value) if value is not None else None


_ACCOUNT_LOCK_CLASS = 0x4C4C_4D41 & 0x7FFF_FFFF  # "LLMA"


async def lock_account(conn: Conn, user_id: UUID) -> None:
    """Serialize the look-up-then-create of one user's LiteLLM user and key, across app
    instances (released at commit). Its own lock class: the provisioning saga holds the
    profile's lock while it calls us, and the chat's budget check may call us concurrently."""
    await conn.execute(
        "select pg_advisory_xact_lock($1, hashtext($2))", _ACCOUNT_LOCK_CLASS, str(user_id)
    )
