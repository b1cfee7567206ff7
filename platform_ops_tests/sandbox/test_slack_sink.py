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
    posted = slack.post("#alerts", msg)
    [kept] = world.messages
    assert posted["channel"] == kept["channel_id"] and posted["channel"].startswith("C")  # Slack answers the ID
    assert kept["channel"] == "#alerts" and kept["text"] == "fallback"
    assert kept["blocks"][1]["text"]["text"] == "*3* jobs <@U0ALICE>"
    page = render_page(world.messages)
    assert "<h3>Reaper</h3>" in page and "<b>3</b>" in page and "@U0ALICE" in page


def test_slack_rules_are_enforced(world):
    client = WebClient(token=SANDBOX_TOKEN, base_url=world.sandbox.sink.api_url)
    too_many = [{"type": "section", "text": {"type": "mrkdwn", "text": "x"}}] * 51
    with pytest.raises(SlackApiError, match="invalid_blocks"):
        client.chat_postMessage(channel="#a", text="t", blocks=too_many)
    with pytest.raises(SlackApiError, match="invalid_blocks"):
        client.chat_postMessage(channel="#a", text="t",
                                blocks=[{"type": "section", "text": {"type": "mrkdwn", "text": "x" * 3001}}])
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


# -- conversations.* with message metadata, as Slack answers them --------------------------------

@pytest.fixture
def sink():
    from platform_ops.sandbox.slack_sink import SlackSink

    box = SlackSink().start()
    yield box
    box.stop()


def _client(sink) -> WebClient:
    return WebClient(token=SANDBOX_TOKEN, base_url=sink.api_url)


def _meta(key: str) -> dict:
    return {"event_type": "platform_ops_alert", "event_payload": {"key": key, "n": 1}}


def test_history_returns_top_level_messages_newest_first_with_metadata_only_when_asked(sink):
    client = _client(sink)
    first = client.chat_postMessage(channel="#alerts", text="first", metadata=_meta("k1"))
    reply = client.chat_postMessage(channel="#alerts", text="reply", thread_ts=first["ts"], metadata=_meta("k2"))
    second = client.chat_postMessage(channel="alerts", text="second")  # the same channel without '#'
    assert first["channel"] == second["channel"] == reply["channel"]
    plain = client.conversations_history(channel=first["channel"])
    assert [m["text"] for m in plain["messages"]] == ["second", "first"]  # the reply stays in its thread
    assert all("metadata" not in m for m in plain["messages"])
    assert plain["has_more"] is False and plain["response_metadata"]["next_cursor"] == ""
    parent = client.conversations_history(channel=first["channel"], include_all_metadata=True)["messages"][1]
    assert parent["metadata"] == _meta("k1") and parent["ts"] == first["ts"]
    assert parent["reply_count"] == 1 and parent["thread_ts"] == first["ts"] and parent["bot_id"]
    thread = client.conversations_replies(channel=first["channel"], ts=first["ts"], include_all_metadata=True)
    assert [(m["text"], m["metadata"]["event_payload"]["key"]) for m in thread["messages"]] == [
        ("first", "k1"), ("reply", "k2")]
    assert all("metadata" not in m for m in
               client.conversations_replies(channel=first["channel"], ts=first["ts"])["messages"])


def test_history_pages_with_limit_cursor_and_has_more_and_bounds_by_oldest_and_latest(sink):
    client = _client(sink)
    ts = [client.chat_postMessage(channel="#alerts", text=f"m{i}")["ts"] for i in range(7)]
    channel = client.conversations_list()["channels"][0]["id"]
    first = client.conversations_history(channel=channel, limit=3)
    assert [m["text"] for m in first["messages"]] == ["m6", "m5", "m4"] and first["has_more"] is True
    pages = [[m["text"] for m in page["messages"]] for page in client.conversations_history(channel=channel, limit=3)]
    assert pages == [["m6", "m5", "m4"], ["m3", "m2", "m1"], ["m0"]]  # slack_sdk follows next_cursor
    window = client.conversations_history(channel=channel, oldest=ts[1], latest=ts[4])
    assert [m["text"] for m in window["messages"]] == ["m3", "m2"]  # both bounds exclusive
    inclusive = client.conversations_history(channel=channel, oldest=ts[1], latest=ts[4], inclusive=True)
    assert [m["text"] for m in inclusive["messages"]] == ["m4", "m3", "m2", "m1"]
    with pytest.raises(SlackApiError, match="invalid_cursor"):
        client.conversations_history(channel=channel, cursor="not-a-cursor")


