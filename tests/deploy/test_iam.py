"""The roles' policies in deploy/fleet-ingest.yaml against the AWS requests the code makes.

The record processor, the orphan sweep, the operator tools and resolve run against the local AWS here,
each recorded apart with the resource each request touched; the KCL's own requests are those KCL 3.1.3
(the local jars) made in the end-to-end run, where the authoritative check of the worker task role runs
(``tests.support.iam.assert_policy_covers``, ``tests.support.iam.disallowed_resources``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from devtools.local_aws import LocalAws
from processors.frontier import ShardProgress
from processors.pseudonymize import is_vehicle
from tests.conftest import AwsEnv, create_lease_table, fresh_env
from tests.fixtures.build import TRIP_GAP_SECONDS
from tests.support.cfn import STACK
from tests.support.harness import ProcessorHarness, batches, fixture, shard_records
from tests.support.iam import (
    ADMIN_ONLY,
    ADMIN_POLICY,
    DECLARED_BY_THE_STACK,
    NOT_EXERCISED_LOCALLY,
    OPERATOR_POLICY,
    SWEEP_POLICY,
    WORKER_POLICY,
    allow_statements,
    allowed,
    assert_policy_covers,
    disallowed_resources,
    grants,
    iam_action,
    iam_actions,
    listed,
    policy_actions,
    recording_resources,
)
from tests.support.iam import arn as iam_arn
from worker.config import Settings
from worker.inspection import NotFound, trip_report, vehicle_report
from worker.redrive import redrive
from worker.replay import StreamEntry
from worker.status import shard_status
from worker.stores.vin_vault import KmsVinVault as VinVault
from worker.sweep import sweep_orphans
from worker.wiring import progress_store

# ---------------------------------------------------------------------------------------------------
# IAM: worker task, sweep task, operator (status, inspect, redrive), admin (resolve)
# ---------------------------------------------------------------------------------------------------

KCL_REQUESTS = {
    ("kinesis", "ListShards"),
    ("kinesis", "GetShardIterator"),
    ("kinesis", "GetRecords"),
    ("dynamodb", "DescribeTable"),
    # Locally only (DECLARED_BY_THE_STACK): the lease table, -CoordinatorState, -WorkerMetricStats, and
    # the LeaseOwnerToLeaseKeyIndex added to the lease table.
    ("dynamodb", "CreateTable"),
    ("dynamodb", "UpdateTable"),
    ("dynamodb", "Query"),  # that index: the leases assigned to this worker
    ("dynamodb", "Scan"),
    ("dynamodb", "GetItem"),
    ("dynamodb", "PutItem"),
    ("dynamodb", "UpdateItem"),
    ("dynamodb", "DeleteItem"),  # the leader lock on a graceful stop; parent shards' leases after a reshard
}
"""What KCL 3.1.3 (the local jars) asks of Kinesis and its three tables in polling mode, as recorded by
the end-to-end test (tests/e2e/test_e2e.py checks the policy against that recording itself)."""

WORKER_REQUESTS = {
    ("secretsmanager", "GetSecretValue"),  # pseudonymize: the HMAC key, once per processor
    ("kms", "Encrypt"),  # VinVault.remember, only for a vehicle not in vin-mapping yet
    ("dynamodb", "PutItem"),  # trip-state (also in its creation transaction), trips-index
    ("dynamodb", "ConditionCheckItem"),  # the creation transaction: the vehicle's mark in vin-mapping
    ("dynamodb", "DeleteItem"),  # trip-state, once its last trip is archived
    # vehicle-state; vin-mapping (the vault write: if_not_exists; the mark; the shard's progress report at
    # each checkpoint); live-breadcrumbs (max-merge)
    ("dynamodb", "UpdateItem"),
    ("dynamodb", "BatchGetItem"),  # trip-state and marks of vehicles new to this processor; the vault's
    # lookup; the pseudonym key's fingerprint (vin-mapping) at start
    ("dynamodb", "Query"),  # live-breadcrumbs of a trip, when sealing or archiving it
    ("s3", "PutObject"),  # trips/, trip-segments/, dead-letter/
    ("s3", "GetObject"),  # trip-segments/, when archiving a long trip
    ("kms", "GenerateDataKey"),  # dead letters: one data key per batch that quarantines a record
}
"""What the record processor asks of AWS, from reading processors/ and worker/ (checked against a
recording in ``test_each_role_s_code_calls_what_its_set_says``)."""

SWEEP_REQUESTS = {
    ("dynamodb", "Scan"),  # the lease table: the shards leased and not ended
    # vin-mapping: each such shard's progress report (is its consumer behind? never the stream, issue 22);
    # trip-state: the candidates the index named
    ("dynamodb", "BatchGetItem"),
    ("dynamodb", "PutItem"),  # trip-state (the claim), trips-index
    ("dynamodb", "UpdateItem"),  # the vehicle's mark in vin-mapping
    ("dynamodb", "DeleteItem"),  # trip-state, once the trip is archived
    ("dynamodb", "Query"),  # open-trips-by-idle; live-breadcrumbs of the trip it archives
    ("s3", "GetObject"),  # trip-segments/ of a long trip
    ("s3", "PutObject"),  # trips/
}

OPERATOR_REQUESTS = {
    ("dynamodb", "GetItem"),  # inspect: vehicle-state, trip-state, trips-index
    ("kms", "Decrypt"),  # redrive: the dead letters' data keys
    ("s3", "ListObjectsV2"),  # redrive: dead-letter/
    ("s3", "GetObject"),  # redrive: dead-letter/; inspect trip: trips/
    ("s3", "GetObjectTagging"),
    ("s3", "PutObjectTagging"),
    ("kinesis", "PutRecords"),
    ("dynamodb", "Scan"),  # status: the lease table
    ("dynamodb", "Query"),  # inspect vehicle: trips-index, live-breadcrumbs
    ("kinesis", "ListShards"),  # status: the shards, and each one read from its checkpoint
    ("kinesis", "GetShardIterator"),
    ("kinesis", "GetRecords"),
}

ADMIN_REQUESTS = {
    ("dynamodb", "GetItem"),  # resolve: vin-mapping
    ("kms", "Decrypt"),  # resolve: the VIN, under its pseudoVin
}

POLICIES = {
    "worker": WORKER_POLICY,
    "sweep": SWEEP_POLICY,
    "operator": OPERATOR_POLICY,
    "admin": ADMIN_POLICY,
}

DATA_TABLE_ACTIONS = {
    "worker": {
        "vehicle-state": {"dynamodb:UpdateItem"},
        "trip-state": {"dynamodb:BatchGetItem", "dynamodb:DeleteItem", "dynamodb:PutItem"},
        "live-breadcrumbs": {"dynamodb:UpdateItem", "dynamodb:Query"},
        "trips-index": {"dynamodb:PutItem"},
        "vin-mapping": {"dynamodb:BatchGetItem", "dynamodb:ConditionCheckItem", "dynamodb:UpdateItem"},
    },
    "sweep": {
        "trip-state": {"dynamodb:BatchGetItem", "dynamodb:DeleteItem", "dynamodb:PutItem"},
        "live-breadcrumbs": {"dynamodb:Query"},
        "trips-index": {"dynamodb:PutItem"},
        "vin-mapping": {"dynamodb:BatchGetItem", "dynamodb:UpdateItem"},
    },
}


@pytest.fixture
def recorded() -> set[tuple[str, str]]:
    """A representative recording of the worker task role's requests: what a worker task makes on AWS."""
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


