"""A local Slack-compatible Web API that keeps every message.

Implements what platform-ops calls with Slack's own checks and shapes: chat.postMessage (a bot
token is required, Block Kit limits are enforced: `invalid_blocks`; message metadata is kept),
conversations.history and conversations.replies (channel IDs only, newest first / thread oldest
first, oldest/latest/inclusive, limit and cursor paging with `has_more` and
`response_metadata.next_cursor`, metadata only with `include_all_metadata`), conversations.list
(name -> ID), auth.test. A channel is created by its first post, under the name it was posted
to, and gets a stable ID that posts accept too. Faults can be injected (HTTP 429 with
Retry-After, API errors, 500s, and a post that is kept but never answered ok: the connection
drops, a 500 comes back, or the poster is killed). `GET /` shows the messages as an operator would read them;
`GET /_sink/messages` returns them as JSON.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

MAX_BLOCKS, MAX_SECTION_CHARS, MAX_HEADER_CHARS, MAX_TEXT_CHARS = 50, 3000, 150, 40000
CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{8,}$")
BOT = {"user": "USANDBOXBOT", "bot_id": "BSANDBOX", "app_id": "ASANDBOX"}
# faults that answer instead of the API; the others act on a post the API accepted (or is sent)
ANSWER_FAULTS = {"rate_limit", "server_error", "error"}
POST_FAULTS = {"accept_and_drop", "accept_and_500", "accept_and_kill", "kill"}


@dataclass
class SinkState:
    messages: list[dict] = field(default_factory=list)
    channels: dict[str, str] = field(default_factory=dict)  # name -> ID, created by the first post
    requests: int = 0
    faults: list[dict] = field(default_factory=list)  # the first that matches a request is consumed
    lock: threading.Lock = field(default_factory=threading.Lock)
    last_ts: float = 0.0
    page_url: str = ""  # where the sink's page is served (permalinks point into it)

    def reset(self) -> None:
        with self.lock:
            self.messages.clear()
            self.channels.clear()
            self.faults.clear()
            self.requests = 0

    def next_ts(self) -> str:
        """Slack's ts: the time of the post, unique in the workspace (call under the lock)."""
        self.last_ts = max(time.time(), self.last_ts + 0.000001)
        return f"{self.last_ts:.6f}"


def channel_id_for(name: str) -> str:
    """A stable Slack-shaped channel ID for a name."""
    return "C" + hashlib.sha1(name.encode()).hexdigest()[:10].upper()


def blocks_problem(blocks: Any) -> str | None:
    """Why Slack would answer `invalid_blocks`, or None."""
    if not isinstance(blocks, list):
        return "blocks must be a list"
    if len(blocks) > MAX_BLOCKS:
        return f"{len(blocks)} blocks > {MAX_BLOCKS}"
    for i, block in enumerate(blocks):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind not in {"header", "section", "context", "divider", "actions", "rich_text", "image"}:
            return f"block {i}: unknown type {kind!r}"
        text = (block.get("text") or {}).get("text", "")
        if kind == "header" and len(text) > MAX_HEADER_CHARS:
            return f"block {i}: header longer than {MAX_HEADER_CHARS}"
        if kind == "section":
            if len(text) > MAX_SECTION_CHARS:
                return f"block {i}: section text longer than {MAX_SECTION_CHARS}"
            if len(block.get("fields") or []) > 10:
                return f"block {i}: more than 10 fields"
            if not text and not block.get("fields"):
                return f"block {i}: section needs text or fields"
    return None


def content_problem(text: Any, blocks: Any) -> dict | None:
    """Slack's answer to a post or an update whose text and blocks it refuses, or None."""
    if not text and not blocks:
        return {"ok": False, "error": "no_text"}
    if len(text or "") > MAX_TEXT_CHARS:
        return {"ok": False, "error": "msg_too_long"}
    if blocks is not None and (problem := blocks_problem(blocks)):
        return {"ok": False, "error": "invalid_blocks", "detail": problem}
    return None


def metadata_problem(metadata: Any) -> str | None:
    """Why Slack would answer `invalid_metadata_format`, or None."""
    if not isinstance(metadata, dict) or not isinstance(metadata.get("event_type"), str):
        return "metadata needs an event_type string"
    if not re.fullmatch(r"[A-Za-z0-9_]+", metadata["event_type"]):
        return "event_type: letters, digits and underscores"
    if not isinstance(metadata.get("event_payload"), dict):
        return "metadata needs an event_payload object"
    return None


