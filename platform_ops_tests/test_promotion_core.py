"""Promotion's pure core on the real definitions Metaflow generated (sandbox/metaflow/)."""

import json
import re
from pathlib import Path

import pytest

from platform_ops.naming import NamingError
from platform_ops.promotion import core

FLOWS = Path(__file__).resolve().parents[1] / "platform_ops" / "sandbox" / "metaflow"
BRANCH = (FLOWS / "sm_branch.json").read_text()
PROD = (FLOWS / "sm_prod_full.json").read_text()
NO_MAPPING = core.IdentifierMap()
MAPPING = core.IdentifierMap(
    accounts={"111122223333": "222222222222"}, queues={"mf-queue": "mf-prod-queue"},
    roles={"arn:aws:iam::111122223333:role/mf-batch": "arn:aws:iam::222222222222:role/mf-batch-prod"},
    buckets={"mf-bucket": "mf-prod-bucket"})


def normalised(definition: str) -> dict:
    """Metaflow names its temp files at random per render (set_batch_environment ... <word>)."""
    text = re.sub(r"(set_batch_environment \w+ )(\w+)( && \. `pwd`/)\2", r"\1TMP\3TMP", definition)
    return json.loads(text)


def test_production_token_is_metaflows():
    assert core.token_prefix("mlplatform", "prod") == "mfprj-sm3d4emlqz44ioc2"
    assert core.first_token("mfprj-sm3d4emlqz44ioc2") == "mfprj-sm3d4emlqz44ioc2-0-zgip"  # as in sm_prod_full.json
    assert core.token_prefix("mlplatform", "test.feature_x") == "mfprj-l64lar47wbxzxjwz"


def test_translating_the_branch_deployment_gives_what_metaflow_deploys_to_production():
    translated = core.translate(BRANCH, project="mlplatform", flow="DemoFlow", branch="feature_x", mapping=NO_MAPPING)
    assert normalised(translated) == normalised(PROD)


def test_translation_maps_staging_identifiers_and_the_safety_rules_agree():
    translated = core.translate(BRANCH, project="mlplatform", flow="DemoFlow", branch="feature_x", mapping=MAPPING)
    assert "111122223333" not in translated and "mf-bucket" not in translated
    start = json.loads(translated)["States"]["start"]["Parameters"]
    assert start["JobQueue"] == "mf-prod-queue"
    assert "queue=mf-prod-queue," in start["ContainerOverrides"]["Command"][2]
    assert all(r.passed for r in core.check_definition(translated, MAPPING)), core.check_definition(translated, MAPPING)


def test_a_definition_that_still_names_a_staging_queue_is_caught():
    partial = core.IdentifierMap(accounts=MAPPING.accounts, roles=MAPPING.roles, buckets=MAPPING.buckets)
    translated = core.translate(BRANCH, project="mlplatform", flow="DemoFlow", branch="feature_x", mapping=partial)
    [identifiers, retries] = core.check_definition(translated, MAPPING)
    assert not identifiers.passed and "start: JobQueue mf-queue" in identifiers.detail
    assert retries.passed


def test_a_batch_task_without_retry_strategy_is_caught_and_rules_are_data():
    data = json.loads(PROD)
    del data["States"]["*train"]["Iterator"]["States"]["train"]["Parameters"]["RetryStrategy"]
    results = core.check_definition(json.dumps(data), NO_MAPPING)
    retries = next(r for r in results if r.name == "definition: retry_strategy")
    assert not retries.passed and retries.detail == "*train/train: no RetryStrategy"
    no_gpu = core.Rule("no_gpu", "no GPU asks", lambda d, m: [
        s for s in core._strings(d) if '"GPU"' in s])
    assert [r.name for r in core.check_definition(PROD, NO_MAPPING, [*core.DEFAULT_RULES, no_gpu])][-1] == "definition: no_gpu"


def test_digest_ignores_formatting():
    assert core.digest(PROD) == core.digest(json.dumps(json.loads(PROD)))
    assert core.digest(PROD) != core.digest(BRANCH)


def test_bad_names_fail_before_anything_else():
    with pytest.raises(NamingError, match="project name 'ml-platform'"):
        core.translate(BRANCH, project="ml-platform", flow="DemoFlow", branch="feature_x", mapping=NO_MAPPING)
