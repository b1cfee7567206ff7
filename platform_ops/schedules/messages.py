"""Missed schedules, said in Slack (pure): the miss, the recovery, who owns it and where to click.

Names, rule names, expressions and owners come from whoever deployed the flow (staging included),
so every one of them is escaped before it goes into mrkdwn.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from platform_ops.messages import MAX_HEADER_CHARS, SlackMessage, escape
from platform_ops.schedules.core import AnnounceMiss, AnnounceRecovery
from platform_ops.vocabulary import format_duration


def mention(owner: str | None, owners: Mapping[str, str]) -> str:
    """An @-mention through `slack.owners`, else the name in plain text (as the alerts do)."""
    if not owner:
        return "unknown"
    slack_id = owners.get(owner)
    return f"<@{slack_id}>" if slack_id else escape(owner[:80])


@dataclass(frozen=True)
class Where:
    """Which account a state machine lives in, and the owners' Slack ids."""

    environment: str
    owners: Mapping[str, str] = field(default_factory=dict)


def _name(arn: str) -> str:
    return arn.rsplit(":", 1)[-1]


def _region(arn: str) -> str:
    return arn.split(":")[3]


def state_machine_url(arn: str) -> str:
    region = _region(arn)
    return f"https://{region}.console.aws.amazon.com/states/home?region={region}#/statemachines/view/{arn}"


def rule_url(state_machine_arn: str, rule_name: str) -> str:
    """The rule on the default bus, in the same region (Metaflow puts its rules there)."""
    region = _region(state_machine_arn)
    return f"https://{region}.console.aws.amazon.com/events/home?region={region}#/eventbus/default/rules/{rule_name}"


def _at(dt: datetime) -> str:
    return f"{dt:%Y-%m-%d %H:%M} UTC"


def _section(text: str) -> dict:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text[:3000]}}


def _buttons(*links: tuple[str, str]) -> dict:
    return {"type": "actions", "elements": [
        {"type": "button", "text": {"type": "plain_text", "text": label}, "url": url[:3000]} for label, url in links]}


def miss_message(miss: AnnounceMiss, expression: str, owner: str | None, where: Where,
                 now: datetime) -> SlackMessage:
    """What the owner reads: what did not start, when it should have, its schedule in words, its
    last start, and the two consoles."""
    name = _name(miss.state_machine_arn)
    late = format_duration(now - miss.expected_at)
    last = (f"{_at(miss.last_start)} ({format_duration(now - miss.last_start)} ago)" if miss.last_start
            else "never")
    who = mention(owner, where.owners)
    title = f":alarm_clock: Missed schedule: {name} did not start in {where.environment}"
    fields = [f"*Expected start*\n{_at(miss.expected_at)} ({late} ago)", f"*Last start*\n{last}",
              f"*Schedule*\n{escape(miss.description)}\n`{escape(expression[:256])}`", f"*Owner*\n{who}",
              f"*State machine*\n`{escape(name)}`", f"*Rule*\n`{escape(miss.rule_name)}`"]
    blocks = (
        {"type": "header", "text": {"type": "plain_text", "text": title[:MAX_HEADER_CHARS]}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f[:2000]} for f in fields]},
        _buttons(("Step Functions", state_machine_url(miss.state_machine_arn)),
                 ("EventBridge rule", rule_url(miss.state_machine_arn, miss.rule_name))),
    )
    text = (f"Missed schedule: {escape(name)} ({where.environment}) has not started since {_at(miss.expected_at)} "
            f"({escape(miss.description)}); last start: {last}. Owner: {who}.")
    return SlackMessage(text=text, blocks=blocks)


def recovery_message(recovery: AnnounceRecovery, where: Where) -> SlackMessage:
    """The schedule is answered again: the start that answered and how long it was missing."""
    name = _name(recovery.state_machine_arn)
    gap = format_duration(recovery.started_at - recovery.expected_at)
    text = (f":white_check_mark: {escape(name)} ({where.environment}) started again at {_at(recovery.started_at)}, "
            f"{gap} after the missed start of {_at(recovery.expected_at)}")
    return SlackMessage(text=text, blocks=(
        _section(text), _buttons(("Step Functions", state_machine_url(recovery.state_machine_arn)))))
