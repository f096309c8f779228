"""The documented AWS limits our writes could reach, checked before a request reaches moto.

moto accepts much of what AWS refuses (4 KB expressions, 300 operators, 33 levels of nesting, oversize
items and batches), so a suite green against moto alone can still fail in production. ``check`` turns a
request into the refusal AWS would send, with AWS's error code and HTTP status, or None. Everything here is
pure: the one thing it needs from the backend, a table's key schema, is passed in as a function.

What each limit measures where the documentation leaves room:

- nesting: the number of map/list levels of a value; a top-level attribute that is a map is level 1, so a
  value with 32 nested containers passes and 33 is refused;
- operators: a token count, as DynamoDB's quota page describes it (comparators, AND/OR/NOT, BETWEEN, IN
  and every function call; ``+``/``-`` and functions in an UpdateExpression; BETWEEN's own AND is part of
  BETWEEN), not a parse: a malformed expression is moto's to refuse;
- TransactWriteItems' 4 MB: the items as the request carries them (a Put's item; an Update's key and
  values; a Delete's or ConditionCheck's key), since an update's resulting item is unknown until it runs;
- BatchWriteItem's 16 MB: the request body, the "total request size" of the API reference;
- S3 keys: only on requests that create an object (PUT, POST), the ones our writes make.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

# DynamoDB developer guide, "Service, account, and table quotas in Amazon DynamoDB".
EXPRESSION_MAX_BYTES = 4096
"""Expression parameters: "The maximum length of any expression string is 4 KB"."""
EXPRESSION_MAX_OPERATORS = 300
"""Expression parameters: "The maximum number of operators or functions allowed ... is 300"."""
NESTING_MAX_LEVELS = 32
"""Attributes: "DynamoDB supports nested attributes up to 32 levels deep"."""
ITEM_MAX_BYTES = 400 * 1024
"""Items: "The maximum item size in DynamoDB is 400 KB" (attribute names and values, by the size rules)."""
PARTITION_KEY_MAX_BYTES = 2048
"""Partition keys and sort keys: "The maximum length of a partition key value is 2048 bytes"."""
SORT_KEY_MAX_BYTES = 1024
"""Partition keys and sort keys: "The maximum length of a sort key value is 1024 bytes"."""
# DynamoDB API reference, "BatchWriteItem", "BatchGetItem", "TransactWriteItems".
BATCH_WRITE_MAX_REQUESTS = 25
BATCH_WRITE_MAX_BYTES = 16 * 1024 * 1024
BATCH_GET_MAX_KEYS = 100
TRANSACT_WRITE_MAX_ACTIONS = 100
TRANSACT_WRITE_MAX_BYTES = 4 * 1024 * 1024
# Kinesis Data Streams API reference, "PutRecords" (and "PutRecord" for one record).
PUT_RECORDS_MAX_RECORDS = 500
PUT_RECORDS_MAX_BYTES = 5 * 1024 * 1024
"""The whole request, data blobs and partition keys."""
RECORD_MAX_BYTES = 1024 * 1024
"""One record: its data blob plus its partition key."""
PARTITION_KEY_MAX_CHARS = 256
# Amazon S3 user guide, "Naming Amazon S3 objects".
S3_KEY_MAX_BYTES = 1024
"""The name of an object key: "up to 1,024 bytes long" in UTF-8."""

DYNAMODB_VALIDATION = "com.amazon.coral.validate#ValidationException"
"""The ``__type`` DynamoDB sends for a validation error; botocore keeps what follows the ``#``."""

KeySchema = tuple[str, str | None]
"""A table's partition key attribute and its sort key attribute, if any."""
KeySchemaOf = Callable[[str], KeySchema | None]
"""Table name -> its key schema, or None for a table that does not exist (moto then answers for it)."""


@dataclass(frozen=True, slots=True)
class LimitExceeded:
    """A request AWS refuses: ``reason`` names the limit, ``code`` and ``status`` are what AWS answers."""

    service: str
    reason: str
    code: str
    message: str
    status: int = 400


@dataclass(frozen=True, slots=True)
class AwsRequest:
    """What a check reads: the signing service, the operation, the body, and (S3) method and path."""

    service: str
    operation: str
    body: bytes
    method: str = ""
    path: str = ""
    """The URL path as bytes decoded as latin-1 (WSGI's ``PATH_INFO``): ``/bucket/key``."""


def check(request: AwsRequest, key_schema: KeySchemaOf) -> LimitExceeded | None:
    """The refusal AWS would answer this request with, or None if no checked limit is exceeded."""
    if request.service == "dynamodb":
        try:
            payload = _json(request.body)
        except RecursionError:  # nested far past 32 levels: too deep for the parser, let alone for DynamoDB
            return _nesting_too_deep()
        return (
            None if payload is None else check_dynamodb(request.operation, payload, request.body, key_schema)
        )
    if request.service == "kinesis":
        payload = _json(request.body)  # the KCL runs with CBOR off; anything else is not ours to judge
        return None if payload is None else check_kinesis(request.operation, payload)
    if request.service == "s3":
        return check_s3(request.method, request.path)
    return None


