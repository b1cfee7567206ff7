"""Secrets out of everything platform-ops writes: audit records, run metadata, logs, Slack.

Text that comes from staging (lint output, failure causes, log lines, status reasons) is data
an attacker may control, and it may carry a secret it should never have seen. It is scrubbed
where it enters (the adapters) and again where records leave (Slack posts, S3 records):

- every secret value this process holds: the standard environment (`SLACK_BOT_TOKEN`, AWS keys
  and session token) and the assumed-role credentials the AWS adapter obtained (`remember`);
- anything shaped like a credential: AWS access key ids (`AKIA…`, `ASIA…`), Slack tokens
  (`xoxb-…`, `xoxp-…`, `xoxa-…`, `xoxr-…`, `xoxe…`, `xapp-…`), and the value after
  `aws_secret_access_key` / `aws_session_token` / `SecretAccessKey` / `SessionToken` /
  `secret_key` / `token` (`=` or `:`; botocore's credential objects print the last two).

Encodings (base64, URL-encoding, a secret split across lines) are not undone: with the lint
isolated, staging code never sees a secret to encode; this is the last line for accidents.
"""

from __future__ import annotations

import os
import re
import threading
from typing import Any

REDACTED = "[redacted]"
SECRET_ENV = ("SLACK_BOT_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")
MIN_SECRET_LENGTH = 8  # shorter values would redact ordinary words

_SHAPES = re.compile(
    r"(?<![A-Za-z0-9])(?:AKIA|ASIA|AROA|AIDA|ANPA|AGPA)[A-Z0-9]{16}(?![A-Za-z0-9])"
    r"|(?:xox[abpre]|xapp)-[A-Za-z0-9-]{8,}"
)
_ASSIGNED = re.compile(
    r"(?i)(aws_secret_access_key|aws_session_token|secret_?access_?key|secret_?key|session_?token|security_?token"
    r"|(?<![a-z])token)"
    r"(\s*[\"']?\s*[:=]\s*[\"']?)[A-Za-z0-9/+=]{8,}"
)

# Cheap first look (substring tests run at memory speed, a regex scan ~50x slower): text that
# holds none of these (most of a history's megabytes) skips the patterns.
_MARKERS = ("AKIA", "ASIA", "AROA", "AIDA", "ANPA", "AGPA", "xoxa-", "xoxb-", "xoxp-", "xoxr-", "xoxe", "xapp-",
            "ecret", "ECRET", "oken", "OKEN")

_remembered: set[str] = set()
_lock = threading.Lock()
_compiled: tuple[frozenset, tuple[str, ...]] = (frozenset(), ())


def remember(*values: str | None) -> None:
    """Secret values obtained at run time (assumed-role keys, tokens), scrubbed from then on."""
    with _lock:
        _remembered.update(v for v in values if v and len(v) >= MIN_SECRET_LENGTH)


def _known() -> tuple[str, ...]:
    """The secret values to scrub, longest first (a secret containing another goes whole)."""
    global _compiled
    values = frozenset(v for v in (os.environ.get(k) for k in SECRET_ENV) if v and len(v) >= MIN_SECRET_LENGTH)
    with _lock:
        values |= _remembered
        if values != _compiled[0]:
            _compiled = (values, tuple(sorted(values, key=len, reverse=True)))
        return _compiled[1]


def redact(text: str) -> str:
    """`text` with every known secret and credential-shaped string replaced by [redacted]."""
    return _redact(text, _known())


def redact_data(value: Any) -> Any:
    """`redact` applied to every string in nested dicts, lists and tuples (keys included)."""
    return _walk(value, _known())


def _redact(text: str, secrets: tuple[str, ...]) -> str:
    if not text:
        return text
    for secret in secrets:
        if secret in text:  # a substring test per secret: far cheaper than one big alternation
            text = text.replace(secret, REDACTED)
    if any(marker in text for marker in _MARKERS):
        text = _SHAPES.sub(REDACTED, text)
        text = _ASSIGNED.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
    return text


def _walk(value: Any, secrets: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        return _redact(value, secrets)
    if isinstance(value, dict):
        return {_walk(k, secrets): _walk(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_walk(v, secrets) for v in value)
    return value
