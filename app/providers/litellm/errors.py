"""LiteLLM failures in our error tree, in the two kinds every outside client has.

Operational (timeout, connection error, 5xx, 429 that is not a budget refusal): 503
`upstream_unavailable`, retryable. Request errors (other 4xx, or an answer that breaks the
proxy's schema): 502 `upstream_error`, with LiteLLM's status and error type kept for callers.
A budget refusal (`error.type == "budget_exceeded"`, HTTP 400 in older releases and 429 in
newer ones) is our 402 `budget_exceeded`.
"""

from __future__ import annotations

from typing import Any

from app.errors import BudgetExceeded, UpstreamError, UpstreamUnavailable


class LiteLLMUnavailable(UpstreamUnavailable):
    def __init__(
        self,
        message: str = "the billing service (LiteLLM) is unavailable",
        *,
        retry_after: float | None = None,
    ) -> None:
        headers = {"Retry-After": str(int(retry_after))} if retry_after else None
        super().__init__(message, headers=headers)
        self.retry_after = retry_after


class LiteLLMRequestError(UpstreamError):
    def __init__(self, message: str, *, status: int, error_type: str | None = None) -> None:
        super().__init__(f"the billing service (LiteLLM) refused a request: {message}")
        self.status = status
        self.error_type = error_type
        self.upstream_message = message


class LiteLLMBudgetExceeded(BudgetExceeded):
    def __init__(
        self, message: str = "your LLM budget for this period is used up", **kw: Any
    ) -> None:
        super().__init__(message, **kw)


def is_budget_exceeded(status_code: int, payload: object) -> bool:
    """LiteLLM's budget refusal, for any caller that talks to the proxy (chat completions with
    a virtual key too): `error.type == "budget_exceeded"` with HTTP 400 (older) or 429."""
    if status_code not in (400, 429) or not isinstance(payload, dict):
        return False
    error = payload.get("error")
    return isinstance(error, dict) and error.get("type") == "budget_exceeded"