def fault_matches(fault: dict, method: str, args: dict) -> bool:
    """`when` narrows a fault to some requests: method (posts by default for the post faults),
    the metadata's event_type, in a thread or not, text containing a string."""
    when = fault.get("when") or {}
    default_method = "chat.postMessage" if fault.get("kind") in POST_FAULTS else None
    if when.get("method", default_method) not in (None, method):
        return False
    meta = args.get("metadata") if isinstance(args.get("metadata"), dict) else {}
    if "event_type" in when and meta.get("event_type") != when["event_type"]:
        return False
    if "thread" in when and bool(args.get("thread_ts")) != bool(when["thread"]):
        return False
    return when.get("text_contains", "") in (args.get("text") or "")


def take_fault(faults: list[dict], method: str, args: dict) -> dict | None:
    """The first fault matching this request, consumed; `skip: N` lets N matches through first."""
    for i, fault in enumerate(faults):
        if not fault_matches(fault, method, args):
            continue
        if fault.get("skip", 0) > 0:
            fault["skip"] -= 1
            return None
        return faults.pop(i)
    return None


def _flag(value: Any) -> bool:
    return str(value).lower() in {"1", "true"}


def _cursor(ts: str) -> str:
    return base64.b64encode(f"next_ts:{ts}".encode()).decode()


def _from_cursor(cursor: str) -> str:
    """The ts a cursor continues from; ValueError if it is not one of ours."""
    text = base64.b64decode(cursor.encode(), validate=True).decode()
    if not text.startswith("next_ts:"):
        raise ValueError(cursor)
    return text.removeprefix("next_ts:")


def _limit(args: dict, default: int, maximum: int) -> int:
    return min(max(int(args.get("limit") or default), 1), maximum)


def in_window(ts: str, args: dict) -> bool:
    """oldest < ts < latest, or <= with `inclusive` (Slack ignores inclusive without a bound)."""
    value, inclusive = float(ts), _flag(args.get("inclusive"))
    oldest, latest = float(args.get("oldest") or 0), float(args.get("latest") or "inf")
    if inclusive:
        return oldest <= value <= latest
    return oldest < value < latest


def page(items: list[dict], args: dict, newest_first: bool, default: int, maximum: int) -> tuple[list[dict], str]:
    """One page of `items` (sorted as returned) after the cursor: (page, next_cursor or "")."""
    if args.get("cursor"):
        after = float(_from_cursor(args["cursor"]))
        items = [m for m in items if (float(m["ts"]) < after if newest_first else float(m["ts"]) > after)]
    size = _limit(args, default, maximum)
    chunk, more = items[:size], len(items) > size
    return chunk, _cursor(chunk[-1]["ts"]) if more else ""


def shape(message: dict, replies: list[dict], with_metadata: bool) -> dict:
    """A kept message as Slack's conversations.* methods return it."""
    out = {"type": "message", **BOT, "text": message["text"], "ts": message["ts"], "blocks": message["blocks"]}
    if message.get("thread_ts"):
        out.update(thread_ts=message["thread_ts"], parent_user_id=BOT["user"])
    elif replies:
        out.update(thread_ts=message["ts"], reply_count=len(replies), latest_reply=replies[-1]["ts"],
                   reply_users=[BOT["user"]], reply_users_count=1)
    if with_metadata and message.get("metadata"):
        out["metadata"] = message["metadata"]
    return out


def _replies(messages: Iterable[dict], channel_id: str, thread_ts: str) -> list[dict]:
    return sorted((m for m in messages if m["channel_id"] == channel_id and m.get("thread_ts") == thread_ts),
                  key=lambda m: float(m["ts"]))


