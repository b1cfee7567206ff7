"""platform-ops as a Dagster component: a `dg` project adds it to a defs.yaml instead of running
its own code location. The component's attributes are a settings file's keys (README: Settings),
validated by the same models with the same `key: what is wrong` messages:

    type: platform_ops.component.PlatformOpsComponent
    attributes:
      environments:
        production: {account_id: "222222222222", region: us-east-1, job_queues: [ml-production]}
      dagster:
        url: "{{ env.DAGSTER_URL }}"

Not a `dg.Resolvable`: Resolvable derives its YAML model from field annotations and accepts only
BaseModels, Resolvables and plain values, while the settings are pydantic dataclasses (so that
`dataclasses.replace` keeps working across the code). The component declares the settings as its
attributes model instead and renders `{{ ... }}` templates with the load context's own resolver,
as Resolvable would (only the strings that are templates).
"""

from __future__ import annotations

from typing import Any

import dagster as dg
from pydantic import BaseModel, ConfigDict

from platform_ops.code_location import build_defs
from platform_ops.settings import Settings, SettingsError, json_schema, parse_settings


class PlatformOpsAttributes(dg.Model):
    """A defs.yaml's `attributes`: taken as they are, checked by the settings models on load (their
    messages name the key); the JSON Schema shown to `dg` and editors is the settings schema."""

    model_config = ConfigDict(extra="allow")

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return json_schema()


class PlatformOpsComponent(dg.Component):
    """The platform-ops jobs, sensors, schedules, assets and resources, from settings given as the
    component's attributes."""

    def __init__(self, settings: Settings):
        self.settings = settings

    @classmethod
    def get_model_cls(cls) -> type[BaseModel]:
        return PlatformOpsAttributes

    @classmethod
    def load(cls, attributes: BaseModel | None, context: dg.ComponentLoadContext) -> PlatformOpsComponent:
        raw = attributes.model_dump() if attributes is not None else {}
        rendered = _render(context.resolution_context.at_path("attributes"), raw)
        try:
            return cls(parse_settings(rendered))
        except SettingsError as exc:
            raise SettingsError("\n".join(f"attributes.{line}" for line in str(exc).splitlines())) from None

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        return build_defs(self.settings)


def _render(context: dg.ResolutionContext, value: Any) -> Any:
    """Renders the `{{ ... }}` strings only: dagster's renderer would also read a plain "111111111111"
    as a number, and an account id is a string."""
    if isinstance(value, dict):
        return {k: _render(context.at_path(k), v) for k, v in value.items()}
    if isinstance(value, list):
        return [_render(context.at_path(i), v) for i, v in enumerate(value)]
    if isinstance(value, str) and ("{{" in value or "{%" in value):
        return context.resolve_value(value)
    return value
