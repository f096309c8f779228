"""The boundary: the encrypted VIN vault, dead letters and their redrive, through the record processor."""

from __future__ import annotations

import base64
import gzip
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import orjson
import pytest
from cryptography.exceptions import InvalidTag

from processors.dead_letter import ENCRYPTION_CONTEXT, PREFIX, unseal
from processors.errors import RejectReason
from processors.pseudonymize import Pseudonymizer, is_vehicle
from processors.signals import format_time
from processors.vehicle_state import named_item
from schemas.dynamo import from_item
from tests.conftest import FIXTURES, AwsEnv
from tests.support.harness import ProcessorHarness, ShardRecord, deliver, fixture, shard_records
from tests.support.oracle import dumps, leaked, vins_in
from worker.redrive import REDRIVEN_TAG, redrive
from worker.replay import StreamEntry
from worker.sweep import sweep_orphans

KEY = "boundary-tests-key"
PSEUDO = Pseudonymizer(KEY.encode())
VIN = "5YJ3E1EA7KF317000"


@pytest.fixture
def env(aws_env: AwsEnv) -> AwsEnv:
    return aws_env.with_settings(FLEET_PSEUDONYM_KEY=KEY)


def run(env: AwsEnv, records: list[ShardRecord], size: int = 200) -> ProcessorHarness:
    return deliver(env.environ, records, size)


def native(vin: str = VIN, **signals: Any) -> StreamEntry:
    record = {
        "vin": vin,
        "timestamp": "2025-03-05T14:32:01.000Z",
        "signals": signals or {"vehicleSpeed": 10.0},
    }
    return StreamEntry(orjson.dumps(record), vin)


def dead_letters(env: AwsEnv) -> dict[str, dict[str, Any]]:
    s3, bucket = env.clients.s3, env.settings.archive_bucket
    listing = s3.list_objects_v2(Bucket=bucket, Prefix=PREFIX).get("Contents", [])
    return {
        o["Key"]: orjson.loads(s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()) for o in listing
    }


def decrypt_data_key(env: AwsEnv) -> Any:
    return lambda blob: env.clients.kms.decrypt(CiphertextBlob=blob, EncryptionContext=ENCRYPTION_CONTEXT)[
        "Plaintext"
    ]


def test_each_vehicle_is_vaulted_once_and_resolves_only_with_its_context(env: AwsEnv) -> None:
    records = shard_records(fixture("fleet-small.jsonl"))
    run(env, records, size=100)  # 11 batches, the same 6 vehicles in each
    vins = {
        orjson.loads(r.data)["vin"]
        for r in records
        if r.data.startswith(b'{"vin":"') and b"NOT-A-VIN" not in r.data
    }
    assert env.aws.app.requests[("kms", "Encrypt")] == len(vins) == 6
    vault = {
        i["pseudoVin"]["S"]: i
        for i in env.clients.dynamodb.scan(TableName=env.settings.table_names["vin-mapping"])["Items"]
        if is_vehicle(i["pseudoVin"]["S"])
    }
    assert set(vault) == {PSEUDO.pseudo_vin(v) for v in vins}

    vin = sorted(vins)[0]
    pseudo_vin = PSEUDO.pseudo_vin(vin)
    resolved = subprocess.run(
        [sys.executable, "-m", "worker", "resolve", pseudo_vin],
        env=env.environ,
        capture_output=True,
        text=True,
        check=True,
    )
    assert resolved.stdout.strip() == vin
    assert vin not in resolved.stderr  # the audit log line names the pseudoVin only

    ciphertext = vault[pseudo_vin]["encryptedVin"]["B"]
    with pytest.raises(env.clients.kms.exceptions.InvalidCiphertextException):
        env.clients.kms.decrypt(
            CiphertextBlob=ciphertext, EncryptionContext={"pseudoVin": PSEUDO.pseudo_vin(sorted(vins)[1])}
        )
    assert not leaked(vins, dumps(list(vault.values())))


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        (StreamEntry(b"\xff\xfe{\x00}", VIN), RejectReason.NOT_UTF8),
        (StreamEntry(b'{"vin": "' + VIN.encode() + b'",', VIN), RejectReason.MALFORMED_JSON),
        (StreamEntry(b"not a record " + VIN.encode(), VIN), RejectReason.UNKNOWN_FORMAT),
        (StreamEntry(orjson.dumps({"vin": VIN, "signals": {}}), VIN), RejectReason.SCHEMA_VIOLATION),
        (native(vin="5YJ3E1EA7KF3170O0"), RejectReason.INVALID_VIN),
        (
            StreamEntry(orjson.dumps({"vin": VIN, "timestamp": "2099-01-01T00:00:00Z", "signals": {}}), VIN),
            RejectReason.TIMESTAMP_OUT_OF_RANGE,
        ),
        (native(blob="x" * 70_000), RejectReason.OVERSIZE),
        (
            StreamEntry(orjson.dumps({"alerts": [], "createdAt": "2025-03-05T14:32:01Z", "vin": VIN}), VIN),
            RejectReason.UNSUPPORTED_RECORD_TYPE,
        ),
    ],
)
def test_every_rejection_becomes_one_encrypted_dead_letter(
    env: AwsEnv, entry: StreamEntry, reason: RejectReason
) -> None:
    records = shard_records([native(), entry, native()])
    run(env, records)
    run(env, records)  # redelivered: the same object, not a second one
    ((key, doc),) = dead_letters(env).items()
    bad = records[1]
    day = format_time(bad.arrival_ms)[:10].replace("-", "/")
    assert key == f"dead-letter/{day}/shardId-000000000000/{bad.sequence_number:0>56}-00000.json"
    assert doc["reason"] == reason.value
    assert (doc["shardId"], doc["sequenceNumber"]) == ("shardId-000000000000", bad.sequence_number)
    assert doc["partitionKeyHash"] == PSEUDO.pseudo_vin(bad.partition_key.strip().upper())
    assert doc["approximateArrivalTimestamp"] == format_time(bad.arrival_ms)
    assert {"detail", "original"} <= set(doc) and doc["original"]["algorithm"] == "AES-256-GCM"
    assert not leaked({VIN}, orjson.dumps(doc))
    assert unseal(doc["original"], key, decrypt_data_key(env)) == (entry.data, entry.partition_key)
    with pytest.raises(InvalidTag):  # the ciphertext is bound to its object key
        unseal(doc["original"], key.replace(".json", "-moved.json"), decrypt_data_key(env))


