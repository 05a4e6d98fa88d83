"""The shared client's sharded transport: requests fill one small pool before the next."""

from __future__ import annotations

import contextlib

import httpx
import respx

from app.http_transport import ShardedTransport


async def test_requests_fill_pools_in_order_and_are_counted_until_closed() -> None:
    transport = ShardedTransport(limits=httpx.Limits(max_connections=64), shards=3, target=2)
    async with httpx.AsyncClient(transport=transport) as client:
        with respx.mock(base_url="http://upstream.test") as mock:
            mock.get("/s").respond(200, content=b"data: x\n\n")
            responses = [
                await client.send(client.build_request("GET", "http://upstream.test/s"),
                                  stream=True)
                for _ in range(5)
            ]  # fmt: skip
            assert [s.active for s in transport._shards] == [2, 2, 1]
            # A finished stream frees its place: the next request goes to the first pool.
            await responses[0].aread()
            await responses[0].aclose()
            assert [s.active for s in transport._shards] == [1, 2, 1]
            again = await client.get("http://upstream.test/s")
            assert again.content == b"data: x\n\n"
            for r in responses[1:]:
                await r.aclose()
            assert [s.active for s in transport._shards] == [0, 0, 0]
            # All busy: the least busy pool takes the request.
            busy = [
                await client.send(client.build_request("GET", "http://upstream.test/s"),
                                  stream=True)
                for _ in range(7)
            ]  # fmt: skip
            assert [s.active for s in transport._shards] == [3, 2, 2]
            for r in busy:
                await r.aclose()


async def test_a_failed_request_is_not_counted() -> None:
    transport = ShardedTransport(limits=httpx.Limits(max_connections=8), shards=2, target=1)
    async with httpx.AsyncClient(transport=transport) as client:
        with respx.mock(base_url="http://upstream.test") as mock:
            mock.get("/down").mock(side_effect=httpx.ConnectError("refused"))
            for _ in range(3):
                with contextlib.suppress(httpx.ConnectError):
                    await client.get("http://upstream.test/down")
            assert [s.active for s in transport._shards] == [0, 0]