def test_a_thread_pages_oldest_first_with_its_parent_on_the_first_page(sink):
    client = _client(sink)
    parent = client.chat_postMessage(channel="#alerts", text="digest")
    for i in range(5):
        client.chat_postMessage(channel="#alerts", text=f"r{i}", thread_ts=parent["ts"])
    pages = [[m["text"] for m in page["messages"]]
             for page in client.conversations_replies(channel=parent["channel"], ts=parent["ts"], limit=2)]
    assert pages == [["digest", "r0", "r1"], ["r2", "r3"], ["r4"]]
    with pytest.raises(SlackApiError, match="thread_not_found"):
        client.conversations_replies(channel=parent["channel"], ts="1.000000")


def test_history_wants_a_channel_id_as_slack_does(sink):
    client = _client(sink)
    posted = client.chat_postMessage(channel="#alerts", text="hi")
    for channel in ("#alerts", "alerts", "C0000000000"):
        with pytest.raises(SlackApiError, match="channel_not_found"):
            client.conversations_history(channel=channel)
    assert client.chat_postMessage(channel=posted["channel"], text="by id")["channel"] == posted["channel"]
    [listed] = client.conversations_list(types="public_channel,private_channel")["channels"]
    assert listed["id"] == posted["channel"] and listed["name"] == "alerts"
    with pytest.raises(SlackApiError, match="invalid_metadata_format"):
        client.chat_postMessage(channel="#alerts", text="t", metadata={"event_type": "has space", "event_payload": {}})
    assert len(sink.state.messages) == 2


def test_accept_and_drop_keeps_the_post_and_answers_nothing(sink):
    """The product's client must not retry a post whose answer was lost: Slack has it."""
    sink.state.faults.append({"kind": "accept_and_drop", "when": {"event_type": "platform_ops_alert"}})
    slack = PlatformSlackResource(token=SANDBOX_TOKEN, base_url=sink.api_url)
    slack.post("#alerts", SlackMessage("no metadata: not matched"))
    with pytest.raises(SlackError, match="RemoteDisconnected"):
        slack.post("#alerts", SlackMessage("lost answer"), metadata=_meta("k"))
    assert [m["text"] for m in sink.state.messages] == ["no metadata: not matched", "lost answer"]
    assert sink.state.faults == []


def test_skip_lets_matching_posts_through_before_the_fault(sink):
    sink.state.faults.append({"kind": "accept_and_drop", "when": {"thread": True}, "skip": 1})
    slack = PlatformSlackResource(token=SANDBOX_TOKEN, base_url=sink.api_url)
    parent = slack.post("#alerts", SlackMessage("parent"))
    slack.post("#alerts", SlackMessage("reply 1"), thread_ts=parent["ts"])
    with pytest.raises(SlackError):
        slack.post("#alerts", SlackMessage("reply 2"), thread_ts=parent["ts"])
    slack.post("#alerts", SlackMessage("reply 3"), thread_ts=parent["ts"])
    assert [m["text"] for m in sink.state.messages] == ["parent", "reply 1", "reply 2", "reply 3"]


POSTER = """
import sys
from slack_sdk import WebClient
client = WebClient(token=sys.argv[2], base_url=sys.argv[1])
sys.stdin.readline()  # posts once the test has armed the fault with this pid
print("answer", client.chat_postMessage(channel="#alerts", text="from the poster")["ts"], flush=True)
"""


@pytest.mark.parametrize("kind, kept", [("accept_and_kill", 1), ("kill", 0)])
def test_the_poster_is_killed_with_its_request_in_flight(sink, kind, kept):
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", POSTER, sink.api_url, SANDBOX_TOKEN], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    sink.state.faults.append({"kind": kind, "pid": proc.pid})
    out, _ = proc.communicate("go\n", timeout=120)
    assert proc.returncode == -signal.SIGKILL and "answer" not in out
    assert len(sink.state.messages) == kept
