"""Compact JSON text for what is encoded once per streamed event (chat events, AI SDK chunks,
the LLM route's chunks).

`json.dumps` with any argument other than its defaults builds a new `JSONEncoder` on every
call: for a small event that is almost half the cost (5.7 µs a call against 3.1 µs with an
encoder built once, measured on the benchmark machine). The text is the same: these are
`json.dumps(obj, separators=(",", ":"))`, with and without `ensure_ascii`.
"""

from __future__ import annotations

import json

__all__ = ["compact_json", "compact_json_ascii"]

# Unicode as is: the text goes out as UTF-8 (SSE) and into jsonb.
compact_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
# \u-escaped non-ASCII, as json.dumps writes by default (the LLM route relays OpenAI's shape).
compact_json_ascii = json.JSONEncoder(separators=(",", ":")).encode