def test_assert_policy_covers_names_what_is_missing_extra_or_operator_only() -> None:
    statement = {"Effect": "Allow", "Action": ["s3:GetObject", "kms:Decrypt"], "Resource": "*"}
    policy = {"Version": "2012-10-17", "Statement": [statement]}
    assert_policy_covers(policy, {("s3", "GetObject"), ("kms", "Decrypt")}, not_exercised={})
    with pytest.raises(AssertionError, match=r"P lacks actions the code called: \['s3:PutObject'\]"):
        assert_policy_covers(
            policy, {("s3", "PutObject")}, not_exercised={"s3:GetObject": "", "kms:Decrypt": ""}, name="P"
        )
    with pytest.raises(AssertionError, match=r"grants actions nothing called .*\['kms:Decrypt'\]"):
        assert_policy_covers(policy, {("s3", "GetObject")}, not_exercised={})
    with pytest.raises(AssertionError, match=r"operator-only actions: \['kms:Decrypt'\]"):
        assert_policy_covers(policy, {("s3", "GetObject")}, admin_only=ADMIN_ONLY, not_exercised={})


def test_worker_policy_covers_exactly_what_the_worker_calls(recorded: set[tuple[str, str]]) -> None:
    assert_policy_covers(WORKER_POLICY, recorded, name="WorkerTaskRole")


