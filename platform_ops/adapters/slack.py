"""Slack: a dagster-slack compatible resource whose WebClient can point at any base URL, and
`post_once`, the exactly-once post (claim, post with metadata, confirm; look up a lost answer).

The token is only ever handed to slack_sdk; it is not logged, returned or put in metadata.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.error import URLError

from dagster_slack import SlackResource
from pydantic import Field
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)
from slack_sdk.models.metadata import Metadata

from platform_ops import exactly_once
from platform_ops.adapters.ledger import Ledger
from platform_ops.messages import SlackMessage
from platform_ops.redaction import redact, redact_data

SLACK_API_URL = WebClient.BASE_URL
CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{8,}$")
HISTORY_PAGE = 200  # conversations.history/replies page size (Slack's maximum is 999)


class PlatformSlackResource(SlackResource):
    """dagster-slack's SlackResource plus a configurable base URL and HTTP 429 handling."""

    base_url: str = Field(default=SLACK_API_URL, description="Slack Web API base URL.")
    rate_limit_retries: int = Field(default=3, description="Retries of a 429, each after Retry-After.")

    def get_client(self) -> WebClient:
        """For reads: every connection error, 429 and 5xx is retried (reading twice is harmless)."""
        client = WebClient(token=self.token, base_url=self.base_url, timeout=15)
        client.retry_handlers = [
            ConnectionErrorRetryHandler(max_retry_count=2),
            RateLimitErrorRetryHandler(max_retry_count=self.rate_limit_retries),
            ServerErrorRetryHandler(max_retry_count=2),
        ]
        return client

    def _posting_client(self) -> WebClient:
        """For posts: only what Slack cannot have taken is retried here (urllib could not connect
        or send: URLError; a 429). A 5xx or a connection broken after sending may have posted: a
        blind retry could post twice, so post_once looks the message up first."""
        client = WebClient(token=self.token, base_url=self.base_url, timeout=15)
        client.retry_handlers = [
            ConnectionErrorRetryHandler(max_retry_count=2, error_types=[URLError]),
            RateLimitErrorRetryHandler(max_retry_count=self.rate_limit_retries),
        ]
        return client

    def post(self, channel: str, message: SlackMessage, thread_ts: str | None = None,
             metadata: dict[str, Any] | None = None, broadcast: bool = False) -> dict[str, Any]:
        """chat.postMessage (in a thread when `thread_ts`, also shown in the channel when
        `broadcast`, with message metadata when given), retrying 429s after Retry-After and refused
        connections; SlackError when it is not sent (`maybe_sent` when it may have been). Text and
        blocks are redacted on the way out: staging text went into them."""
        with _slack_errors("chat.postMessage to", channel):
            response = self._posting_client().chat_postMessage(
                channel=channel, text=redact(message.text), blocks=redact_data(list(message.blocks)) or None,
                thread_ts=thread_ts, reply_broadcast=True if thread_ts and broadcast else None,
                metadata=Metadata(**metadata) if metadata else None,
            )
        return {"channel": response.get("channel"), "ts": response.get("ts")}

    def update(self, channel: str, ts: str, message: SlackMessage) -> None:
        """chat.update: the message at `ts` says `message` now (redacted like a post). Sending the
        same update twice leaves the same message, so a retry may repeat it freely."""
        client = self.get_client()
        with _slack_errors("chat.update in", channel):
            channel_id = self.channel_id(client, channel)
            if channel_id is None:
                raise SlackError(f"chat.update in {channel}: channel_not_found")
            client.chat_update(channel=channel_id, ts=ts, text=redact(message.text),
                               blocks=redact_data(list(message.blocks)) or None)

    def find_posted(self, channel: str, key: str, oldest: str, latest: str, thread_ts: str | None = None) -> str | None:
        """The ts of the message whose metadata names `key`, posted between `oldest` and `latest`
        (in the thread of `thread_ts` if given), or None; every page is read (slack_sdk's cursor
        iteration). Needs channels:history (groups:history for a private channel)."""
        client = self.get_client()
        with _slack_errors("looking up a post in", channel):
            channel_id = self.channel_id(client, channel)
            if channel_id is None:
                return None
            window = dict(channel=channel_id, oldest=oldest, latest=latest, inclusive=True,
                          include_all_metadata=True, limit=HISTORY_PAGE)
            try:
                pages = (client.conversations_replies(ts=thread_ts, **window) if thread_ts else
                         client.conversations_history(**window))
                return next((ts for page in pages if (ts := exactly_once.matching_ts(page["messages"], key))), None)
            except SlackApiError as exc:
                if exc.response.get("error") == "thread_not_found":  # no thread: nothing was posted in it
                    return None
                raise

    def permalinks(self, channel: str, stamps: list[str]) -> dict[str, str]:
        """chat.getPermalink for each ts (the channel resolved once): links an operator clicks from
        the Dagster UI. Best effort: a ts Slack does not answer for is left out."""
        client = self.get_client()
        links: dict[str, str] = {}
        with _slack_errors("permalinks in", channel):
            channel_id = self.channel_id(client, channel)
            for ts in stamps if channel_id else ():
                try:
                    links[ts] = client.chat_getPermalink(channel=channel_id, message_ts=ts)["permalink"]
                except SlackApiError:
                    continue
        return links

    @staticmethod
    def channel_id(client: WebClient, channel: str) -> str | None:
        """conversations.history wants the channel's ID: a name is resolved with conversations.list
        (channels:read, groups:read). Settings that give the ID skip this."""
        if CHANNEL_ID.match(channel):
            return channel
        name = channel.removeprefix("#")
        pages = client.conversations_list(types="public_channel,private_channel", exclude_archived=True, limit=1000)
        return next((c["id"] for page in pages for c in page["channels"] if c.get("name") == name), None)


