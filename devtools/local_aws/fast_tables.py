"""The bench's fast stand-in for the data tables, behind the same botocore calls as the local AWS.

moto serves a DynamoDB ``UpdateItem`` in 4-5 ms here (it parses and validates every expression into an AST
each time; measured by ``LocalAwsApp.busy``), so the local AWS tops out near 200 writes a second. A shard
at 1,000 records/s makes about 550 writes a second (one ``vehicle-state`` update per vehicle per B, the
trail's buckets, ``trip-state`` at transitions and progress, the vault at first sightings): two shards
need over 1,100, which moto cannot serve on this machine. ``FastLocalAws`` serves the data plane of the
tables it is given (the five data tables in the full-shard bench) from plain dicts, and everything else
(Kinesis, the KCL's tables, S3, KMS, every control-plane call such as CreateTable) from moto as before, all
on one endpoint.

It is as strict and bills as ``LocalAwsApp`` does, because it is the same code where that matters:

- every request goes through ``limits.check`` first (the same refusals, AWS's codes and statuses), and an
  update whose resulting item breaks a limit is refused and not applied (``refuse_updated_item``'s checks);
- writes are billed by ``_tally_items`` (whole item, the larger of before and after, per started KB, a
  failed condition included; a transaction's items twice, a cancelled one's too) into the same counters,
  and requests are counted per operation;
- a failed condition answers ``ConditionalCheckFailedException`` with the stored item (``ALL_OLD``), a
  failed transaction ``TransactionCanceledException`` with one reason per item.

What it serves, and only that (anything else on a fast table is refused with a ``ValidationException``
naming the stand-in, so a new call shape fails the bench instead of being served wrongly): ``UpdateItem``
(``SET path = :v | if_not_exists(path, :v)`` and ``REMOVE`` of top-level attributes), ``PutItem``,
``DeleteItem``, ``TransactWriteItems`` (``Put``, ``Update``, ``Delete``, ``ConditionCheck``), each with a
condition of ``AND``/``OR``/``NOT``, parentheses, comparisons (``= <> < <= > >=``) and
``attribute_exists``/``attribute_not_exists`` over paths (``#name``, ``name``, ``[i]``, ``.member``);
``GetItem``, ``BatchGetItem`` (a projection of top-level names), ``Query`` on the table's key (``pk = :v``,
optionally ``sk BETWEEN :a AND :b`` or ``sk = :v``), ``Scan``. ``tests/integration/test_fast_tables.py``
sends the same requests, the worker's shapes among them, to both and compares answers, refusals and bills.
Not modelled: 1 MB pages (``Query`` and ``Scan`` return everything in one page), index queries,
``ReturnValues`` other than ``NONE``, a transaction's idempotency token, consumed capacity in responses,
throttling and fault injection on the fast tables.
"""

from __future__ import annotations

import io
import json
import re
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from typing import Any

from devtools.local_aws.billing import write_factor
from devtools.local_aws.fast_kinesis import patch_kinesis_shards
from devtools.local_aws.limits import (
    KeySchema,
    LimitExceeded,
    check,
    check_item_size,
    check_nesting,
    item_size,
)
from devtools.local_aws.moto_patches import StartResponse, StoredItems, WsgiApp
from devtools.local_aws.server import LocalAws, LocalAwsApp, _refusal_response, identify

Item = dict[str, Any]
"""An item in DynamoDB's wire form: attribute name -> ``{"S": ...}`` / ``{"N": ...}`` / ..."""

EXECUTOR_THREADS = 64
SERVED = frozenset(
    {"UpdateItem", "PutItem", "DeleteItem", "TransactWriteItems", "GetItem", "BatchGetItem", "Query", "Scan"}
)
JSON_10 = "application/x-amz-json-1.0"
CONDITION_FAILED = "com.amazonaws.dynamodb.v20120810#ConditionalCheckFailedException"
CANCELLED = "com.amazonaws.dynamodb.v20120810#TransactionCanceledException"
VALIDATION = "com.amazonaws.dynamodb.v20120810#ValidationException"


