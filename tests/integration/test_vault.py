"""The VIN vault on the local AWS: no KMS call for a vehicle already in ``vin-mapping`` (a restart reads the
fleet back in BatchGetItems of 100), and the pseudonymization key's fingerprint, recorded by ``bootstrap``
and checked before anything is consumed."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from processors.pseudonymize import PSEUDONYM_KEY_ITEM, Pseudonymizer, is_vehicle, key_fingerprint
from schemas.records import KinesisRecord, StreamPosition
from tests.conftest import AwsEnv
from tests.support.cli import worker
from tests.support.harness import SEQUENCE_BASE, ProcessExited, ProcessorHarness
from worker.bootstrap import bootstrap
from worker.retry import UNPROCESSED, Retrier
from worker.stores.vin_vault import BATCH_GET_LIMIT, KmsVinVault
from worker.wiring import pipeline_for

KEY = "vault-tests-key"
PSEUDO = Pseudonymizer(KEY.encode())
FLEET = 1000
SHARD = "shardId-000000000000"
ARRIVAL_MS = 1_741_183_300_000


@pytest.fixture
def env(aws_env: AwsEnv) -> AwsEnv:
    return aws_env.with_settings(FLEET_PSEUDONYM_KEY=KEY)


def vin(n: int) -> str:
    return f"5YJ3E1EA7KF{n:06d}"


def second_of(vehicles: range, second: int, first_sequence: int) -> list[KinesisRecord]:
    """One parked reading of each vehicle at ``second``, numbered as one shard would (the first at
    ``first_sequence``)."""
    return [
        KinesisRecord(
            orjson.dumps(
                {
                    "vin": vin(n),
                    "timestamp": f"2025-03-05T14:00:{second:02d}.000Z",
                    "signals": {"vehicleSpeed": 0.0, "soc": 80.0},
                }
            ),
            vin(n),
            StreamPosition(SHARD, str(SEQUENCE_BASE + first_sequence + i), 0, ARRIVAL_MS),
        )
        for i, n in enumerate(vehicles)
    ]


class BatchGets:
    """BatchGetItem requests per table, seen from the client (the local AWS counts operations only)."""

    def __init__(self, client: Any) -> None:
        self.tables: Counter[str] = Counter()
        client.meta.events.register("provide-client-params.dynamodb.BatchGetItem", self._seen)

    def _seen(self, params: dict[str, Any], **_: Any) -> None:
        self.tables.update(params["RequestItems"].keys())


def processed(env: AwsEnv, records: list[KinesisRecord]) -> tuple[Counter[tuple[str, str]], Counter[str]]:
    """A new pipeline (what a restarted processor builds) applies ``records``: the operations it made
    (from the local AWS) and its BatchGetItems per table."""
    env.aws.app.reset_counts()
    gets = BatchGets(env.clients.dynamodb)
    pipeline = pipeline_for(env.settings, env.clients)
    try:
        for start in range(0, len(records), 500):
            pipeline.process(records[start : start + 500])
    finally:
        pipeline.close()
        env.clients.dynamodb.meta.events.unregister("provide-client-params.dynamodb.BatchGetItem", gets._seen)
    return env.aws.app.operations_seen(), gets.tables


def vault_items(env: AwsEnv) -> dict[str, dict[str, Any]]:
    table = env.settings.table_names["vin-mapping"]
    items = env.clients.dynamodb.scan(TableName=table, ConsistentRead=True)["Items"]
    return {i["pseudoVin"]["S"]: i for i in items if is_vehicle(i["pseudoVin"]["S"])}


def test_a_new_vehicle_is_encrypted_once_and_never_again_after_a_restart(env: AwsEnv) -> None:
    first, _ = processed(env, second_of(range(20), 0, 1))
    assert first[("kms", "Encrypt")] == 20
    stored = vault_items(env)
    assert set(stored) == {PSEUDO.pseudo_vin(vin(n)) for n in range(20)}
    again, _ = processed(env, second_of(range(25), 1, 100))  # a restart: 20 known, 5 new
    assert again[("kms", "Encrypt")] == 5
    after = vault_items(env)
    assert len(after) == 25 and all(after[pv] == item for pv, item in stored.items())


def test_a_restart_over_1000_known_vehicles_makes_no_kms_call(env: AwsEnv) -> None:
    """The fleet is in vin-mapping already (put directly: the Encrypt path is the test above)."""
    vault_table = env.settings.table_names["vin-mapping"]
    known = [PSEUDO.pseudo_vin(vin(n)) for n in range(FLEET)]
    for start in range(0, FLEET, 25):
        puts: Any = [
            {"PutRequest": {"Item": {"pseudoVin": {"S": pv}, "encryptedVin": {"B": b"c"}}}}
            for pv in known[start : start + 25]
        ]
        env.clients.dynamodb.batch_write_item(RequestItems={vault_table: puts})

    seen, gets = processed(env, second_of(range(FLEET), 0, 1))  # two batches of 500
    assert seen[("kms", "Encrypt")] == 0
    assert ("dynamodb", vault_table) not in env.aws.app.written  # nor any vault write
    # The fingerprint check, one vault lookup per 100 vehicles never seen by this process, and the trip
    # load of the same vehicles (trip-state and the mark in vin-mapping: 50 vehicles a request).
    loads = math.ceil(FLEET / (BATCH_GET_LIMIT // 2))
    assert gets[vault_table] == 1 + math.ceil(FLEET / BATCH_GET_LIMIT) + loads
    assert gets[env.settings.table_names["trip-state"]] == loads
    assert seen[("dynamodb", "BatchGetItem")] == gets[vault_table]


class HalfProcessed:
    """A DynamoDB client whose BatchGetItem serves the first half of each table's keys and hands the rest
    back as UnprocessedKeys (as DynamoDB does under throttling or past 16 MB)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.requests: list[int] = []

    def batch_get_item(self, RequestItems: dict[str, Any]) -> Any:  # noqa: N803 (boto3's name)
        served: dict[str, Any] = {}
        unprocessed: dict[str, Any] = {}
        for table, request in RequestItems.items():
            keys = request["Keys"]
            keep = (len(keys) + 1) // 2
            self.requests.append(len(keys))
            served[table] = {**request, "Keys": keys[:keep]}
            if keys[keep:]:
                unprocessed[table] = {**request, "Keys": keys[keep:]}
        response = self._client.batch_get_item(RequestItems=served)
        response["UnprocessedKeys"] = unprocessed
        return response

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def test_unprocessed_keys_are_asked_again_with_backoff(env: AwsEnv) -> None:
    waits: list[float] = []
    client = HalfProcessed(env.clients.dynamodb)
    vault = KmsVinVault(
        client,  # type: ignore[arg-type]
        env.clients.kms,
        env.settings.table_names["vin-mapping"],
        env.settings.vin_key_alias,
        retrier=Retrier(sleep=waits.append),
    )
    pseudo_vins = [PSEUDO.pseudo_vin(vin(n)) for n in range(150)]
    stored = pseudo_vins[::3]
    for pv in stored:
        vault.remember(pv, "5YJ3E1EA7KF000000")
    assert vault.known(pseudo_vins) == set(stored)
    # 100 keys, half served each time: 100, 50, 25, 12, 6, 3, 1 keys asked; then the last 50.
    assert client.requests == [100, 50, 25, 12, 6, 3, 1, 50, 25, 12, 6, 3, 1]
    assert len(waits) == len(client.requests) - 2  # a backoff before each request asking again
    assert all(0 <= wait <= UNPROCESSED.backoff.cap_seconds for wait in waits)


