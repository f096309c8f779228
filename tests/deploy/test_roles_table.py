"""docs/deploying.md's table of what each role can and cannot do, tried against the rendered template.

Each cell is a list of ``actions on a resource`` separated by ``;``; the resource is one of the terms of
``TERMS`` below (its ARN and the request's condition keys). Every call under *can* must be allowed and
every call under *cannot* refused, by all the stack's policies together (``tests.support.iam``); and every
action a role's own policy grants must be listed under *can*, so the table cannot leave a grant out.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.test_least_privilege import (
    ACCOUNT_ADMIN,
    BUCKET,
    DATA_KEY,
    DEAD_LETTER_CONTEXT,
    EVERYTHING,
    SECRET,
    STREAM,
    VIN_CONTEXT,
    VIN_KEY,
    WRITE_ONCE,
    s3_object,
    via,
)
from tests.support.cfn import ACCOUNT, REGION, STACK
from tests.support.iam import PERMISSIONS, policy_actions

GUIDE = Path(__file__).parent.parent.parent / "docs" / "deploying.md"
HEADING = "### What each role can and cannot do"

WHO = {
    "worker task": "WorkerTaskRole",
    "sweep task": "SweepTaskRole",
    "operator (status, inspect, redrive)": "OperatorRole",
    "admin (resolve)": "AdminRole",
    "task execution": "TaskExecutionRole",
    "scheduler": "SchedulerRole",
    "any principal": ACCOUNT_ADMIN,
}


def table_arn(logical_id: str, index: str = "") -> str:
    return STACK.arns[logical_id] + (f"/index/{index}" if index else "")


def task_definition(logical_id: str) -> str:
    """A task definition's ARN as the template renders its Ref."""
    return f"arn:aws:ecs:{REGION}:{ACCOUNT}:{logical_id}"


IN_THE_CLUSTER = {"ecs:cluster": STACK.arns["Cluster"]}
TO_ECS = {"iam:PassedToService": "ecs-tasks.amazonaws.com"}
OBJECT = "2025/01/01/x.json.gz"

CONSUMER = STACK.outputs["StreamConsumerArn"]

TERMS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "stream": [(STREAM, {})],
    "the stack's consumer": [(CONSUMER, {})],
    "another consumer": [(f"{STREAM}/consumer/analytics:1700000001", {})],
    "lease table": [(table_arn("KclLeaseTable"), {})],
    "KCL coordinator and worker tables": [
        (table_arn("KclCoordinatorStateTable"), {}),
        (table_arn("KclWorkerMetricStatsTable"), {}),
    ],
    "lease owner index": [(table_arn("KclLeaseTable", "LeaseOwnerToLeaseKeyIndex"), {})],
    "KCL metrics namespace": [("*", {"cloudwatch:namespace": STACK.parameters["ApplicationName"]})],
    "vehicle-state": [(table_arn("VehicleStateTable"), {})],
    "trip-state": [(table_arn("TripStateTable"), {})],
    "open-trips-by-idle": [(table_arn("TripStateTable", "open-trips-by-idle"), {})],
    "trips-index": [(table_arn("TripsIndexTable"), {})],
    "live-breadcrumbs": [(table_arn("LiveBreadcrumbsTable"), {})],
    "vin-mapping": [(table_arn("VinMappingTable"), {})],
    "new `trips/`": [(s3_object(f"trips/{OBJECT}"), WRITE_ONCE)],
    "new `trip-segments/`": [(s3_object(f"trip-segments/{OBJECT}"), WRITE_ONCE)],
    "new `trips-provisional/`": [(s3_object(f"trips-provisional/{OBJECT}"), WRITE_ONCE)],
    "`trips-provisional/`": [(s3_object(f"trips-provisional/{OBJECT}"), {})],
    "new `dead-letter/`": [(s3_object(f"dead-letter/{OBJECT}"), WRITE_ONCE)],
    "overwrite `trips/`": [(s3_object(f"trips/{OBJECT}"), {})],
    "overwrite `dead-letter/`": [(s3_object(f"dead-letter/{OBJECT}"), {})],
    "new `trips/` over TLS 1.1": [(s3_object(f"trips/{OBJECT}"), {**WRITE_ONCE, "s3:TlsVersion": "1.1"})],
    "new `trips/` under SSE-S3": [
        (s3_object(f"trips/{OBJECT}"), {**WRITE_ONCE, "s3:x-amz-server-side-encryption": "AES256"})
    ],
    "`trips/`": [(s3_object(f"trips/{OBJECT}"), {})],
    "`trip-segments/`": [(s3_object(f"trip-segments/{OBJECT}"), {})],
    "`dead-letter/`": [(s3_object(f"dead-letter/{OBJECT}"), {})],
    "bucket, `dead-letter/` prefix": [(f"arn:aws:s3:::{BUCKET}", {"s3:prefix": "dead-letter/"})],
    "bucket, `trips/` prefix": [(f"arn:aws:s3:::{BUCKET}", {"s3:prefix": "trips/"})],
    "VIN key": [(VIN_KEY, {})],
    "VIN key (VIN)": [(VIN_KEY, VIN_CONTEXT)],
    "VIN key (dead letter)": [(VIN_KEY, DEAD_LETTER_CONTEXT)],
    "data key through DynamoDB": [(DATA_KEY, via("dynamodb"))],
    "data key through S3": [(DATA_KEY, via("s3"))],
    "data key through Kinesis": [(DATA_KEY, via("kinesis"))],
    "pseudonym secret": [(SECRET, {})],
    "any resource": [("*", {})],
    "image repository": [
        (f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/{STACK.parameters['ImageRepositoryName']}", {})
    ],
    "log group": [(f"{STACK.arns['LogGroup'].removesuffix(':*')}:log-stream:worker/worker/abc", {})],
    "sweep task definition in the cluster": [(task_definition("SweepTaskDefinition"), IN_THE_CLUSTER)],
    "worker task definition in the cluster": [(task_definition("WorkerTaskDefinition"), IN_THE_CLUSTER)],
    "sweep task role to ECS": [(STACK.arns["SweepTaskRole"], TO_ECS)],
    "task execution role to ECS": [(STACK.arns["TaskExecutionRole"], TO_ECS)],
    "worker task role to ECS": [(STACK.arns["WorkerTaskRole"], TO_ECS)],
    "sweep dead-letter queue": [(STACK.arns["SweepDeadLetterQueue"], {})],
}
"""The resources the table names, each as the calls it stands for: (ARN, the request's condition keys)."""


