"""platform-ops settings: one YAML file, validated when the definitions load.

The classes below are the whole contract: each key's type, limits and default are written once, on
its field; `settings.schema.json` is generated from them (`python -m platform_ops.settings --schema`)
and the README's table is checked against them. They are pydantic dataclasses, not BaseModels, so
`dataclasses.replace` keeps working (and re-validates) wherever code derives a variant of the settings.

A bad file fails loading with a message that names the key and what is wrong with it, e.g.
`reaper.max_cancels_per_run: expected an integer >= 0, got 'ten'`.
"""

import dataclasses
import fnmatch
import json
import os
import re
import sys
import types
import typing
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

import yaml
from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, Strict, TypeAdapter, ValidationError
from pydantic import model_validator as _model_validator
from pydantic.dataclasses import dataclass, is_pydantic_dataclass
from pydantic.fields import FieldInfo
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

SETTINGS_ENV_VAR = "PLATFORM_OPS_SETTINGS"
LintIsolation = Literal["namespaces", "none"]
LINT_ISOLATION = get_args(LintIsolation)  # promotion.lint_isolation
SCHEMA_PATH = Path(__file__).with_name("settings.schema.json")


class SettingsError(ValueError):
    """The settings file is unreadable or breaks the contract; the message names the key."""


@dataclasses.dataclass(frozen=True)
class Expect:
    """What a key accepts, in words: the `expected ...` part of its error message."""

    text: str
    missing: str = ""  # said after "required key is missing", when a bare "missing" would not help


def _rule(key: str, message: str) -> PydanticCustomError:
    """A cross-field rule's failure; `key` is relative to the model that checks the rule."""
    return PydanticCustomError("settings_rule", "{key}: {message}", {"key": key, "message": message})


def _is_regex(v: str) -> str:
    try:
        re.compile(v)
    except re.error as exc:
        raise ValueError(str(exc)) from None
    return v


def _as_time(v: Any) -> Any:
    """An aware datetime from YAML: a timestamp or an ISO 8601 string, with its zone."""
    if isinstance(v, str):
        try:
            v = datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError("not an ISO 8601 time") from None
    if not isinstance(v, datetime) or v.tzinfo is None:
        raise ValueError("not a time with a timezone")
    return v


def _five_fields(v: str) -> str:
    if len(v.split()) != 5:
        raise ValueError("not 5 fields")
    return v


def _int(minimum: int) -> Any:
    return Annotated[int, Strict(), Field(ge=minimum), Expect(f"an integer >= {minimum}")]


def _text(expect: str, **constraints: Any) -> Any:
    """A non-empty string."""
    return Annotated[str, Strict(), Field(min_length=1, **constraints), Expect(expect)]


Int0, Int1, Int5, Int10 = _int(0), _int(1), _int(5), _int(10)
Bool = Annotated[bool, Strict(), Expect("true or false")]
Str = Annotated[str, Strict(), Field(min_length=1)]
Seconds = Annotated[float, Strict(), Field(ge=0), Expect("a number of seconds >= 0")]
Name = Annotated[str, Strict(), Field(pattern=r"^[a-z][a-z0-9_]*$")]
CONFIG = ConfigDict(extra="forbid", validate_by_name=True, validate_by_alias=True)


@dataclass(frozen=True, config=CONFIG)
class EnvironmentSettings:
    """One AWS account. `name` is its key under `environments`, not a key of its own."""

    name: SkipJsonSchema[str]
    account_id: _text("a 12-digit account id as a quoted string", pattern=r"^\d{12}$")
    region: _text("an AWS region name")
    job_queues: Annotated[tuple[Annotated[str, Strict()], ...], Expect("a list of job queue names")]
    role_arn: Annotated[Annotated[str, Strict(), Field(pattern=r"^arn:aws[\w-]*:iam::\d{12}:role/.+$")] | None,
                        Expect("null or an IAM role ARN")] = None
    state_machine_prefixes: Annotated[tuple[Annotated[str, Strict()], ...],
                                      Expect("a list of state machine name prefixes")] = ("",)
    role_external_id: Annotated[Str | None, Expect("null or a string")] = None
    events_queue: Annotated[Str | None, Expect("null (polling only) or the SQS queue name of the events stack")] = None

    @property
    def event_driven(self) -> bool:
        """Events from `events_queue` first, polling as reconciliation; else polling only."""
        return self.events_queue is not None