class Unsupported(Exception):
    """A request shape the stand-in does not serve: refused, never served approximately."""


# -- expressions ----------------------------------------------------------------------------------------

_TOKEN = re.compile(r"\s*(<>|<=|>=|[=<>(),.\[\]]|:[A-Za-z0-9_]+|#[A-Za-z0-9_]+|[A-Za-z_][A-Za-z0-9_]*|\d+)")
Path = tuple[str | int, ...]
Node = tuple[Any, ...]
"""A parsed condition: ("and"|"or", a, b), ("not", a), ("exists"|"missing", path), (op, operand, operand)
with an operand ("path", path) or ("value", placeholder)."""


def _tokens(text: str) -> list[str]:
    out, at = [], 0
    while at < len(text):
        match = _TOKEN.match(text, at)
        if match is None:
            if text[at:].strip():
                raise Unsupported(f"cannot read expression at {text[at:]!r}")
            break
        out.append(match.group(1))
        at = match.end()
    return out


class _Parser:
    def __init__(self, text: str, names: dict[str, str]) -> None:
        self.tokens = _tokens(text)
        self.at = 0
        self.names = names

    def peek(self) -> str | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if token is None or (expected is not None and token.upper() != expected):
            raise Unsupported(f"expected {expected or 'more'} at token {self.at} of {self.tokens}")
        self.at += 1
        return token

    def done(self) -> None:
        if self.peek() is not None:
            raise Unsupported(f"unexpected {self.peek()!r} in {self.tokens}")

    def path(self) -> Path:
        first = self.take()
        if first.startswith(":") or first in "()[],.=<>":
            raise Unsupported(f"expected an attribute, got {first!r}")
        parts: list[str | int] = [self._name(first)]
        while self.peek() in ("[", "."):
            if self.take() == "[":
                parts.append(int(self.take()))
                self.take("]")
            else:
                parts.append(self._name(self.take()))
        return tuple(parts)

    def _name(self, token: str) -> str:
        if token.startswith("#"):
            if token not in self.names:
                raise Unsupported(f"{token} is not in ExpressionAttributeNames")
            return self.names[token]
        return token

    def operand(self) -> Node:
        token = self.peek()
        if token is not None and token.startswith(":"):
            return ("value", self.take())
        return ("path", self.path())

    def condition(self) -> Node:
        node = self._conjunction()
        while (self.peek() or "").upper() == "OR":
            self.take()
            node = ("or", node, self._conjunction())
        return node

    def _conjunction(self) -> Node:
        node = self._unary()
        while (self.peek() or "").upper() == "AND":
            self.take()
            node = ("and", node, self._unary())
        return node

    def _unary(self) -> Node:
        token = self.peek() or ""
        if token.upper() == "NOT":
            self.take()
            return ("not", self._unary())
        if token == "(":  # noqa: S105 - a token of the expression, not a secret
            self.take()
            node = self.condition()
            self.take(")")
            return node
        if token in ("attribute_exists", "attribute_not_exists"):
            self.take()
            self.take("(")
            path = self.path()
            self.take(")")
            return ("exists" if token.startswith("attribute_exists") else "missing", path)
        left = self.operand()
        op = self.take()
        if op not in ("=", "<>", "<", "<=", ">", ">="):
            raise Unsupported(f"comparison {op!r}")
        return (op, left, self.operand())


def parse_condition(text: str, names: dict[str, str]) -> Node:
    parser = _Parser(text, names)
    node = parser.condition()
    parser.done()
    return node


Update = tuple[list[tuple[Path, Node]], list[Path]]
"""An update expression: (SET path = operand, ...), (REMOVE path, ...); an operand is ("value", :p) or
("if_not_exists", path, :p)."""