# --- the pseudonymization key's fingerprint ----------------------------------------------------------------


def fingerprint_item(env: AwsEnv) -> dict[str, Any] | None:
    response = env.clients.dynamodb.get_item(
        TableName=env.settings.table_names["vin-mapping"], Key={"pseudoVin": {"S": PSEUDONYM_KEY_ITEM}}
    )
    return response.get("Item")


def test_bootstrap_records_the_key_fingerprint_once_and_is_idempotent_with_the_same_key(env: AwsEnv) -> None:
    item = fingerprint_item(env)
    assert item is not None
    assert item["fingerprint"]["S"] == key_fingerprint(KEY.encode()) == PSEUDO.fingerprint()
    assert set(item) == {"pseudoVin", "fingerprint", "createdAt"}
    assert KEY not in str(item)

    report = bootstrap(env.settings, env.clients)
    assert f"fingerprint {PSEUDONYM_KEY_ITEM}" in report.existing
    result = worker("bootstrap", env=env.environ)
    assert result.returncode == 0, result.stderr
    assert f"exists   fingerprint {PSEUDONYM_KEY_ITEM}" in result.stdout.splitlines()
    assert fingerprint_item(env) == item  # createdAt too: nothing was rewritten


def test_bootstrap_with_another_key_refuses_in_one_line(env: AwsEnv) -> None:
    before = fingerprint_item(env)
    other = {**env.environ, "FLEET_PSEUDONYM_KEY": "another-key"}
    result = worker("bootstrap", env=other)
    assert result.returncode == 6, result
    (line,) = result.stderr.splitlines()
    expected, loaded = PSEUDO.fingerprint()[:8], key_fingerprint(b"another-key")[:8]
    assert line == (
        "python -m worker bootstrap: error: vin-mapping records another pseudonym key (fingerprint "
        f"{expected}… recorded, {loaded}… loaded); refusing to change it: see README, Rotating the "
        "pseudonymization key"
    )
    assert fingerprint_item(env) == before


