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
from dataclasses import dataclass
from typing import Any

import pytest

from devtools.local_aws import server as local_aws_server
from devtools.local_aws.limits import AwsRequest
from tests.support.cfn import ACCOUNT, STACK, TEST_PARAMETERS, Rendered, render

POLLING_STACK = render({**TEST_PARAMETERS, "WorkerRetrievalMode": "POLLING"})
WORKER_POLICY = POLLING_STACK.policy("WorkerTaskRole")
"""The worker task role of a stack whose worker polls, as every local run but the FANOUT e2e does (the
recordings it is checked against are of a polling daemon). The stack's default, fan-out, differs only in
how the KCL reads: ``WORKER_FANOUT_POLICY``."""
WORKER_FANOUT_POLICY = STACK.policy("WorkerTaskRole")
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
is told apart by resource, see tests/deploy/test_iam.py.)"""

DECLARED_BY_THE_STACK: Mapping[str, str] = {
    "dynamodb:CreateTable": "the KCL creates its three tables where none exists, as in a local run; the "
    "stack declares them (KclLeaseTable, KclCoordinatorStateTable, KclWorkerMetricStatsTable)",
    "dynamodb:UpdateTable": "the KCL adds LeaseOwnerToLeaseKeyIndex to a lease table without it; the "
    "stack's lease table has it",
}
"""Actions a local run of the KCL makes only because no stack declared its tables (the local AWS starts
empty): on AWS it finds them (DescribeTable) and makes neither, so the worker task role grants neither.
``assert_policy_covers`` and ``disallowed_resources`` do not count them as needed."""

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
        if action in DECLARED_BY_THE_STACK:
            continue
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
    ``not_exercised`` (needed on AWS, with the reason a local run may not show them). The actions of
    ``DECLARED_BY_THE_STACK`` are not needed on AWS, whatever a local run made.

    ``admin_only``: when the recording also holds operator tools' requests (pass ``ADMIN_ONLY``), their
    actions are not counted as used, and the policy must not grant them.
    """
    used = iam_actions(recorded) - set(admin_only) - set(DECLARED_BY_THE_STACK)
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


# ---------------------------------------------------------------------------------------------------
# Evaluating the stack's policies: may this principal make this call?
# ---------------------------------------------------------------------------------------------------
# Same-account evaluation as AWS documents it, for the statements this template writes: an explicit Deny
# in any policy wins; otherwise an Allow of the caller's identity policy or of the resource's policy
# naming the caller suffices, except for KMS, where the key policy must allow it (naming the caller, or
# naming the account and then the identity policy must allow it too). Condition operators the template
# does not use are refused, so the evaluator never guesses.

ACCOUNT_ROOT = f"arn:aws:iam::{ACCOUNT}:root"

_NEGATED = {"StringNotEquals", "StringNotLike", "ArnNotEquals", "ArnNotLike", "NumericNotEquals"}


