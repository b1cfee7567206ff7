"""AWS misbehaving, on purpose: throttling, a broken role, mangled execution histories.

A WSGI layer in front of moto that the fault suite arms through `POST /_sandbox/aws-faults`.
Errors have the shape each protocol's real service sends, so botocore parses and retries them
exactly as it would against AWS:

  {"kind": "throttle", "services": ["batch", "states", "monitoring"], "pattern": ".x..x..x.."}
      calls to each service are throttled as the pattern says, one character per call, repeated
      ("x" throttled, "." through), each service on its own count. SPREAD (the default) is 3 of
      every 10, never two in a row; BURSTS is the same 30% the way AWS's token buckets do it,
      several calls in a row while the bucket is empty. Retries are counted: a request whose
      `amz-sdk-request` header says attempt > 1. Step Functions' own calls into Batch (moto's
      interpreter signs them with key "ak") are left alone: AWS retries its integrations, moto's
      callback client never does, so one refusal would fail the run itself.
  {"kind": "deny-assume-role", "account": "222222222222"}
      sts:AssumeRole into that account is AccessDenied (its role's trust policy is broken)
  {"kind": "mangle-history", "execution": "<name>", "how": "malformed" | "cause-not-json" | "oversized"}
      GetExecutionHistory of that execution comes back damaged
  {"kind": "fail-operation", "service": "states", "operation": "StartExecution", "match": "222222222222",
   "code": "AccessDeniedException", "times": 1}
      calls of one operation (whose body or path contains `match`, if given) answer `code`, `times`
      times (default: until reset); a code botocore does not retry fails the caller's step at once
  {"kind": "quotas", "scale": 1.0}
      every account gets AWS's per-API token buckets, an empty bucket answers the service's
      throttling error (quotas.py; counters at GET /_sandbox/quota-counters)
"""

from __future__ import annotations

import io
import json
import re
import threading
from typing import Any
from urllib.parse import parse_qs

SPREAD = ".x..x..x.."  # 3 of 10, never two in a row: one retry always gets through
BURSTS = "xx.....xxx.x........"  # 6 of 20 (30%), up to 3 in a row, from the first call: a bucket empties, refills
_ATTEMPT = re.compile(r"attempt=(\d+)")
_INTERNAL = "Credential=ak/"  # moto's Step Functions interpreter calling a service integration
# service (signing name) -> (HTTP status, error code, extra headers) as that service answers
THROTTLE_SHAPES = {
    "batch": (429, "TooManyRequestsException", {}),  # rest-json: x-amzn-ErrorType
    "states": (400, "ThrottlingException", {}),  # json 1.0: __type
    "monitoring": (400, "Throttling", {"x-amzn-query-error": "Throttling;Sender"}),  # json, query-compatible
    "logs": (400, "ThrottlingException", {}),
    "ecs": (400, "ThrottlingException", {}),
}
MANGLES = ("malformed", "cause-not-json", "oversized")
_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/[^/]+/([^/]+)/aws4_request")