def test_kpl_sub_records_and_unicode_partition_keys_get_their_own_dead_letters(env: AwsEnv) -> None:
    # The KCL de-aggregates a KPL record into sub-records sharing one sequence number; Kinesis allows
    # any Unicode partition key. Neither may collide dead letters or stop the shard.
    good, bad = shard_records([native(), StreamEntry(b"not json", "v\u00e9hicule-\u2603")])
    aggregate = [ShardRecord(b"{", VIN, bad.sequence_number, bad.arrival_ms, sub) for sub in (0, 1, 2)]
    harness = run(env, [good, bad, *aggregate[1:]])
    keys = set(dead_letters(env))
    day = format_time(bad.arrival_ms)[:10].replace("-", "/")
    prefix = f"dead-letter/{day}/shardId-000000000000/"
    assert keys == {f"{prefix}{bad.sequence_number:0>56}-{sub}.json" for sub in ("00000", "00001", "00002")}
    assert harness.checkpoints[-1].sequence_number == bad.sequence_number
    assert harness.checkpoints[-1].sub_sequence_number == 2


def test_quarantine_then_fix_then_redrive_applies_the_record(env: AwsEnv) -> None:
    big = native(vehicleSpeed=42.0, notes="y" * 400)  # larger than the (mis)configured limit below
    strict = env.with_settings(FLEET_MAX_RECORD_BYTES="300")
    run(strict, shard_records([native(), big]))
    (doc,) = dead_letters(env).values()
    assert doc["reason"] == "oversize"

    # oversize is the record's own size: not redriven unless the operator says the bound was the fault.
    report = redrive(env.settings, env.clients, reason="oversize")
    assert (report.redriven, report.skipped_permanent) == ({}, {"oversize": 1})
    report = redrive(env.settings, env.clients, reason="oversize", force=True)
    assert dict(report.redriven) == {"oversize": 1}
    (key,) = dead_letters(env)
    tags = env.clients.s3.get_object_tagging(Bucket=env.settings.archive_bucket, Key=key)["TagSet"]
    assert REDRIVEN_TAG in {t["Key"] for t in tags}
    again = redrive(env.settings, env.clients)
    assert (again.redriven, again.already_redriven) == ({}, 1)  # tagged: not even read

    # The fix: the limit is raised. The redriven record comes back through the stream.
    redriven = read_stream(env)
    assert [(r.data, r.partition_key) for r in redriven] == [(big.data, VIN)]
    run(env, shard_records([StreamEntry(r.data, r.partition_key) for r in redriven], first=100))
    item = env.clients.dynamodb.get_item(
        TableName=env.settings.table_names["vehicle-state"], Key={"pseudoVin": {"S": PSEUDO.pseudo_vin(VIN)}}
    )["Item"]
    assert named_item(from_item(item))["vehicleSpeed"]["value"] == 42.0


