"""deploy/fleet-ingest.yaml: linted, in agreement with the code it deploys, and deployed.

Offline (``tests.support.cfn`` renders it): the tables match ``schemas/tables.py``, the bucket's lifecycle
matches ``worker.bootstrap.LIFECYCLE_RULES``, alarms watch metrics and log events the code emits. Deployed:
the data plane (``DeployCompute=false``) goes into the local AWS through moto's CloudFormation and a record
processor and the orphan sweep run against the stack's outputs. moto skips what it cannot create
(``AWS::SecretsManager::Secret``, ``AWS::S3::BucketPolicy``) and ignores some properties (TTL, PITR,
lifecycle, stream encryption...): those are checked here on the rendered template; the secret is created
by the test as the template declares it. The roles' policies are checked in tests/deploy/test_iam.py and
tests/e2e/test_e2e.py.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from devtools.local_aws import LocalAws
from devtools.settings import settings_from
from processors.archive import INDEX_TTL_SECONDS
from processors.pseudonymize import is_vehicle
from processors.trail import TRAIL_TTL_SECONDS
from processors.trips import TripThresholds
from schemas.dynamo import from_item
from schemas.tables import ALL_TABLES
from tests.conftest import TEST_ENV, AwsEnv, fresh_env
from tests.fixtures.build import TRIP_GAP_SECONDS
from tests.support.cfn import (
    ENVIRONMENT,
    STACK_NAME,
    SWEEP_ENVIRONMENT,
    TEMPLATE,
    TEST_PARAMETERS,
    load_template,
    render,
)
from tests.support.harness import ProcessorHarness, batches, fixture, shard_records
from tests.support.iam import allowed
from worker.aws import AwsClients
from worker.bootstrap import LIFECYCLE_RULES, bootstrap
from worker.config import Settings
from worker.leases import read_leases
from worker.metrics import UNITS
from worker.sweep import sweep_orphans

ROOT = Path(__file__).parent.parent.parent
STACK = render()


def test_cfn_lint_finds_nothing() -> None:
    binary = Path(sys.executable).parent / "cfn-lint"
    result = subprocess.run(
        [str(binary), "--format", "parseable", str(TEMPLATE)],
        capture_output=True,
        text=True,
        check=False,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr


CHECKOV = Path(os.environ.get("FLEET_CHECKOV", str(ROOT / ".venv-checkov" / "bin" / "checkov")))
"""checkov's own virtualenv (the Makefile's CHECKOV_STAMP): it pins older boto3 than the project's."""


def declared_checkov_skips() -> dict[tuple[str, str], str]:
    """(check id, ``Type.LogicalId``) -> the reason, for every ``Metadata.checkov.skip`` of the template."""
    skips = {}
    for name, resource in load_template()["Resources"].items():
        for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", []):
            skips[(skip["id"], f"{resource['Type']}.{name}")] = " ".join(skip.get("comment", "").split())
    return skips


