"""Settings: the documented contract parses; every mistake names its key."""

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from platform_ops.sandbox.smoke import SANDBOX_SETTINGS
from platform_ops.settings import SettingsError, load_settings, parse_settings

ROOT = Path(__file__).resolve().parents[1]

CONTRACT = yaml.safe_load("""
environments:
  staging:    {account_id: "111111111111", region: us-east-1, role_arn: null, job_queues: [ml-staging], state_machine_prefixes: [""]}
  production: {account_id: "222222222222", region: us-east-1, role_arn: "arn:aws:iam::222222222222:role/platform-ops", job_queues: [ml-production], state_machine_prefixes: [""]}
reaper: {runnable_threshold_minutes: 120, queue_thresholds_minutes: {}, dry_run: false, max_cancels_per_run: 50, protect_tag: "platform-ops:protect"}
slack: {channel: "#ml-platform-alerts", owners: {alice: U0ALICE}}
metaflow: {ui_url: "https://metaflow.example.com"}
dagster: {url: "https://dagster.example.com/"}
""")


def test_the_contract_from_the_issue_parses():
    s = parse_settings(CONTRACT)
    assert list(s.environments) == ["staging", "production"]
    prod = s.environments["production"]
    assert (prod.account_id, prod.role_arn, prod.job_queues) == (
        "222222222222", "arn:aws:iam::222222222222:role/platform-ops", ("ml-production",))
    assert s.environments["staging"].role_arn is None
    assert s.reaper.threshold_minutes("ml-staging") == 120
    assert s.slack.owners == {"alice": "U0ALICE"}
    assert s.sensors_running is False  # production example leaves sensors stopped
    assert s.dagster_url == "https://dagster.example.com"
    assert s.reaper.watch_max_age_hours == 72


def test_queue_threshold_overrides_the_default():
    data = copy.deepcopy(CONTRACT)
    data["reaper"]["queue_thresholds_minutes"] = {"ml-gpu": 30}
    s = parse_settings(data)
    assert s.reaper.threshold_minutes("ml-gpu") == 30
    assert s.reaper.threshold_minutes("ml-staging") == 120


def _set(data, dotted, value):
    *parents, last = dotted.split(".")
    for p in parents:
        data = data[p]
    if value is KeyError:
        del data[last]
    else:
        data[last] = value


@pytest.mark.parametrize("key, value, expected", [
    ("environments", KeyError, "environments: required key is missing"),
    ("environments.production.account_id", "2222", "environments.production.account_id: expected a 12-digit"),
    ("environments.production.account_id", 222222222222, "environments.production.account_id: expected a 12-digit"),
    ("environments.staging.job_queues", "ml-staging", "environments.staging.job_queues: expected a list"),
    ("environments.production.role_arn", "platform-ops", "environments.production.role_arn: expected null or an IAM role ARN"),
    ("environments.staging.regoin", "us-east-1", "environments.staging.regoin: unknown key"),
    ("reaper.max_cancels_per_run", "ten", "reaper.max_cancels_per_run: expected an integer >= 0, got 'ten'"),
    ("reaper.runnable_threshold_minutes", 0, "reaper.runnable_threshold_minutes: expected an integer >= 1"),
    ("reaper.dry_run", "yes", "reaper.dry_run: expected true or false"),
    ("reaper.queue_thresholds_minutes", {"ml-gpu": -5}, "reaper.queue_thresholds_minutes: expected a mapping"),
    ("slack.owners", ["alice"], "slack.owners: expected a mapping"),
    ("slack.chanel", "#x", "slack.chanel: unknown key"),
    ("reaper.watch_max_age_hours", 0, "reaper.watch_max_age_hours: expected an integer >= 1, got 0"),
    ("reaper.watch_max_age_hours", 2, "reaper.watch_max_age_hours: must be longer than the longest RUNNABLE "
                                      "threshold (120 minutes), got 2"),
    ("dagster.url", KeyError, "dagster.url: required key is missing: the Dagster UI's base URL"),
    ("dagster.url", "dagster.example.com", "dagster.url: expected an http(s) URL"),
    ("dagster", KeyError, "dagster.url: required key is missing"),
])
def test_a_bad_value_names_the_key(key, value, expected):
    data = copy.deepcopy(CONTRACT)
    _set(data, key, value)
    with pytest.raises(SettingsError) as err:
        parse_settings(data)
    assert expected in str(err.value)


