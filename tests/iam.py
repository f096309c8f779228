"""IAM actions from recorded AWS requests, and the check that a policy grants exactly those.

The local AWS (``worker.local_aws.LocalAwsApp.requests``) counts every request it served as a
(service, operation) pair, the service being the SigV4 signing name. ``iam_actions`` names the IAM
action each pair needs; ``assert_policy_covers`` checks a policy file against them.

The authoritative check runs in the end-to-end test, on what the real daemon, its record processors and
the orphan sweep asked of the local AWS. Record only that window, so that the test's own producer and
assertions (PutRecords, ListObjectsV2, ...) do not count as the worker's::

    local_aws.app.reset_counts()          # after replaying the fixtures
    run_daemon(env); sweep_orphans(...)
    assert_policy_covers(TASK_POLICY, local_aws.app.requests)
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

DEPLOY = Path(__file__).parent.parent / "deploy"
TASK_POLICY = DEPLOY / "iam-task-policy.json"
OPERATOR_POLICY = DEPLOY / "iam-operator-policy.json"

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
    "kms:Decrypt": "resolve (a VIN) and redrive (dead-letter data keys): deploy/iam-operator-policy.json",
    "kinesis:PutRecords": "redrive puts dead letters back; the worker never writes to the stream",
    "s3:ListBucket": "redrive lists dead-letter/; the worker only reads and writes keys it computes",
    "s3:GetObjectTagging": "redrive skips dead letters tagged redrivenAt",
    "s3:PutObjectTagging": "redrive tags what it put back",
}
"""Actions only the operator tools need (deploy/iam-operator-policy.json); never the task role's. (The
operators' dynamodb:GetItem on vin-mapping is an action the KCL needs too, on its own tables: that one
is told apart by resource, see tests/test_deploy.py.)"""

NOT_EXERCISED_LOCALLY: Mapping[str, str] = {
    "kinesis:DescribeStreamSummary": "KCL 3.x checks the stream first; KCL 2.5.8 polling never calls it",
    "dynamodb:UpdateTable": "KCL 3.x adds its leaseOwner index to a lease table created without it",
    "dynamodb:DeleteItem": "KCL deletes leases of parent shards after resharding; the e2e never reshards",
    "cloudwatch:PutMetricData": "KCL metrics; metricsLevel is NONE against the local AWS",
    "secretsmanager:GetSecretValue": "the pseudonymization key; the e2e passes FLEET_PSEUDONYM_KEY instead",
    "kms:GenerateDataKey": "a data key per batch that quarantines a record; a run without bad input has none",
    "s3:GetObject": "archiving a trip with sealed segments (FLEET_TRIP_SEGMENT_BREADCRUMBS, 3600 by default)",
}
"""Task-role actions needed on AWS that a local end-to-end run may not exercise, each with its reason."""


def iam_action(service: str, operation: str) -> str:
    """The IAM action an AWS request needs, e.g. ("s3", "ListObjectsV2") -> "s3:ListBucket"."""
    if service == "s3":
        if operation not in _S3_ACTIONS:
            raise ValueError(f"no IAM action known for s3 {operation}: add it to tests/iam.py")
        return _S3_ACTIONS[operation]
    if operation in _HTTP_METHODS or not operation.isalnum():
        # A query-protocol request (STS, older CloudWatch) is named by its HTTP method only.
        raise ValueError(f"cannot name the operation of {service} {operation!r}")
    return f"{_IAM_PREFIX.get(service, service)}:{operation}"


def iam_actions(requests: Iterable[tuple[str, str]]) -> set[str]:
    """IAM actions for recorded (service, operation) pairs (a ``Counter`` of them works too)."""
    return {iam_action(service, operation) for service, operation in requests}


def load_policy(path: Path) -> dict[str, Any]:
    policy: dict[str, Any] = json.loads(path.read_text())
    return policy


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
    policy_path: Path,
    recorded: Iterable[tuple[str, str]],
    admin_only: Collection[str] = (),
    not_exercised: Mapping[str, str] = NOT_EXERCISED_LOCALLY,
) -> None:
    """The policy grants every action the recorded requests needed, and nothing else but the actions in
    ``not_exercised`` (needed on AWS, with the reason a local run may not show them).

    ``admin_only``: when the recording also holds operator tools' requests (pass ``ADMIN_ONLY``), their
    actions are not counted as used, and the policy must not grant them.
    """
    used = iam_actions(recorded) - set(admin_only)
    granted = policy_actions(load_policy(policy_path))
    name = policy_path.name
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