def parse_update(text: str, names: dict[str, str]) -> Update:
    """``SET path = :v | if_not_exists(path, :v), ... [REMOVE path, ...]`` (clauses in either order)."""
    parser = _Parser(text, names)
    sets: list[tuple[Path, Node]] = []
    removes: list[Path] = []
    while parser.peek() is not None:
        clause = parser.take().upper()
        if clause not in ("SET", "REMOVE"):
            raise Unsupported(f"update clause {clause}")
        while True:
            path = parser.path()
            if clause == "REMOVE":
                removes.append(path)
            else:
                parser.take("=")
                sets.append((path, _set_operand(parser)))
            if parser.peek() != ",":
                break
            parser.take(",")
    return sets, removes


def _set_operand(parser: _Parser) -> Node:
    token = parser.take()
    if token.startswith(":"):
        return ("value", token)
    if token in ("if_not_exists",):
        parser.take("(")
        path = parser.path()
        parser.take(",")
        value = parser.take()
        parser.take(")")
        if value.startswith(":"):
            return ("if_not_exists", path, value)
    raise Unsupported(f"SET operand {token!r}: placeholders and if_not_exists(path, :v) are served")


def _resolve(item: Item, path: Path) -> Any:
    value: Any = {"M": item}
    for part in path:
        if isinstance(part, int):
            listed = value.get("L") if isinstance(value, dict) else None
            if listed is None or part >= len(listed):
                return None
            value = listed[part]
        else:
            members = value.get("M") if isinstance(value, dict) else None
            if members is None or part not in members:
                return None
            value = members[part]
    return value


def _number(value: Any) -> Decimal | None:
    try:
        return Decimal(value["N"]) if isinstance(value, dict) and "N" in value else None
    except InvalidOperation:
        return None


def same(a: Any, b: Any) -> bool:
    """DynamoDB's ``=``: same type and value, numbers by value, lists and maps member by member."""
    if not isinstance(a, dict) or not isinstance(b, dict) or a.keys() != b.keys() or len(a) != 1:
        return False
    (kind,) = a
    if kind == "N":
        return _number(a) == _number(b)
    if kind == "L":
        return len(a["L"]) == len(b["L"]) and all(map(same, a["L"], b["L"]))
    if kind == "M":
        return a["M"].keys() == b["M"].keys() and all(same(a["M"][k], b["M"][k]) for k in a["M"])
    if kind in ("SS", "BS"):
        return set(a[kind]) == set(b[kind])
    if kind == "NS":
        return {Decimal(n) for n in a["NS"]} == {Decimal(n) for n in b["NS"]}
    return bool(a[kind] == b[kind])  # S, B, BOOL, NULL


_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    "<": lambda x, y: x < y,
    "<=": lambda x, y: x <= y,
    ">": lambda x, y: x > y,
    ">=": lambda x, y: x >= y,
}


def holds(node: Node, item: Item, values: dict[str, Any]) -> bool:
    kind = node[0]
    if kind == "and":
        return holds(node[1], item, values) and holds(node[2], item, values)
    if kind == "or":
        return holds(node[1], item, values) or holds(node[2], item, values)
    if kind == "not":
        return not holds(node[1], item, values)
    if kind in ("exists", "missing"):
        return bool((_resolve(item, node[1]) is not None) == (kind == "exists"))
    left, right = (_operand(o, item, values) for o in node[1:])
    if left is None or right is None:
        return False  # a comparison with a missing attribute is false, even <>
    if kind == "=":
        return same(left, right)
    if kind == "<>":
        return not same(left, right)
    for scalar in ("N", "S", "B"):
        if scalar in left and scalar in right:
            x, y = (_number(left), _number(right)) if scalar == "N" else (left[scalar], right[scalar])
            return x is not None and y is not None and bool(_ORDER[kind](x, y))
    return False  # ordering across types (or of lists) is false


def _operand(operand: Node, item: Item, values: dict[str, Any]) -> Any:
    if operand[0] == "value":
        if operand[1] not in values:
            raise Unsupported(f"{operand[1]} is not in ExpressionAttributeValues")
        return values[operand[1]]
    return _resolve(item, operand[1])


