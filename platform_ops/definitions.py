"""The platform-ops code location: `platform_ops.definitions:defs`."""

from __future__ import annotations

import dagster as dg

from platform_ops.reaper.defs import reaper_defs
from platform_ops.resources import build_resources
from platform_ops.settings import Settings, load_settings


def build_defs(settings: Settings) -> dg.Definitions:
    return dg.Definitions.merge(
        reaper_defs(settings),
        dg.Definitions(resources=build_resources(settings)),
    )


defs = build_defs(load_settings())