def test_run_refuses_a_mismatched_key_before_the_daemon_reads_anything(env: AwsEnv) -> None:
    env.aws.app.reset_counts()
    result = worker("run", env={**env.environ, "FLEET_PSEUDONYM_KEY": "another-key"})
    assert result.returncode == 6, result
    (line,) = result.stderr.splitlines()
    expected, loaded = PSEUDO.fingerprint()[:8], key_fingerprint(b"another-key")[:8]
    assert line == (
        "python -m worker run: error: pseudonym key does not match the key these tables were built with "
        f"(fingerprint {expected}… expected, {loaded}… loaded); refusing to consume"
    )
    seen = env.aws.app.operations_seen()
    assert seen == Counter({("dynamodb", "BatchGetItem"): 1}), seen  # the check; no lease, no GetRecords


def test_run_without_a_recorded_fingerprint_says_to_bootstrap(env: AwsEnv) -> None:
    env.clients.dynamodb.delete_item(
        TableName=env.settings.table_names["vin-mapping"], Key={"pseudoVin": {"S": PSEUDONYM_KEY_ITEM}}
    )
    env.aws.app.reset_counts()
    result = worker("run", env=env.environ)
    assert result.returncode == 6, result
    assert result.stderr.splitlines() == [
        "python -m worker run: error: vin-mapping has no pseudonym key fingerprint; run python -m worker "
        "bootstrap"
    ]
    assert ("kinesis", "GetRecords") not in env.aws.app.operations_seen()


@pytest.fixture
def mismatched(env: AwsEnv) -> Iterator[ProcessorHarness]:
    harness = ProcessorHarness({**env.environ, "FLEET_PSEUDONYM_KEY": "another-key"})
    yield harness
    if harness.proc.poll() is None:
        harness.proc.kill()
        harness.proc.wait()


def test_the_record_processor_refuses_a_mismatched_key_at_initialize(
    env: AwsEnv, mismatched: ProcessorHarness
) -> None:
    env.aws.app.reset_counts()
    with pytest.raises(ProcessExited) as exited:
        mismatched.initialize()
    assert exited.value.code == 6
    errors = [line for line in mismatched.logs() if line.get("level") == "ERROR"]
    assert [line["event"] for line in errors] == ["pseudonym_key_mismatch"], mismatched.stderr_lines
    assert "refusing to consume" in errors[0]["error"]
    assert not any("Traceback" in line for line in mismatched.stderr_lines)
    seen = env.aws.app.operations_seen()
    assert seen == Counter({("dynamodb", "BatchGetItem"): 1}), seen  # nothing read, nothing written