def test_checkov_finds_nothing_and_each_skip_is_named_with_its_reason() -> None:
    if not CHECKOV.exists():
        if os.environ.get("CI"):
            pytest.fail(f"no checkov at {CHECKOV}: make test installs it")
        pytest.skip(f"no checkov at {CHECKOV}: make test (or make deploy) installs it")
    result = subprocess.run(
        [str(CHECKOV), "-f", str(TEMPLATE), "--framework", "cloudformation", "--skip-download", "-o", "json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=240,
    )
    report = json.loads(result.stdout)
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert not failed and result.returncode == 0, failed or result.stderr[-2000:]
    assert report["summary"]["parsing_errors"] == 0 and report["summary"]["passed"] > 50
    skipped = {
        (c["check_id"], c["resource"]): c["check_result"]["suppress_comment"]
        for c in report["results"]["skipped_checks"]
    }
    declared = declared_checkov_skips()
    assert set(skipped) == set(declared), "every skip is in the template's Metadata, and used"
    for check, reason in declared.items():
        assert len(reason.split()) >= 8, f"{check}: say why it is skipped"


# --- tables -------------------------------------------------------------------------------------------


def test_the_tables_are_the_specs_of_schemas_tables() -> None:
    declared = {p["TableName"]: p for p in STACK.tables().values()}
    settings = Settings(table_prefix=STACK.parameters["TablePrefix"])
    assert set(declared) == {settings.table_name(spec) for spec in ALL_TABLES}
    for spec in ALL_TABLES:
        table = declared[settings.table_name(spec)]
        request = spec.create_table_request(settings.table_name(spec))
        assert table["BillingMode"] == request["BillingMode"]
        assert table["KeySchema"] == request["KeySchema"], spec.name
        assert sorted(table["AttributeDefinitions"], key=str) == sorted(
            request["AttributeDefinitions"], key=str
        )
        assert table.get("GlobalSecondaryIndexes", []) == request.get("GlobalSecondaryIndexes", []), spec.name
        ttl = table.get("TimeToLiveSpecification")
        assert ttl == ({"AttributeName": spec.ttl_attribute, "Enabled": True} if spec.ttl_attribute else None)


def test_every_table_has_point_in_time_recovery_deletion_protection_and_the_data_key() -> None:
    data_key = STACK.properties("DataAlias")["TargetKeyId"]
    tables = STACK.of_type("AWS::DynamoDB::Table")
    assert len(tables) == len(ALL_TABLES) + 3, "the KCL's three tables too"
    for name, table in tables.items():
        pitr = table["PointInTimeRecoverySpecification"]
        assert pitr["PointInTimeRecoveryEnabled"] is True, name
        # The trail lives 24 h: restorable a day, not the default 35.
        assert pitr.get("RecoveryPeriodInDays", 35) == (1 if name == "LiveBreadcrumbsTable" else 35), name
        assert table["DeletionProtectionEnabled"] is True, name
        assert table["SSESpecification"] == {"SSEEnabled": True, "SSEType": "KMS", "KMSMasterKeyId": data_key}
        assert STACK.resources[name]["DeletionPolicy"] == "Retain"


# --- keys, secret, stream, bucket ---------------------------------------------------------------------


def test_both_keys_rotate_and_the_vin_key_is_not_the_storage_key() -> None:
    keys = STACK.of_type("AWS::KMS::Key")
    assert set(keys) == {"VinKey", "DataKey"}
    assert all(key["EnableKeyRotation"] is True for key in keys.values())
    aliases = {a["AliasName"]: a["TargetKeyId"] for a in STACK.of_type("AWS::KMS::Alias").values()}
    assert aliases[TEST_PARAMETERS["VinKeyAlias"]] != aliases[STACK.parameters["DataKeyAlias"]]
    # Storage encryption is granted through the storing services only, never a direct Decrypt
    # (tests/deploy/test_least_privilege.py tries the calls).
    for statement in keys["DataKey"]["KeyPolicy"]["Statement"]:
        if "kms:Decrypt" in statement["Action"]:
            assert statement["Condition"]["StringEquals"]["kms:ViaService"], statement["Sid"]


def test_the_secret_is_generated_and_encrypted_with_the_data_key() -> None:
    secret = STACK.properties("PseudonymSecret")
    assert "SecretString" not in secret and secret["GenerateSecretString"]["PasswordLength"] >= 32
    assert secret["KmsKeyId"] == STACK.properties("DataAlias")["TargetKeyId"]


def test_the_stream_is_encrypted_and_sized_by_parameters() -> None:
    stream = STACK.properties("Stream")
    assert stream["ShardCount"] == STACK.parameters["ShardCount"]
    assert stream["StreamEncryption"]["EncryptionType"] == "KMS"
    assert stream["RetentionPeriodHours"] == STACK.parameters["StreamRetentionHours"]


def test_the_bucket_is_private_versioned_and_encrypted_with_the_data_key() -> None:
    bucket = STACK.properties("ArchiveBucket")
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    assert len(bucket["PublicAccessBlockConfiguration"]) == 4
    (encryption,) = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert encryption["ServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "aws:kms",
        "KMSMasterKeyID": STACK.arns["DataKey"],
    }
    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}
    rules = bucket["LifecycleConfiguration"]["Rules"]
    (noncurrent,) = [r for r in rules if "NoncurrentVersionExpiration" in r]
    assert noncurrent["Status"] == "Enabled" and "Prefix" not in noncurrent, "every prefix"
    days = int(noncurrent["NoncurrentVersionExpiration"]["NoncurrentDays"])
    assert 1 <= days <= 365 and days == int(STACK.parameters["NoncurrentVersionDays"])


def api_rule(rule: dict[str, Any]) -> dict[str, Any]:
    """A CloudFormation lifecycle rule in the S3 API's shape (as ``LIFECYCLE_RULES`` writes it)."""
    api: dict[str, Any] = {
        "ID": rule["Id"],
        "Filter": {"Prefix": rule.get("Prefix", "")},
        "Status": rule["Status"],
    }
    if "Transitions" in rule:
        api["Transitions"] = [
            {"Days": int(t["TransitionInDays"]), "StorageClass": t["StorageClass"]}
            for t in rule["Transitions"]
        ]
    if "ExpirationInDays" in rule:
        api["Expiration"] = {"Days": int(rule["ExpirationInDays"])}
    if "AbortIncompleteMultipartUpload" in rule:
        api["AbortIncompleteMultipartUpload"] = rule["AbortIncompleteMultipartUpload"]
    if "NoncurrentVersionExpiration" in rule:
        days = int(rule["NoncurrentVersionExpiration"]["NoncurrentDays"])
        api["NoncurrentVersionExpiration"] = {"NoncurrentDays": days}
        api["Expiration"] = {"ExpiredObjectDeleteMarker": rule["ExpiredObjectDeleteMarker"]}
    return api


