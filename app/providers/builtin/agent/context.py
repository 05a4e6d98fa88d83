"""What the model sees each turn: the system prompt with the core memory blocks (and the recall
summary), then the in-context messages. And the summarizer that keeps that under budget."""

from __future__ import annotations

from typing import Any

from app.providers.builtin.agent.repository import BlockRow, MessageRow
from app.providers.builtin.llm import estimate_tokens

# Room kept free for the answer (and a margin for the token estimate) inside the context.
ANSWER_RESERVE_TOKENS = 512
ESTIMATE_MARGIN = 0.85
# Summarize down to this share of the budget, so that not every turn pays for a summary.
SUMMARIZE_TARGET = 0.5
SUMMARY_MAX_TOKENS = 256

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
    blocks: list[BlockRow], *, summary: str | None, passages: int, tools: bool
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
    return "\n\n".join(parts)


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
