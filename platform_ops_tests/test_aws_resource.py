"""The AWS clients' failure budget: enough attempts to ride out a throttling burst, and a connect
timeout short enough that an endpoint that never answers does not hold a tick for long."""

from platform_ops.adapters.aws import AwsEnvironmentResource


def test_clients_retry_ten_times_in_standard_mode_and_connect_within_ten_seconds():
    config = AwsEnvironmentResource(environment="staging", account_id="111111111111",
                                    region_name="us-east-1").client("batch").meta.config
    assert config.retries == {"total_max_attempts": 10, "mode": "standard"}
    assert config.connect_timeout == 10