STACK_ONLY_RULES = {"expire-noncurrent-versions"}
"""The stack's lifecycle rules that worker/bootstrap.py (local, unversioned buckets) has no use for."""


def test_the_lifecycle_is_bootstraps_and_follows_the_data_model() -> None:
    rules = [api_rule(r) for r in STACK.properties("ArchiveBucket")["LifecycleConfiguration"]["Rules"]]
    # worker/bootstrap.py still transitions trips/ to Glacier IR (a local bucket: harmless); the stack
    # does not, so that part of the rule is left out of the comparison.
    local = [{k: v for k, v in r.items() if k != "Transitions"} for r in LIFECYCLE_RULES]
    assert [r for r in rules if r["ID"] not in STACK_ONLY_RULES] == local
    trips = next(r for r in rules if r["Filter"]["Prefix"] == "trips/")
    # Objects under 128 KB are never transitioned (an archive is ~5 KB): no rule pretends otherwise.
    assert not any("Transitions" in r for r in rules)
    # The data model's 90 days (the trips-index item's life) + a year, in Standard.
    assert trips["Expiration"]["Days"] == INDEX_TTL_SECONDS // 86400 + 365
    # A segment is read when its trip is archived: after the trip, the stream's backlog and a sweep.
    segments = next(r for r in rules if r["Filter"]["Prefix"] == "trip-segments/")
    retention_days = int(STACK.parameters["StreamRetentionHours"]) / 24
    assert segments["Expiration"]["Days"] >= 2 * retention_days + 1
    assert TripThresholds().segment_max_ms < TRAIL_TTL_SECONDS * 1000, "segments are sealed in time"
    assert any(r["Filter"]["Prefix"] == "dead-letter/" and "Expiration" in r for r in rules)


def test_archives_can_be_kept_forever_by_parameter() -> None:
    forever = render({**TEST_PARAMETERS, "TripArchiveExpirationDays": "0"})
    (trips,) = [
        r
        for r in forever.properties("ArchiveBucket")["LifecycleConfiguration"]["Rules"]
        if r["Id"] == "archive-trips"
    ]
    assert "ExpirationInDays" not in trips and trips["Status"] == "Enabled"


# --- compute: scaling, sweep schedule, alarms, dashboard -----------------------------------------------


def test_worker_tasks_scale_within_the_shard_count() -> None:
    target = STACK.properties("WorkerScalableTarget")
    assert target["MaxCapacity"] == STACK.parameters["ShardCount"]
    assert "DesiredCount" not in STACK.properties("WorkerService"), "autoscaling owns the count"
    assert int(target["MinCapacity"]) == int(STACK.parameters["WorkerMinTasks"]) >= 2, "no single task"
    assert load_template()["Parameters"]["WorkerMinTasks"]["MinValue"] >= 2
    policy = STACK.properties("WorkerCpuScaling")["TargetTrackingScalingPolicyConfiguration"]
    assert policy["ScaleInCooldown"] > policy["ScaleOutCooldown"]
    defaults = load_template()["Parameters"]
    shards, per_task = int(defaults["ShardCount"]["Default"]), int(defaults["WorkerShardsPerTask"]["Default"])
    assert int(defaults["WorkerMinTasks"]["Default"]) >= -(-shards // per_task), (
        "the fewest carry every shard"
    )


def _ref(stack: Any, logical_id: str) -> str:
    """What ``!Ref`` of a scaling resource renders to (tests.support.cfn: an ARN naming the resource)."""
    assert logical_id in stack.resources
    return f"arn:aws:applicationautoscaling:us-east-1:123456789012:{logical_id}"


