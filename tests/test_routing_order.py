"""The feature routers are included hot paths first (app/main.py `_api_routers`): safe only
while no two routers have overlapping paths, since then the order never changes which route
answers a request (nor which one says 405)."""

from __future__ import annotations

import re

from fastapi.routing import APIRoute

from app.main import _api_routers


def _example(path: str) -> str:
    """A concrete path the template matches: each `{parameter}` as one segment."""
    return re.sub(r"\{[^}]+\}", "x1", path)


def test_no_two_feature_routers_match_the_same_path() -> None:
    routers = _api_routers()
    routes = [
        (index, route)
        for index, router in enumerate(routers)
        for route in router.routes
        if isinstance(route, APIRoute)
    ]
    assert len(routes) > 40  # every router's routes, not an empty list
    overlaps = [
        (mine.path, theirs.path)
        for index, mine in routes
        for other, theirs in routes
        if other != index and theirs.path_regex.match(_example(mine.path))
    ]
    assert overlaps == []


def test_the_hot_paths_come_first() -> None:
    first, second, third = (router.prefix for router in _api_routers()[:3])
    assert (first, second, third) == ("/llm", "/chat", "/chat/ui")
