"""IAM actions from recorded AWS requests, and the check that a policy grants exactly those.

The local AWS (``devtools.local_aws.server.LocalAwsApp.requests``) counts every request it served as a
(service, operation) pair, the service being the SigV4 signing name. ``iam_actions`` names the IAM
action each pair needs; ``assert_policy_covers`` checks a role's policy against them. The policies are the
roles' inline policies in deploy/fleet-ingest.yaml, rendered with the local AWS's names
(``tests.support.cfn``).

The authoritative check runs in the end-to-end test, on what the real daemon, its record processors and
the orphan sweep asked of the local AWS. Record only that window, so that the test's own producer and
assertions (PutRecords, ListObjectsV2, ...) do not count as the worker's::

    local_aws.app.reset_counts()          # after replaying the fixtures
    run_daemon(env); sweep_orphans(...)
    assert_policy_covers(WORKER_POLICY, local_aws.app.requests)
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pytest

from devtools.local_aws import server as local_aws_server
from devtools.local_aws.limits import AwsRequest
from tests.support.cfn import ACCOUNT, STACK

WORKER_POLICY = STACK.policy("WorkerTaskRole")
SWEEP_POLICY = STACK.policy("SweepTaskRole")
OPERATOR_POLICY = STACK.policy("OperatorRole")
ADMIN_POLICY = STACK.policy("AdminRole")

# SigV4 signing names that differ from the IAM service prefix.
_IAM_PREFIX = {"monitoring": "cloudwatch"}

_HTTP_METHODS = frozenset({"GET", "PUT", "POST", "HEAD", "DELETE", "PATCH"})

# S3 is a REST API: the local AWS names its operations from method and path, and IAM names differ.
_S3_ACTIONS = {
    "GetObject": "s3:GetObject",
    "HeadObject": "s3:GetObject",
    "PutObject": "s3:PutObject",
    "DeleteObject": "s3:DeleteObject",
    "DeleteObjects": "s3:DeleteObject",
    "GetObjectTagging": "s3:GetObjectTagging",
    "PutObjectTagging": "s3:PutObjectTagging",
    "DeleteObjectTagging": "s3:DeleteObjectTagging",
    "ListObjectsV2": "s3:ListBucket",
    "HeadBucket": "s3:ListBucket",
    "CreateBucket": "s3:CreateBucket",
}

ADMIN_ONLY: Mapping[str, str] = {
    "kms:Decrypt": "resolve (a VIN: AdminRole) and redrive (dead-letter data keys: OperatorRole)",
    "kinesis:PutRecords": "redrive puts dead letters back; the worker never writes to the stream",
    "s3:ListBucket": "redrive lists dead-letter/; the worker only reads and writes keys it computes",
    "s3:GetObjectTagging": "redrive skips dead letters tagged redrivenAt",
    "s3:PutObjectTagging": "redrive tags what it put back",
}
"""Actions only the operator tools need (OperatorRole, AdminRole); never a task role's. (The
operators' dynamodb:GetItem on vin-mapping is an action the KCL needs too, on its own tables: that one
is told apart by resource, see tests/deploy/test_deploy.py.)"""

NOT_EXERCISED_LOCALLY: Mapping[str, str] = {
    "cloudwatch:PutMetricData": "KCL metrics; metricsLevel is NONE against the local AWS",
    "secretsmanager:GetSecretValue": "the pseudonymization key; the e2e passes FLEET_PSEUDONYM_KEY instead",
}
"""Task-role actions needed on AWS that a local end-to-end run may not exercise, each with its reason."""


def arn(service: str, resource: str, region: str) -> str:
    """The ARN of a resource path (``table/x``, ``stream/x``, ``bucket/key``) in the placeholder account."""
    if service == "s3":
        return f"arn:aws:s3:::{resource}"
    return f"arn:aws:{service}:{region}:{ACCOUNT}:{resource}"


def allowed(policy: Mapping[str, Any], action: str, resource_arn: str) -> bool:
    """Whether the policy allows this action on a resource pattern matching the ARN (conditions aside)."""
    return any(fnmatch.fnmatchcase(resource_arn, pattern) for pattern in grants(policy).get(action, ()))


TRANSACTION_ITEM_ACTIONS = {
    "Put": "PutItem",
    "Update": "UpdateItem",
    "Delete": "DeleteItem",
    "ConditionCheck": "ConditionCheckItem",
}
"""IAM authorizes TransactWriteItems per item, by these actions (there is no TransactWriteItems action)."""
OUR_TRANSACTIONS = frozenset({"PutItem", "ConditionCheckItem"})
"""The item actions of the only transaction the code sends (a trip's creation: ConditionCheck on the
vehicle's mark + Put of its trip-state item), for recordings that keep the operation name only."""


def transaction_items(body: bytes) -> list[tuple[str, str]]:
    """(operation, ``table/name``) of each item a TransactWriteItems request names."""
    request = json.loads(body or b"{}")
    items = []
    for action in request.get("TransactItems", ()):
        ((kind, item),) = action.items()
        items.append((TRANSACTION_ITEM_ACTIONS[kind], f"table/{item['TableName']}"))
    return items


def resource_of(service: str, environ: Mapping[str, Any], body: bytes) -> str:
    """The resource a request addresses: tables, or one table's index (DynamoDB), bucket/key (S3), the
    stream (Kinesis); "" elsewhere (the KMS key and the secret are named differently here than on AWS)."""
    if service == "dynamodb":
        request = json.loads(body or b"{}")
        if "IndexName" in request:
            return f"table/{request['TableName']}/index/{request['IndexName']}"
        tables = [request["TableName"]] if "TableName" in request else sorted(request.get("RequestItems", {}))
        return ",".join(f"table/{t}" for t in tables)
    if service == "s3":
        return str(environ.get("PATH_INFO", "")).strip("/")
    if service == "kinesis":
        request = json.loads(body or b"{}")
        if "StreamName" in request:
            return f"stream/{request['StreamName']}"
        if "StreamARN" in request:
            return f"stream/{str(request['StreamARN']).rsplit('/', 1)[-1]}"
        if "ShardIterator" in request:
            return "stream/*"  # GetRecords names no stream: its iterator was issued for one
    return ""


@contextmanager
def recording_resources() -> Iterator[set[tuple[str, str, str]]]:
    """Record (service, operation, resource) of every request the local AWS serves meanwhile."""
    calls: set[tuple[str, str, str]] = set()
    identify: Callable[[dict[str, Any], bytes], AwsRequest] = local_aws_server.identify

    def recording_identify(environ: dict[str, Any], body: bytes) -> AwsRequest:
        request = identify(environ, body)
        if (request.service, request.operation) == ("dynamodb", "TransactWriteItems"):
            calls.update(("dynamodb", operation, table) for operation, table in transaction_items(body))
        else:
            calls.add((request.service, request.operation, resource_of(request.service, environ, body)))
        return request

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(local_aws_server, "identify", recording_identify)
        yield calls


def disallowed_resources(
    policy: Mapping[str, Any], calls: Iterable[tuple[str, str, str]], region: str
) -> list[tuple[str, str]]:
    """(action, ARN) of each recorded call the policy does not allow on the resource it touched
    (calls on resources without a comparable name here, KMS keys and secrets, are checked by action)."""
    refused = []
    for service, operation, resource in calls:
        action = iam_action(service, operation)
        targets = [arn(service, part, region) for part in resource.split(",") if part] or ["*"]
        for target in targets:
            if target == "*":
                ok = action in grants(policy)
            elif target.endswith(":stream/*"):
                ok = any(":stream/" in pattern for pattern in grants(policy).get(action, ()))
            else:
                ok = allowed(policy, action, target)
            if not ok:
                refused.append((action, target))
    return sorted(refused)


def iam_action(service: str, operation: str) -> str:
    """The IAM action an AWS request needs, e.g. ("s3", "ListObjectsV2") -> "s3:ListBucket"."""
    if service == "s3":
        if operation not in _S3_ACTIONS:
            raise ValueError(f"no IAM action known for s3 {operation}: add it to tests/support/iam.py")
        return _S3_ACTIONS[operation]
    if operation in _HTTP_METHODS or not operation.isalnum():
        # A query-protocol request (STS, older CloudWatch) is named by its HTTP method only.
        raise ValueError(f"cannot name the operation of {service} {operation!r}")
    return f"{_IAM_PREFIX.get(service, service)}:{operation}"


def iam_actions(requests: Iterable[tuple[str, str]]) -> set[str]:
    """IAM actions for recorded (service, operation) pairs (a ``Counter`` of them works too); a
    TransactWriteItems stands for the item actions of ``OUR_TRANSACTIONS``."""
    actions = set()
    for service, operation in requests:
        if (service, operation) == ("dynamodb", "TransactWriteItems"):
            actions |= {f"dynamodb:{item}" for item in OUR_TRANSACTIONS}
        else:
            actions.add(iam_action(service, operation))
    return actions


def allow_statements(policy: Mapping[str, Any]) -> list[dict[str, Any]]:
    statements = policy["Statement"]
    statements = [statements] if isinstance(statements, dict) else statements
    for statement in statements:
        if statement["Effect"] != "Allow" or "NotAction" in statement or "NotResource" in statement:
            raise ValueError(f"only plain Allow statements are expected: {statement.get('Sid')}")
    return list(statements)


def listed(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def policy_actions(policy: Mapping[str, Any]) -> set[str]:
    """Every action a policy allows. Wildcard actions are refused: they cannot be checked."""
    actions: set[str] = set()
    for statement in allow_statements(policy):
        for action in listed(statement["Action"]):
            if "*" in action or "?" in action:
                raise ValueError(f"wildcard action {action} in {statement.get('Sid')}")
            actions.add(action)
    return actions


def grants(policy: Mapping[str, Any]) -> dict[str, set[str]]:
    """Action -> the resources it is allowed on."""
    granted: dict[str, set[str]] = {}
    for statement in allow_statements(policy):
        for action in listed(statement["Action"]):
            granted.setdefault(action, set()).update(listed(statement["Resource"]))
    return granted


def assert_policy_covers(
    policy: Mapping[str, Any],
    recorded: Iterable[tuple[str, str]],
    admin_only: Collection[str] = (),
    not_exercised: Mapping[str, str] = NOT_EXERCISED_LOCALLY,
    name: str = "the policy",
) -> None:
    """The policy grants every action the recorded requests needed, and nothing else but the actions in
    ``not_exercised`` (needed on AWS, with the reason a local run may not show them).

    ``admin_only``: when the recording also holds operator tools' requests (pass ``ADMIN_ONLY``), their
    actions are not counted as used, and the policy must not grant them.
    """
    used = iam_actions(recorded) - set(admin_only)
    granted = policy_actions(policy)
    problems = []
    if missing := used - granted:
        problems.append(f"{name} lacks actions the code called: {sorted(missing)}")
    if unused := granted - used - set(not_exercised):
        problems.append(f"{name} grants actions nothing called (or document why): {sorted(unused)}")
    if stale := set(not_exercised) - granted:
        problems.append(f"documented as needed but not in {name}: {sorted(stale)}")
    if admin := granted & set(admin_only):
        problems.append(f"{name} grants operator-only actions: {sorted(admin)}")
    assert not problems, "\n".join(problems)
