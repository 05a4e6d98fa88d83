"""What the model sees each turn: the system prompt with the core memory blocks (and the recall
summary), then the in-context messages. And the summarizer that keeps that under budget."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from app.providers.billing import estimate_tokens
from app.providers.builtin.agent.repository import BlockRow, MessageRow

# Room kept free for the answer (and a margin for the token estimate) inside the context.
ANSWER_RESERVE_TOKENS = 512
ESTIMATE_MARGIN = 0.85
# Summarize down to this share of the budget, so that not every turn pays for a summary.
SUMMARIZE_TARGET = 0.5
SUMMARY_MAX_TOKENS = 256
# Automatic recall (models without tools): each recalled item is cut to this many characters,
# and all of them together take at most this share of the prompt budget.
RECALL_ITEM_CHARS = 300
RECALL_BUDGET_SHARE = 0.25
RECALL_HEADING = "Things you remember that may help you answer the person's message:"

_TOOL_GUIDE = (
    "You have long-term memory. Core memory (below) is always in view: when you learn "
    "something lasting about the person or yourself, save it with core_memory_append or "
    "core_memory_replace. Archival memory holds {passages} passages: search it with "
    "archival_memory_search, add to it with archival_memory_insert. conversation_search "
    "finds anything said before, even what is no longer in view. Do not mention these tools "
    "to the person; just answer them."
)


def prompt_budget(context_tokens: int) -> int:
    reserve = min(ANSWER_RESERVE_TOKENS, context_tokens // 4)
    return max(64, int((context_tokens - reserve) * ESTIMATE_MARGIN))


def answer_budget(context_tokens: int) -> int:
    return min(ANSWER_RESERVE_TOKENS, context_tokens // 4)


def system_prompt(
    blocks: list[BlockRow],
    *,
    summary: str | None,
    passages: int,
    tools: bool,
    recall: str | None = None,
) -> str:
    by_label = {b.label: b for b in blocks}
    parts: list[str] = []
    persona = by_label.get("persona")
    if persona is not None and persona.value:
        parts.append(persona.value)
    if tools:
        parts.append(_TOOL_GUIDE.format(passages=passages))
        for block in blocks:
            parts.append(
                f'<{block.label} characters="{len(block.value)}/{block.limit}">\n'
                f"{block.value}\n</{block.label}>"
            )
    else:
        # Small models without tools: plain sentences work better than markup.
        human = by_label.get("human")
        if human is not None and human.value:
            parts.append(f"What you know about the person you are talking with:\n{human.value}")
        for block in blocks:
            if block.label not in ("persona", "human") and block.value:
                parts.append(f"{block.label}:\n{block.value}")
    if summary:
        parts.append(f"Summary of your earlier conversation with this person:\n{summary}")
    if recall:
        parts.append(recall)  # last: closest to the message it was found for
    return "\n\n".join(parts)


@dataclass(frozen=True)
class Recalled:
    """One automatically recalled memory: an archival passage or an old message."""

    text: str
    role: str | None = None  # None: an archival passage; else who said it ("user"/"assistant")
    at: datetime | None = None

    def line(self, max_chars: int) -> str:
        text = " ".join(self.text.split())  # one line per memory
        if len(text) > max_chars:
            text = text[: max(0, max_chars - 3)].rsplit(" ", 1)[0] + "..."
        if self.role is None:
            return f"- From your notes: {text}"
        speaker = "the person said" if self.role == "user" else "you said"
        when = f"On {self.at:%Y-%m-%d} " if self.at is not None else "Earlier "
        return f"- {when}{speaker}: {text}"


def merge_recalled(
    passages: list[Recalled], messages: list[Recalled], *, limit: int
) -> list[Recalled]:
    """Both rankings alternated (their scores are not comparable), best first, at most
    `limit`, the same text once."""
    merged: list[Recalled] = []
    seen: set[str] = set()
    for index in range(max(len(passages), len(messages))):
        for source in (passages, messages):
            if index < len(source) and len(merged) < limit:
                key = " ".join(source[index].text.split()).casefold()
                if key not in seen:
                    seen.add(key)
                    merged.append(source[index])
    return merged


def recall_section(items: list[Recalled], *, max_tokens: int) -> tuple[str | None, int]:
    """The heading and one line per item, in at most `max_tokens` (estimated); the items that
    do not fit are left out. Returns the text (None: nothing) and how many items it holds."""
    lines = [RECALL_HEADING]
    for item in items:
        line = item.line(RECALL_ITEM_CHARS)
        if estimate_tokens("\n".join([*lines, line])) > max_tokens:
            break
        lines.append(line)
    count = len(lines) - 1
    return ("\n".join(lines) if count else None), count


def as_chat_message(message: MessageRow) -> dict[str, Any] | None:
    if message.role == "user":
        return {"role": "user", "content": message.content}
    if message.role == "assistant":
        out: dict[str, Any] = {"role": "assistant", "content": message.content or None}
        if message.tool_calls:
            out["tool_calls"] = message.tool_calls
        elif not message.content:
            return None
        return out
    if message.role == "tool":
        return {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.content}
    return None  # summaries live in the system prompt


def message_tokens(message: dict[str, Any]) -> int:
    text = str(message.get("content") or "")
    for call in message.get("tool_calls") or []:
        text += str(call.get("function", {}).get("arguments", ""))
    return 4 + estimate_tokens(text)


def split_for_summary(
    window: list[MessageRow], *, fixed_tokens: int, budget: int
) -> tuple[list[MessageRow], list[MessageRow]]:
    """(to summarize, to keep). Empty first list: the window fits.

    `fixed_tokens` is everything but the window's messages (system prompt, new message,
    tools). When the total is over `budget`, the oldest messages go until the rest is under
    SUMMARIZE_TARGET of it. A cut only falls right before a user message, so an assistant
    tool call is never separated from its tool results."""
    messages = [m for m in window if m.role != "summary"]
    total = fixed_tokens + sum(m.tokens for m in messages)
    if total <= budget:
        return [], messages
    target = int(budget * SUMMARIZE_TARGET)
    cut = 0
    running = total
    for index, message in enumerate(messages):
        if running <= target and message.role == "user":
            break
        running -= message.tokens
        cut = index + 1
    # Move the cut forward to a user message (or the end).
    while cut < len(messages) and messages[cut].role != "user":
        cut += 1
    return messages[:cut], messages[cut:]


def summary_request(
    previous: str | None, evicted: list[MessageRow], *, max_chars: int
) -> list[dict[str, Any]]:
    lines = []
    for message in evicted:
        if message.role in ("user", "assistant") and message.content:
            speaker = "Person" if message.role == "user" else "You"
            lines.append(f"{speaker}: {message.content[:max_chars]}")
        elif message.role == "tool":
            lines.append(f"(memory tool {message.tool_name}: {message.content[:200]})")
    transcript = "\n".join(lines)
    prior = f"Summary so far:\n{previous}\n\n" if previous else ""
    return [
        {
            "role": "system",
            "content": (
                "You maintain the memory of an assistant. Write a short summary (at most "
                "120 words) of the conversation below, from the assistant's point of view: "
                "facts about the person, decisions, open questions. No preamble."
            ),
        },
        {"role": "user", "content": f"{prior}New messages:\n{transcript}"},
    ]
