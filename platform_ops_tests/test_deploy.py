"""The production deployment files are what Dagster and AWS accept: deploy/dagster.yaml against
Dagster's own instance schema and each configurable class's schema."""

from pathlib import Path

import pytest
import yaml
from dagster._config import validate_config
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.instance.config import dagster_instance_config
from dagster._serdes.config_class import class_from_code_pointer

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


def test_the_production_instance_config_passes_dagsters_schema():
    config, _ = dagster_instance_config(str(DEPLOY))
    for section in ("run_launcher", "compute_logs"):
        entry = config[section]
        cls = class_from_code_pointer(entry["module"], entry["class"])
        result = validate_config(cls.config_type(), entry["config"])
        assert result.success, (section, [e.message for e in result.errors])
    from dagster_postgres import DagsterPostgresStorage

    result = validate_config(DagsterPostgresStorage.config_type(), config["storage"]["postgres"])
    assert result.success, [e.message for e in result.errors]


def test_production_keeps_every_local_concurrency_limit():
    """One reap per queue, one promotion per flow: in production too."""
    local = yaml.safe_load((ROOT / "dagster.yaml").read_text())["concurrency"]["runs"]["tag_concurrency_limits"]
    production = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())["concurrency"]["runs"]["tag_concurrency_limits"]
    assert local == production
    launcher = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())["run_launcher"]["config"]
    assert {limit["key"] for limit in local} <= set(launcher["propagate_tags"]["allow_list"])


def test_a_broken_instance_config_is_refused(tmp_path):
    """The validation above can fail: a misspelt key is an error, not ignored."""
    data = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    data["run_monitoring"]["start_timout_seconds"] = data["run_monitoring"].pop("start_timeout_seconds")
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(DagsterInvalidConfigError, match="start_timout_seconds"):
        dagster_instance_config(str(tmp_path))