def _json(body: bytes) -> dict[str, Any] | None:
    try:
        payload = json.loads(body or b"{}")
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


# --- DynamoDB -------------------------------------------------------------------------------------------


def _dynamodb(reason: str, message: str) -> LimitExceeded:
    return LimitExceeded("dynamodb", reason, DYNAMODB_VALIDATION, message)


def attribute_size(value: dict[str, Any]) -> int:
    """Bytes of one DynamoDB attribute value (in its JSON wire form) by DynamoDB's item-size rules.

    Binary values may be base64 text (the wire form) or bytes (how moto holds nested ones)."""
    size = 0
    stack = [value]
    while stack:  # iterative: a value nested deeper than Python's recursion limit is still measured
        ((kind, raw),) = stack.pop().items()
        if kind == "M":
            size += 3 + sum(len(name.encode()) + 1 for name in raw)
            stack.extend(raw.values())
        elif kind == "L":
            size += 3 + len(raw)
            stack.extend(raw)
        elif kind in ("SS", "NS", "BS"):
            size += sum(_scalar_size(kind[0], member) for member in raw)
        else:
            size += _scalar_size(kind, raw)
    return size


def _scalar_size(kind: str, raw: Any) -> int:
    if kind == "S":
        return len(raw.encode())
    if kind == "N":
        digits = raw.lstrip("-").replace(".", "").split("e")[0].split("E")[0].strip("0") or "0"
        return (len(digits) + 1) // 2 + 1
    if kind == "B":
        return len(raw) if isinstance(raw, bytes) else len(base64.b64decode(raw))
    if kind in ("BOOL", "NULL"):
        return 1
    raise ValueError(f"unknown attribute type {kind}")


def item_size(item: dict[str, Any]) -> int:
    """Bytes of a whole item: every attribute's name and value."""
    return sum(len(name.encode()) + attribute_size(value) for name, value in item.items())


