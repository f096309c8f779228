"""The ECS task definitions of deploy/fleet-ingest.yaml: the worker and the sweep."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.cfn import (
    CONTAINER,
    ENVIRONMENT,
    STACK,
    SWEEP_CONTAINER,
    SWEEP_ENVIRONMENT,
    SWEEP_TASK,
    TASK,
    TEST_PARAMETERS,
    Rendered,
    load_template,
    render,
    settings_of,
    settings_variables,
)
from tests.support.dockerfile import healthcheck_options, only
from worker.config import Settings

# ---------------------------------------------------------------------------------------------------
# ECS task definitions (deploy/fleet-ingest.yaml)
# ---------------------------------------------------------------------------------------------------

READ_BY_THE_JVM = {
    "JAVA_TOOL_OPTIONS": "the KCL daemon's memory flags; the launcher passes its environment on"
}

JVM_MB, PROCESSOR_MB = 232, 95
"""Peak RSS of the KCL daemon and of one record processor (docs/capacity.md, measured by make bench)."""
FARGATE_MEMORY_MB = {1024: range(2048, 8192 + 1, 1024), 2048: range(4096, 16384 + 1, 1024)}
"""The memory sizes Fargate accepts for 1 and 2 vCPU."""


def test_it_is_one_fargate_task_running_the_image_as_a_non_root_user() -> None:
    assert TASK["RequiresCompatibilities"] == ["FARGATE"] and TASK["NetworkMode"] == "awsvpc"
    assert (int(TASK["Cpu"]), int(TASK["Memory"])) == (1024, 2048)
    assert CONTAINER["Image"] == TEST_PARAMETERS["Image"] and CONTAINER["Essential"] is True
    assert CONTAINER["User"] == only("USER").args
    assert CONTAINER["LinuxParameters"]["InitProcessEnabled"] is True  # reaps orphaned processors
    assert "EntryPoint" not in CONTAINER and "Command" not in CONTAINER, "the image's `worker run`"
    if CONTAINER.get("ReadonlyRootFilesystem"):
        volumes = {v["Name"] for v in TASK["Volumes"]}
        tmp = [m for m in CONTAINER["MountPoints"] if m["ContainerPath"] == "/tmp"]
        assert tmp and tmp[0]["SourceVolume"] in volumes and not tmp[0]["ReadOnly"]


def test_the_stop_timeout_leaves_time_for_a_graceful_kcl_shutdown(task_settings: Settings) -> None:
    grace = task_settings.kcl_shutdown_grace_millis / 1000
    failover = task_settings.kcl_failover_time_millis / 1000
    # SIGTERM -> the daemon asks each processor to checkpoint (up to the grace), then releases its
    # leases (until then other tasks wait for them to expire); the launcher gives up 15 s after the grace.
    assert CONTAINER["StopTimeout"] >= grace + failover + 15
    assert CONTAINER["StopTimeout"] <= 120, "Fargate's maximum"


@pytest.mark.parametrize("environment", [ENVIRONMENT, SWEEP_ENVIRONMENT], ids=["worker", "sweep"])
def test_every_variable_is_a_real_setting_and_none_points_away_from_aws(environment: dict[str, str]) -> None:
    unknown = set(environment) - settings_variables() - set(READ_BY_THE_JVM)
    assert all(name.startswith("AWS_") for name in unknown), unknown
    forbidden = {"AWS_ENDPOINT_URL", "FLEET_ENDPOINT_URL", "FLEET_PSEUDONYM_KEY"}
    forbidden |= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
    assert not forbidden & set(environment), (
        "the task role provides credentials; the key is in Secrets Manager"
    )
    assert "Secrets" not in CONTAINER, "the worker reads its one secret itself, with the task role"


def test_the_tasks_name_the_stacks_resources(
    task_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    tables = {p["TableName"] for p in STACK.tables().values()}
    stream = STACK.properties("Stream")["Name"]
    bucket = STACK.properties("ArchiveBucket")["BucketName"]
    sweep = settings_of(SWEEP_ENVIRONMENT, monkeypatch)
    for settings in (task_settings, sweep):
        assert set(settings.table_names.values()) == tables
        assert (settings.stream_name, settings.archive_bucket) == (stream, bucket)
        assert settings.trip_gap_seconds == int(STACK.parameters["TripGapSeconds"])
    assert task_settings.vin_key_alias == STACK.properties("VinAlias")["AliasName"]
    assert task_settings.pseudonym_secret_id == STACK.properties("PseudonymSecret")["Name"]
    retention = int(STACK.properties("Stream")["RetentionPeriodHours"])
    assert task_settings.max_event_age_hours == retention, "events the stream still holds are accepted"


def test_the_health_check_mirrors_the_dockerfile() -> None:
    options, command = healthcheck_options()
    check = CONTAINER["HealthCheck"]
    assert check["Command"] == ["CMD", *command]
    assert (check["Interval"], check["Timeout"], check["Retries"], check["StartPeriod"]) == (
        options["interval"],
        options["timeout"],
        options["retries"],
        options["start-period"],
    )


@pytest.mark.parametrize("container", [CONTAINER, SWEEP_CONTAINER], ids=["worker", "sweep"])
def test_logs_go_to_the_stacks_log_group(container: dict[str, Any]) -> None:
    logs = container["LogConfiguration"]
    assert logs["LogDriver"] == "awslogs"
    assert logs["Options"]["awslogs-group"] == STACK.properties("LogGroup")["LogGroupName"]
    assert {"awslogs-region", "awslogs-stream-prefix"} <= set(logs["Options"])


def test_the_sweep_task_runs_the_same_image_as_the_worker_with_the_sweep_entrypoint_and_its_own_role() -> (
    None
):
    assert SWEEP_CONTAINER["EntryPoint"] == ["python", "-m", "worker", "sweep-orphans"]
    assert SWEEP_CONTAINER["Image"] == CONTAINER["Image"]
    assert SWEEP_TASK["TaskRoleArn"] != TASK["TaskRoleArn"], "the sweep scans; the worker must not"
    assert SWEEP_TASK["ExecutionRoleArn"] == TASK["ExecutionRoleArn"]
    assert SWEEP_CONTAINER["User"] == CONTAINER["User"] and SWEEP_CONTAINER["ReadonlyRootFilesystem"]
    assert {"FLEET_TABLE_PREFIX", "FLEET_ARCHIVE_BUCKET", "FLEET_TRIP_GAP_SECONDS"} <= set(SWEEP_ENVIRONMENT)


def memory_mb(stack: Rendered) -> int:
    (task,) = [stack.properties("WorkerTaskDefinition")]
    return int(task["Memory"])


@pytest.mark.parametrize("cpu", ["1024", "2048"])
def test_task_memory_holds_the_jvm_and_a_processor_per_shard_it_may_hold(cpu: str) -> None:
    allowed = load_template()["Parameters"]["WorkerShardsPerTask"]["AllowedValues"]
    for shards in allowed:
        stack = render({**TEST_PARAMETERS, "WorkerCpu": cpu, "WorkerShardsPerTask": str(shards)})
        memory = memory_mb(stack)
        assert memory in FARGATE_MEMORY_MB[int(cpu)], (cpu, shards, memory)
        assert JVM_MB + PROCESSOR_MB * int(shards) <= 0.8 * memory, (shards, memory)
        assert memory == FARGATE_MEMORY_MB[int(cpu)][0] or JVM_MB + PROCESSOR_MB * int(shards) > 0.8 * (
            memory - 1024
        ), f"{shards} shards fit in 1 GB less than {memory}"
    # The defaults: 2 shards, 2 tasks, so one task may hold both when the other dies.
    shards = int(STACK.parameters["WorkerShardsPerTask"])
    assert shards >= -(-int(STACK.parameters["ShardCount"]) // (int(STACK.parameters["WorkerMinTasks"]) - 1))


def test_the_jvm_has_a_bounded_heap_and_exits_on_out_of_memory() -> None:
    flags = ENVIRONMENT["JAVA_TOOL_OPTIONS"].split()
    (percent,) = [f.split("=")[1] for f in flags if f.startswith("-XX:MaxRAMPercentage=")]
    heap = float(percent) / 100 * memory_mb(STACK)
    shards = int(STACK.parameters["WorkerShardsPerTask"])
    assert heap + PROCESSOR_MB * shards <= memory_mb(STACK), "the processors keep their share"
    assert heap >= JVM_MB, "room for what the daemon was measured using"
    assert "-XX:+ExitOnOutOfMemoryError" in flags
    assert "JAVA_TOOL_OPTIONS" not in SWEEP_ENVIRONMENT, "the sweep runs no JVM"


def test_a_deployment_rolls_back_on_failing_tasks_or_alarms() -> None:
    deployment = STACK.properties("WorkerService")["DeploymentConfiguration"]
    assert deployment["DeploymentCircuitBreaker"] == {"Enable": True, "Rollback": True}
    alarms = deployment["Alarms"]
    assert alarms["Enable"] is True and alarms["Rollback"] is True
    names = {a["AlarmName"] for a in STACK.of_type("AWS::CloudWatch::Alarm").values()}
    assert alarms["AlarmNames"] and set(alarms["AlarmNames"]) <= names
    assert deployment["MinimumHealthyPercent"] == 100, "old tasks keep their leases until new ones run"


def test_the_worker_fans_out_with_the_consumer_the_stack_registered(task_settings: Settings) -> None:
    """Issue 23: the stack's worker reads by enhanced fan-out; the daemon is given the consumer's ARN, so it
    registers and looks up nothing (the task role may only subscribe with it)."""
    from worker.kcl_daemon import daemon_properties

    consumer = STACK.properties("StreamConsumer")
    assert consumer["StreamARN"] == STACK.arns["Stream"]
    assert consumer["ConsumerName"] == STACK.parameters["StreamConsumerName"]
    assert task_settings.kcl_retrieval_mode == "FANOUT"
    assert task_settings.kcl_consumer_arn == STACK.outputs["StreamConsumerArn"]
    props = daemon_properties(task_settings)
    assert props["retrievalMode"] == "FANOUT"
    assert props["fanoutConfig.consumerArn"] == STACK.outputs["StreamConsumerArn"]


def test_a_polling_stack_registers_no_consumer_and_its_worker_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    polling = render({**TEST_PARAMETERS, "WorkerRetrievalMode": "POLLING"})
    assert not polling.of_type("AWS::Kinesis::StreamConsumer")
    (container,) = polling.properties("WorkerTaskDefinition")["ContainerDefinitions"]
    settings = settings_of({e["Name"]: e["Value"] for e in container["Environment"]}, monkeypatch)
    assert settings.kcl_retrieval_mode == "POLLING" and settings.kcl_consumer_arn is None


@pytest.mark.parametrize("mode", ["FANOUT", "POLLING"])
def test_the_iterator_age_alarm_watches_the_metric_the_mode_produces(mode: str) -> None:
    """A fan-out consumer makes no GetRecords call: an alarm on the stream's iterator age, which treats a
    missing metric as breaching, would fire for good."""
    stack = render({**TEST_PARAMETERS, "WorkerRetrievalMode": mode})
    alarm = stack.properties("IteratorAgeAlarm")
    dimensions = {d["Name"]: d["Value"] for d in alarm["Dimensions"]}
    if mode == "FANOUT":
        assert alarm["MetricName"] == "SubscribeToShardEvent.MillisBehindLatest"
        assert dimensions == {"StreamName": "vehicle-telemetry", "ConsumerName": "fleet-ingest"}
    else:
        assert alarm["MetricName"] == "GetRecords.IteratorAgeMilliseconds"
        assert dimensions == {"StreamName": "vehicle-telemetry"}
    body = stack.properties("Dashboard")["DashboardBody"]
    assert f'"AWS/Kinesis", "{alarm["MetricName"]}"' in body