class SlackApi:
    """The Web API methods over the sink's state: `call(method, args)` -> Slack's JSON answer."""

    def __init__(self, state: SinkState):
        self.state = state

    def call(self, method: str, args: dict) -> dict:
        handler = {"auth.test": self.auth_test, "chat.postMessage": self.post_message, "chat.update": self.update,
                   "chat.getPermalink": self.permalink,
                   "conversations.history": self.history, "conversations.replies": self.replies,
                   "conversations.list": self.list_channels}.get(method)
        if handler is None:
            return {"ok": False, "error": "unknown_method"}
        try:
            return handler(args)
        except (TypeError, ValueError):  # a bad limit, ts or cursor
            return {"ok": False, "error": "invalid_cursor" if args.get("cursor") else "invalid_arguments"}

    def auth_test(self, args: dict) -> dict:
        return {"ok": True, "team": "sandbox", "user": "platform-ops", "bot_id": BOT["bot_id"]}

    def _channel(self, channel: Any, create: bool) -> str | None:
        """A channel's ID from its ID, or (create=True, posts only) its name with or without '#'."""
        if not isinstance(channel, str) or not channel:
            return None
        if channel in self.state.channels.values():
            return channel
        if CHANNEL_ID.match(channel) or not create:
            return None
        name = channel.removeprefix("#")
        return self.state.channels.setdefault(name, channel_id_for(name))

    def post_message(self, args: dict) -> dict:
        blocks, metadata = args.get("blocks"), args.get("metadata")
        if isinstance(metadata, str):
            metadata = json.loads(metadata or "null")
        if refused := content_problem(args.get("text"), blocks):
            return refused
        if metadata is not None and (problem := metadata_problem(metadata)):
            return {"ok": False, "error": "invalid_metadata_format", "detail": problem}
        with self.state.lock:
            channel_id = self._channel(args.get("channel"), create=True)
            if channel_id is None:
                return {"ok": False, "error": "channel_not_found"}
            message = {"channel": args["channel"], "channel_id": channel_id, "ts": self.state.next_ts(),
                       "text": args.get("text", ""), "blocks": blocks or [], "thread_ts": args.get("thread_ts"),
                       "metadata": metadata,
                       "reply_broadcast": bool(args.get("thread_ts")) and _flag(args.get("reply_broadcast"))}
            self.state.messages.append(message)
        return {"ok": True, "channel": channel_id, "ts": message["ts"], "message": shape(message, [], True)}

    def update(self, args: dict) -> dict:
        """chat.update: the message at `ts` in `channel` (an ID, as Slack requires) says the new
        text and blocks; its edits are kept in order (`edits`) so the sink's page shows them."""
        blocks = args.get("blocks")
        if refused := content_problem(args.get("text"), blocks):
            return refused
        with self.state.lock:
            channel = args.get("channel")
            if not isinstance(channel, str) or channel not in self.state.channels.values():
                return {"ok": False, "error": "channel_not_found"}
            message = next((m for m in self.state.messages if m["channel_id"] == channel and m["ts"] == args.get("ts")),
                           None)
            if message is None:
                return {"ok": False, "error": "message_not_found"}
            message.setdefault("edits", []).append({"text": message["text"], "blocks": message["blocks"]})
            message.update(text=args.get("text", ""), blocks=blocks or [])
        return {"ok": True, "channel": channel, "ts": message["ts"], "text": message["text"]}

    def permalink(self, args: dict) -> dict:
        """chat.getPermalink: where the sink's page shows the message (its anchor)."""
        with self.state.lock:
            found = any(m["channel_id"] == args.get("channel") and m["ts"] == args.get("message_ts")
                        for m in self.state.messages)
            base = self.state.page_url
        if not found:
            return {"ok": False, "error": "message_not_found"}
        return {"ok": True, "channel": args["channel"],
                "permalink": f"{base}/archives/{args['channel']}/p{args['message_ts'].replace('.', '')}"}

    def history(self, args: dict) -> dict:
        """Top-level messages (thread replies stay in their threads), newest first."""
        with self.state.lock:
            channel_id = self._channel(args.get("channel"), create=False)
            if channel_id is None:
                return {"ok": False, "error": "channel_not_found"}
            kept = [m for m in self.state.messages if m["channel_id"] == channel_id]
            top = sorted((m for m in kept if (not m.get("thread_ts") or m.get("reply_broadcast"))
                          and in_window(m["ts"], args)),
                         key=lambda m: float(m["ts"]), reverse=True)
            chunk, cursor = page(top, args, newest_first=True, default=100, maximum=999)
            with_metadata = _flag(args.get("include_all_metadata"))
            messages = [shape(m, _replies(kept, channel_id, m["ts"]), with_metadata) for m in chunk]
        return _listing("messages", messages, cursor, pin_count=0)

    def replies(self, args: dict) -> dict:
        """A thread: its parent first, then its replies in the window, oldest first."""
        with self.state.lock:
            channel_id = self._channel(args.get("channel"), create=False)
            if channel_id is None:
                return {"ok": False, "error": "channel_not_found"}
            kept = [m for m in self.state.messages if m["channel_id"] == channel_id]
            asked = next((m for m in kept if m["ts"] == args.get("ts")), None)
            if asked is None:
                return {"ok": False, "error": "thread_not_found"}
            root = next(m for m in kept if m["ts"] == (asked.get("thread_ts") or asked["ts"]))
            thread = _replies(kept, channel_id, root["ts"])
            chunk, cursor = page([m for m in thread if in_window(m["ts"], args)], args, newest_first=False,
                                 default=1000, maximum=1000)
            with_metadata = _flag(args.get("include_all_metadata"))
            parent = [] if args.get("cursor") else [shape(root, thread, with_metadata)]
            messages = parent + [shape(m, [], with_metadata) for m in chunk]
        return _listing("messages", messages, cursor)

    def list_channels(self, args: dict) -> dict:
        with self.state.lock:
            channels = sorted(({"id": cid, "name": name, "is_channel": True, "is_private": False,
                                "is_archived": False, "is_member": True} for name, cid in self.state.channels.items()),
                              key=lambda c: c["id"])
        if args.get("cursor"):
            after = _from_cursor(args["cursor"])
            channels = [c for c in channels if c["id"] > after]
        size = _limit(args, 100, 1000)
        chunk = channels[:size]
        return _listing("channels", chunk, _cursor(chunk[-1]["id"]) if len(channels) > size else "")


