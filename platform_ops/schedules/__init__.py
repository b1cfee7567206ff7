"""Missed schedules (issue 14, item 3): state machines an EventBridge rule should have started."""
