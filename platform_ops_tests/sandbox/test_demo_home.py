"""The demo's Dagster home: kept between runs, with the repository's instance config, and the
production DemoFlow offered as a promotion partition from the first start."""

import dagster as dg
import yaml

from platform_ops.promotion.defs import PROMOTED
from platform_ops.sandbox.__main__ import prepare_dagster_home


def test_a_fresh_demo_home_offers_demoflow_to_promote_and_a_restart_keeps_one(tmp_path):
    home = prepare_dagster_home(tmp_path / "home")
    assert yaml.safe_load((home / "dagster.yaml").read_text())["nux"] == {"enabled": False}
    prepare_dagster_home(tmp_path / "home")  # a restart
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_dynamic_partitions(PROMOTED.name) == ["mlplatform.prod.DemoFlow"]
