"""AWS's API rate quotas in the sandbox: every account gets the per-API token buckets AWS has.

Opt-in (a scale bench arms it, ordinary tests never see it): `POST /_sandbox/aws-faults
{"kind": "quotas", "scale": 1.0}`; a reset disarms it. A call whose bucket is empty is answered
with that service's own throttling error (aws_faults.THROTTLE_SHAPES), so botocore retries it
as it would against AWS, and the bench learns whether a sweep fits the account's budget.

`scale` multiplies every bucket's size and refill, so a test gets tight buckets (0.01: a
ListExecutions bucket of 2); `refill_scale` (default: `scale`) sets the refill apart, so a burst
can be exact while refill is slow. Buckets are keyed by (account, region, bucket): an account's
burst never empties another account's bucket. Batch has one bucket per account for all its APIs.
APIs missing from QUOTAS are not throttled. Step Functions' own calls into Batch (moto's
interpreter, key "ak") are exempt, as in aws_faults: AWS retries its integrations, moto does not.

The table: AWS service quotas documentation, gathered 2026-12 (re-check against current docs):
  Step Functions: developer guide, "Quotas related to API action throttling" (bucket size /
    refill per second; large regions us-east-1, us-west-2, eu-west-1, other regions smaller);
  AWS Batch: about 50 TPS per account shared across the Batch APIs (SubmitJob 50 TPS in the quota
    table; the others unconfirmed), modelled as one bucket of 50 refilled at 50/s;
  CloudWatch: PutMetricData ~500 TPS, GetMetricData 50 TPS (CloudWatch service quotas);
  CloudWatch Logs, EventBridge, STS: their quota pages; figures marked unconfirmed below were not
    re-verified in a primary source. A TPS quota is modelled as a bucket of one second's calls.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qs

from platform_ops.sandbox.aws_faults import _INTERNAL, THROTTLE_SHAPES, _buffer, _error, _operation, _respond

LARGE_REGIONS = frozenset({"us-east-1", "us-west-2", "eu-west-1"})


@dataclass(frozen=True)
class Quota:
    """One token bucket: `capacity` calls at once, `refill` more each second (large regions),
    `other` = (capacity, refill) in the other regions when AWS gives them less."""

    capacity: float
    refill: float
    other: tuple[float, float] | None = None
    confirmed: bool = True  # False: not re-verified in a primary source

    def in_region(self, region: str) -> tuple[float, float]:
        if region in LARGE_REGIONS or self.other is None:
            return self.capacity, self.refill
        return self.other


# signing name -> operation -> its bucket; "*" = one bucket shared by all the service's APIs
QUOTAS: dict[str, dict[str, Quota]] = {
    "states": {
        "GetExecutionHistory": Quota(400, 20, (400, 20)),
        "ListExecutions": Quota(200, 5, (100, 2)),
        "DescribeExecution": Quota(300, 15, (250, 10)),
        "StopExecution": Quota(1000, 200, (500, 25)),
        "StartExecution": Quota(1300, 300, (800, 150), confirmed=False),  # other regions unconfirmed
        "RedriveExecution": Quota(1300, 300, (800, 150)),
        "CreateStateMachine": Quota(100, 1, (100, 1)),
        "UpdateStateMachine": Quota(100, 1, (100, 1)),
        "ListStateMachines": Quota(100, 5, confirmed=False),
        "DescribeStateMachine": Quota(200, 20, confirmed=False),
    },
    "batch": {"*": Quota(50, 50, confirmed=False)},  # ~50 TPS per account, all Batch APIs
    "monitoring": {
        "PutMetricData": Quota(500, 500),
        "GetMetricData": Quota(50, 50),
    },
    "logs": {"GetLogEvents": Quota(25, 25, confirmed=False)},
    "events": {
        "ListRules": Quota(50, 50, confirmed=False),
        "ListTargetsByRule": Quota(50, 50, confirmed=False),
    },
    "sts": {"AssumeRole": Quota(600, 600, confirmed=False)},
}


class TokenBucket:
    """A bucket that starts full and refills continuously; time is passed in (no clock inside),
    so a test decides exactly how much has elapsed."""

    def __init__(self, capacity: float, refill: float, now: float):
        self.capacity, self.refill = capacity, refill
        self.tokens, self.last = capacity, now

    def take(self, now: float) -> bool:
        if now > self.last:
            self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.refill)
            self.last = now
        if self.tokens >= 1 - 1e-9:  # float dust must not refuse a call the arithmetic admits
            self.tokens -= 1
            return True
        return False


@dataclass
class Counter:
    taken: int = 0
    throttled: int = 0


@dataclass
class Quotas:
    """Every account's buckets, made on first use, and what each API of each account took or was
    refused: the figures a bench reads."""

    scale: float = 1.0
    refill_scale: float | None = None
    table: dict[str, dict[str, Quota]] = field(default_factory=lambda: QUOTAS)
    buckets: dict[tuple[str, str, str], TokenBucket] = field(default_factory=dict)
    counters: dict[str, dict[str, Counter]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def bucket_of(self, service: str, operation: str) -> tuple[str, Quota] | None:
        """(bucket name, its quota) of an API, None when AWS's table has no bucket for it."""
        ops = self.table.get(service, {})
        if "*" in ops:
            return service, ops["*"]
        if operation in ops:
            return f"{service}:{operation}", ops[operation]
        return None

    def take(self, account: str, service: str, operation: str, now: float, region: str = "us-east-1") -> bool:
        """One call: True if its bucket had a token (the call goes through), False if throttled."""
        found = self.bucket_of(service, operation)
        if found is None:
            return True
        name, quota = found
        capacity, refill = quota.in_region(region)
        with self._lock:
            key = (account, region, name)
            bucket = self.buckets.get(key)
            if bucket is None:
                refill_scale = self.scale if self.refill_scale is None else self.refill_scale
                bucket = self.buckets[key] = TokenBucket(capacity * self.scale, refill * refill_scale, now)
            ok = bucket.take(now)
            counter = self.counters.setdefault(account, {}).setdefault(f"{service}:{operation}", Counter())
            if ok:
                counter.taken += 1
            else:
                counter.throttled += 1
            return ok

    def report(self) -> dict[str, dict[str, dict[str, int]]]:
        """{account: {"states:ListExecutions": {"taken": n, "throttled": m}}}, regions summed."""
        with self._lock:
            return {account: {api: {"taken": c.taken, "throttled": c.throttled} for api, c in apis.items()}
                    for account, apis in self.counters.items()}


