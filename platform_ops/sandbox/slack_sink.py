"""A local Slack-compatible Web API that keeps every message.

Implements what platform-ops calls (chat.postMessage, auth.test) with Slack's own checks: a bot
token is required, Block Kit limits are enforced (`invalid_blocks`), and faults can be injected
(HTTP 429 with Retry-After, API errors, 500s) to rehearse Slack misbehaving. `GET /` shows the
messages as an operator would read them; `GET /_sink/messages` returns them as JSON.
"""

from __future__ import annotations

import html
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

MAX_BLOCKS, MAX_SECTION_CHARS, MAX_HEADER_CHARS, MAX_TEXT_CHARS = 50, 3000, 150, 40000


@dataclass
class SinkState:
    messages: list[dict] = field(default_factory=list)
    requests: int = 0
    faults: list[dict] = field(default_factory=list)  # consumed in order
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self.lock:
            self.messages.clear()
            self.faults.clear()
            self.requests = 0


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
        path = urlparse(self.path).path
        if path == "/_sink/messages":
            with self.state.lock:
                self._send(200, {"messages": list(self.state.messages), "requests": self.state.requests})
        elif path in ("/", "/index.html"):
            self._send(200, render_page(self.state.messages), "text/html; charset=utf-8")
        else:
            self._send(404, {"ok": False, "error": "unknown_method"})

    def do_POST(self) -> None:
        path = urlparse(self.path).path
        if path == "/_sink/reset":
            self.state.reset()
            return self._send(200, {"ok": True})
        if path == "/_sink/faults":
            fault = self._body()
            with self.state.lock:
                self.state.faults.extend([fault] * int(fault.get("count", 1)))
            return self._send(200, {"ok": True})
        method = path.rsplit("/", 1)[-1]
        body = self._body()
        with self.state.lock:
            self.state.requests += 1
            fault = self.state.faults.pop(0) if self.state.faults else None
        if fault:
            if fault.get("kind") == "rate_limit":
                return self._send(429, {"ok": False, "error": "ratelimited"},
                                  headers={"Retry-After": str(fault.get("retry_after", 1))})
            if fault.get("kind") == "server_error":
                return self._send(500, "internal error", "text/plain")
            return self._send(200, {"ok": False, "error": fault.get("error", "fatal_error")})
        auth = self.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ").strip() or body.get("token", "")
        if not token:
            return self._send(200, {"ok": False, "error": "not_authed"})
        if not re.match(r"^xox[bpa]-", token):
            return self._send(200, {"ok": False, "error": "invalid_auth"})
        if method == "auth.test":
            return self._send(200, {"ok": True, "team": "sandbox", "user": "platform-ops", "bot_id": "BSANDBOX"})
        if method != "chat.postMessage":
            return self._send(200, {"ok": False, "error": "unknown_method"})
        channel = body.get("channel")
        if not channel:
            return self._send(200, {"ok": False, "error": "channel_not_found"})
        blocks = body.get("blocks")
        if not body.get("text") and not blocks:
            return self._send(200, {"ok": False, "error": "no_text"})
        if len(body.get("text") or "") > MAX_TEXT_CHARS:
            return self._send(200, {"ok": False, "error": "msg_too_long"})
        if blocks is not None:
            problem = blocks_problem(blocks)
            if problem:
                return self._send(200, {"ok": False, "error": "invalid_blocks", "detail": problem})
        with self.state.lock:
            ts = f"{time.time():.6f}"
            message = {"channel": channel, "ts": ts, "text": body.get("text", ""), "blocks": blocks or [],
                       "thread_ts": body.get("thread_ts")}
            self.state.messages.append(message)
        self._send(200, {"ok": True, "channel": channel, "ts": ts, "message": message})


EMOJI = {":red_circle:": "🔴", ":white_check_mark:": "✅", ":rotating_light:": "🚨", ":warning:": "⚠️"}


