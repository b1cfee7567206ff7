"""The platform-ops code location: `platform_ops.definitions:defs`, from $PLATFORM_OPS_SETTINGS."""

from platform_ops.code_location import build_defs
from platform_ops.hardening import make_non_dumpable
from platform_ops.settings import load_settings

make_non_dumpable()  # this process holds the Slack token and AWS keys: no same-uid process reads them
defs = build_defs(load_settings())
