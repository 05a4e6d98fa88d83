"""`python -m app admin create --email E [--password P]`: make the first admin.

Promotes the account with this email (built-in identity: auth.users app metadata; Supabase:
`app_metadata.role` through the Auth admin API), or, when there is none and a password is
given, registers it first (profile and provisioning as POST /auth/register does). The role is
in the account's next tokens: log in again (or refresh) after promoting.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from contextlib import AsyncExitStack

from pydantic import ValidationError

from app.accounts.schemas import RegisterIn
from app.config import ConfigError, Settings, get_settings
from app.errors import AppError


class CommandError(Exception):
    """A refusal worth one line (no traceback)."""


async def create_admin(settings: Settings, email: str, password: str | None) -> str:
    from app.composition import Overrides, build_state

    async with AsyncExitStack() as stack:
        state = await build_state(settings, Overrides(), stack)
        user_id = await state.identity.grant_admin(email)
        if user_id is not None:
            return f"promoted {email} ({user_id}) to admin"
        if password is None:
            raise CommandError(f"no account with email {email}: give --password to create it")
        try:
            body = RegisterIn(email=email, password=password)
        except ValidationError as exc:
            raise CommandError(f"refused: {exc.errors()[0]['msg']}") from exc
        created = await state.account_service.register(body)
        user_id = await state.identity.grant_admin(email)
        if user_id is None:  # the identity just created it: a bug, not an input error
            raise RuntimeError("the new account was not found")
        return f"created {email} ({created.user.id}) as admin"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m app admin")
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="create or promote an admin account")
    create.add_argument("--email", required=True)
    create.add_argument(
        "--password",
        help="for a new account only; '-' reads it from the terminal (not echoed)",
    )
    args = parser.parse_args(argv)
    password = args.password
    if password == "-":
        password = getpass.getpass("password: ")
    try:
        settings = get_settings()
        print(asyncio.run(create_admin(settings, args.email, password)))
    except (ConfigError, CommandError, AppError) as exc:
        print(f"admin create: {exc}", file=sys.stderr)
        return 1
    return 0
