"""The platform-ops code location: `platform_ops.definitions:defs`, from $PLATFORM_OPS_SETTINGS."""

from platform_ops.code_location import build_defs
from platform_ops.settings import load_settings

defs = build_defs(load_settings())
