"""Each role of deploy/fleet-ingest.yaml tries what it must not do, and is refused.

The calls are evaluated against every policy the stack renders for them (``tests.support.iam.Permissions``:
the role's identity policy, the key policies, the bucket policy, the secret's resource policy, the trust
policies), the way AWS evaluates a same-account request: an explicit Deny wins, KMS needs its key policy.
Each refusal has an allowed twin (the role's own job, or the same call done right), so a test cannot pass
because nothing is allowed at all.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.cfn import ACCOUNT, REGION, STACK, TEST_PARAMETERS, load_template, render
from tests.support.iam import (
    ACCOUNT_ROOT,
    PERMISSIONS,
    Permissions,
    condition_holds,
    decide,
    policy_actions,
)

P = PERMISSIONS
STREAM = STACK.arns["Stream"]
CONSUMER = STACK.outputs["StreamConsumerArn"]
POLLING = Permissions(render({**TEST_PARAMETERS, "WorkerRetrievalMode": "POLLING"}))
"""The stack of a worker that polls (WorkerRetrievalMode=POLLING); the default fans out."""
VIN_KEY = STACK.arns["VinKey"]
DATA_KEY = STACK.arns["DataKey"]
BUCKET = STACK.properties("ArchiveBucket")["BucketName"]
SECRET = (
    f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:{STACK.properties('PseudonymSecret')['Name']}-AbCdEf"
)

VIN_CONTEXT = {"kms:EncryptionContext:pseudoVin": "a" * 32, "kms:EncryptionContextKeys": ["pseudoVin"]}
DEAD_LETTER_CONTEXT = {
    "kms:EncryptionContext:purpose": "fleet-ingest-dead-letter",
    "kms:EncryptionContextKeys": ["purpose"],
}
WRITE_ONCE = {"s3:if-none-match": "*"}

ACCOUNT_ADMIN = f"arn:aws:iam::{ACCOUNT}:role/AccountAdministrator"
EVERYTHING: dict[str, Any] = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
}
"""An identity policy granting every action on every resource: what the account's own administrators hold."""

ROLES = ("WorkerTaskRole", "SweepTaskRole", "OperatorRole", "AdminRole")


def s3_object(key: str) -> str:
    return f"arn:aws:s3:::{BUCKET}/{key}"


def via(service: str) -> dict[str, str]:
    """The keys KMS sees when a storing service calls it for the caller."""
    return {"kms:ViaService": f"{service}.{REGION}.amazonaws.com", "kms:CallerAccount": ACCOUNT}


# --- the worker -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["WorkerTaskRole", "SweepTaskRole", "AdminRole"])
def test_no_role_but_the_operator_s_redrive_writes_to_the_stream(who: str) -> None:
    for action in ("kinesis:PutRecord", "kinesis:PutRecords"):
        assert not P.can(who, action, STREAM), (who, action)
    assert P.can("OperatorRole", "kinesis:PutRecords", STREAM)
    assert P.can("WorkerTaskRole", "kinesis:SubscribeToShard", CONSUMER)


def test_the_sweep_reads_no_record_of_the_stream() -> None:
    """Issue 22: records carry VINs (the partition key is the VIN). The sweep learns whether each consumer
    keeps up from the progress reports in vin-mapping instead: no Kinesis action, and the data key does
    not decrypt the stream for it."""
    for action in ("kinesis:GetRecords", "kinesis:GetShardIterator", "kinesis:ListShards"):
        assert not P.can("SweepTaskRole", action, STREAM), action
        assert POLLING.can("WorkerTaskRole", action, STREAM), action
    assert not P.can("SweepTaskRole", "kinesis:SubscribeToShard", CONSUMER)
    assert P.can("WorkerTaskRole", "kinesis:SubscribeToShard", CONSUMER)
    assert not {a for a in policy_actions(STACK.policy("SweepTaskRole")) if a.startswith("kinesis:")}
    assert not P.can("SweepTaskRole", "kms:Decrypt", DATA_KEY, via("kinesis"))
    assert P.can("SweepTaskRole", "kms:Decrypt", DATA_KEY, via("dynamodb"))
    vin_mapping = STACK.arns["VinMappingTable"]
    assert P.can("SweepTaskRole", "dynamodb:BatchGetItem", vin_mapping), "the progress reports"
    assert P.can("WorkerTaskRole", "dynamodb:UpdateItem", vin_mapping), "written at each checkpoint"


