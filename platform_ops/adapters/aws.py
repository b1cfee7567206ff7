"""AWS access for one environment: a dagster-aws resource with a client factory.

Credentials come from the standard AWS environment (env vars, profile, instance role); a
production environment is reached through STS assume_role, lazily and with credentials that
refresh. The endpoint comes from AWS_ENDPOINT_URL like any boto3 program, so the sandbox is just
another endpoint. Every API call is counted (botocore `before-call`) for run metadata and benches.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.session
from botocore.config import Config
from botocore.credentials import DeferredRefreshableCredentials
from dagster_aws.utils import ResourceWithBoto3Configuration
from pydantic import Field, PrivateAttr

from platform_ops.redaction import remember

_listeners: list[Counter] = []
_listeners_lock = threading.Lock()
# Sessions outlive one sensor tick or run in the same process: no AssumeRole per tick, and the
# assumed credentials refresh themselves before they expire.
_sessions: dict[tuple, boto3.session.Session] = {}
_sessions_lock = threading.Lock()


@contextlib.contextmanager
def count_calls() -> Iterator[Counter]:
    """Counts every AWS API call made by clients of this module while open, keyed
    'Service.Operation' (e.g. 'Batch.ListJobs'); retries of one call count once."""
    counter: Counter = Counter()
    with _listeners_lock:
        _listeners.append(counter)
    try:
        yield counter
    finally:
        with _listeners_lock:
            _listeners[:] = [c for c in _listeners if c is not counter]  # Counters compare by value


def _on_call(model: Any, **_: Any) -> None:
    key = f"{model.service_model.service_id.replace(' ', '')}.{model.name}"
    with _listeners_lock:
        for counter in _listeners:
            counter[key] += 1


def _remember_credentials(session: boto3.session.Session) -> None:
    """Ambient credentials become secrets to redact: an ECS task role's or an instance role's come
    from a credential endpoint, never from the environment, so redaction cannot know them else."""
    from botocore.exceptions import BotoCoreError

    try:
        creds = session.get_credentials()
        frozen = creds.get_frozen_credentials() if creds is not None else None
    except BotoCoreError:  # no credentials yet: the first call will say so, in its own words
        return
    if frozen is not None:
        remember(frozen.access_key, frozen.secret_key, frozen.token)


def forget_sessions() -> None:
    """Drop cached sessions and credentials (e.g. after the accounts behind them were reset)."""
    with _sessions_lock:
        _sessions.clear()


class AwsEnvironmentResource(ResourceWithBoto3Configuration):
    """One AWS account platform-ops watches (staging, production, ...)."""

    environment: str
    account_id: str
    role_arn: str | None = None
    role_external_id: str | None = None
    role_session_name: str = "platform-ops"

    # AWS throttles in bursts: while a service's token bucket is empty every call is refused.
    # botocore's standard mode waits rand(0, min(2^i, 20)) s before attempt i+1 of a throttled
    # call (exponential backoff, full jitter), so 10 attempts outlast 9 refusals in a row (about
    # a minute); dagster-aws's default, 5 retries, gave up inside a long burst.
    max_attempts: int = Field(default=10, ge=1, description="Attempts per AWS call, the first one included.")

    _clients: dict = PrivateAttr(default_factory=dict)

    def _retry_config(self) -> Config:
        # A 10 s connect timeout (botocore's is 60): with 10 attempts, an endpoint that never
        # answers holds a tick about 2 minutes, not 10; AWS endpoints connect in milliseconds.
        return Config(retries={"total_max_attempts": self.max_attempts, "mode": "standard"}, connect_timeout=10)

    def _base_session(self) -> boto3.session.Session:
        return boto3.session.Session(
            profile_name=self.profile_name,
            region_name=self.region_name,
            aws_access_key_id=self.aws_access_key_id,
            aws_secret_access_key=self.aws_secret_access_key,
            aws_session_token=self.aws_session_token,
        )

    def _build_session(self) -> boto3.session.Session:
        base = self._base_session()
        base.events.register("before-call", _on_call)
        if not self.role_arn:
            session = base
            _remember_credentials(base)
        else:
            sts = base.client("sts", endpoint_url=self.endpoint_url, config=self._retry_config(),
                              use_ssl=self.use_ssl, verify=self.verify)

            def refresh() -> dict:
                kwargs = {"RoleArn": self.role_arn, "RoleSessionName": self.role_session_name}
                if self.role_external_id:
                    kwargs["ExternalId"] = self.role_external_id
                creds = sts.assume_role(**kwargs)["Credentials"]
                remember(creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"])
                return {
                    "access_key": creds["AccessKeyId"],
                    "secret_key": creds["SecretAccessKey"],
                    "token": creds["SessionToken"],
                    "expiry_time": creds["Expiration"].isoformat(),
                }

            core = botocore.session.get_session()
            core._credentials = DeferredRefreshableCredentials(refresh_using=refresh, method="sts-assume-role")
            session = boto3.session.Session(botocore_session=core, region_name=self.region_name)
            session.events.register("before-call", _on_call)
        return session

    def session(self) -> boto3.session.Session:
        key = (self.environment, self.account_id, self.role_arn, self.role_external_id, self.region_name,
               self.profile_name, self.endpoint_url, self.aws_access_key_id)
        with _sessions_lock:
            if key not in _sessions:
                _sessions[key] = self._build_session()
            return _sessions[key]

    def client(self, service: str) -> Any:
        """A boto3 client for `service` in this environment, cached per resource."""
        with _sessions_lock:
            cached = self._clients.get(service)
        if cached is None:
            cached = self.session().client(
                service, endpoint_url=self.endpoint_url, use_ssl=self.use_ssl, verify=self.verify,
                config=self._retry_config(),
            )
            with _sessions_lock:
                cached = self._clients.setdefault(service, cached)
        return cached


# Batch's ClientException and friends mean "this request is wrong" (e.g. no such queue): the
# environment is fine. Anything else (auth, throttling past retries, network) is environment-wide.
_REQUEST_SCOPED = {"ClientException", "ValidationException", "ResourceNotFoundException",
                   "InvalidParameterValueException", "StateMachineDoesNotExist", "ExecutionDoesNotExist"}


# What AWS answers when it throttles (botocore's standard mode retries these): one that reaches
# the caller outlasted every attempt, and the step is worth retrying whole, not reporting as data.
_THROTTLED = {"Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
              "TooManyRequestsException", "ProvisionedThroughputExceededException", "RequestLimitExceeded",
              "BandwidthLimitExceeded", "LimitExceededException", "RequestThrottled", "SlowDown",
              "PriorRequestNotComplete", "EC2ThrottledException"}


class AwsError(RuntimeError):
    """An AWS failure in words an operator can act on, without credentials in it."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.request_scoped = code in _REQUEST_SCOPED
        self.throttled = code in _THROTTLED


def pages(method: Any, token_key: str = "nextToken", next_key: str | None = None, **kwargs: Any) -> Iterator[dict]:
    """Every page of a paginated API call, following its token (answered as `next_key`, sent
    back as `token_key`); failures as AwsError. Stop iterating to stop paging."""
    while True:
        with aws_errors():
            page = method(**kwargs)
        yield page
        token = page.get(next_key or token_key)
        if not token:
            return
        kwargs[token_key] = token


@contextlib.contextmanager
def aws_errors() -> Iterator[None]:
    """Translate botocore exceptions into AwsError."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise AwsError(error.get("Code", "ClientError"), error.get("Message", "")) from exc
    except BotoCoreError as exc:
        raise AwsError(type(exc).__name__, str(exc)) from exc
