"""Text that can be stored and sent on: no NUL character, no unpaired surrogate.

Postgres `text` cannot hold NUL (the insert fails, which was a 500), and UTF-8 cannot encode a
lone surrogate, which JSON's `"\\ud800"` decodes to in Python (the upstream call or the insert
fails). Both are refused at the boundary instead, as a 422 naming the field.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from pydantic import AfterValidator

_REASON = "must not contain NUL characters or unpaired surrogates"


def unstorable(value: str) -> bool:
    """Whether `value` holds a NUL or a lone surrogate."""
    if "\x00" in value:
        return True
    if value.isascii():
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def check_text(value: str) -> str:
    if unstorable(value):
        raise ValueError(_REASON)
    return value


# Use as a field's type: `Annotated[PlainText, Field(max_length=...)]`.
PlainText = Annotated[str, AfterValidator(check_text)]


def _strings(value: Any) -> Iterator[str]:
    # Iterative, not recursive: a body nested as deep as the JSON parser allows must not
    # overflow the stack here.
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def check_json_text(value: Any) -> Any:
    """Every string in a decoded JSON value, object keys included, passes `check_text`."""
    for text in _strings(value):
        if unstorable(text):
            raise ValueError(f"strings {_REASON}")
    return value