def parse_table(text: str) -> dict[str, dict[str, list[tuple[str, str]]]]:
    """Role -> {"can": [(action, term), ...], "cannot": [...]} from the guide's table."""
    section = text[text.index(HEADING) :]
    rows = [line for line in section.splitlines()[1:] if line.startswith("| ")]
    header, *body = rows
    assert [c.strip() for c in header.strip("|").split("|")] == ["role", "can", "cannot"]
    table = {}
    for row in body:
        role, can, cannot = (c.strip() for c in row.strip("|").split("|"))
        table[role] = {"can": parse_cell(can), "cannot": parse_cell(cannot)}
    return table


def parse_cell(cell: str) -> list[tuple[str, str]]:
    calls = []
    for item in cell.split("; "):
        actions, separator, term = item.partition(" on ")
        named = re.findall(r"`([a-z0-9-]+:[A-Za-z]+)`", actions)
        assert separator and named and term, f"not 'ACTIONS on RESOURCE': {item!r}"
        calls += [(action, term) for action in named]
    return calls


TABLE = parse_table(GUIDE.read_text())


def calls(role: str, column: str) -> list[tuple[str, str]]:
    return TABLE[role][column]


def test_the_table_names_every_role_of_the_stack() -> None:
    assert set(TABLE) == set(WHO)
    roles = set(STACK.of_type("AWS::IAM::Role"))
    assert roles == {who for who in WHO.values() if who != ACCOUNT_ADMIN}


@pytest.mark.parametrize("role", sorted(WHO))
@pytest.mark.parametrize("column", ["can", "cannot"])
def test_each_call_of_the_table_is_allowed_or_refused_as_it_says(role: str, column: str) -> None:
    who = WHO[role]
    wrong = []
    for action, term in calls(role, column):
        assert term in TERMS, f"{role}: unknown resource {term!r}: add it to TERMS"
        for resource, context in TERMS[term]:
            if PERMISSIONS.can(who, action, resource, context, identity=EVERYTHING) != (column == "can"):
                wrong.append(f"{action} on {term}")
    assert not wrong, f"{role} {'cannot' if column == 'can' else 'can'}: {wrong}"


@pytest.mark.parametrize("role", sorted(r for r, who in WHO.items() if who != ACCOUNT_ADMIN))
def test_every_action_a_role_is_granted_is_in_its_can_column(role: str) -> None:
    granted = policy_actions(STACK.policy(WHO[role]))
    listed = {action for action, _ in calls(role, "can")}
    assert granted - listed == set(), f"{role}: granted but not in the table"
