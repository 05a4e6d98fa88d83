"""Text that can be stored and sent on: no NUL character, no unpaired surrogate (and for a
pass-through JSON body, no number JSON cannot write).

Postgres `text` cannot hold NUL (the insert fails, which was a 500), and UTF-8 cannot encode a
lone surrogate, which JSON's `"\\ud800"` decodes to in Python (the upstream call or the insert
fails). Both are refused at the boundary instead, as a 422 naming the field.
"""

from __future__ import annotations

import math
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


def check_json_values(value: Any) -> Any:
    """A decoded JSON value that can be stored and sent on: every string (object keys too)
    passes `check_text`, and every number is finite (Python's JSON parser reads `NaN`,
    `Infinity` and `1e400` as floats that no JSON encoder will write back: the upstream call
    failed, a 500)."""
    # Iterative, not recursive: a body nested as deep as the JSON parser allows must not
    # overflow the stack here.
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if unstorable(item):
                raise ValueError(f"strings {_REASON}")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise ValueError("numbers must be finite")
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return value
