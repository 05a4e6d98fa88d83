"""The LiteLLM provider's SQL: the user's virtual key, encrypted, on their profile row."""

from __future__ import annotations

from uuid import UUID

from app.db import Conn


async def get_key_ciphertext(conn: Conn, user_id: UUID) -> str | None:
    value = await conn.fetchval(
        "select billing_key_encrypted from profiles where id = $1", user_id
    )
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
