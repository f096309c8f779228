"""Metrics: CloudWatch Embedded Metric Format documents, checked against the EMF specification."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from tests.conftest import AwsEnv
from tests.support.harness import ProcessorHarness, batches, fixture, shard_records
from worker.logs import configure_logging, event
from worker.metrics import BatchMetrics, MetricsPublisher, emf_document

# https://docs.aws.amazon.com/AmazonCloudWatch/latest/APIReference/API_MetricDatum.html (Unit)
_SIZES = {"Bytes", "Kilobytes", "Megabytes", "Gigabytes", "Terabytes"}
_SIZES |= {"Bits", "Kilobits", "Megabits", "Gigabits", "Terabits"}
CLOUDWATCH_UNITS = {"Seconds", "Microseconds", "Milliseconds", "Percent", "Count", "Count/Second", "None"}
CLOUDWATCH_UNITS |= _SIZES | {f"{size}/Second" for size in _SIZES}
METRICS = {
    "RecordsProcessed",
    "RecordsDeadLettered",
    "TripsArchived",
    "InvalidCoordinates",
    "SignalsDropped",
    "LateForMachine",
    "LateAfterArchive",
    "BatchDurationMs",
    "MillisBehindLatest",
    "WriteRequests",
}


def assert_emf(document: dict[str, Any]) -> None:
    """The EMF specification's rules for a document (one metric directive or more)."""
    aws = document["_aws"]
    assert isinstance(aws["Timestamp"], int) and not isinstance(aws["Timestamp"], bool)
    assert abs(aws["Timestamp"] - time.time() * 1000) < 3_600_000, "epoch milliseconds"
    directives = aws["CloudWatchMetrics"]
    assert isinstance(directives, list) and directives
    for directive in directives:
        assert isinstance(directive["Namespace"], str) and 1 <= len(directive["Namespace"]) <= 255
        assert isinstance(directive["Dimensions"], list)
        for dimension_set in directive["Dimensions"]:
            assert isinstance(dimension_set, list) and len(dimension_set) <= 30
            for key in dimension_set:
                assert isinstance(document[key], str) and document[key], f"dimension {key} at top level"
        assert 1 <= len(directive["Metrics"]) <= 100
        for metric in directive["Metrics"]:
            assert set(metric) <= {"Name", "Unit", "StorageResolution"}
            assert metric.get("Unit", "None") in CLOUDWATCH_UNITS, metric
            value = document[metric["Name"]]
            assert isinstance(value, int | float) and not isinstance(value, bool), metric["Name"]


SAMPLE = BatchMetrics(
    records=500,
    dead_letters=3,
    trips_archived=2,
    invalid_coordinates=4,
    signals_dropped=7,
    write_requests=61,
    duration_ms=412.5,
    millis_behind_latest=1800,
)


def test_a_batch_document_follows_the_spec() -> None:
    document = emf_document(
        "fleet-ingest", "fleet-ingest", "shardId-000000000001", SAMPLE, int(time.time() * 1000)
    )
    assert_emf(document)
    (directive,) = document["_aws"]["CloudWatchMetrics"]
    assert directive["Dimensions"] == [["Application", "Shard"], ["Application"]]
    units = {metric["Name"]: metric["Unit"] for metric in directive["Metrics"]}
    assert set(units) == METRICS
    assert units["BatchDurationMs"] == units["MillisBehindLatest"] == "Milliseconds"
    assert units["RecordsProcessed"] == units["WriteRequests"] == "Count"
    assert (document["Application"], document["Shard"]) == ("fleet-ingest", "shardId-000000000001")
    assert (document["RecordsProcessed"], document["RecordsDeadLettered"], document["TripsArchived"]) == (
        500,
        3,
        2,
    )
    assert document["InvalidCoordinates"] == 4
    assert document["SignalsDropped"] == 7
    assert (document["WriteRequests"], document["BatchDurationMs"], document["MillisBehindLatest"]) == (
        61,
        412.5,
        1800,
    )


def test_an_unknown_lag_is_left_out_not_reported_as_zero() -> None:
    unknown = BatchMetrics(1, 0, 0, 0, 0, 1, 2.0, None)
    document = emf_document("ns", "app", "shardId-000000000000", unknown, int(time.time() * 1000))
    assert_emf(document)
    assert "MillisBehindLatest" not in document
    assert "MillisBehindLatest" not in {
        m["Name"] for m in document["_aws"]["CloudWatchMetrics"][0]["Metrics"]
    }


@pytest.fixture
def logged() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    buffer = io.StringIO()
    configure_logging("WARNING", stream=buffer)
    yield buffer
    root.handlers[:], root.level = saved


def test_documents_are_whole_lines_of_the_log_stream_whatever_the_log_level(logged: io.StringIO) -> None:
    MetricsPublisher("fleet-ingest", "fleet-ingest", clock=lambda: 1_741_185_121.25).batch(
        "shardId-000000000000", SAMPLE
    )
    event(logging.getLogger("tests.metrics"), "not at WARNING: dropped")
    (line,) = logged.getvalue().splitlines()
    document = orjson.loads(line)
    assert document["_aws"]["Timestamp"] == 1_741_185_121_250
    assert set(document) == {"_aws", "Application", "Shard", *METRICS}


def test_the_processor_emits_one_document_per_non_empty_batch_on_stderr(aws_env: AwsEnv) -> None:
    records = shard_records(fixture("fleet-small.jsonl")[:300])
    harness = ProcessorHarness({**aws_env.environ, "FLEET_METRICS_NAMESPACE": "fleet-test"})
    harness.initialize()
    for batch in batches(records, 100):
        harness.process(batch, millis_behind=900)
        harness.process([])  # an empty batch: a document only if its flush wrote something
    harness.shutdown_requested()
    assert harness.close() == 0  # a document on stdout would have broken the protocol exchange above
    documents = harness.metrics()
    assert len([d for d in documents if d["RecordsProcessed"]]) == 3
    assert all(d["WriteRequests"] for d in documents if not d["RecordsProcessed"])
    for document in documents:
        assert_emf(document)
        assert document["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "fleet-test"
        assert document["Application"] == aws_env.settings.application_name
        assert document["Shard"] == "shardId-000000000000"
        assert document["MillisBehindLatest"] == (900 if document["RecordsProcessed"] else 0)
    assert sum(d["RecordsProcessed"] for d in documents) == 300
    batch_lines = [line for line in harness.logs() if line["event"] == "batch"]
    assert [d["RecordsDeadLettered"] for d in documents] == [b["deadLetters"] for b in batch_lines]
    assert [d["WriteRequests"] for d in documents] == [b["writes"] for b in batch_lines]
    assert [d["InvalidCoordinates"] for d in documents] == [b["invalidCoordinates"] for b in batch_lines]
    assert [d["SignalsDropped"] for d in documents] == [b["signalsDropped"] for b in batch_lines]