def test_the_service_scales_out_on_consumer_lag_and_on_cpu_second() -> None:
    """Lag (the larger of the worker's MillisBehindLatest and Kinesis' figure for this consumer: fan-out
    MillisBehindLatest, or the iterator age when polling) drives a step policy that only adds tasks; CPU
    target tracking is the second signal."""
    lag = STACK.properties("WorkerLagScaleOut")
    assert lag["PolicyType"] == "StepScaling"
    assert lag["ScalingTargetId"] == _ref(STACK, "WorkerScalableTarget")
    steps = lag["StepScalingPolicyConfiguration"]["StepAdjustments"]
    assert steps and all(step["ScalingAdjustment"] > 0 for step in steps), "lag only scales out"
    assert steps[0]["MetricIntervalLowerBound"] == 0 and "MetricIntervalUpperBound" not in steps[-1]
    alarm = ALARMS["lag-scale-out"]
    assert _ref(STACK, "WorkerLagScaleOut") in alarm["AlarmActions"]
    assert alarm["Threshold"] == STACK.parameters["WorkerScaleOutLagMillis"]
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold"
    stream = STACK.properties("Stream")["Name"]
    worker = {
        "Namespace": ENVIRONMENT["FLEET_METRICS_NAMESPACE"],
        "MetricName": "MillisBehindLatest",
        "Dimensions": [{"Name": "Application", "Value": "fleet-ingest"}],
    }
    assert STACK.parameters["WorkerRetrievalMode"] == "FANOUT"
    assert alarm_metrics(alarm) == [
        worker,
        {
            "Namespace": "AWS/Kinesis",
            "MetricName": "SubscribeToShardEvent.MillisBehindLatest",
            "Dimensions": [
                {"Name": "StreamName", "Value": stream},
                {"Name": "ConsumerName", "Value": STACK.parameters["StreamConsumerName"]},
            ],
        },
    ]
    polling = render({**TEST_PARAMETERS, "WorkerRetrievalMode": "POLLING"})
    (polling_alarm,) = [
        a
        for a in polling.of_type("AWS::CloudWatch::Alarm").values()
        if a["AlarmName"].endswith("-lag-scale-out")
    ]
    assert alarm_metrics(polling_alarm)[1] == {
        "Namespace": "AWS/Kinesis",
        "MetricName": "GetRecords.IteratorAgeMilliseconds",
        "Dimensions": [{"Name": "StreamName", "Value": stream}],
    }
    (expression,) = [q for q in alarm["Metrics"] if "Expression" in q]
    assert expression["ReturnData"] is True and sum(q["ReturnData"] for q in alarm["Metrics"]) == 1
    ids = {q["Id"] for q in alarm["Metrics"] if "MetricStat" in q}
    assert (
        expression["Expression"].startswith("MAX(")
        and set(re.findall(r"FILL\((\w+), 0\)", expression["Expression"])) == ids
    )
    cpu = STACK.properties("WorkerCpuScaling")
    assert cpu["ScalingTargetId"] == _ref(STACK, "WorkerScalableTarget")
    assert not cpu["TargetTrackingScalingPolicyConfiguration"].get("DisableScaleIn"), "CPU scales in"


def test_the_sweep_runs_on_a_schedule_with_its_own_role_retries_and_a_dead_letter_queue() -> None:
    schedule = STACK.properties("SweepSchedule")
    assert re.fullmatch(r"rate\(\d+ minutes\)", schedule["ScheduleExpression"])
    retry = schedule["Target"]["RetryPolicy"]
    assert retry["MaximumRetryAttempts"] >= 1
    assert retry["MaximumEventAgeInSeconds"] < 60 * int(STACK.parameters["SweepIntervalMinutes"]), (
        "retries end before the next run"
    )
    queue = STACK.arns["SweepDeadLetterQueue"]
    assert schedule["Target"]["DeadLetterConfig"] == {"Arn": queue}
    scheduler = STACK.properties("SchedulerRole")["Policies"][0]["PolicyDocument"]
    assert allowed(scheduler, "sqs:SendMessage", queue)
    (alarm,) = alarm_metrics(ALARMS["sweep-dead-letters"])
    assert alarm["Dimensions"] == [{"Name": "QueueName", "Value": queue.rsplit(":", 1)[1]}]
    ecs = schedule["Target"]["EcsParameters"]
    assert ecs["TaskDefinitionArn"].endswith(
        ":SweepTaskDefinition"
    )  # its Ref, as tests.support.cfn renders it
    role = STACK.properties("SchedulerRole")["Policies"][0]["PolicyDocument"]["Statement"]
    passed = next(s for s in role if s["Action"] == ["iam:PassRole"])["Resource"]
    assert set(passed) == {
        STACK.properties("SweepTaskDefinition")["TaskRoleArn"],
        STACK.properties("SweepTaskDefinition")["ExecutionRoleArn"],
    }


def logged_events() -> set[str]:
    """Event names the worker logs at ERROR, and the sweep's summary event."""
    files = [*(ROOT / "processors").glob("*.py"), *(ROOT / "worker").rglob("*.py")]
    source = "\n".join(path.read_text() for path in files)
    events = set(re.findall(r'log\.error\(\s*"(\w+)"', source))
    events |= set(re.findall(r'event\(\s*log,\s*"(\w+)",\s*logging\.ERROR', source))
    events |= set(re.findall(r'self\._exit\(\w+, "(\w+)"', source))
    events |= set(re.findall(r'event\(\s*log,\s*"(sweep)"', source))
    return events