def test_sweep_operator_and_admin_policies_cover_exactly_what_their_code_calls() -> None:
    assert_policy_covers(SWEEP_POLICY, SWEEP_REQUESTS, not_exercised={}, name="SweepTaskRole")
    assert_policy_covers(OPERATOR_POLICY, OPERATOR_REQUESTS, not_exercised={}, name="OperatorRole")
    assert_policy_covers(ADMIN_POLICY, ADMIN_REQUESTS, not_exercised={}, name="AdminRole")


def test_the_task_roles_have_no_operator_action_and_the_worker_no_scan() -> None:
    for policy in (WORKER_POLICY, SWEEP_POLICY):
        assert not policy_actions(policy) & set(ADMIN_ONLY)
    assert set(ADMIN_ONLY) <= policy_actions(OPERATOR_POLICY) | policy_actions(ADMIN_POLICY)
    assert NOT_EXERCISED_LOCALLY and all(NOT_EXERCISED_LOCALLY.values()), "a reason for each"
    data_tables = {p["TableName"] for p in STACK.tables().values()}
    scanned = {r.rsplit("/", 1)[-1] for r in grants(WORKER_POLICY).get("dynamodb:Scan", set())}
    assert not scanned & data_tables, "only the sweep scans trip-state"
    sweep = policy_actions(SWEEP_POLICY)
    assert not {"kms:GenerateDataKey", "kms:Encrypt", "secretsmanager:GetSecretValue"} & sweep
    assert not any("dead-letter" in r for r in grants(SWEEP_POLICY).get("s3:PutObject", ())), (
        "the sweep writes no dead letters for an operator's redrive to put back on the stream"
    )