def _listing(name: str, items: list[dict], cursor: str, **extra: Any) -> dict:
    """Slack's paged answer: has_more and response_metadata.next_cursor ("" on the last page)."""
    return {"ok": True, name: items, "has_more": bool(cursor), **extra,
            "response_metadata": {"next_cursor": cursor}}


class _Handler(BaseHTTPRequestHandler):
    state: SinkState

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, body: Any, content_type: str = "application/json",
              headers: dict[str, str] | None = None) -> None:
        data = body if isinstance(body, bytes) else (
            body.encode() if isinstance(body, str) else json.dumps(body).encode())
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        if "json" in (self.headers.get("Content-Type") or ""):
            return json.loads(raw or "{}")
        parsed = {k: v[0] for k, v in parse_qs(raw).items()}
        if isinstance(parsed.get("blocks"), str):
            parsed["blocks"] = json.loads(parsed["blocks"])
        return parsed

    def do_GET(self) -> None:
        url = urlparse(self.path)
        if url.path == "/_sink/messages":
            with self.state.lock:
                self._send(200, {"messages": list(self.state.messages), "requests": self.state.requests})
        elif url.path in ("/", "/index.html"):
            self._send(200, render_page(self.state.messages), "text/html; charset=utf-8")
        elif url.path.startswith("/api/"):
            self._api(url.path, {k: v[0] for k, v in parse_qs(url.query).items()})
        elif url.path.startswith("/archives/"):  # a permalink: the page, at the message
            self.send_response(302)
            self.send_header("Location", "/#p" + url.path.rsplit("/p", 1)[-1])
            self.end_headers()
        else:
            self._send(404, {"ok": False, "error": "unknown_method"})

    def do_POST(self) -> None:
        url = urlparse(self.path)
        if url.path == "/_sink/reset":
            self.state.reset()
            return self._send(200, {"ok": True})
        if url.path == "/_sink/faults":
            fault = self._body()
            with self.state.lock:
                self.state.faults.extend(dict(fault) for _ in range(int(fault.get("count", 1))))
            return self._send(200, {"ok": True})
        self._api(url.path, {**{k: v[0] for k, v in parse_qs(url.query).items()}, **self._body()})

    def _api(self, path: str, args: dict) -> None:
        method = path.rsplit("/", 1)[-1]
        with self.state.lock:
            self.state.requests += 1
            fault = take_fault(self.state.faults, method, args)
        kind = (fault or {}).get("kind")
        if kind == "rate_limit":
            return self._send(429, {"ok": False, "error": "ratelimited"},
                              headers={"Retry-After": str(fault.get("retry_after", 1))})
        if kind == "server_error":
            return self._send(500, "internal error", "text/plain")
        if fault and kind not in POST_FAULTS:
            return self._send(200, {"ok": False, "error": fault.get("error", "fatal_error")})
        if kind == "kill":  # the poster dies with its request in flight: Slack never takes it
            return self._kill(fault)
        problem = self._auth_problem(args)
        answer = {"ok": False, "error": problem} if problem else SlackApi(self.state).call(method, args)
        if kind == "accept_and_kill" and answer["ok"]:
            return self._kill(fault)  # kept, and the poster never reads the answer
        if kind == "accept_and_drop" and answer["ok"]:
            return None  # kept; the connection closes without an answer
        if kind == "accept_and_500" and answer["ok"]:
            return self._send(500, "internal error", "text/plain")  # kept, and a gateway's error answered
        self._send(200, answer)

    def _auth_problem(self, args: dict) -> str | None:
        in_args = args.pop("token", "")  # the token is never kept with a message
        token = self.headers.get("Authorization", "").removeprefix("Bearer ").strip() or in_args
        if not token:
            return "not_authed"
        return None if re.match(r"^xox[bpa]-", token) else "invalid_auth"

    def _kill(self, fault: dict) -> None:
        """SIGKILL the poster named by the fault (never the sink's own process), answer nothing."""
        pid = int(fault["pid"])
        if pid != os.getpid():
            os.kill(pid, signal.SIGKILL)