def alarm_metrics(alarm: dict[str, Any]) -> list[dict[str, Any]]:
    """(Namespace, MetricName, Dimensions) of each metric an alarm reads, plain or through metric math."""
    if "MetricName" in alarm:
        return [{k: alarm.get(k) for k in ("Namespace", "MetricName", "Dimensions")}]
    return [query["MetricStat"]["Metric"] for query in alarm["Metrics"] if "MetricStat" in query]


ALARMS = {
    a["AlarmName"].removeprefix("fleet-ingest-"): a for a in STACK.of_type("AWS::CloudWatch::Alarm").values()
}


def test_alarms_watch_metrics_and_log_events_the_code_emits() -> None:
    namespace = ENVIRONMENT["FLEET_METRICS_NAMESPACE"]
    assert namespace == f"fleet-ingest/{STACK_NAME}", "one namespace per stack"
    assert SWEEP_ENVIRONMENT["FLEET_METRICS_NAMESPACE"] == namespace
    filters = {
        f["MetricTransformations"][0]["MetricName"]: f
        for f in STACK.of_type("AWS::Logs::MetricFilter").values()
    }
    events = logged_events()
    for metric in filters.values():
        named = set(re.findall(r'\$\.event = "(\w+)"', metric["FilterPattern"]))
        assert named and named <= events, named - events
        assert metric["MetricTransformations"][0]["MetricNamespace"] == namespace
    assert "archive_at_risk" in filters["ArchiveIncomplete"]["FilterPattern"]
    exits = set(re.findall(r'"(\w+)"', filters["ProcessorExits"]["FilterPattern"]))
    # Every way a record processor exits on an error (self._exit in worker/record_processor.py).
    assert {"batch_failed", "flush_failed", "checkpoint_failed", "initialize_failed"} <= exits
    read = [m for alarm in ALARMS.values() for m in alarm_metrics(alarm)]
    ours = {m["MetricName"] for m in read if m["Namespace"] == namespace}
    assert ours == {"MillisBehindLatest", "RecordsDeadLettered", *filters}
    for metric in read:
        if metric["Namespace"] == namespace and metric["MetricName"] not in filters:
            assert metric["MetricName"] in UNITS, (
                f"{metric['MetricName']}: not an EMF metric of worker/metrics.py"
            )
            assert metric["Dimensions"] == [{"Name": "Application", "Value": "fleet-ingest"}]
    assert ALARMS["iterator-age"]["TreatMissingData"] == "breaching", "nobody reading"


def test_every_alarm_notifies_the_topic_which_is_required() -> None:
    topic = TEST_PARAMETERS["AlarmTopicArn"]
    scaling = {"lag-scale-out": [_ref(STACK, "WorkerLagScaleOut")]}  # alarms that also act
    for name, alarm in ALARMS.items():
        assert alarm["AlarmActions"] == [*scaling.get(name, []), topic], name
        assert alarm["OKActions"] == [topic], name
    spec = load_template()["Parameters"]["AlarmTopicArn"]
    assert "Default" not in spec and re.fullmatch(spec["AllowedPattern"], "none")
    assert not re.fullmatch(spec["AllowedPattern"], ""), "an empty topic is no longer a silent default"
    silent = render({**TEST_PARAMETERS, "AlarmTopicArn": "none"})
    alarms = silent.of_type("AWS::CloudWatch::Alarm").values()
    assert len(alarms) == len(ALARMS) and not any("OKActions" in a for a in alarms)
    acting = [a["AlarmActions"] for a in alarms if "AlarmActions" in a]
    assert acting == [[_ref(silent, "WorkerLagScaleOut")]], "only the scaling alarm acts, on its policy"


def test_two_stacks_do_not_share_log_derived_metrics() -> None:
    def namespaces(stack: Any) -> set[str]:
        return {
            f["MetricTransformations"][0]["MetricNamespace"]
            for f in stack.of_type("AWS::Logs::MetricFilter").values()
        }

    assert namespaces(STACK) == {f"fleet-ingest/{STACK_NAME}"}
    staging = render(stack_name="fleet-ingest-staging")
    assert namespaces(staging) == {"fleet-ingest/fleet-ingest-staging"}
    (environment,) = [
        c["Environment"] for c in staging.properties("WorkerTaskDefinition")["ContainerDefinitions"]
    ]
    assert {"Name": "FLEET_METRICS_NAMESPACE", "Value": "fleet-ingest/fleet-ingest-staging"} in environment


