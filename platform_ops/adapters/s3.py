"""S3: code packages read by URL, audit records written once and never overwritten."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlparse

from platform_ops.adapters.aws import AwsError, aws_errors, pages
from platform_ops.redaction import redact_data


def split_url(url: str) -> tuple[str, str]:
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc or not parsed.path.strip("/"):
        raise ValueError(f"{url!r} is not an s3://bucket/key URL")
    return parsed.netloc, parsed.path.lstrip("/")


def read_url(client: Any, url: str) -> bytes:
    bucket, key = split_url(url)
    with aws_errors():
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()


class RecordExists(AwsError):
    """A record with this key is already there: records are immutable, so this is a bug or a replay."""


def put_once(client: Any, bucket: str, key: str, body: bytes, content_type: str = "binary/octet-stream") -> None:
    """Write `body` only if nothing is at `key` (conditional write, If-None-Match: *)."""
    try:
        with aws_errors():
            client.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type, IfNoneMatch="*")
    except AwsError as exc:
        if exc.code in ("PreconditionFailed", "ConditionalRequestConflict"):
            raise RecordExists(exc.code, f"s3://{bucket}/{key} already exists and is never overwritten") from exc
        raise


def put_new_json(client: Any, bucket: str, key: str, record: dict) -> None:
    """A write-once JSON record, redacted: it can never be corrected or deleted afterwards."""
    put_once(client, bucket, key, json.dumps(redact_data(record), indent=1, sort_keys=True).encode(),
             "application/json")


def copy_content_addressed(blob: bytes, client: Any, url: str) -> bool:
    """Put a content-addressed object (a code package) at `url` unless it is there; True when
    written. Same key means same bytes, so "already there" is success."""
    bucket, key = split_url(url)
    try:
        put_once(client, bucket, key, blob)
    except RecordExists:
        return False
    return True


def read_json_under(client: Any, bucket: str, prefix: str) -> list[dict]:
    """Every JSON object under `prefix`, in key order."""
    listing = pages(client.list_objects_v2, token_key="ContinuationToken", next_key="NextContinuationToken",
                    Bucket=bucket, Prefix=prefix.rstrip("/") + "/")
    keys = [o["Key"] for page in listing for o in page.get("Contents", []) if o["Key"].endswith(".json")]
    records = []
    for key in sorted(keys):
        with aws_errors():
            records.append(json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read()))
    return records
