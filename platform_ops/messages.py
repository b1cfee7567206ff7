"""Slack messages as data: what platform-ops means to say, before any client sends it."""

from __future__ import annotations

from dataclasses import dataclass

MAX_BLOCKS = 50
MAX_SECTION_CHARS = 3000
MAX_HEADER_CHARS = 150
MAX_TEXT_CHARS = 4000  # Slack refuses 40,000 (msg_too_long) and advises 4,000 for a notification


@dataclass(frozen=True)
class SlackMessage:
    """Fallback text (notifications, screen readers) plus Block Kit blocks. The text is cut to
    MAX_TEXT_CHARS: a huge error or cause must not cost the whole alert."""

    text: str
    blocks: tuple[dict, ...] = ()

    def __post_init__(self) -> None:
        if len(self.text) > MAX_TEXT_CHARS:
            object.__setattr__(self, "text", self.text[:MAX_TEXT_CHARS - 1] + "…")


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
