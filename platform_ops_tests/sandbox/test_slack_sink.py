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


# -- the sink's page: a channel as Slack lays it out ---------------------------------------------

def _page_of(sink) -> str:
    return render_page(list(sink.state.messages))


def _between(page: str, start: str, end: str) -> str:
    return page[page.index(start):page.index(end, page.index(start))]


def test_the_page_nests_each_thread_under_its_parent_newest_at_the_bottom(sink):
    import re

    client = _client(sink)
    first = client.chat_postMessage(channel="#alerts", text="first incident")
    second = client.chat_postMessage(channel="#alerts", text="second incident")
    replies = [client.chat_postMessage(channel="#alerts", text=f"answer-{i}", thread_ts=first["ts"])
               for i in range(3)]
    page = _page_of(sink)
    # Slack's channel order: the newest top-level message at the bottom; replies stay in the thread
    assert page.index("first incident") < page.index("second incident")
    thread = _between(page, "<details class='thread'>", "</details>")
    assert "3 replies" in thread and re.findall(r"answer-\d", thread) == ["answer-0", "answer-1", "answer-2"]
    assert "second incident" not in thread and page.index(thread) < page.index("second incident")
    # every message has Slack's permalink anchor, once
    for ts in (first["ts"], second["ts"], *(r["ts"] for r in replies)):
        assert page.count(f"id='p{ts.replace('.', '')}'") == 1
    assert page.count("<details class='thread'>") == 1  # no thread under the message without replies


def test_a_broadcast_reply_is_in_its_thread_and_in_the_channel(sink):
    client = _client(sink)
    parent = client.chat_postMessage(channel="#alerts", text="DemoFlow failed")
    client.chat_postMessage(channel="#alerts", text="quiet reply", thread_ts=parent["ts"])
    loud = client.chat_postMessage(channel="#alerts", text="still failing", thread_ts=parent["ts"],
                                   reply_broadcast=True)
    page = _page_of(sink)
    thread = _between(page, "<details class='thread'>", "</details>")
    assert "2 replies" in thread and "still failing" in thread and "also sent to the channel" in thread
    after_thread = page[page.index(thread) + len(thread):]
    assert "still failing" in after_thread and "quiet reply" not in after_thread
    assert f"href='#p{parent['ts'].replace('.', '')}'>replied to a thread" in after_thread
    assert page.count(f"id='p{loud['ts'].replace('.', '')}'") == 1  # the anchor on the channel's copy


def test_an_updated_message_shows_its_current_content_marked_edited(sink):
    client = _client(sink)
    posted = client.chat_postMessage(channel="#alerts", text="DemoFlow failed",
                                     blocks=[{"type": "section", "text": {"type": "mrkdwn", "text": "1 failed run"}}])
    client.chat_postMessage(channel="#alerts", text="untouched")
    for n in (2, 3):
        client.chat_update(channel=posted["channel"], ts=posted["ts"], text="DemoFlow failing",
                           blocks=[{"type": "section", "text": {"type": "mrkdwn", "text": f"{n} failed runs"}}])
    page = _page_of(sink)
    updated = _between(page, f"id='p{posted['ts'].replace('.', '')}'", "untouched")
    current = updated[:updated.index("<details class='edits'>")]
    assert "3 failed runs" in current and "(edited)" in current and "1 failed run" not in current
    assert "2 earlier versions" in updated and updated.index("2 failed runs") < updated.index("1 failed run")
    assert page.count("(edited)") == 1  # the other message was never updated


def test_message_text_never_becomes_markup_on_the_page():
    hostile = [
        {"channel": "#alerts", "channel_id": "CALERTS0001", "ts": "1700000000.000001", "thread_ts": None,
         "text": "x", "blocks": [
             {"type": "header", "text": {"type": "plain_text", "text": "<script>alert(1)</script>"}},
             {"type": "section", "text": {"type": "mrkdwn",
                                          "text": '*bold <img src=x onerror=alert(2)>* `<b>code</b>` '
                                                  '<https://ok.example/?a=1&amp;b="q|a "label">'},
              "fields": [{"type": "mrkdwn", "text": "<javascript:alert(3)|click>"}]},
             {"type": "actions", "elements": [{"type": "button", "text": {"type": "plain_text", "text": "<i>go</i>"},
                                               "url": "javascript:alert(4)"}]},
             {"type": "context", "elements": [{"type": "mrkdwn", "text": "&lt;not a link&gt; <@U0ALICE>"}]},
         ]},
        {"channel": "#alerts", "channel_id": "CALERTS0001", "ts": "1700000001.000001", "thread_ts": None,
         "text": "</div><script>alert(5)</script>", "blocks": []},
    ]
    page = render_page(hostile)
    body = page[page.index("<body>"):]
    assert "<script" not in body and "<img" not in body  # tags in text are text
    assert "href='javascript" not in body and 'href="javascript' not in body and "<i>go</i>" not in body
    assert '<a href="https://ok.example/?a=1&amp;b=&quot;q">a &quot;label&quot;</a>' in body  # the URL kept, quoted
    assert "<b>bold" in body and "<code>&lt;b&gt;code&lt;/b&gt;</code>" in body
    assert "&lt;not a link&gt;" in body and '<span class="mention">@U0ALICE</span>' in body
    assert "&lt;/div&gt;&lt;script&gt;" in body


def test_block_kit_renders_header_fields_context_and_buttons_as_links():
    message = {"channel": "#alerts", "channel_id": "CALERTS0001", "ts": "1700000000.000001", "thread_ts": None,
               "text": "fallback", "blocks": [
                   {"type": "header", "text": {"type": "plain_text", "text": ":rotating_light: DemoFlow failed"}},
                   {"type": "section", "fields": [{"type": "mrkdwn", "text": "*Owner*\n<@U0ALICE>"},
                                                  {"type": "mrkdwn", "text": "*Run*\n<https://m.example/r|sfn-1>"}]},
                   {"type": "section", "text": {"type": "mrkdwn", "text": "• <https://c.example/j|`job-1`> `ab12`"}},
                   {"type": "context", "elements": [{"type": "mrkdwn", "text": "_production_"}]},
                   {"type": "actions", "elements": [{"type": "button", "text": {"type": "plain_text", "text": "Logs"},
                                                     "url": "https://logs.example/x?a=1&b=2"}]}]}
    page = render_page([message])
    assert "<h3>🚨 DemoFlow failed</h3>" in page
    assert "<div class='field'><b>Owner</b><br><span class=\"mention\">@U0ALICE</span></div>" in page
    assert '<a href="https://m.example/r">sfn-1</a>' in page and "<i>production</i>" in page
    assert '• <a href="https://c.example/j"><code>job-1</code></a> <code>ab12</code>' in page  # code in a link label
    assert "<a class='button' href='https://logs.example/x?a=1&amp;b=2'>Logs</a>" in page
    assert "#alerts" in page and "fallback" not in page  # the blocks are what Slack shows
