"""The component: a dg project's defs.yaml with the settings as attributes gives the same code
location as the settings file does."""

from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster.components.testing.utils import create_defs_folder_sandbox

from platform_ops.code_location import build_defs
from platform_ops.component import PlatformOpsComponent
from platform_ops.sandbox.smoke import SANDBOX_SETTINGS
from platform_ops.settings import SettingsError, json_schema, parse_settings

SETTINGS = yaml.safe_load(Path(SANDBOX_SETTINGS).read_text())


def _names(defs: dg.Definitions) -> dict[str, set[str]]:
    repo = defs.get_repository_def()
    return {"jobs": {j.name for j in repo.get_all_jobs()},
            "sensors": {s.name for s in repo.sensor_defs},
            "schedules": {s.name for s in repo.schedule_defs},
            "resources": set(defs.resources or {})}


def _project_defs(attributes: dict) -> dg.Definitions:
    """All definitions of a dg project whose defs folder holds one defs.yaml: platform-ops."""
    with create_defs_folder_sandbox() as project:
        folder = project.defs_folder_path / "platform_ops"
        folder.mkdir()
        (folder / "defs.yaml").write_text(yaml.safe_dump(
            {"type": "platform_ops.component.PlatformOpsComponent", "attributes": attributes}))
        with project.build_all_defs() as defs:
            return defs


def test_a_defs_yaml_gives_the_code_location_of_the_settings_file():
    expected = _names(build_defs(parse_settings(SETTINGS)))
    assert {"reap_stuck_jobs", "stuck_jobs_sensor"} <= expected["jobs"] | expected["sensors"]
    assert _names(_project_defs(SETTINGS)) == expected


def test_from_a_dict_too():
    component = PlatformOpsComponent.from_attributes_dict(attributes=SETTINGS)
    assert component.settings == parse_settings(SETTINGS)


def test_attributes_are_templates(monkeypatch):
    """A deployment's URL comes from its environment, as in any dg project."""
    monkeypatch.setenv("PLATFORM_OPS_TEST_DAGSTER_URL", "https://dagster.prod.example.com/")
    attributes = {**SETTINGS, "dagster": {"url": "{{ env.PLATFORM_OPS_TEST_DAGSTER_URL }}"}}
    component = PlatformOpsComponent.from_attributes_dict(attributes=attributes)
    assert component.settings.dagster_url == "https://dagster.prod.example.com"
    assert component.settings.environments["staging"].account_id == "111111111111"  # a string, still
    assert component.settings.sensors_running is False  # the default, as in a file


def test_a_bad_attribute_names_its_key():
    bad = {**SETTINGS, "reaper": {**SETTINGS["reaper"], "max_cancels_per_run": "ten"}}
    with pytest.raises(SettingsError, match=r"attributes\.reaper\.max_cancels_per_run: expected an integer >= 0, "
                                            r"got 'ten'"):
        PlatformOpsComponent.from_attributes_dict(attributes=bad)


def test_dg_shows_the_settings_schema():
    assert PlatformOpsComponent.get_model_cls().model_json_schema() == json_schema()


def test_the_readme_example_loads(monkeypatch):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    [block] = [b for b in readme.split("```yaml\n")[1:] if "PlatformOpsComponent" in b.split("```")[0]]
    example = yaml.safe_load(block.split("```")[0])
    monkeypatch.setenv("DAGSTER_URL", "https://dagster.example.com")
    component = PlatformOpsComponent.from_attributes_dict(attributes=example["attributes"])
    assert list(component.settings.environments) == ["production"]
    assert "stuck_jobs_sensor" in _names(dg.component_defs(component=component))["sensors"]