def test_running_tasks_kinesis_and_dynamodb_throttling_alarm() -> None:
    service = STACK.properties("WorkerService")["ServiceName"]
    tasks = {m["MetricName"]: m for m in alarm_metrics(ALARMS["tasks-below-desired"])}
    assert set(tasks) == {"DesiredTaskCount", "RunningTaskCount"}
    assert all({"Name": "ServiceName", "Value": service} in m["Dimensions"] for m in tasks.values())
    (kinesis,) = alarm_metrics(ALARMS["kinesis-read-throttled"])
    assert kinesis["MetricName"] == "ReadProvisionedThroughputExceeded"
    assert kinesis["Dimensions"] == [{"Name": "StreamName", "Value": STACK.properties("Stream")["Name"]}]
    data_tables = {t["TableName"] for t in STACK.tables().values()}
    for kind in ("Write", "Read"):
        alarm = ALARMS[f"dynamodb-{kind.lower()}-throttled"]
        metrics = alarm_metrics(alarm)
        assert {m["MetricName"] for m in metrics} == {f"{kind}ThrottleEvents"}
        assert {m["Dimensions"][0]["Value"] for m in metrics} == data_tables
        (expression,) = [q["Expression"] for q in alarm["Metrics"] if "Expression" in q]
        ids = {q["Id"] for q in alarm["Metrics"] if "MetricStat" in q}
        assert set(re.findall(r"\w+", expression)) == ids, "the alarm adds up every table"


@pytest.mark.parametrize("interval", load_template()["Parameters"]["SweepIntervalMinutes"]["AllowedValues"])
def test_the_sweep_alarm_looks_at_two_intervals_at_least(interval: int) -> None:
    stack = render({**TEST_PARAMETERS, "SweepIntervalMinutes": str(interval)})
    (alarm,) = [
        a
        for a in stack.of_type("AWS::CloudWatch::Alarm").values()
        if a["AlarmName"].endswith("-sweep-not-running")
    ]
    assert int(alarm["Period"]) >= 2 * int(interval) * 60 and int(alarm["Period"]) % 60 == 0
    assert stack.properties("SweepSchedule")["ScheduleExpression"] == f"rate({interval} minutes)"


def test_every_alarm_has_its_runbook_row() -> None:
    runbook = (ROOT / "docs" / "operating.md").read_text()
    rows = set(re.findall(r"^\| `<app>-([\w-]+)` \|", runbook, re.M))
    assert rows == set(ALARMS)


def test_the_dashboard_shows_every_alarm() -> None:
    widgets = json.loads(STACK.properties("Dashboard")["DashboardBody"])["widgets"]
    (alarm_widget,) = [w for w in widgets if w["type"] == "alarm"]
    assert len(alarm_widget["properties"]["alarms"]) == len(STACK.of_type("AWS::CloudWatch::Alarm"))


def test_every_parameter_is_documented() -> None:
    guide = (ROOT / "docs" / "deploying.md").read_text()
    missing = [name for name in load_template()["Parameters"] if f"`{name}`" not in guide]
    assert not missing, f"docs/deploying.md does not explain {missing}"


def test_the_data_plane_alone_needs_no_compute_parameter() -> None:
    people = {k: TEST_PARAMETERS[k] for k in ("OperatorPrincipalArn", "AdminPrincipalArn", "AlarmTopicArn")}
    data_plane = render({"ArchiveBucketName": "b", "DeployCompute": "false", **people})
    assert not data_plane.of_type("AWS::ECS::Service") and not data_plane.of_type("AWS::CloudWatch::Alarm")
    assert set(data_plane.of_type("AWS::IAM::Role")) == {
        "WorkerTaskRole",
        "SweepTaskRole",
        "OperatorRole",
        "AdminRole",
        "TaskExecutionRole",
    }


# --- bootstrap (the local tool) ---------------------------------------------------------------------


def test_bootstrap_keeps_an_operators_lifecycle_rule(aws_env: AwsEnv) -> None:
    s3, bucket = aws_env.clients.s3, aws_env.settings.archive_bucket
    mine = {
        "ID": "operator-tmp",
        "Filter": {"Prefix": "tmp/"},
        "Status": "Enabled",
        "Expiration": {"Days": 3},
    }
    rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [*rules, mine]})  # type: ignore[list-item]
    bootstrap(aws_env.settings, aws_env.clients, shards=2)
    after = {r["ID"]: r for r in s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]}
    assert set(after) == {"operator-tmp", *(r["ID"] for r in LIFECYCLE_RULES)}
    assert after["operator-tmp"]["Expiration"] == {"Days": 3}
    assert after["archive-trips"]["Transitions"][0]["StorageClass"] == "GLACIER_IR"


# --- the data plane, deployed into the local AWS --------------------------------------------------------