EMOJI = {":red_circle:": "🔴", ":white_check_mark:": "✅", ":rotating_light:": "🚨", ":warning:": "⚠️",
         ":no_entry:": "⛔", ":x:": "❌", ":rocket:": "🚀", ":rewind:": "⏪", ":repeat:": "🔁",
         ":hourglass:": "⌛", ":alarm_clock:": "⏰"}
SAFE_URL = re.compile(r"^(https?://|mailto:)", re.I)
SLACK_ENTITIES = {"&amp;": "&", "&lt;": "<", "&gt;": ">"}
HOLD = "\x00"  # marks a rendered piece kept aside while the rest is escaped and formatted


def _emoji(text: str) -> str:
    for code, char in EMOJI.items():
        text = text.replace(code, char)
    return text


def _decoded(text: str) -> str:
    """Slack's three entities (&amp; &lt; &gt;: what the product escapes) back to characters."""
    for entity, char in SLACK_ENTITIES.items():
        text = text.replace(entity, char)
    return text


def _plain(text: str) -> str:
    """Slack's text as HTML text: nothing in it is markup."""
    return html.escape(_emoji(_decoded(text)))


def _href(url: str) -> str:
    """A link target for the page: http(s) and mailto only (never `javascript:`), attribute-escaped."""
    url = _decoded(url)
    return html.escape(url) if SAFE_URL.match(url) else "#"


def _angle(inner: str) -> str:
    """One of Slack's `<...>` controls: a link, a user or channel mention, @here/@channel."""
    target, _, label = inner.partition("|")
    if target.startswith("@"):
        return f'<span class="mention">@{_plain(label or target[1:])}</span>'
    if target.startswith("#"):
        return f'<span class="mention">#{_plain(label or target[1:])}</span>'
    if target.startswith("!"):
        return f'<span class="mention">@{_plain(label or target[1:].split("^")[0])}</span>'
    if SAFE_URL.match(target):
        return f'<a href="{_href(target)}">{_inline(_plain(label or target))}</a>'
    return _plain(f"<{inner}>")


def _mrkdwn(text: str) -> str:
    """Slack's mrkdwn as HTML: `<...>` controls first (a literal `<` is `&lt;` in Slack's text),
    then everything else escaped, then code, bold, italic and strike on the escaped text, so no
    message text can become markup on the page."""
    held: list[str] = []

    def hold(piece: str) -> str:
        held.append(piece)
        return f"{HOLD}{len(held) - 1}{HOLD}"

    text = re.sub(r"<([^<>\n]*)>", lambda m: hold(_angle(m[1])), text.replace(HOLD, ""))
    out = _plain(text)
    out = re.sub(r"```\n?(.+?)```", lambda m: hold(f"<pre>{m[1]}</pre>"), out, flags=re.S)
    out = _inline(out).replace("\n", "<br>")
    while HOLD in out:  # held pieces may hold others (a link inside code)
        out = re.sub(f"{HOLD}(\\d+){HOLD}", lambda m: held[int(m[1])], out)
    return out