def _top(path: Path) -> str:
    if len(path) != 1 or not isinstance(path[0], str):
        raise Unsupported(f"an update of a nested path {path}")
    return path[0]


def apply_update(item: Item, update: Update, values: dict[str, Any]) -> Item:
    """The item after the update (a new dict; every operand read from the item as it was)."""
    new = dict(item)
    for path, operand in update[0]:
        if operand[-1] not in values:
            raise Unsupported(f"{operand[-1]} is not in ExpressionAttributeValues")
        kept = _resolve(item, operand[1]) if operand[0] == "if_not_exists" else None
        new[_top(path)] = kept if kept is not None else values[operand[-1]]
    for path in update[1]:
        new.pop(_top(path), None)
    return new


# -- the tables ----------------------------------------------------------------------------------------


@dataclass
class _Table:
    key: KeySchema
    items: dict[tuple[str, ...], Item]


WRITE_KEYS: dict[str, set[str]] = {
    "PutItem": {"Item"},
    "Put": {"Item"},
    "UpdateItem": {"Key", "UpdateExpression"},
    "Update": {"Key", "UpdateExpression"},
    "DeleteItem": {"Key"},
    "Delete": {"Key"},
    "ConditionCheck": {"Key"},
}


@dataclass(frozen=True)
class Write:
    """One write, checked: ``held`` whether its condition holds, ``new`` the item after it (None:
    deleted), ``refusal`` a limit the result breaks."""

    name: str
    table: _Table
    stored_key: tuple[str, ...]
    key: Item
    old: Item | None
    new: Item | None
    held: bool
    refusal: LimitExceeded | None
    action: dict[str, Any]