def test_a_fanning_out_worker_reads_only_through_the_stack_s_consumer() -> None:
    """Issue 23: with enhanced fan-out (the default) the worker subscribes with the consumer the stack
    registered, and holds no shared read: another application polling the stream keeps its 5 reads a
    second per shard. It registers and looks up no consumer (the KCL is given the ARN), and cannot
    subscribe as another application's consumer."""
    assert P.can("WorkerTaskRole", "kinesis:SubscribeToShard", CONSUMER)
    assert P.can("WorkerTaskRole", "kinesis:ListShards", STREAM), "the KCL's shard sync"
    for action in ("kinesis:GetRecords", "kinesis:GetShardIterator"):
        assert not P.can("WorkerTaskRole", action, STREAM), action
    for action in ("kinesis:RegisterStreamConsumer", "kinesis:DescribeStreamConsumer"):
        assert not P.can("WorkerTaskRole", action, STREAM), action
        assert not P.can("WorkerTaskRole", action, CONSUMER), action
    another = CONSUMER.replace(f"/consumer/{STACK.parameters['StreamConsumerName']}:", "/consumer/analytics:")
    assert another != CONSUMER
    assert not P.can("WorkerTaskRole", "kinesis:SubscribeToShard", another)


def test_a_polling_worker_reads_the_stream_and_subscribes_to_nothing() -> None:
    assert POLLING.can("WorkerTaskRole", "kinesis:GetRecords", STREAM)
    assert not POLLING.can("WorkerTaskRole", "kinesis:SubscribeToShard", CONSUMER)
    assert "StreamConsumer" not in POLLING.stack.resources, "no consumer billed for nothing"


@pytest.mark.parametrize("prefix", ["trips/", "trips-provisional/", "trip-segments/", "dead-letter/"])
@pytest.mark.parametrize("who", ["WorkerTaskRole", "SweepTaskRole", ACCOUNT_ADMIN])
def test_nobody_overwrites_an_archive_a_segment_or_a_dead_letter(prefix: str, who: str) -> None:
    key = s3_object(f"{prefix}2025/01/01/x.json.gz")
    assert not P.can(who, "s3:PutObject", key, identity=EVERYTHING), "a PUT without If-None-Match"
    assert not P.can(who, "s3:PutObject", key, {"s3:if-none-match": "etag"}, identity=EVERYTHING)
    writes = {
        "WorkerTaskRole": ("trips/", "trips-provisional/", "trip-segments/", "dead-letter/"),
        "SweepTaskRole": ("trips/",),
    }
    may_create = who == ACCOUNT_ADMIN or prefix in writes[who]
    assert P.can(who, "s3:PutObject", key, WRITE_ONCE, identity=EVERYTHING) == may_create


def test_the_worker_creates_no_table_and_finds_the_kcl_s() -> None:
    for table in STACK.of_type("AWS::DynamoDB::Table").values():
        table_arn = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{table['TableName']}"
        for action in ("dynamodb:CreateTable", "dynamodb:UpdateTable", "dynamodb:DeleteTable"):
            assert not P.can("WorkerTaskRole", action, table_arn), (action, table["TableName"])
    for kcl_table in STACK.tables(kcl=True).values():
        table_arn = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{kcl_table['TableName']}"
        assert P.can("WorkerTaskRole", "dynamodb:DescribeTable", table_arn)


# --- the bucket: the stack's key, TLS 1.2 or later ------------------------------------------------------


@pytest.mark.parametrize(
    ("refused", "context"),
    [
        ("SSE-S3", {"s3:x-amz-server-side-encryption": "AES256"}),
        (
            "SSE-KMS under another key",
            {"s3:x-amz-server-side-encryption-aws-kms-key-id": f"arn:aws:kms:{REGION}:{ACCOUNT}:key/other"},
        ),
        ("plain HTTP", {"aws:SecureTransport": "false"}),
        ("TLS 1.1", {"s3:TlsVersion": "1.1"}),
        ("TLS 1.0", {"s3:TlsVersion": "1.0"}),
    ],
)
def test_uploads_use_the_stack_s_key_over_tls_1_2_or_later(refused: str, context: dict[str, str]) -> None:
    key = s3_object("trips/2025/01/01/x.json.gz")
    assert not P.can("WorkerTaskRole", "s3:PutObject", key, {**WRITE_ONCE, **context}), refused
    the_stack_s_key = {
        "s3:x-amz-server-side-encryption": "aws:kms",
        "s3:x-amz-server-side-encryption-aws-kms-key-id": DATA_KEY,
    }
    assert P.can(
        "WorkerTaskRole", "s3:PutObject", key, {**WRITE_ONCE, **the_stack_s_key, "s3:TlsVersion": "1.2"}
    )
    assert P.can("WorkerTaskRole", "s3:PutObject", key, WRITE_ONCE), (
        "no header: the bucket's default, the stack's key"
    )
    if "TLS" in refused or "HTTP" in refused:
        assert not P.can("OperatorRole", "s3:GetObject", s3_object("dead-letter/x"), context), "reads too"