def read_stream(env: AwsEnv) -> list[StreamEntry]:
    kinesis, stream = env.clients.kinesis, env.settings.stream_name
    entries = []
    for shard in kinesis.list_shards(StreamName=stream)["Shards"]:
        iterator = kinesis.get_shard_iterator(
            StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        page = kinesis.get_records(ShardIterator=iterator)
        entries += [StreamEntry(bytes(r["Data"]), r["PartitionKey"]) for r in page["Records"]]
    return entries


def test_dead_letter_payload_never_reaches_logs(env: AwsEnv) -> None:
    secret = (
        b'{"vin": "'
        + VIN.lower().encode()
        + b'", "timestamp": 1, "signals": {"x": "'
        + base64.b64encode(VIN.encode())
        + b'"'
    )
    harness = run(env, shard_records([StreamEntry(secret, f"  {VIN.lower()} ")]))
    quarantined = [line for line in harness.logs() if line["event"] == "record_dead_lettered"]
    assert [q["reason"] for q in quarantined] == ["malformed_json"]
    assert not leaked({VIN}, "\n".join(harness.stderr_lines))


def test_no_vin_leaks_from_a_stream_of_every_format_and_every_bad_input(env: AwsEnv) -> None:
    """boundary-mix: native, Tesla protojson and protobuf from 60+ vehicles, with every reject class."""
    path = FIXTURES / "boundary-mix.jsonl"
    vins = vins_in(path)
    assert len(vins) >= 50
    harness = run(env, shard_records(fixture("boundary-mix.jsonl")), size=64)
    trips = env.clients.dynamodb.scan(TableName=env.settings.table_names["trip-state"])["Items"]
    assert trips and not leaked(
        vins, dumps([from_item(i) for i in trips])
    )  # the open trips, before the sweep
    sweep_orphans(env.settings, env.clients, now_ms=int(time.time() * 1000) + 3_600_000)

    reasons = {line["reason"] for line in harness.logs() if line["event"] == "record_dead_lettered"}
    assert reasons == {r.value for r in RejectReason} - {"unwritable", "internal_error"}  # no bug shows here
    for name, physical in env.settings.table_names.items():
        items = [from_item(i) for i in env.clients.dynamodb.scan(TableName=physical)["Items"]]
        # trip-state holds open trips only: the sweep archived them all
        assert items or name in ("trips-index", "trip-state"), name
        assert not leaked(vins, dumps(items)), name
    bucket = env.settings.archive_bucket
    for entry in env.clients.s3.list_objects_v2(Bucket=bucket).get("Contents", []):
        body = env.clients.s3.get_object(Bucket=bucket, Key=entry["Key"])["Body"].read()
        assert not leaked(vins, gzip.decompress(body) if entry["Key"].endswith(".gz") else body), entry["Key"]
        assert not leaked(vins, entry["Key"])
    assert not leaked(vins, "\n".join(harness.stderr_lines))


def test_a_record_dynamodb_refuses_is_dead_lettered_alone_and_the_batch_goes_on(env: AwsEnv) -> None:
    # Each record is valid and within every per-record bound (30 values of 2 KB), but together their
    # distinct signals outgrow a 400 KB item.
    big = [
        native(vehicleSpeed=float(i), **{f"blob{i}_{j:02d}": "z" * 1_990 for j in range(30)})
        for i in range(8)
    ]
    others = [native(vin="1HGCM82633A004352", vehicleSpeed=7.0)]
    harness = run(env, shard_records(big + others), size=20)
    assert harness.checkpoints  # the batch was not failed
    letters = dead_letters(env).values()
    assert {d["reason"] for d in letters} == {"unwritable"}
    assert 1 <= len(letters) < len(big)
    state = {
        i["pseudoVin"]["S"]: named_item(from_item(i))
        for i in env.clients.dynamodb.scan(TableName=env.settings.table_names["vehicle-state"])["Items"]
    }
    assert state[PSEUDO.pseudo_vin("1HGCM82633A004352")]["vehicleSpeed"]["value"] == 7.0
    # Every record is stored whole or dead-lettered. A dead-lettered one may have left some of its signals
    # (each a valid last-writer-wins value) when its update took several requests: a transaction cannot
    # write one item twice, so chunks are not atomic together; its redrive writes the rest.
    stored = Counter(k.split("_")[0] for k in state[PSEUDO.pseudo_vin(VIN)] if k.startswith("blob"))
    assert len([blobs for blobs in stored.values() if blobs == 30]) + len(letters) == len(big)
