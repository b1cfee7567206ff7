"""Event-driven mode: one SQS queue per account carries Step Functions and Batch state changes."""
