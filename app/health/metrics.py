"""`GET /metrics`: the Prometheus text format, for a scraper holding METRICS_TOKEN.

No token configured: 404, the endpoint does not exist (metrics are still recorded, at the
same cost, so turning it on needs no other change). With one: `Authorization: Bearer <token>`
or 401. Metrics name routes, models and error rates: operator data, not for the public.
Not in the OpenAPI document: it is not part of the API clients are generated for.
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request, Response

from app.deps import services
from app.errors import NotFound, Unauthorized
from app.platform.metrics import CONTENT_TYPE_LATEST

router = APIRouter(include_in_schema=False)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    state = services(request)
    token = state.settings.metrics_token
    if token is None:
        raise NotFound("metrics are not enabled (METRICS_TOKEN is not set)")
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    expected = token.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), expected):
        raise Unauthorized("a valid metrics token is required")
    return Response(state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