STACK_PARAMETERS = {
    "DeployCompute": "false",
    # moto's CloudFormation has no AWS::Kinesis::StreamConsumer, nor moto a SubscribeToShard: the worker
    # run against this stack polls (tests/e2e/test_fanout.py runs the fan-out daemon, on kinesis-local).
    "WorkerRetrievalMode": "POLLING",
    "ApplicationName": "stack-test",
    "StreamName": "stack-telemetry",
    "TablePrefix": "stack-",
    "ArchiveBucketName": "stack-archive",
    "VinKeyAlias": "alias/stack-vin",
    "DataKeyAlias": "alias/stack-data",
    "PseudonymSecretName": "stack-test/pseudonym-key",
    "OperatorPrincipalArn": TEST_PARAMETERS["OperatorPrincipalArn"],
    "AdminPrincipalArn": TEST_PARAMETERS["AdminPrincipalArn"],
    "AlarmTopicArn": "none",
}


@dataclass
class Deployed:
    outputs: dict[str, str]
    env: AwsEnv


def environment_from(outputs: dict[str, str]) -> dict[str, str]:
    """The worker's settings from the stack's outputs (what the task definition sets on AWS)."""
    return {
        "FLEET_STREAM_NAME": outputs["StreamName"],
        "FLEET_APPLICATION_NAME": outputs["ApplicationName"],
        "FLEET_TABLE_PREFIX": "",
        "FLEET_VEHICLE_STATE_TABLE": outputs["VehicleStateTable"],
        "FLEET_TRIP_STATE_TABLE": outputs["TripStateTable"],
        "FLEET_TRIPS_INDEX_TABLE": outputs["TripsIndexTable"],
        "FLEET_LIVE_BREADCRUMBS_TABLE": outputs["LiveBreadcrumbsTable"],
        "FLEET_VIN_MAPPING_TABLE": outputs["VinMappingTable"],
        "FLEET_ARCHIVE_BUCKET": outputs["ArchiveBucket"],
        "FLEET_VIN_KEY_ALIAS": outputs["VinKeyAlias"],
        "FLEET_PSEUDONYM_SECRET_ID": outputs["PseudonymSecretName"],
    }


@pytest.fixture(scope="module")
def deployed(local_aws: LocalAws) -> Iterator[Deployed]:
    local_aws.reset()
    client_args: dict[str, Any] = {
        "endpoint_url": local_aws.endpoint,
        "region_name": TEST_ENV["AWS_REGION"],
        "aws_access_key_id": "local",
        "aws_secret_access_key": "local",
    }
    cloudformation = boto3.client("cloudformation", **client_args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # moto warns of each resource type it skips
        cloudformation.create_stack(
            StackName="fleet-ingest",
            TemplateBody=TEMPLATE.read_text(),
            Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in STACK_PARAMETERS.items()],
            Capabilities=["CAPABILITY_IAM"],
        )
    (stack,) = cloudformation.describe_stacks(StackName="fleet-ingest")["Stacks"]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    declared_stack = render(STACK_PARAMETERS)
    # moto keeps a CloudFormation key's KeyPolicy as the template's object, not its JSON text, and then
    # fails DescribeKey on it: put the same policy back as text.
    kms = boto3.client("kms", **client_args)
    for alias, key in (("VinAlias", "VinKey"), ("DataAlias", "DataKey")):
        target = next(
            a["TargetKeyId"]
            for a in kms.list_aliases()["Aliases"]
            if a["AliasName"] == declared_stack.properties(alias)["AliasName"]
        )
        policy = json.dumps(declared_stack.properties(key)["KeyPolicy"])
        kms.put_key_policy(KeyId=target, PolicyName="default", Policy=policy)
    # moto has no AWS::SecretsManager::Secret: create it as the template declares it (generated, 64 chars).
    declared = declared_stack.properties("PseudonymSecret")
    boto3.client("secretsmanager", **client_args).create_secret(
        Name=declared["Name"],
        SecretString=secrets.token_urlsafe(48)[: declared["GenerateSecretString"]["PasswordLength"]],
    )
    environ = {
        **TEST_ENV,
        "AWS_ENDPOINT_URL": local_aws.endpoint,
        "FLEET_TRIP_GAP_SECONDS": str(TRIP_GAP_SECONDS),
    }
    environ |= {"FLEET_TRIP_SEGMENT_BREADCRUMBS": "100", **environment_from(outputs)}
    full = {**os.environ, **environ}
    settings = settings_from(full)
    yield Deployed(outputs, AwsEnv(local_aws, settings, AwsClients(settings), full))
    local_aws.reset()