def _inline(out: str) -> str:
    """Code, bold, italic and strike on already escaped text (a link's label too, as Slack shows it)."""
    codes: list[str] = []

    def code(m: re.Match) -> str:
        codes.append(f"<code>{m[1]}</code>")
        return f"\x01{len(codes) - 1}\x01"

    out = re.sub(r"`([^`\n]+)`", code, out.replace("\x01", ""))
    out = re.sub(r"(?<![\w*])\*([^*\n]+)\*(?![\w*])", r"<b>\1</b>", out)
    out = re.sub(r"(?<![\w/])_([^_\n]+)_(?!\w)", r"<i>\1</i>", out)
    out = re.sub(r"(?<![\w~])~([^~\n]+)~(?![\w~])", r"<s>\1</s>", out)
    return re.sub("\x01(\\d+)\x01", lambda m: codes[int(m[1])], out)


def _text_object(obj: dict | None) -> str:
    """A Block Kit text object: mrkdwn rendered, plain_text shown as it is."""
    obj = obj or {}
    return _mrkdwn(obj.get("text", "")) if obj.get("type", "mrkdwn") == "mrkdwn" else _plain(obj.get("text", ""))


def _button(element: dict) -> str:
    label = _plain((element.get("text") or {}).get("text", ""))
    return f"<a class='button' href='{_href(element.get('url') or '')}'>{label}</a>"


def _render_block(block: dict) -> str:
    kind = block.get("type")
    if kind == "header":
        return f"<h3>{_plain((block.get('text') or {}).get('text', ''))}</h3>"
    if kind == "section":
        text = _text_object(block.get("text")) if block.get("text") else ""
        fields = "".join(f"<div class='field'>{_text_object(f)}</div>" for f in block.get("fields") or [])
        accessory = block.get("accessory") or {}
        extra = _button(accessory) if accessory.get("type") == "button" else ""
        return f"<div class='section'>{text}<div class='fields'>{fields}</div>{extra}</div>"
    if kind == "context":
        elements = " · ".join(_plain(e.get("alt_text", "")) if e.get("type") == "image" else _text_object(e)
                              for e in block.get("elements", []))
        return f"<div class='context'>{elements}</div>"
    if kind == "actions":
        buttons = "".join(_button(e) for e in block.get("elements", []) if e.get("type", "button") == "button")
        return f"<div class='actions'>{buttons}</div>"
    if kind == "divider":
        return "<hr>"
    if kind == "image":
        return f"<img src='{_href(block.get('image_url') or '')}' alt='{_plain(block.get('alt_text', ''))}'>"
    return f"<pre>{html.escape(json.dumps(block))}</pre>"


def anchor(ts: str) -> str:
    """A message's HTML id: Slack's permalink form, p + the ts without its dot (see GET /archives/)."""
    return "p" + ts.replace(".", "")


def _body(message: dict) -> str:
    return "".join(_render_block(b) for b in message.get("blocks") or []) or _mrkdwn(message.get("text", ""))


def _render_message(message: dict, note: str = "", with_id: bool = True) -> str:
    """One message as Slack shows it: the bot, the time, its current content, "(edited)" when
    chat.update changed it (the earlier versions folded under it)."""
    when = time.strftime("%H:%M:%S", time.localtime(float(message["ts"])))
    edits = message.get("edits") or []
    edited = (f" <span class='edited' title='edited {len(edits)} time{'s' if len(edits) != 1 else ''}'>"
              "(edited)</span>") if edits else ""
    earlier = ""
    if edits:
        versions = "".join(f"<div class='version'>{_body(e)}</div>" for e in reversed(edits))
        earlier = (f"<details class='edits'><summary>{len(edits)} earlier version{'s' if len(edits) != 1 else ''}"
                   f"</summary>{versions}</details>")
    attr = f" id='{anchor(message['ts'])}'" if with_id else ""
    return (f"<div class='msg'{attr}><div class='meta'><b>platform-ops</b> <span class='app'>APP</span> "
            f"<a class='time' href='#{anchor(message['ts'])}'>{when}</a>{edited}{note}</div>"
            f"{_body(message)}{earlier}</div>")


def _channel_name(messages: list[dict]) -> str:
    names = [m["channel"] for m in messages if not CHANNEL_ID.match(str(m.get("channel", "")).lstrip("#"))]
    return "#" + (names[0] if names else messages[0]["channel_id"]).lstrip("#")


