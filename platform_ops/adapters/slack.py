"""Slack: a dagster-slack compatible resource whose WebClient can point at any base URL.

The token is only ever handed to slack_sdk; it is not logged, returned or put in metadata.
"""

from __future__ import annotations

import time
from typing import Any

from dagster_slack import SlackResource
from pydantic import Field
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)

from platform_ops.messages import SlackMessage

SLACK_API_URL = WebClient.BASE_URL


class PlatformSlackResource(SlackResource):
    """dagster-slack's SlackResource plus a configurable base URL and HTTP 429 handling."""

    base_url: str = Field(default=SLACK_API_URL, description="Slack Web API base URL.")
    rate_limit_retries: int = Field(default=3, description="Retries of a 429, each after Retry-After.")

    def get_client(self) -> WebClient:
        client = WebClient(token=self.token, base_url=self.base_url, timeout=15)
        client.retry_handlers = [
            ConnectionErrorRetryHandler(max_retry_count=2),
            RateLimitErrorRetryHandler(max_retry_count=self.rate_limit_retries),
            ServerErrorRetryHandler(max_retry_count=2),
        ]
        return client

    def post(self, channel: str, message: SlackMessage, thread_ts: str | None = None) -> dict[str, Any]:
        """chat.postMessage (in a thread when `thread_ts`), retrying 429s after Retry-After and
        5xx a few times; SlackError when it is not sent."""
        try:
            response = self.get_client().chat_postMessage(
                channel=channel, text=message.text, blocks=list(message.blocks) or None, thread_ts=thread_ts,
            )
        except SlackApiError as exc:
            raise SlackError(f"chat.postMessage to {channel}: {exc.response.get('error', 'error')}") from None
        except (OSError, ValueError) as exc:  # URLError, timeouts, bad URL
            raise SlackError(f"chat.postMessage to {channel}: {type(exc).__name__}: {exc}") from None
        return {"channel": response.get("channel"), "ts": response.get("ts")}


class SlackError(RuntimeError):
    """A message Slack did not accept; the text never contains the token."""


class Pacer:
    """`with pacer: post(...)` keeps posts at least `interval` seconds apart, counted from the
    end of the previous post, so Slack never sees two inside one interval (its limit is about
    one message per second per channel)."""

    def __init__(self, interval: float):
        self.interval, self._last = interval, None

    def __enter__(self) -> "Pacer":
        if self._last is not None:
            delay = self.interval - (time.monotonic() - self._last)
            if delay > 0:
                time.sleep(delay)
        return self

    def __exit__(self, *exc: object) -> None:
        self._last = time.monotonic()