def test_the_deployed_tables_stream_and_key_are_what_the_worker_expects(deployed: Deployed) -> None:
    clients, settings = deployed.env.clients, deployed.env.settings
    for spec in ALL_TABLES:
        table = clients.dynamodb.describe_table(TableName=settings.table_name(spec))["Table"]
        assert table["TableName"].startswith("stack-")
        assert [k["AttributeName"] for k in table["KeySchema"]] == list(spec.key_names)
        assert [i["IndexName"] for i in table.get("GlobalSecondaryIndexes", [])] == [
            i.name for i in spec.indexes
        ]
    shards = clients.kinesis.list_shards(StreamName=settings.stream_name)["Shards"]
    assert len(shards) == int(render().parameters["ShardCount"])
    key = clients.kms.describe_key(KeyId=settings.vin_key_alias)["KeyMetadata"]
    assert clients.kms.get_key_rotation_status(KeyId=key["KeyId"])["KeyRotationEnabled"] is True
    assert key["Arn"] == deployed.outputs["VinKeyArn"]


KCL_3_TABLES = {
    "": (
        [("leaseKey", "HASH")],
        [("LeaseOwnerToLeaseKeyIndex", [("leaseOwner", "HASH"), ("leaseKey", "RANGE")])],
    ),
    "-CoordinatorState": ([("key", "HASH")], []),
    "-WorkerMetricStats": ([("wid", "HASH")], []),
}
"""Keys and indexes of the tables KCL 3 creates when it finds none (tests/e2e/test_e2e.py sees the local
daemon create them: the same keys; the index is KEYS_ONLY in DynamoDBLeaseRefresher). Found, they are
used as they are: the KCL checks only that they exist and are active."""


def test_the_deployed_kcl_tables_are_the_ones_kcl_3_would_create(deployed: Deployed) -> None:
    dynamodb, app = deployed.env.clients.dynamodb, deployed.env.settings.application_name
    for suffix, (keys, indexes) in KCL_3_TABLES.items():
        table = dynamodb.describe_table(TableName=app + suffix)["Table"]
        assert table["TableStatus"] == "ACTIVE"
        assert [(k["AttributeName"], k["KeyType"]) for k in table["KeySchema"]] == keys, suffix
        found = [
            (i["IndexName"], [(k["AttributeName"], k["KeyType"]) for k in i["KeySchema"]])
            for i in table.get("GlobalSecondaryIndexes", [])
        ]
        assert found == indexes, suffix
        assert all(
            i["Projection"] == {"ProjectionType": "KEYS_ONLY"}
            for i in table.get("GlobalSecondaryIndexes", [])
        )
    # The worker's own reader of the lease table (status, the sweep's frontier) reads the declared one.
    assert read_leases(dynamodb, app) == {}


def test_a_worker_and_the_sweep_run_against_the_stack(deployed: Deployed) -> None:
    env = deployed.env
    # No FLEET_PSEUDONYM_KEY: the processor reads the stack's secret, as on AWS.
    environ = {k: v for k, v in env.environ.items() if k != "FLEET_PSEUDONYM_KEY"}
    # docs/deploying.md: once after the stack, the key's fingerprint (the worker refuses to run without).
    recorded = subprocess.run(
        [sys.executable, "-m", "worker", "bootstrap", "--fingerprint-only"],
        env=environ,
        capture_output=True,
        text=True,
        check=True,
    )
    assert recorded.stdout.split() == ["created", "fingerprint", "_meta#pseudonym-key"]
    harness = ProcessorHarness(environ)
    harness.initialize()
    for batch in batches(shard_records(fixture("trips.jsonl")), 500):
        harness.process(batch)
    harness.lease_lost()
    assert harness.close() == 0, harness.stderr_lines[-20:]
    report = sweep_orphans(env.settings, env.clients, now_ms=int(time.time() * 1000) + 3_600_000)
    tables = env.settings.table_names
    vehicles = env.clients.dynamodb.scan(TableName=tables["vehicle-state"])["Items"]
    index = [from_item(i) for i in env.clients.dynamodb.scan(TableName=tables["trips-index"])["Items"]]
    assert vehicles and index and report.candidates and report.orphaned  # the stack has the sweep index
    for trip in index:
        head = env.clients.s3.head_object(Bucket=deployed.outputs["ArchiveBucket"], Key=trip["s3Key"])
        assert head["ContentLength"] > 0
    vault = env.clients.dynamodb.scan(TableName=tables["vin-mapping"])["Items"]
    assert len([i for i in vault if is_vehicle(i["pseudoVin"]["S"])]) == len(vehicles)


def test_fresh_env_still_bootstraps_after_a_stack_test(local_aws: LocalAws) -> None:
    """The stack test resets the local AWS behind it: the shared fixtures start from nothing again."""
    env = fresh_env(local_aws)
    assert env.clients.dynamodb.describe_table(TableName="vehicle-state")["Table"]["TableStatus"] == "ACTIVE"