def _render_channel(messages: list[dict]) -> str:
    """A channel as Slack lays it out: top-level messages oldest first (the newest at the bottom),
    each thread folded under its parent ("N replies"), a reply sent to the channel too
    (reply_broadcast) also in the channel, marked "replied to a thread"."""
    ordered = sorted(messages, key=lambda m: float(m["ts"]))
    parents = {m["ts"] for m in ordered if not m.get("thread_ts")}
    threads: dict[str, list[dict]] = {}
    for m in ordered:
        if m.get("thread_ts") and m["thread_ts"] in parents:
            threads.setdefault(m["thread_ts"], []).append(m)
    items = []
    for m in ordered:
        parent = m.get("thread_ts")
        if not parent:
            items.append(_render_message(m) + _render_thread(threads.get(m["ts"], [])))
        elif m.get("reply_broadcast") or parent not in parents:  # in the channel too, or its parent is gone
            note = f" <a class='replied' href='#{anchor(parent)}'>replied to a thread</a>"
            items.append(_render_message(m, note))
    return (f"<section class='channel'><h2>{_plain(_channel_name(ordered))}</h2>{''.join(items)}</section>")


def _render_thread(replies: list[dict]) -> str:
    if not replies:
        return ""
    last = time.strftime("%H:%M:%S", time.localtime(float(replies[-1]["ts"])))
    body = "".join(_render_message(r, " <span class='also'>also sent to the channel</span>", with_id=False)
                   if r.get("reply_broadcast") else _render_message(r) for r in replies)
    return (f"<details class='thread'><summary>{len(replies)} repl{'ies' if len(replies) != 1 else 'y'}"
            f" <span class='last'>last reply {last}</span></summary>{body}</details>")


def render_page(messages: list[dict]) -> str:
    """The sink's page: each channel as Slack shows it, threads under their parents; refreshed
    every 10 s, and a permalink (/#p<ts>) lands on its message."""
    channels: dict[str, list[dict]] = {}
    for m in messages:
        channels.setdefault(m["channel_id"], []).append(m)
    body = "".join(_render_channel(kept) for kept in channels.values())
    return f"""<!doctype html><html><head><meta charset="utf-8"><meta http-equiv="refresh" content="10">
<title>platform-ops sandbox Slack</title><style>
body{{font-family:system-ui,sans-serif;max-width:900px;margin:2em auto;color:#1d1c1d}}
.msg{{border:1px solid #ddd;border-radius:8px;padding:12px 16px;margin:12px 0}}
.msg:target{{background:#fff8e1;border-color:#e8a400}}
.meta{{color:#616061;font-size:12px}} .meta b{{color:#1d1c1d}} .time{{color:#616061}}
.app{{background:#eee;border-radius:2px;font-size:10px;padding:0 3px}} .edited,.also{{color:#868686}}
.context{{color:#616061;font-size:13px;margin-top:6px}}
.section{{margin:6px 0}} .fields{{display:grid;grid-template-columns:1fr 1fr;gap:4px}}
code{{background:#f4f4f4;padding:0 3px;border-radius:3px}} pre{{background:#f8f8f8;padding:8px;overflow:auto}}
.mention{{background:#e8f5fa;color:#1264a3}}
.button{{border:1px solid #bbb;border-radius:4px;padding:3px 10px;margin-right:6px;text-decoration:none}}
details.thread{{margin:-6px 0 12px 24px}} details.thread>summary{{color:#1264a3;cursor:pointer;font-weight:600}}
details.thread .msg{{border-left:3px solid #ddd}} .last{{color:#868686;font-weight:normal}}
details.edits{{color:#868686;font-size:12px}} .version{{opacity:.7;border-top:1px dashed #ddd}}
</style></head><body><h2>Sandbox Slack: {len(messages)} message{'s' if len(messages) != 1 else ''}</h2>
<p><a href="#newest">newest at the bottom</a></p>
{body or '<p>No messages yet.</p>'}<div id="newest"></div></body></html>"""


class SlackSink:
    """The sink as a background HTTP server on 127.0.0.1."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.state = SinkState()
        handler = type("Handler", (_Handler,), {"state": self.state})
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="slack-sink")
        self.state.page_url = self.url

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def api_url(self) -> str:
        """What SLACK_API_URL should be (slack_sdk appends the method name)."""
        return f"{self.url}/api/"

    def start(self) -> SlackSink:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def go_down(self) -> None:
        """Slack unreachable: nothing listens on the port (connection refused) until `come_back`."""
        self.stop()

    def come_back(self) -> None:
        """Listen again on the same address, with the same messages."""
        address = self._server.server_address[:2]
        self._server = ThreadingHTTPServer(address, self._server.RequestHandlerClass)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="slack-sink")
        self._thread.start()
