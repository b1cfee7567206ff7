"""Redaction of staging-controlled text: known secret values and credential shapes go, the
words an operator needs (ARNs, job ids, reasons) stay."""

import json

import pytest

from platform_ops.redaction import REDACTED, redact, redact_data, remember

TOKEN = "xoxb-2461180-8421093-kQ3nX0uTzvOq9hYbR1mC"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


@pytest.fixture(autouse=True)
def platform_secrets(monkeypatch):
    monkeypatch.setenv("SLACK_BOT_TOKEN", TOKEN)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)


def test_known_values_from_the_environment_are_scrubbed_anywhere_in_text():
    line = f"debug: token={TOKEN} secret:{SECRET}!"
    assert redact(line) == f"debug: token={REDACTED} secret:{REDACTED}!"


def test_assumed_role_credentials_once_remembered_are_scrubbed():
    session_token = "IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQD6" * 3
    assert session_token in redact(f"tok {session_token}")
    remember("ASIAY34FZKBOKMUTVV7A", "assumed/secret/key/value/1234567890abcd", session_token, None, "short")
    assert redact(f"tok {session_token}") == f"tok {REDACTED}"
    assert redact("short") == "short"  # too short to be a secret: never remembered


def test_credential_shapes_are_scrubbed_even_when_unknown():
    text = "\n".join([
        "[default]",
        "aws_access_key_id = AKIAIOSFODNN7EXAMPLE",
        "aws_secret_access_key = je7MtGbClwBF/2Zp9Utk/h3yCo8nvbEXAMPLEKEY",
        'aws_session_token="FwoGZXIvYXdzEBYaDHhBTEXAMPLE"',
        '{"AccessKeyId": "ASIAJEXAMPLEXEG2JICE", "SecretAccessKey": "9drTJvcXLB89EXAMPLELB8923FB892xMFI",',
        ' "SessionToken": "AQoXdzELDDY//////////wEaoAK1wvxJY12r2IrDEXAMPLE"}',
        "export SLACK_TOKEN=xoxp-1234-5678-abcdefghijkl and xoxa-2-abcdefghij and xoxr-abcdefghij",
        "ReadOnlyCredentials(access_key='AKIAIOSFODNN7EXAMPL2', secret_key='Zm9vYmFyYmF6cXV4cXV1eA', token='IQoJb3Jp')",
        "app token xapp-1-A0123-4567-abcdef",
    ])
    out = redact(text)
    for leaked in ("AKIAIOSFODNN7EXAMPLE", "je7MtGbClwBF", "FwoGZXIvYXdz", "ASIAJEXAMPLEXEG2JICE", "9drTJvcXLB89",
                   "AQoXdzELDDY", "xoxp-1234", "xoxa-2-", "xoxr-abc", "Zm9vYmFy", "IQoJb3Jp", "xapp-1"):
        assert leaked not in out, (leaked, out)
    assert "aws_secret_access_key = [redacted]" in out and '"SecretAccessKey": "[redacted]"' in out


def test_what_an_operator_needs_is_left_alone():
    text = ("arn:aws:states:us-east-1:222222222222:execution:mlplatform.prod.DemoFlow:sfn-1f0e "
            "job 4f6a1c2e-9b1d-4c3a-8e7f-0123456789ab: OutOfMemoryError: Container killed due to memory usage; "
            "CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY for [m5.2xlarge]; secret_santa=bob; AKIA; xoxb-")
    assert redact(text) == text


def test_nested_records_are_scrubbed_keys_and_values():
    record = {"checks": [{"name": "lint", "detail": f"printed {TOKEN}"}], TOKEN: ("x", SECRET), "n": 3}
    out = redact_data(record)
    assert TOKEN not in json.dumps(out) and SECRET not in json.dumps(out)
    assert out["checks"][0]["detail"] == f"printed {REDACTED}" and out["n"] == 3 and out[REDACTED] == ("x", REDACTED)


def test_ambient_credentials_not_in_the_environment_are_remembered_when_a_session_is_made(tmp_path, monkeypatch):
    """As an ECS task role's are (they come from 169.254.170.2): here, a shared credentials file."""
    from platform_ops.adapters.aws import AwsEnvironmentResource, forget_sessions

    secret = "profile/only/SecretKey+0123456789abcdefghij"
    (tmp_path / "credentials").write_text(f"[ops]\naws_access_key_id = AKIAPROFILEONLY00001\n"
                                          f"aws_secret_access_key = {secret}\n")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    forget_sessions()
    assert secret in redact(f"leaked {secret}")
    AwsEnvironmentResource(environment="ops", account_id="333333333333", region_name="us-east-1",
                           profile_name="ops").client("sts")
    assert redact(f"leaked {secret}") == f"leaked {REDACTED}"
    forget_sessions()
