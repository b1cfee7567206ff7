"""The Slack sink answers like Slack's Web API, through the real slack_sdk client."""

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from platform_ops.adapters.slack import PlatformSlackResource, SlackError
from platform_ops.messages import SlackMessage
from platform_ops.sandbox.server import SANDBOX_TOKEN
from platform_ops.sandbox.slack_sink import render_page


def test_post_message_is_kept_and_rendered(world):
    slack = PlatformSlackResource(token=SANDBOX_TOKEN, base_url=world.sandbox.sink.api_url)
    msg = SlackMessage("fallback", ({"type": "header", "text": {"type": "plain_text", "text": "Reaper"}},
                                    {"type": "section", "text": {"type": "mrkdwn", "text": "*3* jobs <@U0ALICE>"}}))
    assert slack.post("#alerts", msg)["channel"] == "#alerts"
    [kept] = world.messages
    assert kept["text"] == "fallback" and kept["blocks"][1]["text"]["text"] == "*3* jobs <@U0ALICE>"
    page = render_page(world.messages)
    assert "<h3>Reaper</h3>" in page and "<b>3</b>" in page and "@U0ALICE" in page


def test_slack_rules_are_enforced(world):
    client = WebClient(token=SANDBOX_TOKEN, base_url=world.sandbox.sink.api_url)
    too_many = [{"type": "section", "text": {"type": "mrkdwn", "text": "x"}}] * 51
    with pytest.raises(SlackApiError, match="invalid_blocks"):
        client.chat_postMessage(channel="#a", text="t", blocks=too_many)
    with pytest.raises(SlackApiError, match="invalid_blocks"):
        client.chat_postMessage(channel="#a", text="t", blocks=[{"type": "section", "text": {"type": "mrkdwn", "text": "x" * 3001}}])
    with pytest.raises(SlackApiError, match="invalid_auth"):
        WebClient(token="not-a-token", base_url=world.sandbox.sink.api_url).chat_postMessage(channel="#a", text="t")
    assert world.messages == []


def test_rate_limit_without_retries_left_is_a_clear_error(world):
    world.sandbox.sink.state.faults.extend([{"kind": "rate_limit", "retry_after": 0}] * 2)
    slack = PlatformSlackResource(token=SANDBOX_TOKEN, base_url=world.sandbox.sink.api_url, rate_limit_retries=1)
    with pytest.raises(SlackError, match="ratelimited") as err:
        slack.post("#alerts", SlackMessage("hi"))
    assert SANDBOX_TOKEN not in str(err.value)
    assert world.sandbox.sink.state.requests == 2
