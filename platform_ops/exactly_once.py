"""Exactly-once Slack posts, decided: claim, post with metadata, confirm; a retry that finds a
claim without a confirmation looks the message up before posting again.

Pure: ledger records and Slack messages as plain dicts. The ledger (adapters/ledger.py) stores
the records, the Slack adapter (adapters/slack.py: post_once) does the I/O in this order.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import Any

EVENT_TYPE = "platform_ops_alert"
CLAIMED = "claimed"
ANNOUNCED = "announced"
DONE_STATES = frozenset({ANNOUNCED, "muted"})
# Slack stamps ts with its own clock: look this much around the claim in case the clocks differ.
CLOCK_SKEW_SECONDS = 300.0
# A post starts right after its claim; slack_sdk gives up on it well within this (timeouts,
# Retry-After waits and all), so Slack cannot have accepted it later.
POST_LIFETIME_SECONDS = 3600.0
# Posts again (each after a lookup) when a post failed in a way that may have reached Slack.
AMBIGUOUS_RETRIES = 2


class Step(enum.Enum):
    POST = "post"  # nothing claimed: claim, then post
    LOOKUP = "lookup"  # claimed, never confirmed: the post may have gone out
    DONE = "done"  # confirmed (or muted): nothing to send
    BUSY = "busy"  # claimed by another run that is still going: it is that run's to send
    FAIL = "fail"  # give up for now: the claim stays, and the next attempt looks first


def claim_record(now: float, run_id: str | None, root_run_id: str | None, channel: str,
                 thread_ts: str | None) -> dict[str, Any]:
    """Written before the post: when (bounds the lookup), by whom (a live run owns it), where
    (the lookup reads that channel and thread, even if the settings changed since)."""
    return {"state": CLAIMED, "claimed_at": now, "run_id": run_id, "root_run_id": root_run_id,
            "channel": channel, "thread_ts": thread_ts}


def confirmed_record(ts: str, channel: str, run_id: str | None, found: bool = False) -> dict[str, Any]:
    """Written after Slack's ok (or after the lookup found the message): ts anchors threads."""
    record = {"state": ANNOUNCED, "ts": ts, "channel": channel, "run_id": run_id}
    return {**record, "found_in_slack": True} if found else record


def is_claim(record: Mapping[str, Any] | None) -> bool:
    return bool(record) and record.get("state") == CLAIMED


def is_done(record: Mapping[str, Any] | None) -> bool:
    """Confirmed or muted; a record without a state but with a ts predates claims (a digest)."""
    if not record:
        return False
    return record.get("state") in DONE_STATES or ("state" not in record and bool(record.get("ts")))


def next_step(record: Mapping[str, Any] | None, root_run_id: str | None, owner_finished: bool) -> Step:
    """What to do about one message given its ledger record. A claim is looked up when it is this
    run's own (an op retry, a re-execution) or its run has ended; a live run's claim is left to it."""
    if is_done(record):
        return Step.DONE
    if not is_claim(record):
        return Step.POST
    if owner_finished or (root_run_id is not None and record.get("root_run_id") == root_run_id):
        return Step.LOOKUP
    return Step.BUSY


def after_lookup(found_ts: str | None) -> Step:
    """Found: it went out, confirm it. Not found: Slack never took it, post."""
    return Step.DONE if found_ts else Step.POST


def after_failed_post(maybe_sent: bool, attempt: int, retries: int = AMBIGUOUS_RETRIES) -> Step:
    """A post that failed before reaching Slack (refused, ok: false) is not retried here: nothing
    went out, the claim stays and the next attempt posts. One that may have reached Slack (5xx, a
    connection broken after sending, a read timeout) is looked up before posting again: never a
    blind retry."""
    return Step.LOOKUP if maybe_sent and attempt < retries else Step.FAIL


def lookup_window(claimed_at: float) -> tuple[str, str]:
    """conversations.history's `oldest` and `latest` for a claim: the post it guarded can only have
    been accepted in between, so the lookup reads a bounded slice of the channel however late the
    retry comes."""
    oldest = max(0.0, claimed_at - CLOCK_SKEW_SECONDS)
    return f"{oldest:.6f}", f"{claimed_at + POST_LIFETIME_SECONDS + CLOCK_SKEW_SECONDS:.6f}"


def metadata(key: str, **payload: Any) -> dict[str, Any]:
    """Slack message metadata naming what the message announces (values: str, number, bool)."""
    return {"event_type": EVENT_TYPE, "event_payload": {"key": key, **payload}}


def matching_ts(messages: Iterable[Mapping[str, Any]], key: str) -> str | None:
    """The ts of the message whose metadata names `key`, as conversations.history returns them."""
    for message in messages:
        meta = message.get("metadata") or {}
        if meta.get("event_type") == EVENT_TYPE and (meta.get("event_payload") or {}).get("key") == key:
            return message.get("ts")
    return None


def is_storm(pending: int, threshold: int, digest_record: Mapping[str, Any] | None) -> bool:
    """A digest once claimed keeps the run a storm: a re-execution that has fewer left to send
    still puts them in the digest's thread."""
    return bool(digest_record) or pending > threshold
