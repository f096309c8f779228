"""The real KCL MultiLangDaemon in FANOUT mode: records pushed over SubscribeToShard by kinesis-local.

DynamoDB, S3, KMS and Secrets Manager are the embedded local AWS's, as in every other e2e test; only
Kinesis is kinesis-local's (``devtools.kinesis_local``), the one local Kinesis that serves the
``SubscribeToShard`` event stream. As the stack does, the consumer is registered beforehand and the
daemon is given its ARN. One daemon run; each test checks one aspect of it.

What this cannot show (docs/deploying.md says so too): TLS (the KCL's client needs the mock's plain
port), ``ChildShards`` at a shard's end (the mock never sends them: a split under FANOUT is untested),
throttling and the 2 MB/s a subscription gets. The re-subscription every 5 minutes is longer than this
run: ``test_fanout_resubscription.py`` shows it, on demand.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import orjson
import pytest

from devtools.kinesis_local import KinesisLocal
from devtools.local_aws import LocalAws
from processors.pseudonymize import Pseudonymizer
from processors.vehicle_state import named_item
from schemas.dynamo import from_item
from tests.conftest import FIXTURES, AwsEnv, fresh_env
from tests.support.harness import run_daemon
from tests.support.iam import WORKER_FANOUT_POLICY, policy_actions
from tests.support.oracle import latest_by_vin, leaked, vins_in
from worker.leases import lease_checkpoints
from worker.replay import ReplayStats, read_fixture, replay

STREAM = FIXTURES / "fleet-small.jsonl"
CONSUMER = "fleet-ingest-fanout-e2e"
FANOUT_ENV = {
    "FLEET_PSEUDONYM_KEY": "fanout-key",
    "FLEET_KCL_RETRIEVAL_MODE": "FANOUT",
    # The drain ends once each shard is checkpointed past its last record: the checkpoint after the
    # exact trip machine consumed it, L of the shard's clock after its arrival. That clock moves on a
    # quiet shard only through empty events, so the drain finishing shows they reach the processor.
    "FLEET_TRIP_LATENESS_SECONDS": "5",
    "FLEET_CHECKPOINT_EVERY_SECONDS": "5",
}


@dataclass
class FanoutRun:
    env: AwsEnv
    daemon: subprocess.CompletedProcess[str]
    replayed: ReplayStats
    consumer_arn: str
    consumers: list[str]
    """The stream's consumers after the run (names)."""
    local_aws_calls: Counter[tuple[str, str]]
    """Requests the embedded local AWS served during the run: DynamoDB and the rest, never Kinesis."""
    kinesis_calls: list[KinesisCall]
    """The requests kinesis-local served while ``worker run --drain`` ran, in order: the launcher's
    drain reads each shard to its end (ListShards, GetShardIterator, GetRecords), then the daemon starts."""

    def daemon_operations(self) -> Counter[str]:
        """The daemon's Kinesis operations: those after the launcher's drain read each shard to its end
        (its last GetRecords before the first subscription)."""
        first = next(i for i, call in enumerate(self.kinesis_calls) if call.operation == "SubscribeToShard")
        drain = [i for i, call in enumerate(self.kinesis_calls[:first]) if call.operation == "GetRecords"]
        return Counter(call.operation for call in self.kinesis_calls[drain[-1] + 1 :])


