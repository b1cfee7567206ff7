"""platform-ops settings: one YAML file, validated when the definitions load.

Every key is documented in the README. A bad file fails loading with a message that names the key
and what is wrong with it, e.g. `reaper.max_cancels_per_run: expected an integer >= 0, got 'ten'`.
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

SETTINGS_ENV_VAR = "PLATFORM_OPS_SETTINGS"
LINT_ISOLATION = ("namespaces", "none")  # promotion.lint_isolation


class SettingsError(ValueError):
    """The settings file is unreadable or breaks the contract; the message names the key."""


@dataclass(frozen=True)
class EnvironmentSettings:
    name: str
    account_id: str
    region: str
    role_arn: str | None
    job_queues: tuple[str, ...]
    state_machine_prefixes: tuple[str, ...]
    role_external_id: str | None = None
    events_queue: str | None = None  # None: polling only; else events from this SQS queue + reconciliation

    @property
    def event_driven(self) -> bool:
        return self.events_queue is not None


@dataclass(frozen=True)
class ReaperSettings:
    runnable_threshold_minutes: int = 120
    queue_thresholds_minutes: dict[str, int] = field(default_factory=dict)
    dry_run: bool = False
    max_cancels_per_run: int = 50
    protect_tag: str = "platform-ops:protect"
    interval_seconds: int = 60
    reconcile_interval_seconds: int = 600
    watch_max_age_hours: int = 72  # RUNNABLE watch entries older than this are dropped (lost events)

    def threshold_minutes(self, queue: str) -> int:
        return self.queue_thresholds_minutes.get(queue, self.runnable_threshold_minutes)


@dataclass(frozen=True)
class Silence:
    """Executions of state machines matching `state_machine_pattern` (a glob) are muted until
    `until`: recorded, not alerted."""

    state_machine_pattern: str
    until: datetime
    reason: str

    def mutes(self, state_machine: str, now: datetime) -> bool:
        return now < self.until and fnmatch.fnmatchcase(state_machine, self.state_machine_pattern)


@dataclass(frozen=True)
class AlertSettings:
    interval_seconds: int = 60
    digest_threshold: int = 5
    post_interval_seconds: float = 1.0
    initial_lookback_minutes: int = 60
    execution_lookback_hours: int = 48
    log_lines: int = 20
    retries: int = 3
    retry_delay_seconds: float = 10.0
    silences: tuple[Silence, ...] = ()
    events_interval_seconds: int = 10
    reconcile_interval_seconds: int = 600


@dataclass(frozen=True)
class MetricsSettings:
    cron: str = "*/5 * * * *"
    window_hours: int = 24
    max_failure_rate: float = 0.2
    freshness_minutes: int = 15
    namespace: str = "PlatformOps/Batch"
    storage: str = "local"  # local | s3
    local_dir: str = ".platform_ops/metrics"
    s3_bucket: str | None = None
    s3_prefix: str = "platform-ops/metrics"
    charts_dir: str | None = None
    chart_hours: int = 6


@dataclass(frozen=True)
class PromotionRuleSettings:
    """A team's own definition-safety rule: `forbid` (a regex) must not match the production
    definition."""

    name: str
    description: str
    forbid: str


@dataclass(frozen=True)
class PromotionSettings:
    """Staging → production promotion. Account ids map from the two environments; queues, roles
    and buckets are named here (staging value → production value)."""

    audit_bucket: str
    source: str = "staging"
    target: str = "production"
    audit_prefix: str = "promotions"
    max_staging_age_hours: int = 168
    lint_timeout_seconds: int = 300
    lint_isolation: str = "namespaces"  # or "none": unsafe, recorded in every audit record
    queues: dict[str, str] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)
    buckets: dict[str, str] = field(default_factory=dict)
    rules: tuple[PromotionRuleSettings, ...] = ()


@dataclass(frozen=True)
class SlackSettings:
    channel: str = "#ml-platform-alerts"
    owners: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Settings:
    environments: dict[str, EnvironmentSettings]
    reaper: ReaperSettings = ReaperSettings()
    slack: SlackSettings = SlackSettings()
    alerts: AlertSettings = AlertSettings()
    metrics: MetricsSettings = MetricsSettings()
    promotion: PromotionSettings | None = None
    metaflow_ui_url: str = "https://metaflow.example.com"
    sensors_running: bool = False
    dagster_url: str = ""  # required in the file (dagster.url): no localhost default leaks into production links


class _Reader:
    """Reads one mapping, remembering the dotted path for error messages."""

    def __init__(self, data: Any, path: str):
        if not isinstance(data, dict):
            raise SettingsError(f"{path or 'settings'}: expected a mapping, got {type(data).__name__}")
        self.data, self.path, self.seen = data, path, set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def get(self, name: str, default: Any = ..., *, check=None, expect: str = "") -> Any:
        self.seen.add(name)
        if name not in self.data:
            if default is ...:
                raise SettingsError(f"{self.key(name)}: required key is missing")
            return default
        value = self.data[name]
        if check is not None and not check(value):
            raise SettingsError(f"{self.key(name)}: expected {expect}, got {value!r}")
        return value

    def sub(self, name: str, required: bool = False) -> "_Reader":
        value = self.get(name, ... if required else {})
        return _Reader({} if value is None else value, self.key(name))

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise SettingsError(f"{self.key(unknown[0])}: unknown key (known: {', '.join(sorted(self.seen))})")


def _is_int(minimum: int) -> Any:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def _is_number(minimum: float) -> Any:
    return lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v >= minimum


def _as_time(v: Any) -> datetime | None:
    """An aware datetime from YAML (a timestamp or an ISO string), else None."""
    if isinstance(v, str):
        try:
            v = datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            return None
    if isinstance(v, datetime) and v.tzinfo is not None:
        return v
    return None


def _is_str(v: Any) -> bool:
    return isinstance(v, str) and v != ""


def _is_str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


_ACCOUNT = re.compile(r"^\d{12}$")
_ROLE = re.compile(r"^arn:aws[\w-]*:iam::\d{12}:role/.+$")


def _environment(name: str, r: _Reader) -> EnvironmentSettings:
    env = EnvironmentSettings(
        name=name,
        account_id=r.get("account_id", check=lambda v: isinstance(v, str) and bool(_ACCOUNT.match(v)),
                         expect="a 12-digit account id as a quoted string"),
        region=r.get("region", check=_is_str, expect="an AWS region name"),
        role_arn=r.get("role_arn", None, check=lambda v: v is None or (isinstance(v, str) and bool(_ROLE.match(v))),
                       expect="null or an IAM role ARN"),
        job_queues=tuple(r.get("job_queues", check=_is_str_list, expect="a list of job queue names")),
        state_machine_prefixes=tuple(r.get("state_machine_prefixes", [""], check=_is_str_list,
                                           expect="a list of state machine name prefixes")),
        role_external_id=r.get("role_external_id", None, check=lambda v: v is None or _is_str(v),
                               expect="null or a string"),
        events_queue=r.get("events_queue", None, check=lambda v: v is None or _is_str(v),
                           expect="null (polling only) or the SQS queue name of the events stack"),
    )
    r.done()
    return env


def _is_str_map(v: Any) -> bool:
    return isinstance(v, dict) and all(_is_str(k) and _is_str(x) for k, x in v.items())


def _promotion(root: _Reader, environments: dict[str, EnvironmentSettings]) -> PromotionSettings | None:
    """None when the section is absent: promotion is then not offered."""
    if root.data.get("promotion") is None:
        root.seen.add("promotion")
        return None
    p = root.sub("promotion")
    in_envs = lambda v: v in environments  # noqa: E731
    rules = []
    for i, raw in enumerate(p.get("rules", [], check=lambda v: isinstance(v, list), expect="a list of rules") or []):
        r = _Reader(raw, f"promotion.rules[{i}]")
        forbid = r.get("forbid", check=_is_regex, expect="a regular expression")
        rules.append(PromotionRuleSettings(
            name=r.get("name", check=lambda v: isinstance(v, str) and bool(re.match(r"^[a-z][a-z0-9_]*$", v)),
                       expect="a rule name in lowercase letters, digits, _"),
            description=r.get("description", check=_is_str, expect="what the rule protects"),
            forbid=forbid))
        r.done()
    settings = PromotionSettings(
        source=p.get("from", "staging", check=in_envs, expect=f"one of the environments ({', '.join(environments)})"),
        target=p.get("to", "production", check=in_envs, expect=f"one of the environments ({', '.join(environments)})"),
        audit_bucket=p.get("audit_bucket", check=_is_str, expect="an S3 bucket name in the target account"),
        audit_prefix=p.get("audit_prefix", "promotions", check=_is_str, expect="a key prefix").strip("/"),
        max_staging_age_hours=p.get("max_staging_age_hours", 168, check=_is_int(1), expect="an integer >= 1"),
        lint_timeout_seconds=p.get("lint_timeout_seconds", 300, check=_is_int(10), expect="an integer >= 10"),
        lint_isolation=p.get("lint_isolation", "namespaces", check=lambda v: v in LINT_ISOLATION,
                             expect="'namespaces' (the lint runs in bubblewrap) or 'none' (unsafe: no isolation)"),
        queues=dict(p.get("queues", {}, check=_is_str_map, expect="a mapping of staging queue to production queue")),
        roles=dict(p.get("roles", {}, check=_is_str_map, expect="a mapping of staging role ARN to production role ARN")),
        buckets=dict(p.get("buckets", {}, check=_is_str_map,
                           expect="a mapping of staging bucket to production bucket")),
        rules=tuple(rules),
    )
    if settings.source == settings.target:
        raise SettingsError(f"promotion.to: must differ from promotion.from ({settings.source!r})")
    p.done()
    return settings


def _is_regex(v: Any) -> bool:
    if not _is_str(v):
        return False
    try:
        re.compile(v)
    except re.error:
        return False
    return True


def _check_watch_age(reaper: ReaperSettings) -> None:
    """A watch that forgets jobs before they are due would never reap them by event."""
    longest = max([reaper.runnable_threshold_minutes, *reaper.queue_thresholds_minutes.values()])
    if reaper.watch_max_age_hours * 60 <= longest:
        raise SettingsError(f"reaper.watch_max_age_hours: must be longer than the longest RUNNABLE threshold "
                            f"({longest} minutes), got {reaper.watch_max_age_hours}")


def _dagster_url(d: _Reader) -> str:
    """Required, with no default: a forgotten key would put localhost links in every Slack message."""
    if "url" not in d.data:
        raise SettingsError("dagster.url: required key is missing: the Dagster UI's base URL, e.g. "
                            "https://dagster.example.com (links in Slack messages point there)")
    return d.get("url", check=lambda v: isinstance(v, str) and bool(re.match(r"^https?://[^/\s]+", v)),
                 expect="an http(s) URL, e.g. https://dagster.example.com").rstrip("/")


def parse_settings(data: Any) -> Settings:
    root = _Reader(data, "")
    envs_reader = root.sub("environments", required=True)
    if not envs_reader.data:
        raise SettingsError("environments: at least one environment is required")
    environments = {}
    for name in envs_reader.data:
        if not re.match(r"^[a-z][a-z0-9_]*$", str(name)):
            raise SettingsError(f"environments.{name}: environment names are lowercase letters, digits, _")
        environments[name] = _environment(name, envs_reader.sub(name, required=True))
    envs_reader.done()

    r = root.sub("reaper")
    reaper = ReaperSettings(
        runnable_threshold_minutes=r.get("runnable_threshold_minutes", 120, check=_is_int(1), expect="an integer >= 1"),
        queue_thresholds_minutes=dict(r.get(
            "queue_thresholds_minutes", {}, expect="a mapping of queue name to minutes (integers >= 1)",
            check=lambda v: isinstance(v, dict) and all(isinstance(k, str) and _is_int(1)(m) for k, m in v.items()),
        ) or {}),
        dry_run=r.get("dry_run", False, check=lambda v: isinstance(v, bool), expect="true or false"),
        max_cancels_per_run=r.get("max_cancels_per_run", 50, check=_is_int(0), expect="an integer >= 0"),
        protect_tag=r.get("protect_tag", "platform-ops:protect", check=_is_str, expect="a tag key"),
        interval_seconds=r.get("interval_seconds", 60, check=_is_int(5), expect="an integer >= 5"),
        reconcile_interval_seconds=r.get("reconcile_interval_seconds", 600, check=_is_int(5),
                                         expect="an integer >= 5"),
        watch_max_age_hours=r.get("watch_max_age_hours", 72, check=_is_int(1), expect="an integer >= 1"),
    )
    _check_watch_age(reaper)
    r.done()

    a = root.sub("alerts")
    silences = []
    raw_silences = a.get("silences", [], check=lambda v: isinstance(v, list), expect="a list of silences") or []
    for i, raw in enumerate(raw_silences):
        r = _Reader(raw, f"alerts.silences[{i}]")
        until = r.get("until", check=lambda v: _as_time(v) is not None,
                      expect="an ISO 8601 time with a timezone, e.g. 2026-12-01T09:00:00Z")
        silences.append(Silence(
            state_machine_pattern=r.get("state_machine_pattern", check=_is_str, expect="a glob, e.g. mlplatform.test.*"),
            until=_as_time(until),
            reason=r.get("reason", check=_is_str, expect="why it is silenced"),
        ))
        r.done()
    alerts = AlertSettings(
        interval_seconds=a.get("interval_seconds", 60, check=_is_int(5), expect="an integer >= 5"),
        digest_threshold=a.get("digest_threshold", 5, check=_is_int(1), expect="an integer >= 1"),
        post_interval_seconds=float(a.get("post_interval_seconds", 1.0, check=_is_number(0),
                                          expect="a number of seconds >= 0")),
        initial_lookback_minutes=a.get("initial_lookback_minutes", 60, check=_is_int(0), expect="an integer >= 0"),
        execution_lookback_hours=a.get("execution_lookback_hours", 48, check=_is_int(1), expect="an integer >= 1"),
        log_lines=a.get("log_lines", 20, check=_is_int(0), expect="an integer >= 0"),
        retries=a.get("retries", 3, check=_is_int(0), expect="an integer >= 0"),
        retry_delay_seconds=float(a.get("retry_delay_seconds", 10.0, check=_is_number(0), expect="a number >= 0")),
        silences=tuple(silences),
        events_interval_seconds=a.get("events_interval_seconds", 10, check=_is_int(1), expect="an integer >= 1"),
        reconcile_interval_seconds=a.get("reconcile_interval_seconds", 600, check=_is_int(5),
                                         expect="an integer >= 5"),
    )
    a.done()

    m = root.sub("metrics")
    metrics = MetricsSettings(
        cron=m.get("cron", "*/5 * * * *", check=lambda v: isinstance(v, str) and len(v.split()) == 5,
                   expect="a 5-field cron expression"),
        window_hours=m.get("window_hours", 24, check=_is_int(1), expect="an integer >= 1"),
        max_failure_rate=float(m.get("max_failure_rate", 0.2, check=lambda v: _is_number(0)(v) and v <= 1,
                                     expect="a fraction between 0 and 1")),
        freshness_minutes=m.get("freshness_minutes", 15, check=_is_int(1), expect="an integer >= 1"),
        namespace=m.get("namespace", "PlatformOps/Batch", check=_is_str, expect="a CloudWatch namespace"),
        storage=m.get("storage", "local", check=lambda v: v in ("local", "s3"), expect="local or s3"),
        local_dir=m.get("local_dir", ".platform_ops/metrics", check=_is_str, expect="a directory"),
        s3_bucket=m.get("s3_bucket", None, check=lambda v: v is None or _is_str(v), expect="a bucket name"),
        s3_prefix=m.get("s3_prefix", "platform-ops/metrics", check=_is_str, expect="a key prefix"),
        charts_dir=m.get("charts_dir", None, check=lambda v: v is None or _is_str(v), expect="a directory"),
        chart_hours=m.get("chart_hours", 6, check=_is_int(1), expect="an integer >= 1"),
    )
    if metrics.storage == "s3" and not metrics.s3_bucket:
        raise SettingsError("metrics.s3_bucket: required when metrics.storage is s3")
    m.done()

    promotion = _promotion(root, environments)

    s = root.sub("slack")
    slack = SlackSettings(
        channel=s.get("channel", "#ml-platform-alerts", check=_is_str, expect="a channel name or id"),
        owners=dict(s.get("owners", {}, expect="a mapping of Metaflow user to Slack user id",
                          check=lambda v: isinstance(v, dict) and all(_is_str(x) for x in v.values())) or {}),
    )
    s.done()

    m = root.sub("metaflow")
    ui_url = m.get("ui_url", "https://metaflow.example.com", check=_is_str, expect="a URL").rstrip("/")
    m.done()

    d = root.sub("dagster")
    sensors_running = d.get("sensors_running", False, check=lambda v: isinstance(v, bool), expect="true or false")
    dagster_url = _dagster_url(d)
    d.done()
    root.done()
    return Settings(environments, reaper, slack, alerts, metrics, promotion, ui_url, sensors_running, dagster_url)


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
        raise SettingsError(f"{path}: {exc}") from None
