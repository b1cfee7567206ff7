"""Missed-schedule messages and the sensor's cursor, pure: the owner from a real Metaflow
definition, escaping of what deployers control, Block Kit validity, a bounded cursor."""

from datetime import UTC, datetime, timedelta

from platform_ops.sandbox import flows
from platform_ops.schedules.core import AnnounceMiss, AnnounceRecovery, EnvironmentCursor, dump_cursor, load_cursor
from platform_ops.schedules.messages import Where, miss_message, recovery_message
from platform_ops.vocabulary import owner_from_definition as definition_owner
from platform_ops_tests.test_block_kit import slack_sdk_errors

ARN = "arn:aws:states:us-east-1:222222222222:stateMachine:mlplatform.prod.DemoFlow"
NOW = datetime(2026, 12, 1, 10, 40, tzinfo=UTC)
MISS = AnnounceMiss(ARN, "mlplatform.prod.DemoFlow", datetime(2026, 12, 1, 10, 0, tzinfo=UTC),
                    datetime(2026, 12, 1, 9, 0, 20, tzinfo=UTC), "every hour at :00")


def test_the_owner_is_read_from_metaflows_own_definition():
    assert definition_owner((flows.HERE / "sm_prod_full.json").read_text()) == "alice"
    assert definition_owner('{"States": {"a": {"Type": "Pass"}}}') is None
    assert definition_owner("not json") is None and definition_owner(None) is None


def test_a_miss_names_owner_schedule_last_start_and_links_and_passes_block_kit():
    message = miss_message(MISS, "cron(0 * * * ? *)", "alice", Where("production", {"alice": "U0ALICE"}), NOW)
    assert "<@U0ALICE>" in message.text and "every hour at :00" in message.text
    assert "2026-12-01 10:00 UTC" in message.text and "last start: 2026-12-01 09:00 UTC (1h39m ago)" in message.text
    for block in message.blocks:
        assert slack_sdk_errors(block) == []
    unmapped = miss_message(MISS, "cron(0 * * * ? *)", "bob", Where("production"), NOW)
    assert "bob" in unmapped.text and "<@" not in unmapped.text


def test_what_deployers_control_is_escaped():
    hostile = AnnounceMiss(ARN.replace("DemoFlow", "<!channel>"), "<!channel>", MISS.expected_at, None, "<b>")
    message = miss_message(hostile, "cron(<x> * * * ? *)", "<!here>", Where("staging"), NOW)
    mrkdwn = [message.text, *(f["text"] for b in message.blocks for f in b.get("fields", []))]
    rendered = " ".join(mrkdwn)  # (plain_text headers and button URLs are never parsed for mentions)
    assert "<!channel>" not in rendered and "<!here>" not in rendered and "&lt;!channel&gt;" in rendered
    assert "last start: never" in message.text


def test_a_recovery_says_when_it_started_and_how_late():
    message = recovery_message(AnnounceRecovery(ARN, MISS.expected_at, MISS.expected_at + timedelta(minutes=47)),
                               Where("production"))
    assert "started again at 2026-12-01 10:47 UTC, 47m after the missed start of 2026-12-01 10:00 UTC" in message.text
    for block in message.blocks:
        assert slack_sdk_errors(block) == []


def test_the_cursor_round_trips_and_keeps_only_the_watched_estate():
    rule = "arn:aws:events:us-east-1:222222222222:rule/mlplatform.prod.DemoFlow"
    gone = "arn:aws:events:us-east-1:222222222222:rule/mlplatform.prod.Deleted"
    cursor = EnvironmentCursor({rule: frozenset({ARN}), gone: frozenset()}, {ARN: NOW, ARN + "x": None}, {ARN})
    assert load_cursor(dump_cursor({"production": cursor})) == {"production": cursor}
    kept = cursor.bounded({"mlplatform.prod.DemoFlow"}, {ARN})
    assert kept.known_targets == {rule: frozenset({ARN})} and kept.last_starts == {ARN: NOW} and kept.open == {ARN}
    assert load_cursor("{not json") == {} and load_cursor(None) == {}
