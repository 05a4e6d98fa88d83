"""The shared HTTP client's transport: several small connection pools instead of one big one.

Why: httpcore's pool re-examines every connection it holds each time a request starts or a
response closes (`_assign_requests_to_connections`: per connection an expiry check, which for
an idle one polls its socket, and per idle connection a count over all of them). A chat turn
holds one upstream connection for its whole stream, so at C concurrent turns every request
pays O(C) (O(C^2) with idle connections kept alive): in the streaming benchmark this was the
largest single item of the backend's CPU at C=100, and it grows with C.

`ShardedTransport` keeps `shards` independent pools (the public `httpx.AsyncHTTPTransport`)
and sends each request to the first pool with fewer than `target` requests in flight (else
the least busy one). So low concurrency uses one pool and reuses its keep-alive connections
(no handshake per turn), and at any concurrency each pool holds about `target` connections.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx


class _Shard:
    __slots__ = ("active", "transport")

    def __init__(self, transport: httpx.AsyncHTTPTransport) -> None:
        self.transport = transport
        self.active = 0


class _CountedStream(httpx.AsyncByteStream):
    """The response body; its close (always called by httpx) ends the request's count."""

    def __init__(self, stream: httpx.AsyncByteStream, shard: _Shard) -> None:
        self._stream = stream
        self._shard: _Shard | None = shard

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        shard, self._shard = self._shard, None
        if shard is not None:
            shard.active -= 1
        await self._stream.aclose()


class ShardedTransport(httpx.AsyncBaseTransport):
    def __init__(
        self,
        *,
        limits: httpx.Limits,
        shards: int = 128,
        target: int = 16,
        **transport_options: Any,
    ) -> None:
        total = limits.max_connections
        per_pool = httpx.Limits(
            max_connections=None if total is None else max(1, total // shards),
            # One pool's keep-alive covers its share of requests in flight (httpcore closes
            # every idle connection once a pool holds more than this many connections).
            max_keepalive_connections=target,
            keepalive_expiry=limits.keepalive_expiry,
        )
        self._target = target
        self._shards = [
            _Shard(httpx.AsyncHTTPTransport(limits=per_pool, **transport_options))
            for _ in range(max(1, shards))
        ]

    def _pick(self) -> _Shard:
        for shard in self._shards:
            if shard.active < self._target:
                return shard
        return min(self._shards, key=lambda s: s.active)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        shard = self._pick()
        shard.active += 1
        try:
            response = await shard.transport.handle_async_request(request)
        except BaseException:
            shard.active -= 1
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _CountedStream(response.stream, shard)
        return response

    async def aclose(self) -> None:
        for shard in self._shards:
            await shard.transport.aclose()