class AwsFaults:
    def __init__(self, quotas: Any) -> None:
        """`quotas`: the QuotaLayer (quotas.py builds on this module, so the server hands it in)."""
        self._lock = threading.Lock()
        self.failures = OperationFailures()
        self.quotas = quotas
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.patterns: dict[str, str] = {}  # service -> its throttle pattern
            self.throttled: dict[str, int] = {}  # service -> calls seen
            self.throttle_count: dict[str, int] = {}  # service -> calls throttled
            self.retry_count: dict[str, int] = {}  # service -> calls that were retries (attempt > 1)
            self.denied_accounts: set[str] = set()
            self.mangled: dict[str, str] = {}  # execution name -> how
            self.failures.reset()
            self.quotas.reset()

    def arm(self, fault: dict) -> None:
        kind = fault.get("kind")
        with self._lock:
            if kind == "throttle":
                unknown = set(fault["services"]) - set(THROTTLE_SHAPES)
                if unknown:
                    raise ValueError(f"cannot throttle {sorted(unknown)}: known {sorted(THROTTLE_SHAPES)}")
                pattern = fault.get("pattern", SPREAD)
                if not isinstance(pattern, str) or not pattern or set(pattern) - {"x", "."}:
                    raise ValueError(f"throttle pattern: 'x' (throttled) and '.' (through), got {pattern!r}")
                for service in fault["services"]:
                    self.patterns[service] = pattern
                    self.throttled.setdefault(service, 0)
                    self.throttle_count.setdefault(service, 0)
                    self.retry_count.setdefault(service, 0)
            elif kind == "deny-assume-role":
                self.denied_accounts.add(str(fault["account"]))
            elif kind == "mangle-history":
                if fault.get("how") not in MANGLES:
                    raise ValueError(f"mangle-history: how must be one of {MANGLES}")
                self.mangled[fault["execution"]] = fault["how"]
            elif kind == "fail-operation":
                self.failures.arm(fault)
            elif kind == "quotas":
                self.quotas.arm(fault)
            else:
                raise ValueError(f"unknown AWS fault kind {kind!r}")

    def counts(self) -> dict[str, int]:
        """Calls throttled, per service."""
        with self._lock:
            return dict(self.throttle_count)

    def retries(self) -> dict[str, int]:
        """Calls to a throttled service that were a client's retry, per service."""
        with self._lock:
            return dict(self.retry_count)

    def wrap(self, app: Any) -> Any:
        def middleware(environ: dict, start_response: Any) -> Any:
            match = _SCOPE.search(environ.get("HTTP_AUTHORIZATION", ""))
            service = match.group(1) if match else ""
            internal = _INTERNAL in environ.get("HTTP_AUTHORIZATION", "")
            refused = self.quotas.answer(service, environ, start_response)
            if refused is not None:
                return refused
            if service in self.throttled and not internal and self._throttle_now(
                    service, environ.get("HTTP_AMZ_SDK_REQUEST", "")):
                return _error(start_response, service, *THROTTLE_SHAPES[service])
            failed = self.failures.answer(service, environ, start_response)
            if failed is not None:
                return failed
            if service == "sts" and self.denied_accounts:
                body = _buffer(environ)
                role = (parse_qs(body.decode()).get("RoleArn") or [""])[0]
                if any(f":{account}:" in role for account in self.denied_accounts):
                    return _sts_denied(start_response, role)
            if service == "states" and self.mangled and environ.get("HTTP_X_AMZ_TARGET", "").endswith(
                    ".GetExecutionHistory"):
                arn = json.loads(_buffer(environ) or b"{}").get("executionArn", "")
                how = self.mangled.get(arn.rsplit(":", 1)[-1])
                if how:
                    return _mangled(app, environ, start_response, how)
            return app(environ, start_response)

        return middleware

    def _throttle_now(self, service: str, sdk_request: str) -> bool:
        attempt = _ATTEMPT.search(sdk_request)
        with self._lock:
            if attempt and int(attempt.group(1)) > 1:
                self.retry_count[service] += 1
            n, pattern = self.throttled[service], self.patterns[service]
            self.throttled[service] = n + 1
            if pattern[n % len(pattern)] == "x":
                self.throttle_count[service] += 1
                return True
            return False


def _buffer(environ: dict) -> bytes:
    """Read the request body and put it back for moto."""
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    environ["wsgi.input"] = io.BytesIO(body)
    return body


def _respond(start_response: Any, status: int, body: bytes, headers: dict[str, str]) -> list[bytes]:
    reason = {400: "Bad Request", 403: "Forbidden", 429: "Too Many Requests"}.get(status, "OK")
    start_response(f"{status} {reason}", [*headers.items(), ("Content-Length", str(len(body)))])
    return [body]


def _error(start_response: Any, service: str, status: int, code: str, extra: dict[str, str]) -> list[bytes]:
    body = json.dumps({"__type": code, "message": "Rate exceeded"}).encode()
    headers = {"Content-Type": "application/x-amz-json-1.0", "x-amzn-ErrorType": code, **extra}
    return _respond(start_response, status, body, headers)


def _sts_denied(start_response: Any, role: str) -> list[bytes]:
    body = ("<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type>"
            "<Code>AccessDenied</Code><Message>User: arn:aws:iam::111111111111:user/platform-ops is not "
            f"authorized to perform: sts:AssumeRole on resource: {role}</Message></Error>"
            "<RequestId>sandbox</RequestId></ErrorResponse>").encode()
    return _respond(start_response, 403, body, {"Content-Type": "text/xml"})


def _mangled(app: Any, environ: dict, start_response: Any, how: str) -> list[bytes]:
    captured: dict[str, Any] = {}

    def capture(status: str, headers: list, exc_info: Any = None) -> Any:
        captured.update(status=status, headers=headers)
        return lambda data: None

    page = json.loads(b"".join(app(environ, capture)) or b"{}")
    page["events"] = mangle(page.get("events", []), how)
    body = json.dumps(page).encode()
    headers = [(k, v) for k, v in captured["headers"] if k.lower() != "content-length"]
    start_response(captured["status"], [*headers, ("Content-Length", str(len(body)))])
    return [body]