# ---- over the wire: which account, region and operation a request is, and the refusal ----

# the shapes aws_faults has, plus the services only quotas throttle
_SHAPES = {**THROTTLE_SHAPES, "events": (400, "ThrottlingException", {})}


class QuotaLayer:
    """The armed `quotas` mode of the WSGI layer: AwsFaults holds one and asks it first."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.quotas: Quotas | None = None
        self.clock: Callable[[], float] = time.monotonic  # a test may swap in its own

    def arm(self, fault: dict) -> None:
        scale = float(fault.get("scale", 1.0))
        refill_scale = fault.get("refill_scale")
        if scale <= 0 or (refill_scale is not None and float(refill_scale) < 0):
            raise ValueError(f"quotas: scale must be > 0 and refill_scale >= 0, got {scale}, {refill_scale}")
        self.quotas = Quotas(scale, None if refill_scale is None else float(refill_scale))

    def counters(self) -> dict:
        return self.quotas.report() if self.quotas else {}

    def answer(self, service: str, environ: dict, start_response: Any) -> list[bytes] | None:
        """The throttling error if this request's bucket is empty, else None (the call goes on)."""
        quotas = self.quotas
        authorization = environ.get("HTTP_AUTHORIZATION", "")
        if quotas is None or service not in quotas.table or _INTERNAL in authorization:
            return None
        operation = operation_of(service, environ)
        if quotas.bucket_of(service, operation) is None:
            return None
        if quotas.take(account_of(environ), service, operation, self.clock(), region_of(authorization)):
            return None
        if service == "sts":
            return _sts_throttled(start_response)
        return _error(start_response, service, *_SHAPES[service])


def account_of(environ: dict) -> str:
    """As moto decides it: the x-moto-account-id header, else the account that issued the access key
    (an assumed role's keys belong to the role's account), else moto's default account."""
    if environ.get("HTTP_X_MOTO_ACCOUNT_ID"):
        return environ["HTTP_X_MOTO_ACCOUNT_ID"]
    from moto.iam.models import get_account_id_from

    authorization = environ.get("HTTP_AUTHORIZATION", "")
    key = authorization.split("Credential=", 1)[1].split("/", 1)[0] if "Credential=" in authorization else ""
    return get_account_id_from(key)


def region_of(authorization: str) -> str:
    """The region of the SigV4 credential scope (Credential=key/date/region/service/aws4_request)."""
    parts = authorization.split("Credential=", 1)[1].split("/") if "Credential=" in authorization else []
    return parts[2] if len(parts) > 2 else "us-east-1"


def operation_of(service: str, environ: dict) -> str:
    """The API operation by its AWS name: X-Amz-Target (JSON protocols), the CBOR path, Batch's
    rest-json path mapped back to its name, or the Action of a query-protocol form body."""
    if service == "batch":
        path = environ.get("PATH_INFO", "")
        return _batch_operations().get(path.lower(), path)  # one bucket for all: the name only labels
    operation = _operation(service, environ)
    if operation:
        return operation
    if "x-www-form-urlencoded" in environ.get("CONTENT_TYPE", ""):
        return (parse_qs(_buffer(environ).decode(errors="replace")).get("Action") or [""])[0]
    return (parse_qs(environ.get("QUERY_STRING", "")).get("Action") or [""])[0]


@lru_cache(maxsize=1)
def _batch_operations() -> dict[str, str]:
    """/v1/listjobs -> ListJobs, from botocore's own model of the Batch API."""
    import botocore.session

    model = botocore.session.get_session().get_service_model("batch")
    return {model.operation_model(name).http["requestUri"].lower(): name for name in model.operation_names}


def _sts_throttled(start_response: Any) -> list[bytes]:
    """STS speaks the query protocol: its throttling is an XML ErrorResponse, code Throttling."""
    body = (b"<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type>"
            b"<Code>Throttling</Code><Message>Rate exceeded</Message></Error>"
            b"<RequestId>sandbox</RequestId></ErrorResponse>")
    return _respond(start_response, 400, body, {"Content-Type": "text/xml"})