@dataclass(frozen=True, config=CONFIG)
class ReaperSettings:
    runnable_threshold_minutes: Int1 = 120
    queue_thresholds_minutes: Annotated[dict[Annotated[str, Strict()], Int1],
                                        Expect("a mapping of queue name to minutes (integers >= 1)")] = \
        Field(default_factory=dict)
    dry_run: Bool = False
    max_cancels_per_run: Int0 = 50
    protect_tag: _text("a tag key") = "platform-ops:protect"
    interval_seconds: Int5 = 60
    reconcile_interval_seconds: Int5 = 600
    watch_max_age_hours: Int1 = 72  # RUNNABLE watch entries older than this are dropped (lost events)

    def threshold_minutes(self, queue: str) -> int:
        return self.queue_thresholds_minutes.get(queue, self.runnable_threshold_minutes)

    @_model_validator(mode="after")
    def _watch_outlives_thresholds(self) -> "ReaperSettings":
        """A watch that forgets jobs before they are due would never reap them by event."""
        longest = max([self.runnable_threshold_minutes, *self.queue_thresholds_minutes.values()])
        if self.watch_max_age_hours * 60 <= longest:
            raise _rule("watch_max_age_hours", f"must be longer than the longest RUNNABLE threshold "
                                               f"({longest} minutes), got {self.watch_max_age_hours}")
        return self


@dataclass(frozen=True, config=CONFIG)
class Silence:
    """Executions of state machines matching `state_machine_pattern` (a glob) are muted until
    `until`: recorded, not alerted."""

    state_machine_pattern: _text("a glob, e.g. mlplatform.test.*")
    until: Annotated[datetime, BeforeValidator(_as_time),
                     Expect("an ISO 8601 time with a timezone, e.g. 2026-12-01T09:00:00Z")]
    reason: _text("why it is silenced")

    def mutes(self, state_machine: str, now: datetime) -> bool:
        return now < self.until and fnmatch.fnmatchcase(state_machine, self.state_machine_pattern)


@dataclass(frozen=True, config=CONFIG)
class AlertSettings:
    interval_seconds: Int5 = 60
    digest_threshold: Int1 = 5
    post_interval_seconds: Seconds = 1.0
    initial_lookback_minutes: Int0 = 60
    execution_lookback_hours: Int1 = 48
    log_lines: Int0 = 20
    retries: Int0 = 3
    retry_delay_seconds: Seconds = 10.0
    silences: Annotated[tuple[Silence, ...], Expect("a list of silences")] = ()
    events_interval_seconds: Int1 = 10
    reconcile_interval_seconds: Int5 = 600
    repeat_interval_hours: Annotated[float, Strict(), Field(gt=0), Expect("a number of hours > 0")] = 4.0


@dataclass(frozen=True, config=CONFIG)
class MetricsSettings:
    cron: Annotated[str, Strict(), AfterValidator(_five_fields), Expect("a 5-field cron expression")] = "*/5 * * * *"
    window_hours: Int1 = 24
    max_failure_rate: Annotated[float, Strict(), Field(ge=0, le=1), Expect("a fraction between 0 and 1")] = 0.2
    freshness_minutes: Int1 = 15
    namespace: _text("a CloudWatch namespace") = "PlatformOps/Batch"
    storage: Annotated[Literal["local", "s3"], Expect("local or s3")] = "local"
    local_dir: _text("a directory") = ".platform_ops/metrics"
    s3_bucket: Annotated[Str | None, Expect("a bucket name")] = None
    s3_prefix: _text("a key prefix") = "platform-ops/metrics"
    charts_dir: Annotated[Str | None, Expect("a directory")] = None
    chart_hours: Int1 = 6

    @_model_validator(mode="after")
    def _s3_needs_a_bucket(self) -> "MetricsSettings":
        if self.storage == "s3" and not self.s3_bucket:
            raise _rule("s3_bucket", "required when metrics.storage is s3")
        return self


