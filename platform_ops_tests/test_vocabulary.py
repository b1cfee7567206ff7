from datetime import UTC, datetime, timedelta

from platform_ops import vocabulary
from platform_ops.reaper import core as reaper_core


def test_epoch_ms_round_trip():
    at = datetime(2026, 11, 28, 10, 0, 0, 123000, tzinfo=UTC)
    assert vocabulary.to_epoch_ms(at) == 1795860000123
    assert vocabulary.from_epoch_ms(1795860000123) == at
    assert vocabulary.from_epoch_ms("1795860000123") == at  # as an event's JSON may carry it


def test_ids_digest_names_the_set_whatever_its_order():
    assert vocabulary.ids_digest(["b", "a"]) == vocabulary.ids_digest(["a", "b"])
    assert vocabulary.ids_digest(["a", "b"]) != vocabulary.ids_digest(["a", "c"])
    assert len(vocabulary.ids_digest(["a"])) == 20


def test_the_reapers_reason_starts_with_the_shared_prefix():
    reason = reaper_core.cancel_reason(timedelta(hours=2, minutes=14), timedelta(hours=2), "CAPACITY:X")
    assert reason.startswith(vocabulary.REASON_PREFIX + " RUNNABLE for 2h14m > 2h0m")
