"""HTTP only: DELETE /user. The saga is in `service.py`."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response, status

from app.auth.deps import DeletingUser
from app.deletion.schemas import AccountDeletionIn, AccountDeletionOut
from app.deletion.service import AccountDeletionDep, deletion_out
from app.errors import BODY_ERROR_STATUSES, ErrorEnvelope, error_responses
from app.ratelimit import RATE_LIMITED_RESPONSE, ip_rate_limit

router = APIRouter()

_DESCRIPTION = """Deletes the caller's account and everything it has here and upstream: the
identity (sign-in, sessions), profile, conversations, turns and their events, the agent with
its memory (blocks, archival passages, messages; the Letta agent), the budget and its
reservations (the LiteLLM user and key), and usage. Usage rows are deleted, not anonymised:
platform totals from then on leave the account out. Admin audit rows about the account are
kept with their subject anonymised (null; the nil UUID where the account was the acting admin).

Confirm with the account's password in the body, or call with an access token from a sign-in
made within ACCOUNT_DELETION_FRESH_SECONDS (default 300 s); otherwise 403
`reauthentication_required`. A wrong password is 403 `invalid_password`.

The account is disabled at once (every other route answers 403 `account_disabled`; sessions
end). **200** `deleted`: nothing is left, and the email can register again. **202** `pending`:
an outside service (agent, billing or identity) is down; the steps listed in `pending_steps`
are retried by the server (every ACCOUNT_DELETION_RETRY_SECONDS) until done, nothing more to
do for the client. Calling again is safe: it answers the deletion's state (and pushes it on)."""


@router.delete(
    "/user",
    response_model=AccountDeletionOut,
    tags=["user"],
    summary="Delete my account and everything it has",
    description=_DESCRIPTION,
    responses={
        **error_responses(*BODY_ERROR_STATUSES, 503),
        202: {
            "model": AccountDeletionOut,
            "description": "Disabled; some steps wait on an outside service and are retried",
        },
        403: {
            "model": ErrorEnvelope,
            "description": "reauthentication_required (no password and a token not fresh), "
            "invalid_password",
        },
        **RATE_LIMITED_RESPONSE,
    },
    # The password can be guessed here: the same per-IP limit as login.
    dependencies=[Depends(ip_rate_limit("delete_account"))],
)
async def delete_account(
    response: Response,
    claims: DeletingUser,
    service: AccountDeletionDep,
    body: AccountDeletionIn | None = None,
) -> AccountDeletionOut:
    row = await service.request(claims, body.password if body else None)
    out = deletion_out(row)
    if out.status == "pending":
        response.status_code = status.HTTP_202_ACCEPTED
        response.headers["Retry-After"] = str(max(1, round(service.retry_seconds)))
    return out