@dataclass(frozen=True, config=CONFIG)
class HealthSettings:
    """The watcher watched: `platform_ops_health_sensor` reads this code location's own sensors,
    schedules and runs."""

    interval_seconds: Int5 = 60
    failed_ticks: Int1 = 3  # consecutive failed ticks that make a sensor unhealthy
    failed_runs: Int1 = 3  # consecutive failed runs of one job that make it unhealthy


@dataclass(frozen=True, config=CONFIG)
class ScheduleSettings:
    """Missed schedules: `missed_schedules_sensor` checks the EventBridge schedule rules of watched
    state machines at most once per interval (each check lists the rules)."""

    interval_minutes: Int1 = 5
    grace_minutes: Int1 = 30  # a start this long after the fire time still counts; EventBridge starts within seconds


@dataclass(frozen=True, config=CONFIG)
class RuntimeSettings:
    """Runs that take too long: `long_runs_sensor` compares RUNNING jobs and executions with the
    p95 of their kind's succeeded runs over `metrics.window_hours`."""

    factor: Annotated[float, Strict(), Field(ge=1), Expect("a number >= 1")] = 3.0  # long = factor x p95
    min_minutes: Int1 = 30  # and at least this long: a 1-minute step at 3 minutes is nobody's problem
    min_history: Int1 = 5  # succeeded runs a key needs before its runs are judged
    interval_minutes: Int1 = 10
    history_refresh_minutes: Int1 = 60  # the finished runs are listed again this often, not every tick


@dataclass(frozen=True, config=CONFIG)
class PromotionRuleSettings:
    """A team's own definition-safety rule: `forbid` (a regex) must not match the production
    definition."""

    name: Annotated[Name, Expect("a rule name in lowercase letters, digits, _")]
    description: _text("what the rule protects")
    forbid: Annotated[Str, AfterValidator(_is_regex), Expect("a regular expression")]


StrMap = dict[Str, Str]


@dataclass(frozen=True, config=CONFIG)
class PromotionSettings:
    """Staging → production promotion. Account ids map from the two environments; queues, roles
    and buckets are named here (staging value → production value)."""

    audit_bucket: _text("an S3 bucket name in the target account")
    source: Annotated[Str, Field(alias="from")] = "staging"  # which environments: checked by Settings
    target: Annotated[Str, Field(alias="to")] = "production"
    audit_prefix: Annotated[Str, AfterValidator(lambda v: v.strip("/")), Expect("a key prefix")] = "promotions"
    max_staging_age_hours: Int1 = 168
    lint_timeout_seconds: Int10 = 300
    lint_isolation: Annotated[LintIsolation, Expect(  # "none" is unsafe, recorded in every audit record
        "'namespaces' (the lint runs in bubblewrap) or 'none' (unsafe: no isolation)")] = "namespaces"
    queues: Annotated[StrMap, Expect("a mapping of staging queue to production queue")] = Field(default_factory=dict)
    roles: Annotated[StrMap, Expect("a mapping of staging role ARN to production role ARN")] = \
        Field(default_factory=dict)
    buckets: Annotated[StrMap, Expect("a mapping of staging bucket to production bucket")] = \
        Field(default_factory=dict)
    rules: Annotated[tuple[PromotionRuleSettings, ...], Expect("a list of rules")] = ()

    @_model_validator(mode="after")
    def _two_environments(self) -> "PromotionSettings":
        if self.source == self.target:
            raise _rule("to", f"must differ from promotion.from ({self.source!r})")
        return self


@dataclass(frozen=True, config=CONFIG)
class SlackSettings:
    channel: _text("a channel name or id") = "#ml-platform-alerts"
    owners: Annotated[dict[Annotated[str, Strict()], Str], Expect("a mapping of Metaflow user to Slack user id")] = \
        Field(default_factory=dict)