def _emoji(text: str) -> str:
    for code, char in EMOJI.items():
        text = text.replace(code, char)
    return text


def _mrkdwn(text: str) -> str:
    """Enough of Slack's mrkdwn for an operator to read the message as Slack would show it."""
    out = html.escape(_emoji(html.unescape(text)), quote=False)
    out = re.sub(r"&lt;(https?://[^|&]+)\|([^&]+)&gt;", r'<a href="\1">\2</a>', out)
    out = re.sub(r"&lt;@(\w+)&gt;", r'<span class="mention">@\1</span>', out)
    out = re.sub(r"```(.+?)```", r"<pre>\1</pre>", out, flags=re.S)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*([^*\n]+)\*", r"<b>\1</b>", out)
    out = re.sub(r"(?<![\w/])_([^_\n]+)_(?!\w)", r"<i>\1</i>", out)
    return out.replace("\n", "<br>")


def _render_block(block: dict) -> str:
    kind = block.get("type")
    text = (block.get("text") or {}).get("text", "")
    if kind == "header":
        return f"<h3>{html.escape(_emoji(text))}</h3>"
    if kind == "section":
        fields = "".join(f"<div class='field'>{_mrkdwn(f.get('text', ''))}</div>" for f in block.get("fields") or [])
        return f"<div class='section'>{_mrkdwn(text)}<div class='fields'>{fields}</div></div>"
    if kind == "context":
        return "<div class='context'>" + " · ".join(_mrkdwn(e.get("text", "")) for e in block.get("elements", [])) + "</div>"
    if kind == "actions":
        return "<div class='actions'>" + "".join(
            f"<a class='button' href='{html.escape(e.get('url', '#'))}'>{html.escape((e.get('text') or {}).get('text', ''))}</a>"
            for e in block.get("elements", [])) + "</div>"
    if kind == "divider":
        return "<hr>"
    return f"<pre>{html.escape(json.dumps(block))}</pre>"


def render_page(messages: list[dict]) -> str:
    items = []
    for m in reversed(messages):
        body = "".join(_render_block(b) for b in m["blocks"]) or _mrkdwn(m["text"])
        when = time.strftime("%H:%M:%S", time.localtime(float(m["ts"])))
        items.append(f"<div class='msg'><div class='meta'>{html.escape(m['channel'])} · {when}</div>{body}</div>")
    return f"""<!doctype html><html><head><meta charset="utf-8"><meta http-equiv="refresh" content="10">
<title>platform-ops sandbox Slack</title><style>
body{{font-family:system-ui,sans-serif;max-width:900px;margin:2em auto;color:#1d1c1d}}
.msg{{border:1px solid #ddd;border-radius:8px;padding:12px 16px;margin:12px 0}}
.meta{{color:#616061;font-size:12px}} .context{{color:#616061;font-size:13px;margin-top:6px}}
.section{{margin:6px 0}} .fields{{display:grid;grid-template-columns:1fr 1fr;gap:4px}}
code{{background:#f4f4f4;padding:0 3px;border-radius:3px}} pre{{background:#f8f8f8;padding:8px;overflow:auto}}
.mention{{background:#e8f5fa;color:#1264a3}} .button{{border:1px solid #bbb;border-radius:4px;padding:3px 10px;margin-right:6px;text-decoration:none}}
</style></head><body><h2>Sandbox Slack: {len(messages)} message{'s' if len(messages) != 1 else ''}</h2>
{''.join(items) or '<p>No messages yet.</p>'}</body></html>"""


class SlackSink:
    """The sink as a background HTTP server on 127.0.0.1."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.state = SinkState()
        handler = type("Handler", (_Handler,), {"state": self.state})
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="slack-sink")

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def api_url(self) -> str:
        """What SLACK_API_URL should be (slack_sdk appends the method name)."""
        return f"{self.url}/api/"

    def start(self) -> "SlackSink":
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