def _like(value: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(value, pattern.replace("[", "[[]"))


_OPERATORS: Mapping[str, Callable[[str, str], bool]] = {
    "StringEquals": lambda v, e: v == e,
    "StringNotEquals": lambda v, e: v == e,
    "StringLike": _like,
    "StringNotLike": _like,
    "ArnEquals": _like,
    "ArnLike": _like,
    "ArnNotEquals": _like,
    "ArnNotLike": _like,
    "Bool": lambda v, e: v.lower() == e.lower(),
    "NumericLessThan": lambda v, e: float(v) < float(e),
    "NumericNotEquals": lambda v, e: float(v) == float(e),
}

Context = Mapping[str, Any]


def _condition_test(operator: str, key: str, expected: Any, context: Context) -> bool:
    base, if_exists = operator.removesuffix("IfExists"), operator.endswith("IfExists")
    qualifier, _, base = base.rpartition(":")
    expected_values = [str(e).lower() if isinstance(e, bool) else str(e) for e in _values(expected)]
    if base == "Null":
        return (key not in context) == (expected_values == ["true"])
    if base not in _OPERATORS or qualifier not in ("", "ForAllValues", "ForAnyValue"):
        raise ValueError(
            f"condition operator {operator} is not evaluated here: add it to tests/support/iam.py"
        )
    negated = base in _NEGATED
    if key not in context:
        # A missing key fails a positive test and passes a negated one (AWS's rule), unless ...IfExists.
        return if_exists or qualifier == "ForAllValues" or negated
    values = [str(v).lower() if isinstance(v, bool) else str(v) for v in _values(context[key])]

    def one(value: str) -> bool:
        matched = any(_OPERATORS[base](value, e) for e in expected_values)
        return not matched if negated else matched

    if qualifier == "ForAllValues":
        return all(one(v) for v in values)
    if qualifier == "ForAnyValue":
        return any(one(v) for v in values)
    if len(values) != 1:
        raise ValueError(f"{key} has several values: test it with ForAllValues or ForAnyValue")
    return one(values[0])


def _values(value: Any) -> list[Any]:
    """A condition's or a context key's values: one scalar (string, number, boolean) or a list of them."""
    return list(value) if isinstance(value, list) else [value]


def condition_holds(condition: Mapping[str, Mapping[str, Any]], context: Context) -> bool:
    return all(
        _condition_test(operator, key, expected, context)
        for operator, tests in condition.items()
        for key, expected in tests.items()
    )


def _statements(document: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    if not document:
        return []
    statements = document["Statement"]
    return [statements] if isinstance(statements, dict) else list(statements)


def _applies(statement: Mapping[str, Any], action: str, resource: str, context: Context) -> bool:
    if "NotAction" in statement or "NotResource" in statement or "NotPrincipal" in statement:
        raise ValueError(f"Not* elements are not evaluated here: {statement.get('Sid')}")
    actions = listed(statement["Action"])
    if not any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in actions):
        return False
    if not any(_like(resource, r) for r in listed(statement.get("Resource", "*"))):
        return False
    return condition_holds(statement.get("Condition", {}), context)


def _names(statement: Mapping[str, Any], principal: str) -> str | None:
    """ "caller" if a resource policy's statement names the caller (or everyone), "account" if it names
    the caller's account (its IAM decides), else None."""
    named = statement.get("Principal")
    if named == "*":
        return "caller"
    arns = listed(named.get("AWS", [])) if isinstance(named, dict) else []
    if "*" in arns or principal in arns:
        return "caller"
    if ACCOUNT_ROOT in arns or ACCOUNT in arns:
        return "account"
    return None


def decide(
    principal: str,
    identity: Mapping[str, Any] | None,
    action: str,
    resource: str,
    resource_policy: Mapping[str, Any] | None = None,
    context: Context | None = None,
    key_policy_required: bool = False,
) -> bool:
    """Whether ``principal`` (an ARN of this account), holding the ``identity`` policy, may make the call."""
    context = {"aws:PrincipalArn": principal, "aws:PrincipalAccount": ACCOUNT, **(context or {})}
    mine = [s for s in _statements(identity) if _applies(s, action, resource, context)]
    theirs = [
        (s, named)
        for s in _statements(resource_policy)
        if (named := _names(s, principal)) and _applies(s, action, resource, context)
    ]
    if any(s["Effect"] == "Deny" for s in mine) or any(s["Effect"] == "Deny" for s, _ in theirs):
        return False
    identity_allows = any(s["Effect"] == "Allow" for s in mine)
    names_caller = any(named == "caller" for s, named in theirs if s["Effect"] == "Allow")
    names_account = any(named == "account" for s, named in theirs if s["Effect"] == "Allow")
    if key_policy_required:
        return names_caller or (names_account and identity_allows)
    return identity_allows or names_caller


ROLES = ("WorkerTaskRole", "SweepTaskRole", "OperatorRole", "AdminRole", "TaskExecutionRole", "SchedulerRole")

SECURE: Mapping[str, str] = {"aws:SecureTransport": "true", "s3:TlsVersion": "1.3"}
"""What every request of the code carries: HTTPS, TLS 1.3 (botocore's default against AWS)."""


@dataclass(frozen=True)
class Permissions:
    """The stack's policies, rendered: identity policies of its roles, key policies, the bucket policy,
    the secret's resource policy and the roles' trust policies."""

    stack: Rendered

    def role_arn(self, role: str) -> str:
        return self.stack.arns[role]

    def resource_policy(self, resource: str) -> tuple[dict[str, Any] | None, bool]:
        """The policy of the resource an ARN names, and whether it is a key policy."""
        for name, key in self.stack.of_type("AWS::KMS::Key").items():
            if resource == self.stack.arns[name]:
                return key["KeyPolicy"], True
        if resource.startswith("arn:aws:kms:"):
            raise ValueError(f"no key of the stack is {resource}")
        for policy in self.stack.of_type("AWS::S3::BucketPolicy").values():
            if resource.split(":::", 1)[-1].split("/", 1)[0] == policy["Bucket"]:
                return policy["PolicyDocument"], False
        if resource.startswith("arn:aws:secretsmanager:"):
            for policy in self.stack.of_type("AWS::SecretsManager::ResourcePolicy").values():
                return policy["ResourcePolicy"], False
        return None, False

    def can(
        self,
        who: str,
        action: str,
        resource: str,
        context: Context | None = None,
        identity: Mapping[str, Any] | None = None,
    ) -> bool:
        """May ``who`` (a role of the stack, or any principal ARN with the given identity policy) make
        this call, over HTTPS with TLS 1.3 unless ``context`` says otherwise?"""
        principal = self.role_arn(who) if who in ROLES else who
        policy = self.stack.policy(who) if who in ROLES else identity
        resource_policy, is_key = self.resource_policy(resource)
        return decide(
            principal, policy, action, resource, resource_policy, {**SECURE, **(context or {})}, is_key
        )

    def can_assume(self, role: str, principal: str, context: Context | None = None) -> bool:
        """May ``principal`` (holding sts:AssumeRole in its own account) assume the stack's ``role``?"""
        trust = self.stack.properties(role)["AssumeRolePolicyDocument"]
        allow_caller = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*"}],
        }
        names = [_names(s, principal) for s in _statements(trust)]
        if "account" in names:  # the trust names the account: its IAM decides, i.e. anyone it allows
            return decide(principal, allow_caller, "sts:AssumeRole", self.role_arn(role), trust, context)
        return decide(principal, None, "sts:AssumeRole", self.role_arn(role), trust, context)


PERMISSIONS = Permissions(STACK)