# --- the VIN key: decrypt is the admin's, in the key policy ------------------------------------------------


@pytest.mark.parametrize("who", ["WorkerTaskRole", "SweepTaskRole", "OperatorRole", ACCOUNT_ADMIN])
def test_nobody_but_the_admin_decrypts_a_vin(who: str) -> None:
    for action in ("kms:Decrypt", "kms:ReEncryptFrom", "kms:CreateGrant"):
        assert not P.can(who, action, VIN_KEY, VIN_CONTEXT, identity=EVERYTHING), (who, action)
    assert P.can("AdminRole", "kms:Decrypt", VIN_KEY, VIN_CONTEXT)


def test_the_vin_key_policy_gives_the_account_key_administration_only() -> None:
    crypto = {"kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey", "kms:ReEncryptFrom", "kms:CreateGrant"}
    for key in ("VinKey", "DataKey"):
        for action in crypto:
            # The account's IAM alone, through no service: nothing cryptographic.
            assert not P.can(ACCOUNT_ADMIN, action, STACK.arns[key], identity=EVERYTHING), (key, action)
        assert P.can(ACCOUNT_ADMIN, "kms:ScheduleKeyDeletion", STACK.arns[key], identity=EVERYTHING)
    (root,) = [
        s
        for s in STACK.properties("VinKey")["KeyPolicy"]["Statement"]
        if s["Principal"] == {"AWS": ACCOUNT_ROOT}
    ]
    assert not any(
        a == "kms:*" or a.split(":")[1] in {c.split(":")[1] for c in crypto} for a in root["Action"]
    )


def test_the_worker_seals_vins_and_dead_letters_but_opens_neither() -> None:
    assert P.can("WorkerTaskRole", "kms:Encrypt", VIN_KEY, VIN_CONTEXT)
    assert P.can("WorkerTaskRole", "kms:GenerateDataKey", VIN_KEY, DEAD_LETTER_CONTEXT)
    assert not P.can("WorkerTaskRole", "kms:GenerateDataKey", VIN_KEY, VIN_CONTEXT)
    for context in (VIN_CONTEXT, DEAD_LETTER_CONTEXT):
        assert not P.can("WorkerTaskRole", "kms:Decrypt", VIN_KEY, context)


# --- the operator ------------------------------------------------------------------------------------------


def test_the_operator_decrypts_dead_letters_only() -> None:
    assert P.can("OperatorRole", "kms:Decrypt", VIN_KEY, DEAD_LETTER_CONTEXT)
    assert not P.can("OperatorRole", "kms:Decrypt", VIN_KEY, VIN_CONTEXT)
    assert not P.can("OperatorRole", "kms:Decrypt", VIN_KEY), "no context at all"


@pytest.mark.parametrize(
    ("role", "parameter"), [("OperatorRole", "OperatorPrincipalArn"), ("AdminRole", "AdminPrincipalArn")]
)
def test_operator_and_admin_are_assumed_by_their_one_named_principal_with_mfa(
    role: str, parameter: str
) -> None:
    named = TEST_PARAMETERS[parameter]
    mfa = {"aws:MultiFactorAuthPresent": "true"}
    assert P.can_assume(role, named, mfa)
    assert not P.can_assume(role, named), "without MFA"
    assert not P.can_assume(role, named, {"aws:MultiFactorAuthPresent": "false"})
    assert not P.can_assume(role, f"arn:aws:iam::{ACCOUNT}:role/someone-else", mfa)
    assert not P.can_assume(role, ACCOUNT_ROOT, mfa)
    # No default: an empty value used to mean "whoever the account's IAM allows".
    spec = load_template()["Parameters"][parameter]
    assert "Default" not in spec
    assert "root" not in spec["AllowedPattern"] and spec["AllowedPattern"].endswith(
        "(role|user)/[a-zA-Z0-9+=,.@_/-]+"
    )


# --- the storage key and the secret name their principals ------------------------------------------------


