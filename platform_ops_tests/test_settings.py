"""Settings: the documented contract parses; every mistake names its key."""

import copy
import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from platform_ops import settings as settings_module
from platform_ops.sandbox.smoke import SANDBOX_SETTINGS
from platform_ops.settings import SCHEMA_PATH, Settings, SettingsError, load_settings, parse_settings

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


def test_every_problem_is_reported_one_line_each():
    data = copy.deepcopy(CONTRACT)
    data["reaper"].update(dry_run="yes", max_cancels_per_run="ten")
    data["slack"]["chanel"] = "#x"
    with pytest.raises(SettingsError) as err:
        parse_settings(data)
    assert str(err.value).splitlines() == [
        "reaper.dry_run: expected true or false, got 'yes'",
        "reaper.max_cancels_per_run: expected an integer >= 0, got 'ten'",
        "slack.chanel: unknown key (known: channel, owners)",
    ]


@pytest.mark.parametrize("data, expected", [
    (None, "settings: expected a mapping, got NoneType"),
    ({**CONTRACT, "reaper": ["x"]}, "reaper: expected a mapping, got list"),
    ({**CONTRACT, "environments": {}}, "environments: at least one environment is required"),
    ({**CONTRACT, "environments": {"Prod": CONTRACT["environments"]["production"]}},
     "environments.Prod: environment names are lowercase letters, digits, _"),
    ({**CONTRACT, "environments": {"staging": {**CONTRACT["environments"]["staging"], "name": "x"}}},
     "environments.staging.name: unknown key (an environment's name is its key)"),
    ({**CONTRACT, "alerts": {"silences": [{"state_machine_pattern": "a*", "until": "2026-12-01T09:00:00",
                                           "reason": "r"}]}},
     "alerts.silences[0].until: expected an ISO 8601 time with a timezone"),
    ({**CONTRACT, "metrics": {"storage": "s3"}}, "metrics.s3_bucket: required when metrics.storage is s3"),
    ({**CONTRACT, "alerts": {"post_interval_seconds": True}}, "alerts.post_interval_seconds: expected a number"),
])
def test_structural_mistakes_name_the_key(data, expected):
    with pytest.raises(SettingsError) as err:
        parse_settings(data)
    assert expected in str(err.value)


def test_an_empty_section_is_its_defaults():
    s = parse_settings({**CONTRACT, "reaper": None, "alerts": {"post_interval_seconds": 2}})
    assert s.reaper.max_cancels_per_run == 50 and s.alerts.post_interval_seconds == 2.0
    assert s.metaflow_ui_url == "https://metaflow.example.com" and s.environments["staging"].name == "staging"


def test_derived_settings_are_validated_too():
    """dataclasses.replace re-validates: a variant made in code keeps the file's rules."""
    s = parse_settings(CONTRACT)
    assert dataclasses.replace(s.reaper, max_cancels_per_run=5).max_cancels_per_run == 5
    with pytest.raises(ValueError, match="must be longer than the longest RUNNABLE threshold"):
        dataclasses.replace(s.reaper, watch_max_age_hours=1)
    with pytest.raises(ValueError, match="expected one of the environments"):
        dataclasses.replace(parse_settings({**CONTRACT, "promotion": PROMOTION}),
                            environments={"production": s.environments["production"]})


REGENERATE = ".venv/bin/python -m platform_ops.settings --schema > platform_ops/settings.schema.json"


def test_the_committed_schema_is_current():
    printed = subprocess.run([sys.executable, "-m", "platform_ops.settings", "--schema"], capture_output=True,
                             text=True, cwd=ROOT, check=True).stdout
    assert printed == SCHEMA_PATH.read_text(), f"{SCHEMA_PATH.name} is out of date: regenerate it with `{REGENERATE}`"


@pytest.mark.parametrize("path", [SANDBOX_SETTINGS, ROOT / "settings.example.yaml"])
def test_the_schema_accepts_the_shipped_files_and_points_editors_at_it(path):
    jsonschema = pytest.importorskip("jsonschema")
    text = Path(path).read_text()
    jsonschema.validate(yaml.safe_load(text), settings_module.json_schema())
    [line] = [line for line in text.splitlines() if line.startswith("# yaml-language-server: $schema=")]
    assert (Path(path).parent / line.split("=", 1)[1]).resolve() == SCHEMA_PATH


def test_the_schema_refuses_what_the_loader_refuses():
    jsonschema = pytest.importorskip("jsonschema")
    bad = copy.deepcopy(CONTRACT)
    bad["reaper"]["max_cancels_per_run"] = "ten"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, settings_module.json_schema())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**CONTRACT, "reaper": {"dry_rn": True}}, settings_module.json_schema())


def _model_keys(cls=Settings, prefix=""):
    """{dotted key: default} for every key of the file; "required" / "absent" where there is none."""
    keys = {}
    for field in dataclasses.fields(cls):
        info = cls.__pydantic_fields__[field.name]
        key = prefix + (info.alias or field.name)
        if field.name == "name" and cls is settings_module.EnvironmentSettings:
            continue
        default = "required" if info.is_required() else info.get_default(call_default_factory=True)
        section = settings_module._unwrap(info.annotation)
        env = settings_module._element(info.annotation) if isinstance(default, str) and default == "required" \
            and key == "environments" else None
        if env is not None:
            keys[f"{key}.<name>"] = "required"
            keys.update(_model_keys(env, f"{key}.<name>."))
        elif dataclasses.is_dataclass(section):
            keys[key] = "absent" if default is None else "section"
            keys.update(_model_keys(section, f"{key}."))
        else:
            keys[key] = default
    return keys


def _readme_rows():
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`") or "." not in cells[0] and cells[0] != "`promotion`":
            continue
        keys = re.findall(r"`([^`]+)`", cells[0])
        defaults = [d.strip() for d in cells[1].split(" / ")]
        for key, default in zip(keys, defaults * len(keys) if len(defaults) == 1 else defaults, strict=True):
            rows[key] = default.strip("`")
    return rows


def _same_default(cell, default):
    if cell == "required" or cell == "absent" or default in ("required", "absent"):
        return cell == default
    if isinstance(default, str):
        return cell == default
    try:
        parsed = yaml.safe_load(cell)
    except yaml.YAMLError:
        return False
    plain = list(default) if isinstance(default, tuple) else default
    return isinstance(parsed, bool) == isinstance(plain, bool) and parsed == plain


def test_the_readme_table_matches_the_models():
    """Every key of the models has a row with its default; no row names a key that does not exist."""
    model, rows = _model_keys(), _readme_rows()
    sections = {k for k, v in model.items() if v == "section"}
    missing = sorted(set(model) - set(rows) - sections)
    unknown = sorted(set(rows) - set(model))
    wrong = sorted(f"{k}: README says {rows[k]!r}, the model {model[k]!r}" for k in set(rows) & set(model)
                   if k not in sections and not _same_default(rows[k], model[k]))
    assert (missing, unknown, wrong) == ([], [], []), "README.md's settings table and platform_ops/settings.py differ"
