"""SQS: the events queue, drained ten messages at a time without waiting (inside a sensor tick),
deleted only once the run that handles them was requested."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from platform_ops.adapters.aws import aws_errors

BATCH = 10  # ReceiveMessage and DeleteMessageBatch maximum


@dataclass(frozen=True)
class Message:
    message_id: str
    receipt: str
    body: str


def queue_url(client: Any, name: str) -> str:
    with aws_errors():
        return client.get_queue_url(QueueName=name)["QueueUrl"]


def receive(client: Any, url: str, max_messages: int) -> list[Message]:
    """Up to `max_messages`, 10 a call, stopping at the first short answer (the queue is drained)."""
    messages: list[Message] = []
    while len(messages) < max_messages:
        with aws_errors():
            answer = client.receive_message(QueueUrl=url, MaxNumberOfMessages=BATCH, WaitTimeSeconds=0)
        page = [Message(m["MessageId"], m["ReceiptHandle"], m["Body"]) for m in answer.get("Messages", [])]
        messages += page
        if len(page) < BATCH:
            break
    return messages


def delete(client: Any, url: str, receipts: list[str]) -> list[str]:
    """Delete by receipt handle, 10 a call; the receipts SQS refused (they come back later)."""
    failed: list[str] = []
    for start in range(0, len(receipts), BATCH):
        chunk = receipts[start:start + BATCH]
        with aws_errors():
            answer = client.delete_message_batch(
                QueueUrl=url, Entries=[{"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(chunk)])
        failed += [chunk[int(f["Id"])] for f in answer.get("Failed", [])]
    return failed