@dataclass(frozen=True, config=CONFIG)
class MetaflowSettings:
    ui_url: Annotated[Str, AfterValidator(lambda v: v.rstrip("/")), Expect("a URL")] = "https://metaflow.example.com"


@dataclass(frozen=True, config=CONFIG)
class DagsterSettings:
    # Required, with no default: a forgotten key would put localhost links in every Slack message.
    url: Annotated[str, Strict(), Field(pattern=r"^https?://[^/\s]+"), AfterValidator(lambda v: v.rstrip("/")),
                   Expect("an http(s) URL, e.g. https://dagster.example.com",
                          missing="the Dagster UI's base URL, e.g. https://dagster.example.com "
                                  "(links in Slack messages point there)")]
    sensors_running: Bool = False


_SECTIONS = ("environments", "reaper", "slack", "alerts", "metrics", "health", "schedules", "runtime", "metaflow",
             "dagster")


@dataclass(frozen=True, config=CONFIG)
class Settings:
    environments: Annotated[dict[Name, EnvironmentSettings], Field(min_length=1),
                            Expect("a mapping of environment name to environment")]
    dagster: DagsterSettings
    reaper: ReaperSettings = ReaperSettings()
    slack: SlackSettings = SlackSettings()
    alerts: AlertSettings = AlertSettings()
    metrics: MetricsSettings = MetricsSettings()
    health: HealthSettings = HealthSettings()
    schedules: ScheduleSettings = ScheduleSettings()
    runtime: RuntimeSettings = RuntimeSettings()
    promotion: PromotionSettings | None = None  # absent: promotion is not offered
    metaflow: MetaflowSettings = MetaflowSettings()

    @property
    def metaflow_ui_url(self) -> str:
        return self.metaflow.ui_url

    @property
    def sensors_running(self) -> bool:
        return self.dagster.sensors_running

    @property
    def dagster_url(self) -> str:
        return self.dagster.url

    @_model_validator(mode="before")
    @classmethod
    def _from_file(cls, data: Any) -> Any:
        """The file's shape: an empty section is its defaults (so a missing `dagster` reports the
        missing `dagster.url`), and each environment takes its name from its key."""
        if not isinstance(data, dict):
            return data  # keyword arguments (dataclasses.replace) or not a mapping at all
        data = {k: ({} if v is None and k in _SECTIONS else v) for k, v in {"dagster": {}, **data}.items()}
        envs = data.get("environments", ...)
        if isinstance(envs, dict):
            if not envs:
                raise _rule("environments", "at least one environment is required")
            named = {}
            for name, env in envs.items():
                if not isinstance(name, str) or not re.match(r"^[a-z][a-z0-9_]*$", name):
                    raise _rule(f"environments.{name}", "environment names are lowercase letters, digits, _")
                if isinstance(env, dict) and "name" in env:
                    raise _rule(f"environments.{name}.name", "unknown key (an environment's name is its key)")
                named[name] = {**env, "name": name} if isinstance(env, dict) else env
            data["environments"] = named
        return data

    @_model_validator(mode="after")
    def _promotion_between_environments(self) -> "Settings":
        if self.promotion is not None:
            for key, value in (("from", self.promotion.source), ("to", self.promotion.target)):
                if value not in self.environments:
                    raise _rule(f"promotion.{key}", f"expected one of the environments "
                                                    f"({', '.join(self.environments)}), got {value!r}")
        return self


_ADAPTER = TypeAdapter(Settings)


def parse_settings(data: Any) -> Settings:
    """Settings from the file's parsed YAML; every problem, one line each, names its key."""
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise SettingsError("\n".join(dict.fromkeys(_message(e, data) for e in exc.errors()))) from None


