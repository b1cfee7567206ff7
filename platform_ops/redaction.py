"""Secrets out of everything platform-ops writes: audit records, run metadata, logs, Slack.

Text that comes from staging (lint output, failure causes, log lines, status reasons) is data
an attacker may control, and it may carry a secret it should never have seen. It is scrubbed
where it enters (the adapters) and again where records leave (Slack posts, S3 records):

- every secret value this process holds: the standard environment (`SLACK_BOT_TOKEN`, AWS keys
  and session token) and the assumed-role credentials the AWS adapter obtained (`remember`);
- anything shaped like a credential: AWS access key ids (`AKIA…`, `ASIA…`), Slack tokens
  (`xoxb-…`, `xoxp-…`, `xoxa-…`, `xoxr-…`), and the value after `aws_secret_access_key` /
  `aws_session_token` / `SecretAccessKey` / `SessionToken` (`=` or `:`).
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
    r"|xox[abpr]-[A-Za-z0-9-]{8,}"
)
_ASSIGNED = re.compile(
    r"(?i)(aws_secret_access_key|aws_session_token|secret_?access_?key|session_?token)"
    r"(\W{0,2}\s*[:=]\s*\W{0,2})[A-Za-z0-9/+=]{8,}"
)

_remembered: set[str] = set()
_lock = threading.Lock()
_compiled: tuple[frozenset, re.Pattern | None] = (frozenset(), None)


def remember(*values: str | None) -> None:
    """Secret values obtained at run time (assumed-role keys, tokens), scrubbed from then on."""
    with _lock:
        _remembered.update(v for v in values if v and len(v) >= MIN_SECRET_LENGTH)


def _known() -> re.Pattern | None:
    global _compiled
    values = frozenset(v for v in (os.environ.get(k) for k in SECRET_ENV) if v and len(v) >= MIN_SECRET_LENGTH)
    with _lock:
        values |= _remembered
        if values != _compiled[0]:  # longest first, so a secret containing another is scrubbed whole
            ordered = sorted(values, key=len, reverse=True)
            _compiled = (values, re.compile("|".join(map(re.escape, ordered))) if ordered else None)
        return _compiled[1]


def redact(text: str) -> str:
    """`text` with every known secret and credential-shaped string replaced by [redacted]."""
    if not text:
        return text
    known = _known()
    if known is not None:
        text = known.sub(REDACTED, text)
    text = _SHAPES.sub(REDACTED, text)
    return _ASSIGNED.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)


def redact_data(value: Any) -> Any:
    """`redact` applied to every string in nested dicts, lists and tuples (keys included)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact_data(k): redact_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_data(v) for v in value)
    return value
