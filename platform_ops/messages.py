"""Slack messages as data: what platform-ops means to say, before any client sends it."""

from __future__ import annotations

from dataclasses import dataclass

MAX_BLOCKS = 50
MAX_SECTION_CHARS = 3000
MAX_HEADER_CHARS = 150


@dataclass(frozen=True)
class SlackMessage:
    """Fallback text (notifications, screen readers) plus Block Kit blocks."""

    text: str
    blocks: tuple[dict, ...] = ()


def escape(text: str) -> str:
    """Slack mrkdwn control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def pack(lines: list[str], limit: int = MAX_SECTION_CHARS) -> list[str]:
    """Join lines into texts of at most `limit` characters (one section block each)."""
    texts, current = [], ""
    for line in lines:
        line = line[:limit]
        if current and len(current) + 1 + len(line) > limit:
            texts.append(current)
            current = line
        else:
            current = f"{current}\n{line}" if current else line
    if current:
        texts.append(current)
    return texts