def load_settings(path: str | os.PathLike | None = None) -> Settings:
    """Load from `path`, else from $PLATFORM_OPS_SETTINGS."""
    path = path or os.environ.get(SETTINGS_ENV_VAR)
    if not path:
        raise SettingsError(f"{SETTINGS_ENV_VAR} is not set: point it at a settings YAML file (see README)")
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SettingsError(f"{SETTINGS_ENV_VAR}={path}: cannot read the file ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SettingsError(f"{path}: not valid YAML: {exc}") from None
    try:
        return parse_settings(data)
    except SettingsError as exc:
        raise SettingsError("\n".join(f"{path}: {line}" for line in str(exc).splitlines())) from None


def json_schema() -> dict[str, Any]:
    """The file's JSON Schema (the YAML keys, e.g. `promotion.from`), for editors and docs."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "platform-ops settings",
            **_ADAPTER.json_schema(by_alias=True, mode="validation")}


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2) + "\n"


# -- turning pydantic's errors into "key: what is wrong" ---------------------------------------------------------

def _fields(cls: type) -> dict[str, FieldInfo]:
    """A settings class's fields by their YAML key."""
    return {info.alias or name: info for name, info in cls.__pydantic_fields__.items()}


def _expect(info: FieldInfo) -> Expect | None:
    return next((m for m in reversed(info.metadata) if isinstance(m, Expect)), None)


def _unwrap(tp: Any) -> Any:
    """`X` from `Annotated[X, ...]` and `X | None`."""
    while True:
        if typing.get_origin(tp) is Annotated:
            tp = tp.__origin__
        elif typing.get_origin(tp) in (Union, types.UnionType) and type(None) in get_args(tp):
            rest = [a for a in get_args(tp) if a is not type(None)]
            if len(rest) != 1:
                return tp
            tp = rest[0]
        else:
            return tp


def _element(tp: Any) -> Any:
    """The settings class a `dict[str, X]` or `tuple[X, ...]` holds, else None."""
    origin, args = typing.get_origin(tp), get_args(tp)
    inner = _unwrap(args[1] if origin is dict else args[0]) if origin in (dict, tuple) and args else None
    return inner if is_pydantic_dataclass(inner) else None


def _message(error: dict, data: Any) -> str:
    """One pydantic error as `dotted.key: what is wrong`: walks the error's location through the
    settings classes to the deepest key that has a field of its own."""
    key, tp, parent, expect, value = "", Settings, Settings, None, data
    for part in error["loc"]:
        tp = _unwrap(tp)
        if is_pydantic_dataclass(tp) and isinstance(part, str):
            key, parent, value = f"{key}.{part}" if key else part, tp, (
                value.get(part) if isinstance(value, dict) else None)
            info = _fields(tp).get(part)
            if info is None:  # a key the class does not have
                break
            tp, expect = info.annotation, _expect(info)
        elif _element(tp) is not None:
            key = f"{key}[{part}]" if isinstance(part, int) else f"{key}.{part}"
            value = value.get(part) if isinstance(value, dict) else (
                value[part] if isinstance(value, list) and isinstance(part, int) and part < len(value) else None)
            tp, expect = _element(tp), None
        else:
            break  # inside a plain value (a mapping of strings, a list of names): the key is the field
    key, kind = key or "settings", error["type"]
    if kind == "settings_rule":
        rel = error["ctx"]["key"]
        return f"{rel if key == 'settings' else key + '.' + rel}: {error['ctx']['message']}"
    if kind in ("missing", "missing_argument"):
        return f"{key}: required key is missing" + (f": {expect.missing}" if expect and expect.missing else "")
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        known = ", ".join(k for k in _fields(parent) if not (parent is EnvironmentSettings and k == "name"))
        return f"{key}: unknown key (known: {known})"
    if expect is not None:
        return f"{key}: expected {expect.text}, got {value!r}"
    if kind in ("dict_type", "dataclass_type", "dataclass_exact_type", "model_type"):
        return f"{key}: expected a mapping, got {type(value).__name__}"
    return f"{key}: {error['msg'][0].lower()}{error['msg'][1:]}, got {value!r}"


if __name__ == "__main__":
    if sys.argv[1:] != ["--schema"]:
        sys.exit("usage: python -m platform_ops.settings --schema   (prints the settings file's JSON Schema)")
    sys.stdout.write(schema_text())