def kms_statements(policy: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [s for s in allow_statements(policy) if action in listed(s["Action"])]


def test_vin_decrypt_is_the_admin_s_alone_and_bound_to_one_pseudo_vin() -> None:
    vin_key = STACK.outputs["VinKeyArn"]
    (admin,) = kms_statements(ADMIN_POLICY, "kms:Decrypt")
    assert admin["Resource"] == vin_key
    assert admin["Condition"]["StringLike"] == {"kms:EncryptionContext:pseudoVin": "?*"}
    assert admin["Condition"]["ForAllValues:StringEquals"] == {"kms:EncryptionContextKeys": ["pseudoVin"]}
    (operator,) = kms_statements(OPERATOR_POLICY, "kms:Decrypt")
    assert operator["Condition"] == {
        "StringEquals": {"kms:EncryptionContext:purpose": "fleet-ingest-dead-letter"}
    }
    (encrypt,) = kms_statements(WORKER_POLICY, "kms:Encrypt")
    assert encrypt["Condition"] == admin["Condition"], "VINs are stored under the context resolve decrypts"
    trust = STACK.properties("AdminRole")["AssumeRolePolicyDocument"]["Statement"][0]
    assert trust["Condition"] == {"Bool": {"aws:MultiFactorAuthPresent": "true"}}


class RecordingKms:
    """Just enough of a KMS client to see the encryption context a VinVault uses."""

    def __init__(self) -> None:
        self.contexts: list[tuple[str, dict[str, str]]] = []

    def encrypt(self, **request: Any) -> dict[str, Any]:
        self.contexts.append(("Encrypt", request["EncryptionContext"]))
        return {"CiphertextBlob": b"sealed:" + request["Plaintext"]}

    def decrypt(self, **request: Any) -> dict[str, Any]:
        self.contexts.append(("Decrypt", request["EncryptionContext"]))
        return {"Plaintext": request["CiphertextBlob"].removeprefix(b"sealed:")}


class OneItemTable:
    def __init__(self) -> None:
        self.item: dict[str, Any] | None = None

    def update_item(self, **request: Any) -> dict[str, Any]:
        """The vault's ``SET encryptedVin = if_not_exists(...), createdAt = if_not_exists(...)``."""
        values = request["ExpressionAttributeValues"]
        self.item = {"encryptedVin": values[":c"], "createdAt": values[":now"], **(self.item or {})}
        self.item.update(request["Key"])
        return {}

    def get_item(self, **_: Any) -> dict[str, Any]:
        return {"Item": self.item} if self.item else {}


def test_the_vault_encrypts_each_vin_under_its_pseudo_vin_so_cloudtrail_names_the_vehicle() -> None:
    kms, table = RecordingKms(), OneItemTable()
    vault = VinVault(table, kms, "vin-mapping", "alias/fleet-ingest-vin")  # type: ignore[arg-type]
    vault.remember("a" * 32, "5YJ3E1EA7KF000001")
    assert vault.resolve("a" * 32) == "5YJ3E1EA7KF000001"
    assert kms.contexts == [("Encrypt", {"pseudoVin": "a" * 32}), ("Decrypt", {"pseudoVin": "a" * 32})]


def arn(service: str, resource: str, settings: Settings) -> str:
    return iam_arn(service, resource, settings.region)


@pytest.mark.parametrize("who", sorted(POLICIES))
def test_every_resource_is_named_and_only_metrics_go_to_any(who: str, task_settings: Settings) -> None:
    policy = POLICIES[who]
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


def test_the_policies_name_the_resources_the_task_definitions_configure(task_settings: Settings) -> None:
    s = task_settings
    table = {name: arn("dynamodb", f"table/{physical}", s) for name, physical in s.table_names.items()}
    stream = arn("kinesis", f"stream/{s.stream_name}", s)
    app = s.application_name
    for action in ("kinesis:GetRecords", "kinesis:GetShardIterator", "kinesis:ListShards"):
        assert allowed(WORKER_POLICY, action, stream)
    for kcl_table in (app, f"{app}-CoordinatorState", f"{app}-WorkerMetricStats"):
        for action in ("dynamodb:DescribeTable", "dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:Scan"):
            assert allowed(WORKER_POLICY, action, arn("dynamodb", f"table/{kcl_table}", s)), (
                action,
                kcl_table,
            )
        for action in DECLARED_BY_THE_STACK:  # the stack declares them: the KCL creates nothing
            assert not allowed(WORKER_POLICY, action, arn("dynamodb", f"table/{kcl_table}", s))
    assert allowed(
        WORKER_POLICY, "dynamodb:Query", arn("dynamodb", f"table/{app}/index/LeaseOwnerToLeaseKeyIndex", s)
    )
    for who, tables in DATA_TABLE_ACTIONS.items():
        for name, table_arn in table.items():
            granted = {a for a, resources in grants(POLICIES[who]).items() if table_arn in resources}
            assert granted == tables.get(name, set()), (who, name)
    assert allowed(ADMIN_POLICY, "dynamodb:GetItem", table["vin-mapping"])
    for who in ("worker", "sweep", "operator"):
        assert not allowed(POLICIES[who], "dynamodb:GetItem", table["vin-mapping"]), "resolve is the admin's"
    secret = arn("secretsmanager", f"secret:{s.pseudonym_secret_id}-AbCdEf", s)
    assert allowed(WORKER_POLICY, "secretsmanager:GetSecretValue", secret)
    assert allowed(OPERATOR_POLICY, "kinesis:PutRecords", stream)


# --- recorded against the local AWS, with the resource each request touched -------------------------


@dataclass
class Recording:
    env: AwsEnv
    calls: dict[str, set[tuple[str, str, str]]]
    """Who ("worker": the record processor, "sweep", "operator": redrive, status, inspect, "admin":
    resolve) -> (service, operation, resource) of each request it made."""


@pytest.fixture(scope="module")
def recording(local_aws: LocalAws) -> Iterator[Recording]:
    env = fresh_env(
        local_aws, {"FLEET_TRIP_GAP_SECONDS": str(TRIP_GAP_SECONDS), "FLEET_TRIP_SEGMENT_BREADCRUMBS": "100"}
    )
    # No FLEET_PSEUDONYM_KEY: the processor reads the key from Secrets Manager, as on AWS.
    environ = {k: v for k, v in env.environ.items() if k != "FLEET_PSEUDONYM_KEY"}
    bad = StreamEntry(b'{"vin": "not a vin", "timestamp": 0, "signals": {}}', "not a vin")
    records = shard_records([bad, *fixture("trips.jsonl")])
    calls: dict[str, set[tuple[str, str, str]]] = {}
    with recording_resources() as recorded:
        harness = ProcessorHarness(environ)
        harness.initialize()
        # The whole stream, then caught up (the exact machines consume what the allowed lateness held
        # back), then ECS stops the task: the stop's checkpoint flush writes what a backlog's cadence
        # (FLEET_TRIP_PROGRESS_SECONDS) still held: trips complete and their items go; the vehicle that
        # falls silent mid-trip is the sweep's.
        for batch in batches(records, 500):
            harness.process(batch)
        harness.process([])
        assert harness.shutdown_requested(), "the stop checkpoints"
        assert harness.close() == 0, harness.stderr_lines[-20:]
        calls["worker"] = set(recorded)
        recorded.clear()
        an_hour_later = int(time.time() * 1000) + 3_600_000
        leases_reported_caught_up(env, an_hour_later)  # the sweep reads where each consumer is first
        recorded.clear()
        swept = sweep_orphans(env.settings, env.clients, now_ms=an_hour_later)
        assert swept.orphaned, "the sweep had trips to complete"
        calls["sweep"] = set(recorded)
        env.clients.dynamodb.delete_table(TableName=env.settings.application_name)

        tables = env.settings.table_names
        pseudo_vin = next(
            i["pseudoVin"]["S"]
            for i in env.clients.dynamodb.scan(TableName=tables["vin-mapping"])["Items"]
            if is_vehicle(i["pseudoVin"]["S"])
        )
        trip = env.clients.dynamodb.scan(TableName=tables["trips-index"])["Items"][0]
        recorded.clear()
        # invalid_vin is a permanent reason: looked at (tags, object), put back only with --force.
        assert sum(redrive(env.settings, env.clients).skipped_permanent.values()) == 1
        assert sum(redrive(env.settings, env.clients, force=True).redriven.values()) == 1
        operator_tools_read(env, trip["pseudoVin"]["S"], trip["tripId"]["S"])
        calls["operator"] = set(recorded)
        recorded.clear()
        vault = VinVault(
            env.clients.dynamodb, env.clients.kms, tables["vin-mapping"], env.settings.vin_key_alias
        )
        assert vault.resolve(pseudo_vin) is not None
        calls["admin"] = set(recorded)
    yield Recording(env, calls)


def leases_reported_caught_up(env: AwsEnv, now_ms: int) -> None:
    """A lease per shard, checkpointed at TRIM_HORIZON (the stream is empty), and each shard's processor
    reporting at ``now_ms`` that the daemon said it had nothing newer."""
    create_lease_table(env)
    progress = progress_store(env.settings, env.clients)
    for shard in env.clients.kinesis.list_shards(StreamName=env.settings.stream_name)["Shards"]:
        env.clients.dynamodb.put_item(
            TableName=env.settings.application_name,
            Item={"leaseKey": {"S": shard["ShardId"]}, "checkpoint": {"S": "TRIM_HORIZON"}},
        )
        progress.record(ShardProgress(shard["ShardId"], now_ms, caught_up_ms=now_ms, millis_behind=0))


def operator_tools_read(env: AwsEnv, pseudo_vin: str, trip_id: str) -> None:
    """status (no lease table here: its Scan is made all the same) and every inspect path."""
    assert len(shard_status(env.settings, env.clients)) == 2
    assert vehicle_report(env.settings, env.clients, pseudo_vin)
    assert trip_report(env.settings, env.clients, trip_id, None) == trip_report(
        env.settings, env.clients, trip_id, pseudo_vin
    )
    with pytest.raises(NotFound):  # not indexed: looked for among running trips
        trip_report(env.settings, env.clients, f"trip_20250101_000000_{pseudo_vin}", None)


@pytest.mark.parametrize(
    ("who", "expected"),
    [
        ("worker", WORKER_REQUESTS),
        ("sweep", SWEEP_REQUESTS),
        ("operator", OPERATOR_REQUESTS),
        ("admin", ADMIN_REQUESTS),
    ],
)
def test_each_role_s_code_calls_what_its_set_says(
    recording: Recording, who: str, expected: set[tuple[str, str]]
) -> None:
    assert {(service, operation) for service, operation, _ in recording.calls[who]} == expected


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


@pytest.mark.parametrize("who", sorted(POLICIES))
def test_data_tables_and_archive_prefixes_get_exactly_the_recorded_actions(
    recording: Recording, who: str
) -> None:
    policy = POLICIES[who]
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
    needed = recorded_grants(recording.calls[who], settings)
    # Every object is written once (If-None-Match): a PUT refused with 412 (a redelivery) is compared with
    # the stored object by a HEAD, which S3 authorizes as GetObject on the same prefix.
    if who == "worker":
        # On-time archives are written only by a processor that is live (R within L of its clock); this
        # recording replays 2025 records, a backlog, which writes none. Their writes are exercised in the
        # store contracts (tests/integration/test_store_contracts.py) and the live trip tests.
        needed.add(("s3:PutObject", arn("s3", f"{settings.archive_bucket}/trips-provisional/*", settings)))
    needed |= {("s3:GetObject", resource) for action, resource in needed if action == "s3:PutObject"}
    if who == "sweep":  # also read by a claim that loses its race (the vehicle's state, its mark included)
        assert ("dynamodb:BatchGetItem", data_table(settings, "vin-mapping")) in needed, "progress reports"
    assert granted == {(action, resource) for action, resource in needed if data_or_archive(resource)}
    if who == "operator":  # status reads the KCL's lease table, and nothing else of the KCL's
        lease_table = arn("dynamodb", f"table/{settings.application_name}", settings)
        assert {r for a, r in needed if r not in data and a.startswith("dynamodb:")} == {lease_table}
        assert allowed(policy, "dynamodb:Scan", lease_table)


def test_the_local_kcl_s_table_creation_is_not_held_against_the_role_and_nothing_else_is_let_off() -> None:
    """What tests/e2e/test_e2e.py checks on the real daemon's recording: a local KCL creates its tables
    (the local AWS starts empty), which on AWS it finds declared by the stack."""
    app = "fleet-ingest"
    kcl_local = {
        ("dynamodb", "CreateTable", f"table/{app}"),
        ("dynamodb", "UpdateTable", f"table/{app}"),
        ("dynamodb", "CreateTable", f"table/{app}-CoordinatorState"),
        ("dynamodb", "DescribeTable", f"table/{app}-WorkerMetricStats"),
        ("dynamodb", "Query", f"table/{app}/index/LeaseOwnerToLeaseKeyIndex"),
    }
    assert disallowed_resources(WORKER_POLICY, kcl_local, "us-east-1") == []
    assert_policy_covers(WORKER_POLICY, {(s, o) for s, o, _ in kcl_local} | WORKER_REQUESTS | KCL_REQUESTS)
    elsewhere = {
        ("dynamodb", "DescribeTable", "table/someone-elses"),
        ("dynamodb", "Query", f"table/{app}/index/x"),
    }
    assert len(disallowed_resources(WORKER_POLICY, elsewhere, "us-east-1")) == 2
    assert set(DECLARED_BY_THE_STACK) == {"dynamodb:CreateTable", "dynamodb:UpdateTable"}