def mangle(events: list[dict], how: str) -> list[dict]:
    """What a damaged history looks like: details missing and an event type nobody knows
    (malformed); failure causes cut short the way Step Functions truncates them at 32 KiB
    (cause-not-json); a failure whose error and cause are huge (oversized)."""
    out = []
    for event in events:
        event = dict(event)
        details = [k for k in event if k.endswith("EventDetails")]
        if how == "malformed":
            for key in details:
                if event["id"] % 2 == 0 or "Failed" in key:
                    event.pop(key)
            event.pop("previousEventId", None)
        for key in details:
            detail = event.get(key)
            if not isinstance(detail, dict) or "cause" not in detail:
                continue
            if how == "cause-not-json":
                detail = {**detail, "cause": (detail.get("cause") or "{")[:40] + "... [truncated]"}
            elif how == "oversized":
                detail = {**detail, "error": "E" * 5000, "cause": json.dumps({"StatusReason": "x " * 40_000})}
            event[key] = detail
        out.append(event)
    if how == "malformed":
        out.append({"id": len(out) + 1, "type": "SomethingNewFromAws", "timestamp": out[-1]["timestamp"] if out else 0})
    return out


# ---- fail-operation: one operation answers an error, so each step of a run can fail on its own ----

FAILURE_STATUS = {"AccessDeniedException": 400, "AccessDenied": 403, "InternalError": 500,
                  "ServiceUnavailable": 503}


def _operation(service: str, environ: dict) -> str:
    """The API operation of a request: X-Amz-Target for JSON protocols, method + key for S3 objects."""
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    if target:
        return target.rsplit(".", 1)[-1]
    if service == "batch":  # rest-json: POST /v1/canceljobs is CancelJobs (compared without case)
        return environ.get("PATH_INFO", "").removeprefix("/v1/")
    if "/operation/" in environ.get("PATH_INFO", ""):  # smithy-rpc-v2-cbor (CloudWatch): .../operation/PutMetricData
        return environ["PATH_INFO"].rsplit("/operation/", 1)[1]
    if service == "s3" and environ.get("PATH_INFO", "").strip("/").count("/") >= 1 and not environ.get("QUERY_STRING"):
        return {"GET": "GetObject", "PUT": "PutObject", "HEAD": "HeadObject"}.get(environ.get("REQUEST_METHOD", ""), "")
    return ""


class OperationFailures:
    """Armed `fail-operation` rules: service, operation, optional `match`, code, calls left."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.rules: list[dict[str, Any]] = []

    def arm(self, fault: dict) -> None:
        rule = {"service": fault["service"], "operation": fault["operation"], "match": fault.get("match", ""),
                "code": fault.get("code", "AccessDenied" if fault["service"] == "s3" else "AccessDeniedException"),
                "left": fault.get("times")}
        if rule["code"] not in FAILURE_STATUS:
            raise ValueError(f"fail-operation: code must be one of {sorted(FAILURE_STATUS)}")
        with self._lock:
            self.rules.append(rule)

    def answer(self, service: str, environ: dict, start_response: Any) -> list[bytes] | None:
        """The error for this request if a rule takes it, else None (moto answers)."""
        if not self.rules:
            return None
        operation = _operation(service, environ)
        candidates = [r for r in self.rules if (r["service"], r["operation"].lower()) == (service, operation.lower())]
        if not candidates:
            return None
        seen = _buffer(environ).decode(errors="replace") + environ.get("PATH_INFO", "")
        with self._lock:
            rule = next((r for r in candidates if r["match"] in seen and r["left"] != 0), None)
            if rule is None:
                return None
            if rule["left"] is not None:
                rule["left"] -= 1
        return _failure(start_response, service, operation, rule["code"])


def _failure(start_response: Any, service: str, operation: str, code: str) -> list[bytes]:
    message = f"sandbox fault: {operation} fails"
    status = FAILURE_STATUS[code]
    if service == "s3":  # rest-xml
        body = (f"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{message}</Message>"
                "<RequestId>sandbox</RequestId></Error>").encode()
        return _respond(start_response, status, body, {"Content-Type": "application/xml"})
    body = json.dumps({"__type": code, "message": message}).encode()
    return _respond(start_response, status, body, {"Content-Type": "application/x-amz-json-1.0",
                                                   "x-amzn-ErrorType": code})
