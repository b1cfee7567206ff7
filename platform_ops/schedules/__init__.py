"""Missed schedules: state machines an EventBridge rule should have started, and did not."""
