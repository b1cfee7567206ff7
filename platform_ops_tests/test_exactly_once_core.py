"""The exactly-once decisions, pure: what a ledger record means, where to look, what matches."""

import pytest

from platform_ops import exactly_once as eo
from platform_ops.exactly_once import Step

CLAIM = eo.claim_record(1_700_000_000.0, "run-2", "run-1", "#alerts", None)


def test_nothing_recorded_is_posted():
    assert eo.next_step(None, "run-1", owner_finished=True) is Step.POST
    assert eo.next_step({}, "run-1", owner_finished=True) is Step.POST  # a cleared record


@pytest.mark.parametrize("record", [
    eo.confirmed_record("1.000001", "#alerts", "run-1"),
    eo.confirmed_record("1.000001", "#alerts", "run-1", found=True),
    {"state": "muted", "reason": "branch deployments"},
    {"ts": "1.000001"},  # a digest recorded before claims existed
])
def test_confirmed_or_muted_is_done(record):
    assert eo.is_done(record)
    assert eo.next_step(record, "run-1", owner_finished=False) is Step.DONE


def test_a_claim_of_this_runs_lineage_is_looked_up_even_while_its_run_looks_alive():
    """An op retry, or a re-execution of a killed run whose status still says STARTED."""
    assert eo.next_step(CLAIM, "run-1", owner_finished=False) is Step.LOOKUP


def test_a_claim_of_an_ended_run_is_looked_up():
    assert eo.next_step(CLAIM, "another-root", owner_finished=True) is Step.LOOKUP
    sensor_claim = eo.claim_record(5.0, None, None, "#alerts", None)  # a sensor's: no run owns it
    assert eo.next_step(sensor_claim, None, owner_finished=True) is Step.LOOKUP


def test_a_claim_of_another_live_run_is_left_to_it():
    assert eo.next_step(CLAIM, "another-root", owner_finished=False) is Step.BUSY
    assert eo.next_step(CLAIM, None, owner_finished=False) is Step.BUSY


def test_found_confirms_not_found_posts():
    assert eo.after_lookup("1700000001.000100") is Step.DONE
    assert eo.after_lookup(None) is Step.POST


def test_a_post_that_may_have_reached_slack_is_looked_up_before_it_is_sent_again():
    assert eo.after_failed_post(maybe_sent=True, attempt=0) is Step.LOOKUP
    assert eo.after_failed_post(maybe_sent=True, attempt=eo.AMBIGUOUS_RETRIES - 1) is Step.LOOKUP
    assert eo.after_failed_post(maybe_sent=True, attempt=eo.AMBIGUOUS_RETRIES) is Step.FAIL  # the claim stays


def test_a_post_slack_never_took_is_left_to_the_next_attempt():
    assert eo.after_failed_post(maybe_sent=False, attempt=0) is Step.FAIL


def test_the_lookup_window_surrounds_the_claim():
    oldest, latest = eo.lookup_window(1_700_000_000.0)
    assert float(oldest) == 1_700_000_000.0 - eo.CLOCK_SKEW_SECONDS
    assert float(latest) == 1_700_000_000.0 + eo.POST_LIFETIME_SECONDS + eo.CLOCK_SKEW_SECONDS
    assert oldest == "1699999700.000000"  # Slack's ts format
    assert float(eo.lookup_window(10.0)[0]) == 0.0


def test_the_claim_says_when_who_and_where():
    claim = eo.claim_record(12.5, "run-2", "run-1", "#alerts", "1.000001")
    assert eo.is_claim(claim) and not eo.is_done(claim)
    assert claim == {"state": "claimed", "claimed_at": 12.5, "run_id": "run-2", "root_run_id": "run-1",
                     "channel": "#alerts", "thread_ts": "1.000001"}


def test_metadata_names_the_key_and_only_that_key_matches():
    meta = eo.metadata("platform_ops/alerts/execution/arn:x", kind="execution", execution_arn="arn:x")
    assert meta == {"event_type": "platform_ops_alert",
                    "event_payload": {"key": "platform_ops/alerts/execution/arn:x", "kind": "execution",
                                      "execution_arn": "arn:x"}}
    messages = [
        {"ts": "3.0", "text": "someone else"},
        {"ts": "2.0", "metadata": {"event_type": "other_app", "event_payload": {"key": meta["event_payload"]["key"]}}},
        {"ts": "1.5", "metadata": eo.metadata("platform_ops/alerts/execution/arn:y")},
        {"ts": "1.0", "metadata": meta},
    ]
    assert eo.matching_ts(messages, "platform_ops/alerts/execution/arn:x") == "1.0"
    assert eo.matching_ts(messages[:3], "platform_ops/alerts/execution/arn:x") is None
    assert eo.matching_ts([{"ts": "1.0", "metadata": {"event_type": "platform_ops_alert"}}], "k") is None


def test_a_claimed_digest_keeps_a_smaller_retry_in_its_thread():
    assert eo.is_storm(6, 5, None)
    assert not eo.is_storm(5, 5, None)
    assert eo.is_storm(2, 5, eo.claim_record(1.0, "r", "r", "#alerts", None))  # 4 of 6 went out before the crash
