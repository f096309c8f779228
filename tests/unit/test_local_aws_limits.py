"""AWS's documented limits, as the local AWS checks them before moto sees a request: each refused one byte
(or one operator, level, record) over, and passed at the limit itself."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from devtools.local_aws.limits import (
    BATCH_GET_MAX_KEYS,
    BATCH_WRITE_MAX_BYTES,
    BATCH_WRITE_MAX_REQUESTS,
    DYNAMODB_VALIDATION,
    EXPRESSION_MAX_BYTES,
    EXPRESSION_MAX_OPERATORS,
    ITEM_MAX_BYTES,
    NESTING_MAX_LEVELS,
    PARTITION_KEY_MAX_BYTES,
    PARTITION_KEY_MAX_CHARS,
    PUT_RECORDS_MAX_BYTES,
    PUT_RECORDS_MAX_RECORDS,
    RECORD_MAX_BYTES,
    S3_KEY_MAX_BYTES,
    SORT_KEY_MAX_BYTES,
    TRANSACT_WRITE_MAX_ACTIONS,
    TRANSACT_WRITE_MAX_BYTES,
    AwsRequest,
    KeySchema,
    LimitExceeded,
    check,
    item_size,
    nesting_depth,
    operator_count,
)

SCHEMAS: dict[str, KeySchema] = {"state": ("pseudoVin", None), "crumbs": ("pseudoVin", "ts")}


def schema_of(table: str) -> KeySchema | None:
    return SCHEMAS.get(table)


def dynamodb(operation: str, payload: dict[str, Any]) -> LimitExceeded | None:
    return check(AwsRequest("dynamodb", operation, json.dumps(payload).encode()), schema_of)


def kinesis(operation: str, payload: dict[str, Any]) -> LimitExceeded | None:
    return check(AwsRequest("kinesis", operation, json.dumps(payload).encode()), schema_of)


def reason(refusal: LimitExceeded | None) -> str | None:
    return None if refusal is None else refusal.reason


def sized_item(size: int, key: str = "v") -> dict[str, Any]:
    """An item of exactly ``size`` bytes by DynamoDB's rules."""
    item = {"pseudoVin": {"S": key}, "blob": {"S": ""}}
    item["blob"]["S"] = "x" * (size - item_size(item))
    assert item_size(item) == size
    return item


def nested(levels: int) -> dict[str, Any]:
    """A value of ``levels`` maps inside each other (0: a string)."""
    value: dict[str, Any] = {"S": "leaf"}
    for _ in range(levels):
        value = {"M": {"a": value}}
    return value


def put_request(item: dict[str, Any]) -> dict[str, Any]:
    return {"PutRequest": {"Item": item}}


@pytest.mark.parametrize(
    "parameter",
    [
        "UpdateExpression",
        "ConditionExpression",
        "FilterExpression",
        "KeyConditionExpression",
        "ProjectionExpression",
    ],
)
def test_an_expression_over_4_kb_is_refused(parameter: str) -> None:
    def with_expression(size: int) -> dict[str, Any]:
        name = "#" + "n" * (size - 1)  # one long name: no operators to trip the other limit
        return {"TableName": "state", "Key": {"pseudoVin": {"S": "v"}}, parameter: name}

    assert dynamodb("UpdateItem", with_expression(EXPRESSION_MAX_BYTES)) is None
    refusal = dynamodb("UpdateItem", with_expression(EXPRESSION_MAX_BYTES + 1))
    assert refusal is not None
    assert (refusal.reason, refusal.code, refusal.status) == ("expression_too_long", DYNAMODB_VALIDATION, 400)
    assert refusal.message.startswith(f"Invalid {parameter}: Expression size has exceeded")