@pytest.mark.parametrize("service", ["dynamodb", "s3", "kinesis"])
def test_reading_storage_needs_a_role_the_data_key_names(service: str) -> None:
    context = via(service)
    assert not P.can(ACCOUNT_ADMIN, "kms:Decrypt", DATA_KEY, context, identity=EVERYTHING)
    for role in ROLES:
        reads_no_record = role == "SweepTaskRole" and service == "kinesis"
        assert P.can(role, "kms:Decrypt", DATA_KEY, context) != reads_no_record, role
    assert not P.can("WorkerTaskRole", "kms:Decrypt", DATA_KEY), "only through the storing services"


def test_no_key_or_secret_policy_allows_everyone() -> None:
    documents = [key["KeyPolicy"] for key in STACK.of_type("AWS::KMS::Key").values()]
    documents += [p["ResourcePolicy"] for p in STACK.of_type("AWS::SecretsManager::ResourcePolicy").values()]
    assert len(documents) == 3
    for document in documents:
        for statement in document["Statement"]:
            if statement["Effect"] == "Allow":
                assert statement["Principal"] not in ("*", {"AWS": "*"}), statement["Sid"]


@pytest.mark.parametrize("who", ["SweepTaskRole", "OperatorRole", "AdminRole", ACCOUNT_ADMIN])
def test_only_the_worker_reads_the_pseudonym_key(who: str) -> None:
    assert not P.can(who, "secretsmanager:GetSecretValue", SECRET, identity=EVERYTHING)
    assert P.can("WorkerTaskRole", "secretsmanager:GetSecretValue", SECRET)
    assert P.can("WorkerTaskRole", "kms:Decrypt", DATA_KEY, via("secretsmanager"))
    if who != ACCOUNT_ADMIN:
        assert not P.can(who, "kms:Decrypt", DATA_KEY, via("secretsmanager"))
    # The account itself may decrypt through Secrets Manager (creating and updating the secret needs it):
    # the secret's policy is what stops it reading the value, as the first assertion shows.


# --- the evaluator itself ------------------------------------------------------------------------------


def test_the_evaluator_follows_aws_rules_for_missing_keys_and_sets() -> None:
    assert condition_holds({"StringNotEquals": {"s3:if-none-match": "*"}}, {}), (
        "negated: a missing key passes"
    )
    assert not condition_holds({"StringEquals": {"s3:if-none-match": "*"}}, {})
    assert condition_holds({"StringEqualsIfExists": {"k": "v"}}, {})
    assert condition_holds({"Null": {"k": "true"}}, {}) and not condition_holds(
        {"Null": {"k": "true"}}, {"k": "v"}
    )
    keys = {"ForAllValues:StringEquals": {"kms:EncryptionContextKeys": ["pseudoVin"]}}
    assert condition_holds(keys, {"kms:EncryptionContextKeys": ["pseudoVin"]})
    assert not condition_holds(keys, {"kms:EncryptionContextKeys": ["pseudoVin", "purpose"]})
    assert condition_holds({"NumericLessThan": {"s3:TlsVersion": 1.2}}, {"s3:TlsVersion": "1.1"})
    with pytest.raises(ValueError, match="DateGreaterThan"):
        condition_holds({"DateGreaterThan": {"aws:CurrentTime": "2020-01-01"}}, {})


def test_the_evaluator_lets_a_deny_win_and_needs_the_key_policy_for_kms() -> None:
    me = f"arn:aws:iam::{ACCOUNT}:role/me"
    allow = {"Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]}
    deny = {"Statement": [{"Effect": "Deny", "Principal": "*", "Action": "s3:*", "Resource": "*"}]}
    assert decide(me, allow, "s3:GetObject", "arn:aws:s3:::b/k")
    assert not decide(me, allow, "s3:GetObject", "arn:aws:s3:::b/k", deny)
    assert not decide(me, allow, "s3:PutObject", "arn:aws:s3:::b/k")
    key_policy = {"Statement": [{"Effect": "Allow", "Principal": {"AWS": ACCOUNT_ROOT}, "Action": "kms:*"}]}
    kms_allow = {"Statement": [{"Effect": "Allow", "Action": "kms:Decrypt", "Resource": "*"}]}
    assert decide(me, kms_allow, "kms:Decrypt", "k", key_policy, key_policy_required=True)
    assert not decide(me, kms_allow, "kms:Decrypt", "k", None, key_policy_required=True)
    assert not decide(me, None, "kms:Decrypt", "k", key_policy, key_policy_required=True)