class SlackError(RuntimeError):
    """A call Slack did not answer ok; the text never contains the token. `maybe_sent`: the
    request reached Slack and its outcome is unknown (a 5xx, a connection broken after sending,
    a read timeout), so a post may have gone out."""

    def __init__(self, text: str, maybe_sent: bool = False):
        super().__init__(text)
        self.maybe_sent = maybe_sent


@contextmanager
def _slack_errors(what: str, channel: str) -> Iterator[None]:
    """slack_sdk's and urllib's errors as SlackError, naming the call and the channel only."""
    try:
        yield
    except SlackApiError as exc:
        status = exc.response.status_code
        error = exc.response.get("error", "error") if isinstance(exc.response.data, dict) else f"HTTP {status}"
        raise SlackError(f"{what} {channel}: {error}", maybe_sent=status >= 500) from None
    except URLError as exc:  # could not connect or send: Slack never had the request
        raise SlackError(f"{what} {channel}: {type(exc).__name__}: {exc}") from None
    except OSError as exc:  # the request went out; the answer did not come back
        raise SlackError(f"{what} {channel}: {type(exc).__name__}: {exc}", maybe_sent=True) from None
    except ValueError as exc:  # a bad URL or answer
        raise SlackError(f"{what} {channel}: {type(exc).__name__}: {exc}") from None


@dataclass(frozen=True)
class Delivery:
    """How post_once ended: `posted`, `found` (an earlier attempt's post, its answer lost),
    `already` (confirmed before), `busy` (another live run claimed it); the message's ts."""

    how: str
    ts: str | None


def next_step(ledger: Ledger, record: dict | None, root_run_id: str | None) -> exactly_once.Step:
    """exactly_once.next_step, asking the instance whether a claim's run has ended."""
    owner_finished = exactly_once.is_claim(record) and ledger.run_finished(record.get("run_id"))
    return exactly_once.next_step(record, root_run_id, owner_finished)


def post_once(slack: PlatformSlackResource, ledger: Ledger, key: str, channel: str, message: SlackMessage, *,
              run_id: str | None, root_run_id: str | None, thread_ts: str | None = None,
              payload: dict[str, Any] | None = None, broadcast: bool = False) -> Delivery:
    """Claim `key` in the ledger, post with metadata naming it, confirm after Slack's ok. A claim
    left unconfirmed (a crash, a lost answer) is looked up in Slack first: one message, however
    the previous attempt ended. SlackError when Slack cannot be posted to or read."""
    record = ledger.get(key)
    step = next_step(ledger, record, root_run_id)
    if step is exactly_once.Step.DONE:
        return Delivery("already", record.get("ts"))
    if step is exactly_once.Step.BUSY:
        return Delivery("busy", None)
    qualified = ledger.qualified(key)
    if step is exactly_once.Step.LOOKUP:
        found = _look_up(slack, record, qualified, channel)
        if exactly_once.after_lookup(found) is exactly_once.Step.DONE:
            ledger.put(key, **exactly_once.confirmed_record(found, record.get("channel", channel), run_id, found=True))
            return Delivery("found", found)
    claim = exactly_once.claim_record(time.time(), run_id, root_run_id, channel, thread_ts)
    ledger.put(key, **claim)
    ts, found = _post_looking_first(slack, claim, qualified, message,
                                    exactly_once.metadata(qualified, **(payload or {})), broadcast)
    ledger.put(key, **exactly_once.confirmed_record(ts, channel, run_id, found=found))
    return Delivery("found" if found else "posted", ts)


def _look_up(slack: PlatformSlackResource, claim: dict, qualified: str, channel: str) -> str | None:
    """The claimed message in the channel (and thread) the claim names, within its window."""
    oldest, latest = exactly_once.lookup_window(claim["claimed_at"])
    return slack.find_posted(claim.get("channel", channel), qualified, oldest, latest, claim.get("thread_ts"))


def _post_looking_first(slack: PlatformSlackResource, claim: dict, qualified: str, message: SlackMessage,
                        metadata: dict, broadcast: bool = False) -> tuple[str, bool]:
    """Post; after a failure that may have reached Slack, look it up before posting again.
    (ts, whether it was found rather than posted)."""
    attempt = 0
    while True:
        try:
            return slack.post(claim["channel"], message, thread_ts=claim["thread_ts"], metadata=metadata,
                              broadcast=broadcast)["ts"], False
        except SlackError as exc:
            if exactly_once.after_failed_post(exc.maybe_sent, attempt) is exactly_once.Step.FAIL:
                raise
        found = _look_up(slack, claim, qualified, claim["channel"])
        if exactly_once.after_lookup(found) is exactly_once.Step.DONE:
            return found, True
        attempt += 1


class Pacer:
    """`with pacer: post(...)` keeps posts at least `interval` seconds apart, counted from the
    end of the previous post, so Slack never sees two inside one interval (its limit is about
    one message per second per channel)."""

    def __init__(self, interval: float):
        self.interval, self._last = interval, None

    def __enter__(self) -> Pacer:
        if self._last is not None:
            delay = self.interval - (time.monotonic() - self._last)
            if delay > 0:
                time.sleep(delay)
        return self

    def __exit__(self, *exc: object) -> None:
        self._last = time.monotonic()