class FastTablesApp(LocalAwsApp):
    """``LocalAwsApp`` with the data plane of ``fast`` tables served from memory (module docstring)."""

    def __init__(self, app: WsgiApp, fast: Iterable[str]) -> None:
        super().__init__(app)
        self.fast = frozenset(fast)
        self._tables: dict[str, _Table] = {}
        self._fast_lock = threading.Lock()
        self._parsed: dict[tuple[str, str, str], Any] = {}
        # Counted apart from moto's requests, under the fast lock: moto holds ``_lock`` for a whole request
        # (a GetRecords of hundreds of records takes a while), and the fast tables must not wait for it.
        # ``written`` is shared: the fast tables' keys are theirs alone.
        self.fast_requests: Counter[tuple[str, str]] = Counter()
        self.fast_refused: Counter[tuple[str, str, str]] = Counter()

    def operations_seen(self) -> Counter[tuple[str, str]]:
        with self._fast_lock:
            fast = Counter(self.fast_requests)
        return super().operations_seen() + fast

    def refusals(self) -> Counter[tuple[str, str, str]]:
        """Every request refused for an AWS limit (or as a shape the fast tables do not serve), by
        (service, operation, reason)."""
        with self._lock, self._fast_lock:
            return self.refused + self.fast_refused

    def reset_counts(self) -> None:
        super().reset_counts()
        with self._fast_lock:
            self.fast_requests.clear()
            self.fast_refused.clear()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/moto-api/reset":
            with self._fast_lock:
                self._tables.clear()
            return super().__call__(environ, start_response)
        target = str(environ.get("HTTP_X_AMZ_TARGET", ""))
        operation = target.rsplit(".", 1)[-1]
        if not target.startswith("DynamoDB_") or operation not in SERVED:
            return super().__call__(environ, start_response)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        payload = json.loads(body or b"{}")
        tables = {payload.get("TableName")} | set(payload.get("RequestItems", {}))
        tables |= {
            action.get("TableName") for entry in payload.get("TransactItems", ()) for action in entry.values()
        }
        tables.discard(None)
        if not tables & self.fast:
            environ["wsgi.input"] = io.BytesIO(body)
            return super().__call__(environ, start_response)
        request = identify(environ, body)
        with self._fast_lock:
            self.fast_requests[("dynamodb", operation)] += 1
        refusal = check(request, lambda table: self._key_schema(table, environ))
        if refusal is None and tables - self.fast:
            refusal = _unsupported(f"{operation} across fast and moto tables {sorted(tables)}")
        if refusal is not None:
            with self._fast_lock:
                self.fast_refused[("dynamodb", operation, refusal.reason)] += 1
            return self._respond(start_response, *_refusal_response(refusal))
        try:
            with self._fast_lock:
                status, answer = getattr(self, f"_{operation}")(payload)
        except Unsupported as error:
            return self._respond(start_response, *_refusal_response(_unsupported(str(error))))
        headers = [("Content-Type", JSON_10), ("x-amzn-RequestId", str(uuid.uuid4()))]
        return self._respond(start_response, status, headers, json.dumps(answer).encode())

    # -- schema and storage ------------------------------------------------------------------------

    def _key_schema(self, table: str, environ: dict[str, Any]) -> KeySchema | None:
        found = self._tables.get(table)
        if found is not None:
            return found.key
        with self._lock:  # moto made the table (CreateTable went to it): read its schema once
            schema = StoredItems(environ).key_schema(table)
        if schema is not None and table in self.fast:
            self._tables.setdefault(table, _Table(schema, {}))
        return schema

    def _table(self, name: str) -> _Table:
        if name not in self._tables:  # check() read every named table's schema first
            raise Unsupported(f"table {name} does not exist")
        return self._tables[name]

    @staticmethod
    def _key_of(table: _Table, key: Item) -> tuple[str, ...]:
        parts = []
        for name in table.key:
            if name is None:
                continue
            if name not in key:
                raise Unsupported(f"the key lacks {name}")
            ((kind, value),) = key[name].items()
            parts.append(f"{kind}:{Decimal(value).normalize() if kind == 'N' else value}")
        return tuple(parts)

    def _expression(self, kind: str, text: str, names: dict[str, str]) -> Any:
        cached = (kind, text, json.dumps(names, sort_keys=True))
        if cached not in self._parsed:
            self._parsed[cached] = (parse_update if kind == "update" else parse_condition)(text, names)
        return self._parsed[cached]

    # -- operations --------------------------------------------------------------------------------

    def _write(self, operation: str, action: dict[str, Any]) -> Write:
        """What a write would do, checked but not applied: the item before and after, or its refusal."""
        allowed = WRITE_KEYS[operation] | {"TableName", "ReturnValuesOnConditionCheckFailure"}
        allowed |= {"ConditionExpression", "ExpressionAttributeNames", "ExpressionAttributeValues"}
        if set(action) - allowed or action.get("ReturnValues", "NONE") != "NONE":
            raise Unsupported(f"{operation} with {sorted(set(action) - allowed)}")
        name = action["TableName"]
        table = self._table(name)
        key = action["Item"] if operation in ("PutItem", "Put") else action["Key"]
        stored_key = self._key_of(table, key)
        key = {attribute: key[attribute] for attribute in table.key if attribute is not None}
        names = action.get("ExpressionAttributeNames", {})
        values = action.get("ExpressionAttributeValues", {})
        old = table.items.get(stored_key)
        condition = action.get("ConditionExpression")
        held = not condition or holds(self._expression("condition", condition, names), old or {}, values)
        new: Item | None = old
        if held and operation in ("PutItem", "Put"):
            new = action["Item"]
        elif held and operation in ("DeleteItem", "Delete"):
            new = None
        elif held and operation in ("UpdateItem", "Update"):
            update = self._expression("update", action["UpdateExpression"], names)
            new = apply_update(old or dict(key), update, values)
        refusal = None
        if held and new is not None and operation in ("UpdateItem", "Update"):
            refusal = check_nesting(new.values()) or check_item_size(new, update=True)
        return Write(name, table, stored_key, key, old, new, held, refusal, action)

    def _commit(self, write: Write, factor: int = 1) -> None:
        if write.held and write.refusal is None:
            if write.new is None:
                write.table.items.pop(write.stored_key, None)
            else:
                write.table.items[write.stored_key] = write.new
        before = item_size(write.old) if write.old else 0
        after = item_size(write.new) if write.new and write.held and write.refusal is None else before
        self._tally_items([(write.name, write.key)], [before], [after], factor)  # under the fast lock

    def _single(self, operation: str, payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        write = self._write(operation, payload)
        if write.refusal is not None:
            self.fast_refused[("dynamodb", operation, write.refusal.reason)] += 1  # under the fast lock
            body = {"__type": write.refusal.code, "message": write.refusal.message}
            return f"{write.refusal.status} Bad Request", body
        self._commit(write)
        if write.held:
            return "200 OK", {}
        failed: dict[str, Any] = {"__type": CONDITION_FAILED, "message": "The conditional request failed"}
        if payload.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD" and write.old:
            failed["Item"] = write.old
        return "400 Bad Request", failed

    def _UpdateItem(self, payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:  # noqa: N802
        return self._single("UpdateItem", payload)

    def _PutItem(self, payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:  # noqa: N802
        return self._single("PutItem", payload)

    def _DeleteItem(self, payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:  # noqa: N802
        return self._single("DeleteItem", payload)

    def _TransactWriteItems(self, payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:  # noqa: N802
        """All or nothing: every condition is read before anything is written; a cancelled transaction
        bills each item it names as a write of the item as it is, twice (``TRANSACTION_FACTOR``)."""
        # botocore sends a ClientRequestToken of its own; a retry with the same token is served again (AWS
        # would answer the first outcome for 10 minutes: the same for the conditions our writes carry).
        if set(payload) - {"TransactItems", "ClientRequestToken"}:
            raise Unsupported(f"TransactWriteItems with {sorted(set(payload) - {'TransactItems'})}")
        writes = []
        for entry in payload["TransactItems"]:
            ((kind, action),) = entry.items()
            if kind == "ConditionCheck":
                write = self._write("ConditionCheck", action)
                writes.append(replace(write, new=write.old))
            else:
                writes.append(self._write(kind, action))
        if any(w.refusal is not None for w in writes):
            refusal = next(w.refusal for w in writes if w.refusal is not None)
            return f"{refusal.status} Bad Request", {"__type": refusal.code, "message": refusal.message}
        factor = write_factor("TransactWriteItems")
        if all(w.held for w in writes):
            for write in writes:
                self._commit(write, factor)
            return "200 OK", {}
        for write in writes:
            self._commit(replace(write, held=False), factor)
        reasons = [
            {"Code": "None"}
            if w.held
            else {"Code": "ConditionalCheckFailed", "Message": "The conditional request failed"}
            for w in writes
        ]
        codes = ", ".join(r["Code"] for r in reasons)
        message = f"Transaction cancelled, please refer cancellation reasons for specific reasons [{codes}]"
        return "400 Bad Request", {"__type": CANCELLED, "Message": message, "CancellationReasons": reasons}

    def _project(self, item: Item, payload: dict[str, Any]) -> Item:
        projection = payload.get("ProjectionExpression")
        if not projection:
            return item
        names = payload.get("ExpressionAttributeNames", {})
        wanted = [names.get(p.strip(), p.strip()) for p in projection.split(",")]
        return {n: item[n] for n in wanted if n in item}

    def _GetItem(self, payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:  # noqa: N802
        table = self._table(payload["TableName"])
        found = table.items.get(self._key_of(table, payload["Key"]))
        return "200 OK", {"Item": self._project(found, payload)} if found else {}

    def _BatchGetItem(self, payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:  # noqa: N802
        responses = {}
        for name, request in payload["RequestItems"].items():
            table = self._table(name)
            found = (table.items.get(self._key_of(table, key)) for key in request["Keys"])
            responses[name] = [self._project(item, request) for item in found if item]
        return "200 OK", {"Responses": responses, "UnprocessedKeys": {}}

    def _Scan(self, payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:  # noqa: N802
        if set(payload) - {"TableName", "ProjectionExpression", "ExpressionAttributeNames", "ConsistentRead"}:
            raise Unsupported("Scan with a filter, a limit or a start key")
        items = [self._project(i, payload) for i in self._table(payload["TableName"]).items.values()]
        return "200 OK", {"Items": items, "Count": len(items), "ScannedCount": len(items)}

    def _Query(self, payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:  # noqa: N802
        if set(payload) - {
            "TableName",
            "KeyConditionExpression",
            "ExpressionAttributeNames",
            "ExpressionAttributeValues",
            "ConsistentRead",
            "ProjectionExpression",
        }:
            raise Unsupported("Query with a filter, an index, a limit or a start key")
        table = self._table(payload["TableName"])
        names = payload.get("ExpressionAttributeNames", {})
        values = payload.get("ExpressionAttributeValues", {})
        match = re.fullmatch(
            r"\s*(\S+)\s*=\s*(:\w+)(?:\s+AND\s+(\S+)\s+(?:BETWEEN\s+(:\w+)\s+AND\s+(:\w+)|=\s*(:\w+)))?\s*",
            payload["KeyConditionExpression"],
            flags=re.IGNORECASE,
        )
        if match is None:
            raise Unsupported(f"key condition {payload['KeyConditionExpression']!r}")
        pk, pv, sk, low, high, exact = match.groups()
        partition, sort = table.key
        if names.get(pk, pk) != partition or (sk is not None and names.get(sk, sk) != sort):
            raise Unsupported("a key condition on other attributes than the table's key")
        found = []
        for item in table.items.values():
            if not same(item.get(partition), values[pv]):
                continue
            if sort is not None and sk is not None:
                at = item.get(sort)
                if exact is not None and not same(at, values[exact]):
                    continue
                if low is not None and not (
                    holds((">=", ("path", (sort,)), ("value", low)), item, values)
                    and holds(("<=", ("path", (sort,)), ("value", high)), item, values)
                ):
                    continue
            found.append(item)
        if sort is not None:
            found.sort(key=lambda i: _sort_key(i[sort]))
        items = [self._project(i, payload) for i in found]
        return "200 OK", {"Items": items, "Count": len(items), "ScannedCount": len(items)}


def _sort_key(value: dict[str, Any]) -> Any:
    """A sort key's order: numbers by value, strings and binary as stored."""
    return Decimal(value["N"]) if "N" in value else next(iter(value.values()))


def _unsupported(what: str) -> LimitExceeded:
    return LimitExceeded(
        "dynamodb", "fast-tables-unsupported", VALIDATION, f"not served by the bench's fast tables: {what}"
    )


class FastLocalAws(LocalAws):
    """``LocalAws`` whose ``fast`` tables' data plane is served from memory (``FastTablesApp``)."""

    app: FastTablesApp

    def __init__(self, fast: Iterable[str], port: int = 0) -> None:
        patch_kinesis_shards()  # moto's shards, linear per record (fast_kinesis)
        super().__init__(port)
        self.app = FastTablesApp(self.app.app, fast)

    def start(self) -> FastLocalAws:
        super().start()
        # hypercorn runs each WSGI request on the loop's default executor (min(32, cores + 4) threads: 6
        # here). Requests for moto wait there for its lock, one at a time; with every thread so taken, the
        # fast tables' requests would queue behind them. More threads than moto can ever hold.
        loop = self._loop
        assert loop is not None
        loop.call_soon_threadsafe(
            loop.set_default_executor, ThreadPoolExecutor(EXECUTOR_THREADS, "local-aws")
        )
        return self

    def __enter__(self) -> FastLocalAws:
        return self.start()