def test_load_settings_says_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.delenv("PLATFORM_OPS_SETTINGS", raising=False)
    with pytest.raises(SettingsError, match="PLATFORM_OPS_SETTINGS is not set"):
        load_settings()
    with pytest.raises(SettingsError, match="cannot read the file"):
        load_settings(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("environments: [unclosed")
    with pytest.raises(SettingsError, match="not valid YAML"):
        load_settings(bad)


def test_a_queue_threshold_longer_than_the_watch_bound_is_refused():
    """The watch would forget an ml-gpu job before it is due: refused, naming the threshold."""
    data = copy.deepcopy(CONTRACT)
    data["reaper"].update(queue_thresholds_minutes={"ml-gpu": 5000}, watch_max_age_hours=72)
    with pytest.raises(SettingsError, match=r"longest RUNNABLE threshold \(5000 minutes\), got 72"):
        parse_settings(data)
    data["reaper"]["watch_max_age_hours"] = 84
    assert parse_settings(data).reaper.watch_max_age_hours == 84


@pytest.mark.parametrize("path", [SANDBOX_SETTINGS, ROOT / "settings.example.yaml"])
def test_shipped_settings_files_are_valid(path):
    s = load_settings(path)
    assert set(s.environments) == {"staging", "production"}
    assert s.dagster_url.startswith("http") and s.reaper.watch_max_age_hours == 72  # dagster.url has no default


def test_definitions_fail_to_load_naming_the_key(tmp_path):
    data = copy.deepcopy(CONTRACT)
    data["reaper"]["max_cancels_per_run"] = -1
    bad = tmp_path / "settings.yaml"
    bad.write_text(yaml.safe_dump(data))
    proc = subprocess.run([sys.executable, "-c", "import platform_ops.definitions"], capture_output=True, text=True,
                          env={"PLATFORM_OPS_SETTINGS": str(bad), "PATH": ""}, cwd=ROOT)
    assert proc.returncode != 0
    assert "reaper.max_cancels_per_run: expected an integer >= 0, got -1" in proc.stderr


PROMOTION = {"audit_bucket": "audit", "queues": {"ml-staging": "ml-production"},
             "rules": [{"name": "no_debug", "description": "no debug images", "forbid": ":debug"}]}


def test_promotion_is_optional_and_parses_with_defaults():
    assert parse_settings(CONTRACT).promotion is None
    p = parse_settings({**CONTRACT, "promotion": PROMOTION}).promotion
    assert (p.source, p.target, p.audit_prefix, p.max_staging_age_hours) == ("staging", "production", "promotions", 168)
    assert p.queues == {"ml-staging": "ml-production"} and p.rules[0].forbid == ":debug"
    assert p.lint_isolation == "namespaces"  # isolated unless someone opts out, in writing


@pytest.mark.parametrize("change, expected", [
    ({"audit_bucket": KeyError}, "promotion.audit_bucket: required key is missing"),
    ({"from": "dev"}, "promotion.from: expected one of the environments (staging, production), got 'dev'"),
    ({"to": "staging"}, "promotion.to: must differ from promotion.from ('staging')"),
    ({"max_staging_age_hours": 0}, "promotion.max_staging_age_hours: expected an integer >= 1"),
    ({"queues": ["ml-staging"]}, "promotion.queues: expected a mapping of staging queue to production queue"),
    ({"rules": [{"name": "x", "description": "d", "forbid": "("}]}, "promotion.rules[0].forbid: expected a regular"),
    ({"rules": [{"name": "X Y", "description": "d", "forbid": "a"}]}, "promotion.rules[0].name: expected a rule name"),
    ({"bucket": "x"}, "promotion.bucket: unknown key"),
    ({"lint_isolation": "bwrap"}, "promotion.lint_isolation: expected 'namespaces' (the lint runs in bubblewrap) or "
                                  "'none' (unsafe: no isolation), got 'bwrap'"),
])
def test_a_bad_promotion_value_names_the_key(change, expected):
    section = dict(PROMOTION)
    for key, value in change.items():
        if value is KeyError:
            del section[key]
        else:
            section[key] = value
    with pytest.raises(SettingsError) as err:
        parse_settings({**CONTRACT, "promotion": section})
    assert expected in str(err.value)