def wait_until_active(env: AwsEnv, consumer_arn: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        described = env.clients.kinesis.describe_stream_consumer(ConsumerARN=consumer_arn)
        if described["ConsumerDescription"]["ConsumerStatus"] == "ACTIVE":
            return
        time.sleep(0.2)
    raise AssertionError(f"consumer {consumer_arn} not ACTIVE within {timeout} s")


@dataclass(frozen=True)
class KinesisCall:
    operation: str
    consumer_arn: str | None


SERVED = re.compile(r"^\[debug\] kinesis\.mock\.cache\.Cache .* Processing (\w+) request$", re.MULTILINE)


def kinesis_calls(log: str) -> list[KinesisCall]:
    """The requests kinesis-local served, from its debug log (one ``Processing <Operation> request``
    line each, with the consumer's ARN for the consumer operations)."""
    calls = []
    for match in SERVED.finditer(log):
        arn = re.search(r"consumerArn=([^,\s]+)", match.group(0))
        calls.append(KinesisCall(match.group(1), arn.group(1) if arn else None))
    return calls


@pytest.fixture(scope="module")
def fanout_run(local_aws: LocalAws, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FanoutRun]:
    log = tmp_path_factory.mktemp("kinesis-local") / "kinesis-local.log"
    with KinesisLocal(log, log_level="DEBUG") as kinesis:
        env = fresh_env(local_aws, {**FANOUT_ENV, "AWS_ENDPOINT_URL_KINESIS": kinesis.endpoint})
        stream_arn = env.clients.kinesis.describe_stream_summary(StreamName=env.settings.stream_name)[
            "StreamDescriptionSummary"
        ]["StreamARN"]
        # What the stack's AWS::Kinesis::StreamConsumer does before any task starts.
        consumer = env.clients.kinesis.register_stream_consumer(StreamARN=stream_arn, ConsumerName=CONSUMER)
        arn = consumer["Consumer"]["ConsumerARN"]
        wait_until_active(env, arn)
        env = env.with_settings(FLEET_KCL_CONSUMER_ARN=arn)
        replayed = replay(env.clients.kinesis, env.settings.stream_name, read_fixture(STREAM))
        local_aws.app.reset_counts()
        before = log.stat().st_size
        daemon = run_daemon(env.environ, timeout=120)
        served = kinesis_calls(log.read_bytes()[before:].decode(errors="replace"))
        consumers = env.clients.kinesis.list_stream_consumers(StreamARN=stream_arn)["Consumers"]
        yield FanoutRun(
            env,
            daemon,
            replayed,
            arn,
            [c["ConsumerName"] for c in consumers],
            Counter(local_aws.app.requests),
            served,
        )


def test_the_daemon_drains_the_stream_in_fanout_mode(fanout_run: FanoutRun) -> None:
    assert fanout_run.daemon.returncode == 0, fanout_run.daemon.stderr[-3000:]
    checkpoints = lease_checkpoints(fanout_run.env.settings, fanout_run.env.clients)
    assert set(checkpoints) == set(fanout_run.replayed.last_sequence) and len(checkpoints) == 2
    for shard, last in fanout_run.replayed.last_sequence.items():
        assert int(checkpoints[shard]) >= int(last)


def test_records_arrive_by_subscription_to_the_stacks_consumer_only(fanout_run: FanoutRun) -> None:
    subscribed = [call for call in fanout_run.kinesis_calls if call.operation == "SubscribeToShard"]
    assert len(subscribed) >= 2  # each shard at least once
    assert {call.consumer_arn for call in subscribed} == {fanout_run.consumer_arn}
    # Given the ARN, the KCL neither looked the consumer up nor registered one (the task role may only
    # SubscribeToShard on it), and once subscribed it never polled.
    daemon = fanout_run.daemon_operations()
    assert set(daemon) == {"SubscribeToShard", "ListShards"}, daemon
    assert fanout_run.consumers == [CONSUMER]
    # Kinesis was never asked of the local AWS (moto, which has no SubscribeToShard): the KCL's and the
    # launcher's Kinesis calls all went to kinesis-local.
    assert not [op for (service, op) in fanout_run.local_aws_calls if service == "kinesis"]
    assert fanout_run.local_aws_calls[("dynamodb", "UpdateItem")] > 0


def test_the_stack_s_fanout_role_grants_exactly_the_kinesis_actions_the_daemon_called(
    fanout_run: FanoutRun,
) -> None:
    """The stack's worker task role (WorkerRetrievalMode=FANOUT) against what KCL 3.1.3 asked of Kinesis
    once it subscribed; the rest of the role is the polling one's, checked by tests/e2e/test_e2e.py."""
    called = {f"kinesis:{op}" for op in fanout_run.daemon_operations()}
    granted = {a for a in policy_actions(WORKER_FANOUT_POLICY) if a.startswith("kinesis:")}
    assert called == granted == {"kinesis:ListShards", "kinesis:SubscribeToShard"}


def test_vehicle_state_holds_each_vehicles_latest_values(fanout_run: FanoutRun) -> None:
    settings, dynamodb = fanout_run.env.settings, fanout_run.env.clients.dynamodb
    items = dynamodb.scan(TableName=settings.table_names["vehicle-state"])["Items"]
    state = {item["pseudoVin"]: named_item(item) for item in map(from_item, items)}
    expected = latest_by_vin(STREAM)
    pseudo = Pseudonymizer(FANOUT_ENV["FLEET_PSEUDONYM_KEY"].encode())
    assert sorted(state) == sorted(pseudo.pseudo_vin(vin) for vin in expected)  # one item each
    for vin, latest in expected.items():
        item = state[pseudo.pseudo_vin(vin)]
        assert item["timestamp"] == latest["timestamp"]
        assert item["vehicleSpeed"]["value"] == latest["vehicleSpeed"]
        assert item["location"]["value"] == {"lat": latest["lat"], "lng": latest["lng"]}


def test_every_record_went_through_a_processor_and_no_vin_was_logged(fanout_run: FanoutRun) -> None:
    stderr = fanout_run.daemon.stderr
    lines = [orjson.loads(line) for line in stderr.splitlines() if line.startswith('{"ts"')]
    assert sum(line["records"] for line in lines if line["event"] == "batch") >= fanout_run.replayed.records
    assert not leaked(vins_in(STREAM), stderr)
    assert fanout_run.daemon.stdout == ""