def nesting_depth(value: dict[str, Any]) -> int:
    """Map/list levels of one attribute value: 0 for a scalar, 1 for a map of scalars."""
    deepest = 0
    stack: list[tuple[dict[str, Any], int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        ((kind, raw),) = node.items()
        children = raw.values() if kind == "M" else raw if kind == "L" else ()
        if kind in ("M", "L"):
            deepest = max(deepest, depth + 1)
        stack.extend((child, depth + 1) for child in children)
    return deepest


_EXPRESSIONS = (
    "UpdateExpression",
    "ConditionExpression",
    "FilterExpression",
    "KeyConditionExpression",
    "ProjectionExpression",
)
_TOKEN = re.compile(r"\s*(?:(<>|<=|>=|=|<|>)|([#:]?[A-Za-z0-9_]+)|(\S))")
_LOGICAL = frozenset({"AND", "OR", "NOT", "IN"})
_KEYWORDS = _LOGICAL | {"BETWEEN"}


def operator_count(expression: str, update: bool = False) -> int:
    """Operators and functions in an expression, counted from tokens.

    A condition counts comparators, AND/OR/NOT, BETWEEN, IN and function calls; an update expression counts
    ``+``, ``-`` and function calls (its ``=`` assigns, it does not compare)."""
    tokens = [(cmp, word, other) for cmp, word, other in _TOKEN.findall(expression)]
    count = 0
    open_betweens = 0
    for position, (cmp, word, other) in enumerate(tokens):
        following = tokens[position + 1][2] if position + 1 < len(tokens) else ""
        keyword = word.upper()
        if word and following == "(" and keyword not in _KEYWORDS and word[0] not in "#:":
            count += 1  # a function call: attribute_exists(...), size(...), if_not_exists(...)
        elif update:
            count += other in ("+", "-")
        elif cmp:
            count += 1
        elif keyword == "BETWEEN":
            count += 1
            open_betweens += 1
        elif keyword == "AND" and open_betweens:
            open_betweens -= 1  # "x BETWEEN a AND b" is one operator
        elif keyword in _LOGICAL:
            count += 1
    return count


def _expressions(payload: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(parameter, expression) of a request, its transaction actions included."""
    actions = [payload]
    for action in payload.get("TransactItems", ()):
        actions.extend(body for body in action.values() if isinstance(body, dict))
    for body in actions:
        for name in _EXPRESSIONS:
            if isinstance(body.get(name), str):
                yield name, body[name]


def check_expressions(payload: dict[str, Any]) -> LimitExceeded | None:
    for name, expression in _expressions(payload):
        size = len(expression.encode())
        if size > EXPRESSION_MAX_BYTES:
            return _dynamodb(
                "expression_too_long",
                f"Invalid {name}: Expression size has exceeded the maximum allowed size; "
                f"expression size: {size}, limit: {EXPRESSION_MAX_BYTES}",
            )
        if name == "ProjectionExpression":
            continue
        operators = operator_count(expression, update=name == "UpdateExpression")
        if operators > EXPRESSION_MAX_OPERATORS:
            return _dynamodb(
                "too_many_operators",
                f"Invalid {name}: The expression contains too many operators; "
                f"operator count: {operators}, limit: {EXPRESSION_MAX_OPERATORS}",
            )
    return None


def _values(payload: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every attribute value a request carries: items, keys and expression attribute values."""
    bodies = [payload]
    for action in payload.get("TransactItems", ()):
        bodies.extend(body for body in action.values() if isinstance(body, dict))
    for writes in payload.get("RequestItems", {}).values():
        if isinstance(writes, list):  # BatchWriteItem
            for write in writes:
                bodies.extend(body for body in write.values() if isinstance(body, dict))
        elif isinstance(writes, dict):  # BatchGetItem
            for key in writes.get("Keys", ()):
                yield from key.values()
    for body in bodies:
        for field in ("Item", "Key", "ExpressionAttributeValues"):
            yield from body.get(field, {}).values()


def _nesting_too_deep() -> LimitExceeded:
    return _dynamodb(
        "nesting_too_deep",
        "One or more parameter values were invalid: Nesting Levels have exceeded supported limits",
    )


def check_nesting(values: Iterable[dict[str, Any]]) -> LimitExceeded | None:
    if any(nesting_depth(value) > NESTING_MAX_LEVELS for value in values):
        return _nesting_too_deep()
    return None


def check_item_size(item: dict[str, Any], update: bool = False) -> LimitExceeded | None:
    """An item over 400 KB; ``update`` words it as DynamoDB does for the item an UpdateItem would leave."""
    if item_size(item) <= ITEM_MAX_BYTES:
        return None
    what = "Item size to update" if update else "Item size"
    return _dynamodb("item_too_large", f"{what} has exceeded the maximum allowed size")


def check_key(table: str, key: dict[str, Any], key_schema: KeySchemaOf) -> LimitExceeded | None:
    """Partition and sort key values of an item or key over their limits."""
    schema = key_schema(table)
    if schema is None:
        return None
    partition, sort = schema
    if partition in key and attribute_size(key[partition]) > PARTITION_KEY_MAX_BYTES:
        return _dynamodb(
            "partition_key_too_long",
            "One or more parameter values were invalid: Size of hashkey has exceeded the maximum size "
            f"limit of {PARTITION_KEY_MAX_BYTES} bytes",
        )
    if sort is not None and sort in key and attribute_size(key[sort]) > SORT_KEY_MAX_BYTES:
        return _dynamodb(
            "sort_key_too_long",
            "One or more parameter values were invalid: Aggregated size of all range keys has exceeded "
            f"the size limit of {SORT_KEY_MAX_BYTES} bytes",
        )
    return None


def _written(payload: dict[str, Any], operation: str) -> Iterator[tuple[str, dict[str, Any], bool]]:
    """(table, item or key, whether it is a whole item) of everything a request names by key."""
    if operation == "PutItem":
        yield payload.get("TableName", ""), payload.get("Item", {}), True
    elif "Key" in payload:
        yield payload.get("TableName", ""), payload["Key"], False
    for table, writes in payload.get("RequestItems", {}).items():
        if isinstance(writes, list):
            for write in writes:
                if "PutRequest" in write:
                    yield table, write["PutRequest"].get("Item", {}), True
                elif "DeleteRequest" in write:
                    yield table, write["DeleteRequest"].get("Key", {}), False
        elif isinstance(writes, dict):
            for key in writes.get("Keys", ()):
                yield table, key, False
    for action in payload.get("TransactItems", ()):
        for kind, body in action.items():
            if kind == "Put":
                yield body.get("TableName", ""), body.get("Item", {}), True
            elif isinstance(body, dict) and "Key" in body:
                yield body.get("TableName", ""), body["Key"], False


def check_batches(operation: str, payload: dict[str, Any], body: bytes) -> LimitExceeded | None:
    if operation == "BatchWriteItem":
        writes = sum(len(w) for w in payload.get("RequestItems", {}).values() if isinstance(w, list))
        if writes > BATCH_WRITE_MAX_REQUESTS:
            return _dynamodb(
                "batch_write_too_many",
                "1 validation error detected: Value at 'requestItems' failed to satisfy constraint: "
                f"Map value must satisfy constraint: [Member must have length less than or equal to "
                f"{BATCH_WRITE_MAX_REQUESTS}]",
            )
        if len(body) > BATCH_WRITE_MAX_BYTES:
            return _dynamodb(
                "batch_write_too_large", f"Request size {len(body)} exceeds {BATCH_WRITE_MAX_BYTES} bytes"
            )
    if operation == "BatchGetItem":
        keys = sum(len(r.get("Keys", ())) for r in payload.get("RequestItems", {}).values())
        if keys > BATCH_GET_MAX_KEYS:
            return _dynamodb("batch_get_too_many", "Too many items requested for the BatchGetItem call")
    if operation == "TransactWriteItems":
        actions = payload.get("TransactItems", [])
        if len(actions) > TRANSACT_WRITE_MAX_ACTIONS:
            return _dynamodb(
                "transaction_too_many",
                "1 validation error detected: Value at 'transactItems' failed to satisfy constraint: "
                f"Member must have length less than or equal to {TRANSACT_WRITE_MAX_ACTIONS}",
            )
        size = sum(
            item_size(body.get("Item", {}))
            + item_size(body.get("Key", {}))
            + sum(attribute_size(v) for v in body.get("ExpressionAttributeValues", {}).values())
            for action in actions
            for body in action.values()
            if isinstance(body, dict)
        )
        if size > TRANSACT_WRITE_MAX_BYTES:
            return _dynamodb(
                "transaction_too_large",
                f"Transaction request cannot be larger than 4 MB; aggregate item size: {size}",
            )
    return None


def check_dynamodb(
    operation: str, payload: dict[str, Any], body: bytes, key_schema: KeySchemaOf
) -> LimitExceeded | None:
    """DynamoDB's limits on one request, cheapest first; nesting before sizes, whose walk it bounds."""
    refusal = check_batches(operation, payload, body) or check_expressions(payload)
    if refusal is None:
        refusal = check_nesting(_values(payload))
    for table, item, whole in _written(payload, operation) if refusal is None else ():
        refusal = (check_item_size(item) if whole else None) or check_key(table, item, key_schema)
        if refusal is not None:
            break
    return refusal


# --- Kinesis --------------------------------------------------------------------------------------------


def _kinesis(code: str, reason: str, message: str) -> LimitExceeded:
    return LimitExceeded("kinesis", reason, code, message)


def check_kinesis(operation: str, payload: dict[str, Any]) -> LimitExceeded | None:
    """PutRecords/PutRecord: model constraints answer ValidationException, the size rules
    InvalidArgumentException, as Kinesis does."""
    if operation == "PutRecords":
        records = payload.get("Records", [])
        if len(records) > PUT_RECORDS_MAX_RECORDS:
            return _kinesis(
                "ValidationException",
                "too_many_records",
                "1 validation error detected: Value at 'records' failed to satisfy constraint: "
                f"Member must have length less than or equal to {PUT_RECORDS_MAX_RECORDS}",
            )
        where = "records.{}.member."
    elif operation == "PutRecord":
        records, where = [payload], ""
    else:
        return None
    total = 0
    for index, record in enumerate(records, start=1):
        key = str(record.get("PartitionKey", ""))
        data = len(base64.b64decode(record.get("Data", "")))
        field = where.format(index)
        if len(key) > PARTITION_KEY_MAX_CHARS:
            return _kinesis(
                "ValidationException",
                "partition_key_too_long",
                f"1 validation error detected: Value at '{field}partitionKey' failed to satisfy "
                f"constraint: Member must have length less than or equal to {PARTITION_KEY_MAX_CHARS}",
            )
        if data > RECORD_MAX_BYTES:
            return _kinesis(
                "ValidationException",
                "record_too_large",
                f"1 validation error detected: Value at '{field}data' failed to satisfy constraint: "
                f"Member must have length less than or equal to {RECORD_MAX_BYTES}",
            )
        size = data + len(key.encode())
        if size > RECORD_MAX_BYTES:
            return _kinesis(
                "InvalidArgumentException",
                "record_too_large",
                f"Record size {size} exceeds the limit of {RECORD_MAX_BYTES} bytes (data and partition key)",
            )
        total += size
    if total > PUT_RECORDS_MAX_BYTES:
        return _kinesis(
            "InvalidArgumentException", "request_too_large", f"Records size exceeds 5 MB limit: {total}"
        )
    return None


# --- S3 -------------------------------------------------------------------------------------------------


def s3_object_key(path: str) -> bytes:
    """The object key of a path-style URL path (b"" for a bucket), as UTF-8 bytes."""
    raw = path.encode("latin-1").lstrip(b"/")
    return raw.split(b"/", 1)[1] if b"/" in raw else b""


def check_s3(method: str, path: str) -> LimitExceeded | None:
    if method not in ("PUT", "POST"):
        return None
    size = len(s3_object_key(path))
    if size > S3_KEY_MAX_BYTES:
        return LimitExceeded("s3", "key_too_long", "KeyTooLongError", "Your key is too long")
    return None