def test_multibyte_characters_count_as_their_utf8_bytes_in_an_expression() -> None:
    expression = "#" + "é" * (EXPRESSION_MAX_BYTES // 2)  # 1 + 4096 bytes
    payload = {"TableName": "state", "Key": {"pseudoVin": {"S": "v"}}, "ConditionExpression": expression}
    assert reason(dynamodb("PutItem", payload)) == "expression_too_long"


@pytest.mark.parametrize(
    ("expression", "update", "operators"),
    [
        ("pseudoVin = :pv AND #ts BETWEEN :from AND :to", False, 3),  # BETWEEN's AND is BETWEEN's
        ("(attribute_not_exists(#s0) OR #s0.#at < :t0)", False, 3),
        ("#a IN (:x, :y, :z)", False, 1),
        ("size(#a) >= :n AND contains(#b, :c)", False, 4),
        ("NOT begins_with(#a, :p) and attribute_type(#b, :t)", False, 4),  # keywords in any case
        ("#a <> :b OR #c <= :d OR #e > :f", False, 5),
        ("SET #a = :x + :y, #b = list_append(#b, :l), #c = if_not_exists(#c, :z) - :w", True, 4),
        ("SET #a = :x REMOVE #b ADD #c :one", True, 0),  # "=" assigns in an update
    ],
)
def test_operators_are_counted_as_dynamodb_documents(expression: str, update: bool, operators: int) -> None:
    assert operator_count(expression, update=update) == operators


@pytest.mark.parametrize("parameter", ["ConditionExpression", "FilterExpression", "KeyConditionExpression"])
def test_more_than_300_operators_in_a_condition_are_refused(parameter: str) -> None:
    comparisons = " AND ".join(f"#a{i} = :v{i}" for i in range(150))  # 150 comparisons + 149 ANDs
    at_limit, over = "NOT " + comparisons, "NOT NOT " + comparisons
    assert (operator_count(at_limit), operator_count(over)) == (
        EXPRESSION_MAX_OPERATORS,
        EXPRESSION_MAX_OPERATORS + 1,
    )
    assert dynamodb("Query", {"TableName": "state", parameter: at_limit}) is None
    assert reason(dynamodb("Query", {"TableName": "state", parameter: over})) == "too_many_operators"


def test_more_than_300_operators_in_an_update_expression_are_refused() -> None:
    def update(operators: int) -> dict[str, Any]:
        sums = " + ".join(f":v{i}" for i in range(operators + 1))
        return {
            "TableName": "state",
            "Key": {"pseudoVin": {"S": "v"}},
            "UpdateExpression": f"SET #a = {sums}",
        }

    assert dynamodb("UpdateItem", update(EXPRESSION_MAX_OPERATORS)) is None
    assert reason(dynamodb("UpdateItem", update(EXPRESSION_MAX_OPERATORS + 1))) == "too_many_operators"


def test_a_vehicle_state_style_condition_reaches_the_operator_limit_at_75_signals() -> None:
    def condition(signals: int) -> str:
        guards = [f"(attribute_not_exists(#s{i}) OR #s{i}[1] < :t{i})" for i in range(signals)]
        return " AND ".join(["(attribute_not_exists(#ts) OR #ts < :ts)", *guards])

    assert operator_count(condition(74)) == 299
    assert operator_count(condition(75)) == 303


def test_nesting_is_measured_in_map_and_list_levels_without_recursion() -> None:
    assert [nesting_depth(nested(n)) for n in (0, 1, 2)] == [0, 1, 2]
    assert nesting_depth({"L": [{"S": "a"}, {"M": {"b": {"L": []}}}]}) == 3
    assert nesting_depth(nested(100_000)) == 100_000  # far past the recursion limit


@pytest.mark.parametrize(
    ("operation", "payload_of"),
    [
        ("PutItem", lambda v: {"TableName": "state", "Item": {"pseudoVin": {"S": "v"}, "deep": v}}),
        (
            "UpdateItem",
            lambda v: {
                "TableName": "state",
                "Key": {"pseudoVin": {"S": "v"}},
                "UpdateExpression": "SET #d = :d",
                "ExpressionAttributeValues": {":d": v},
            },
        ),
        (
            "BatchWriteItem",
            lambda v: {"RequestItems": {"state": [put_request({"pseudoVin": {"S": "v"}, "deep": v})]}},
        ),
        (
            "TransactWriteItems",
            lambda v: {
                "TransactItems": [{"Put": {"TableName": "state", "Item": {"pseudoVin": {"S": "v"}, "d": v}}}]
            },
        ),
    ],
)
def test_a_value_nested_deeper_than_32_levels_is_refused(operation: str, payload_of: Any) -> None:
    assert dynamodb(operation, payload_of(nested(NESTING_MAX_LEVELS))) is None
    assert reason(dynamodb(operation, payload_of(nested(NESTING_MAX_LEVELS + 1)))) == "nesting_too_deep"


def test_a_body_too_deep_to_parse_is_refused_as_too_deeply_nested() -> None:
    body = (
        '{"TableName": "state", "Item": {"d": '
        + '{"M": {"a": ' * 50_000
        + '{"S": "x"}'
        + "}}" * 50_000
        + "}}"
    )
    assert reason(check(AwsRequest("dynamodb", "PutItem", body.encode()), schema_of)) == "nesting_too_deep"


@pytest.mark.parametrize(
    ("operation", "payload_of"),
    [
        ("PutItem", lambda item: {"TableName": "state", "Item": item}),
        ("BatchWriteItem", lambda item: {"RequestItems": {"state": [put_request(item)]}}),
        (
            "TransactWriteItems",
            lambda item: {"TransactItems": [{"Put": {"TableName": "state", "Item": item}}]},
        ),
    ],
)
def test_an_item_over_400_kb_is_refused(operation: str, payload_of: Any) -> None:
    assert dynamodb(operation, payload_of(sized_item(ITEM_MAX_BYTES))) is None
    refusal = dynamodb(operation, payload_of(sized_item(ITEM_MAX_BYTES + 1)))
    assert reason(refusal) == "item_too_large"
    assert refusal is not None and refusal.message == "Item size has exceeded the maximum allowed size"


def test_a_batch_write_of_more_than_25_requests_is_refused() -> None:
    def batch(count: int) -> dict[str, Any]:
        return {"RequestItems": {"state": [put_request({"pseudoVin": {"S": str(i)}}) for i in range(count)]}}

    assert dynamodb("BatchWriteItem", batch(BATCH_WRITE_MAX_REQUESTS)) is None
    assert reason(dynamodb("BatchWriteItem", batch(BATCH_WRITE_MAX_REQUESTS + 1))) == "batch_write_too_many"


def test_a_batch_write_over_16_mb_is_refused() -> None:
    """Only a body can pass 16 MB with 25 items under 400 KB: a control character is 1 byte to DynamoDB and
    6 in JSON (``\\u0001``)."""

    def batch(body_size: int) -> bytes:
        def of(blobs: list[str]) -> bytes:
            items = [put_request({"pseudoVin": {"S": str(i)}, "b": {"S": b}}) for i, b in enumerate(blobs)]
            return json.dumps({"RequestItems": {"state": items}}).encode()

        extra = body_size - len(of([""] * BATCH_WRITE_MAX_REQUESTS))
        shares = [extra // BATCH_WRITE_MAX_REQUESTS] * BATCH_WRITE_MAX_REQUESTS
        shares[0] += extra % BATCH_WRITE_MAX_REQUESTS
        body = of(["\x01" * (share // 6) + "x" * (share % 6) for share in shares])
        assert len(body) == body_size
        return body

    at_limit, over = batch(BATCH_WRITE_MAX_BYTES), batch(BATCH_WRITE_MAX_BYTES + 1)
    refusals = [check(AwsRequest("dynamodb", "BatchWriteItem", body), schema_of) for body in (at_limit, over)]
    assert [reason(r) for r in refusals] == [None, "batch_write_too_large"]


def test_a_batch_get_of_more_than_100_keys_is_refused() -> None:
    def batch(count: int) -> dict[str, Any]:
        return {"RequestItems": {"state": {"Keys": [{"pseudoVin": {"S": str(i)}} for i in range(count)]}}}

    assert dynamodb("BatchGetItem", batch(BATCH_GET_MAX_KEYS)) is None
    assert reason(dynamodb("BatchGetItem", batch(BATCH_GET_MAX_KEYS + 1))) == "batch_get_too_many"


def test_a_transaction_of_more_than_100_actions_or_4_mb_is_refused() -> None:
    def transaction(items: list[dict[str, Any]]) -> dict[str, Any]:
        return {"TransactItems": [{"Put": {"TableName": "state", "Item": item}} for item in items]}

    small = [{"pseudoVin": {"S": str(i)}} for i in range(TRANSACT_WRITE_MAX_ACTIONS + 1)]
    assert dynamodb("TransactWriteItems", transaction(small[:-1])) is None
    assert reason(dynamodb("TransactWriteItems", transaction(small))) == "transaction_too_many"

    per_item = TRANSACT_WRITE_MAX_BYTES // 16  # 256 KB each: under the item limit
    at_limit = [sized_item(per_item, key=f"{i:02}") for i in range(16)]
    assert sum(map(item_size, at_limit)) == TRANSACT_WRITE_MAX_BYTES
    assert dynamodb("TransactWriteItems", transaction(at_limit)) is None
    at_limit[0] = sized_item(per_item + 1, key="00")
    assert reason(dynamodb("TransactWriteItems", transaction(at_limit))) == "transaction_too_large"


@pytest.mark.parametrize(
    ("table", "attribute", "limit", "expected"),
    [
        ("state", "pseudoVin", PARTITION_KEY_MAX_BYTES, "partition_key_too_long"),
        ("crumbs", "pseudoVin", PARTITION_KEY_MAX_BYTES, "partition_key_too_long"),
        ("crumbs", "ts", SORT_KEY_MAX_BYTES, "sort_key_too_long"),
    ],
)
def test_key_values_over_their_limits_are_refused(
    table: str, attribute: str, limit: int, expected: str
) -> None:
    def key(size: int) -> dict[str, Any]:
        key = {"pseudoVin": {"S": "v"}, "ts": {"S": "t"}} if table == "crumbs" else {"pseudoVin": {"S": "v"}}
        key[attribute] = {"S": "k" * size}
        return key

    for operation, payload_of in (
        ("PutItem", lambda k: {"TableName": table, "Item": {**k, "other": {"S": "x"}}}),
        ("GetItem", lambda k: {"TableName": table, "Key": k}),
        ("UpdateItem", lambda k: {"TableName": table, "Key": k, "UpdateExpression": "SET #a = :a"}),
        ("DeleteItem", lambda k: {"TableName": table, "Key": k}),
        ("BatchWriteItem", lambda k: {"RequestItems": {table: [{"DeleteRequest": {"Key": k}}]}}),
        ("BatchGetItem", lambda k: {"RequestItems": {table: {"Keys": [k]}}}),
    ):
        assert dynamodb(operation, payload_of(key(limit))) is None, operation
        assert reason(dynamodb(operation, payload_of(key(limit + 1)))) == expected, operation


def test_keys_of_unknown_tables_are_left_to_moto() -> None:
    assert dynamodb("GetItem", {"TableName": "missing", "Key": {"pseudoVin": {"S": "k" * 5000}}}) is None


def record(data_size: int, key: str = "k") -> dict[str, Any]:
    return {"Data": base64.b64encode(b"d" * data_size).decode(), "PartitionKey": key}


def test_put_records_of_more_than_500_records_is_refused() -> None:
    records = [record(1) for _ in range(PUT_RECORDS_MAX_RECORDS + 1)]
    assert kinesis("PutRecords", {"StreamName": "s", "Records": records[:-1]}) is None
    refusal = kinesis("PutRecords", {"StreamName": "s", "Records": records})
    assert (reason(refusal), refusal and refusal.code) == ("too_many_records", "ValidationException")


def test_put_records_over_5_mb_in_all_is_refused() -> None:
    full = [record(RECORD_MAX_BYTES - 1) for _ in range(PUT_RECORDS_MAX_BYTES // RECORD_MAX_BYTES)]  # 5 MiB
    assert kinesis("PutRecords", {"StreamName": "s", "Records": full}) is None
    refusal = kinesis("PutRecords", {"StreamName": "s", "Records": [*full, record(0)]})
    assert (reason(refusal), refusal and refusal.code) == ("request_too_large", "InvalidArgumentException")


@pytest.mark.parametrize("operation", ["PutRecords", "PutRecord"])
def test_a_record_over_1_mb_with_its_partition_key_is_refused(operation: str) -> None:
    def request(one: dict[str, Any]) -> dict[str, Any]:
        return (
            {"StreamName": "s", "Records": [one]} if operation == "PutRecords" else {"StreamName": "s", **one}
        )

    assert kinesis(operation, request(record(RECORD_MAX_BYTES - 3, key="abc"))) is None
    over = kinesis(operation, request(record(RECORD_MAX_BYTES - 2, key="abc")))
    assert (reason(over), over and over.code) == ("record_too_large", "InvalidArgumentException")
    data_over = kinesis(operation, request(record(RECORD_MAX_BYTES + 1)))
    assert (reason(data_over), data_over and data_over.code) == ("record_too_large", "ValidationException")


@pytest.mark.parametrize("operation", ["PutRecords", "PutRecord"])
def test_a_partition_key_over_256_characters_is_refused(operation: str) -> None:
    def request(key: str) -> dict[str, Any]:
        one = record(1, key=key)
        return (
            {"StreamName": "s", "Records": [one]} if operation == "PutRecords" else {"StreamName": "s", **one}
        )

    assert kinesis(operation, request("é" * PARTITION_KEY_MAX_CHARS)) is None  # characters, not bytes
    refusal = kinesis(operation, request("k" * (PARTITION_KEY_MAX_CHARS + 1)))
    assert (reason(refusal), refusal and refusal.code) == ("partition_key_too_long", "ValidationException")


def test_an_s3_key_over_1024_bytes_is_refused_when_an_object_is_written() -> None:
    def put(key: str, method: str = "PUT") -> LimitExceeded | None:
        path = "/bucket/" + key
        return check(AwsRequest("s3", "PutObject", b"", method, path.encode().decode("latin-1")), schema_of)

    assert put("k" * S3_KEY_MAX_BYTES) is None
    assert put("dir/" + "é" * ((S3_KEY_MAX_BYTES - 4) // 2)) is None  # 1024 bytes in UTF-8
    refusal = put("dir/" + "é" * ((S3_KEY_MAX_BYTES - 4) // 2) + "k")
    assert refusal == LimitExceeded("s3", "key_too_long", "KeyTooLongError", "Your key is too long", 400)
    assert reason(put("k" * (S3_KEY_MAX_BYTES + 1), method="POST")) == "key_too_long"  # multipart upload
    assert put("k" * (S3_KEY_MAX_BYTES + 1), method="GET") is None  # not a write of ours
